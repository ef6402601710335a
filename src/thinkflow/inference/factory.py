"""Open a generation engine over an HF checkpoint directory by backend name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from thinkflow.inference.hf import HFEngine
from thinkflow.inference.types import GenerationError
from thinkflow.models import load_checkpoint

BACKENDS = ("hf", "vllm")


@contextmanager
def open_engine(
    backend: str,
    model_dir: str | Path,
    vllm_python: str | None = None,
    autocast: torch.dtype | None = None,
    **server_kwargs,
) -> Iterator:
    """``hf``: in-process (matmuls under ``autocast``, e.g. bf16, where given); ``vllm``: a server started for
    the block and stopped after it (its own dtype)."""
    if backend not in BACKENDS:
        raise GenerationError(f"unknown inference backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    if backend == "hf":
        model, tokenizer = load_checkpoint(model_dir)
        yield HFEngine(model, tokenizer, autocast=autocast)
        return
    from transformers import AutoTokenizer

    from thinkflow.inference.vllm_server import VLLMEngine, VLLMServer

    server = VLLMServer(model_dir, python=vllm_python, **server_kwargs)  # errors clearly if vLLM is absent
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with server:
        yield VLLMEngine(server.base_url, tokenizer, server=server)
