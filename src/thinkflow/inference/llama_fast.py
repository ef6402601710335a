"""A lean decode path for HF Llama-family weights: the ``hf`` backend's fast lane.

For models this small, per-step framework overhead (module calls, mask building, cache
bookkeeping, output objects) costs more than the arithmetic. This runs the same maths as
``transformers``' Llama (RMSNorm, RoPE from the model's own rotary module, GQA attention,
SwiGLU MLP) straight on the model's weight tensors, with fused QKV and gate/up projections
and a preallocated KV cache. Models it does not support fall back to the generic HF path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from thinkflow.models.lora import base_model
from thinkflow.models.lora import effective_weight as W


def supports(model) -> bool:
    cfg = base_model(model).config
    return (
        getattr(cfg, "model_type", "") == "llama"
        and not getattr(cfg, "attention_bias", False)
        and not getattr(cfg, "mlp_bias", False)
        and getattr(cfg, "hidden_act", "silu") == "silu"
        and getattr(cfg, "pretraining_tp", 1) == 1
    )


class KVCache:
    """Keys/values for every layer in one preallocated tensor each: (L, B, Hkv, T_max, D)."""

    def __init__(self, layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int, dtype) -> None:
        self.k = torch.zeros(layers, batch, kv_heads, max_len, head_dim, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool)  # False on left padding
        self.length = 0  # slots filled
        self.padded = True  # set False when no row has padding (decode then needs no mask)

    def repeat_interleave(self, n: int) -> None:
        """Prefix sharing: every row's cache becomes n rows (one prefill, n samples)."""
        self.k = self.k.repeat_interleave(n, dim=1)
        self.v = self.v.repeat_interleave(n, dim=1)
        self.valid = self.valid.repeat_interleave(n, dim=0)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (finished sequences leave the batch)."""
        self.k, self.v, self.valid = self.k[:, rows], self.v[:, rows], self.valid[rows]
        self.padded = self.padded and not bool(self.valid[:, : self.length].all())

    def nbytes(self) -> int:
        return self.k.nelement() * self.k.element_size() * 2


class FastLlama:
    def __init__(self, model) -> None:
        model = base_model(model)  # LoRA: its layers carry the adapters, folded in below (effective_weight)
        cfg, core = model.config, model.model
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        # cos/sin for every position, computed once by the model's own rotary module (so every
        # RoPE variant it implements is honoured), then gathered per step.
        max_pos = cfg.max_position_embeddings
        probe = torch.zeros(1, 1, dtype=core.embed_tokens.weight.dtype)
        with torch.no_grad():
            cos, sin = core.rotary_emb(probe, torch.arange(max_pos)[None])
        half = cos.shape[-1] // 2
        self.cos = cos[0]  # (P, D)
        # rotate_half(x) * sin == swap_halves(x) * [-sin_1, sin_2]: fold the sign into the table
        self.sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)
        self.embed = core.embed_tokens.weight
        self.norm = core.norm.weight
        self.lm_head = model.lm_head  # the module, so hooks on it (logit processors, tests) apply
        if hasattr(model.lm_head.weight, "ds_id"):
            # DeepSpeed ZeRO-3 (weights gathered by the caller): a module call would run ZeRO's
            # hooks, which re-partition the weight (and the tied embedding) after the first step.
            head = model.lm_head.weight.detach()
            self.lm_head = lambda h: F.linear(h, head)
        self.dtype = self.embed.dtype
        self.layers = []
        for layer in core.layers:
            att, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                (
                    layer.input_layernorm.weight,
                    torch.cat([W(att.q_proj), W(att.k_proj), W(att.v_proj)]).detach(),
                    W(att.o_proj).detach(),
                    layer.post_attention_layernorm.weight,
                    torch.cat([W(mlp.gate_proj), W(mlp.up_proj)]).detach(),
                    W(mlp.down_proj).detach(),
                )
            )
        self.scale = self.head_dim**-0.5

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache(len(self.layers), batch, self.n_kv, max_len, self.head_dim, self.dtype)

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused op; same maths as HF's LlamaRMSNorm in fp32
            return F.rms_norm(x, w.shape, w, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * h.to(x.dtype)

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits of the last position for ``ids`` (B, T) written at the cache's next slots."""
        b, t = ids.shape
        start, end = cache.length, cache.length + t
        x = F.embedding(ids, self.embed)  # (B, T, d)
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (B, 1, T, D)
        keys = cache.valid[:, None, None, :end]  # (B, 1, 1, S)
        if t > 1:  # prefill: causal over the new slots, and pad queries see themselves
            causal = torch.ones(t, end, dtype=torch.bool).tril(start)
            diagonal = causal & ~torch.ones(t, end, dtype=torch.bool).tril(start - 1)
            mask = (keys & causal) | diagonal
        else:  # decode: one query sees every filled slot; a mask only where there is padding
            mask = keys if cache.padded else None
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        for i, (ln1, wqkv, wo, ln2, wgu, wdown) in enumerate(self.layers):
            qkv = F.linear(self._rms(x, ln1), wqkv)
            qk, v = qkv.split([q_dim + kv_dim, kv_dim], dim=-1)
            qk = qk.view(b, t, self.n_heads + self.n_kv, self.head_dim).transpose(1, 2)  # (B, H+Hkv, T, D)
            qk = torch.addcmul(qk * cos, _swap_halves(qk), sin)  # RoPE on queries and keys in one pass
            q, k = qk.split([self.n_heads, self.n_kv], dim=1)  # (B, H, T, D), (B, Hkv, T, D)
            v = v.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
            cache.k[i, :, :, start:end] = k
            cache.v[i, :, :, start:end] = v
            o = F.scaled_dot_product_attention(
                q,
                cache.k[i, :, :, :end],
                cache.v[i, :, :, :end],
                attn_mask=mask,
                scale=self.scale,
                enable_gqa=self.n_kv != self.n_heads,
            )
            x = torch.addmm(x.view(b * t, -1), o.transpose(1, 2).reshape(b * t, q_dim), wo.t()).view(b, t, -1)
            gate, up = F.linear(self._rms(x, ln2), wgu).chunk(2, dim=-1)
            x = torch.addmm(x.view(b * t, -1), (F.silu(gate) * up).view(b * t, -1), wdown.t()).view(b, t, -1)
        cache.length = end
        return self.lm_head(self._rms(x[:, -1], self.norm))  # (B, V)


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (x2, x1) along the last dim, in one copy."""
    return x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
