"""KV-cache accounting: the bytes a decode step must read per token of context.

Decoding is memory-bound on keys and values, so this is the number that separates MHA, GQA
and MQA: layers x KV heads x head dim x 2 (K and V) x bytes per element.
"""

from __future__ import annotations

import torch


def kv_bytes_per_token(config, dtype: torch.dtype = torch.float32) -> int:
    """Analytic KV-cache bytes per token for an HF decoder config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    elem = torch.empty((), dtype=dtype).element_size()
    return config.num_hidden_layers * kv_heads * head_dim * 2 * elem


def kv_cache_bytes(config, tokens: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of KV cache to hold ``tokens`` positions (summed over the batch)."""
    return kv_bytes_per_token(config, dtype) * tokens
