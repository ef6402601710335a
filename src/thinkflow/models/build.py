"""Build and load Hugging Face Llama-family causal LMs.

``n_kv_heads`` expresses MHA (= n_heads), GQA (a divisor) and MQA (1). Checkpoints are plain
HF directories (``config.json``, ``model.safetensors``, tokenizer files) that
``transformers.AutoModelForCausalLM.from_pretrained`` loads without thinkflow.
"""

from __future__ import annotations

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


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32):
    """Model and tokenizer from an HF checkpoint directory, with a clear error if absent."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"no HF checkpoint at {path} (config.json missing)")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # safetensors, json and torch all raise their own types
        raise CheckpointError(f"checkpoint at {path} is unreadable: {err}") from err
    return model, tokenizer


def n_params(model: torch.nn.Module, non_embedding: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        total -= model.get_input_embeddings().weight.numel()
    return total
