"""Log-probs of chosen tokens without materialising a whole batch's logits.

A 262k-token vocabulary (Gemma 3) makes ``B x L x V`` fp32 logits gigabytes for an RL batch. ``chosen_logprobs``
runs the model's decoder once, then the LM head only at the positions asked for (the completion tokens), a
chunk of rows at a time, each chunk recomputed in the backward pass (activation checkpointing) so that no more
than one chunk of logits is alive. The result is checked once per model against the plain forward (a model
whose head does more than ``lm_head`` plus Gemma's soft-capping falls back to it): never silently different.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from thinkflow.models.lora import base_model

LARGE_VOCAB = 32_768  # from here on: chunked LM-head log-probs (rl) and inverse-CDF sampling (inference.hf)
CHUNK_ELEMENTS = 32 * 2**20  # logits per chunk (128 MB in fp32)
_CHECKED: dict[int, bool] = {}  # id(config) -> whether the decoder + head path reproduces the model's logits


def _parts(model):
    base = base_model(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings()
    return decoder, head, getattr(base.config, "final_logit_softcapping", None)


def _head_logits(head, hidden: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _chunk(head, softcap, hidden, targets, with_entropy: bool):
    logits = _head_logits(head, hidden, softcap)
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
    if not with_entropy:
        return logp, torch.zeros_like(logp)
    with torch.no_grad():  # a metric: no graph (a differentiable entropy would keep the softmax for backward)
        probs = torch.softmax(logits, dim=-1)
        entropy = lse - (probs * logits).sum(-1)
    return logp, entropy


def full_logprobs(model, input_ids, attention_mask, with_entropy: bool):
    """(B, L-1) log-probs of every next token from the model's own forward (and entropies)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    return logp, entropy


def chosen_logprobs(model, input_ids, attention_mask, positions: torch.Tensor, with_entropy: bool = False):
    """(B, L-1) log-probs of ``input_ids[:, 1:]`` at ``positions`` (a (B, L-1) mask; 0 elsewhere), and their
    entropies (a metric: not differentiable here), with the LM head run in checkpointed chunks over those
    positions only."""
    decoder, head, softcap = _parts(model)
    if decoder is None or head is None or not _reproduces(model, decoder, head, softcap, input_ids, attention_mask):
        logp, entropy = full_logprobs(model, input_ids, attention_mask, with_entropy)
        keep = positions.to(logp.dtype)
        return logp * keep, (entropy * keep if entropy is not None else None)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
    mask = positions.bool()
    rows, targets = hidden[mask], input_ids[:, 1:][mask]  # (N, H), (N,)
    step = max(1, CHUNK_ELEMENTS // head.weight.shape[0])
    parts = [
        checkpoint(_chunk, head, softcap, rows[i : i + step], targets[i : i + step], with_entropy, use_reentrant=False)
        if torch.is_grad_enabled()
        else _chunk(head, softcap, rows[i : i + step], targets[i : i + step], with_entropy)
        for i in range(0, rows.shape[0], step)
    ]
    logp = hidden.new_zeros(mask.shape, dtype=torch.float32)
    entropy = hidden.new_zeros(mask.shape, dtype=torch.float32)
    if parts:
        logp = logp.masked_scatter(mask, torch.cat([p[0] for p in parts]))
        entropy = entropy.masked_scatter(mask, torch.cat([p[1] for p in parts]))
    return logp, (entropy if with_entropy else None)


def _reproduces(model, decoder, head, softcap, input_ids, attention_mask) -> bool:
    """Once per model config: do decoder + head give the model's own logits (on the first row, 8 positions)?"""
    key = id(base_model(model).config)
    if key not in _CHECKED:
        ids, attn = input_ids[:1, :8], attention_mask[:1, :8]
        with torch.no_grad(), contextlib.suppress(Exception):
            want = model(input_ids=ids, attention_mask=attn).logits.float()
            got = _head_logits(head, decoder(input_ids=ids, attention_mask=attn).last_hidden_state, softcap)
            _CHECKED[key] = bool(torch.allclose(got, want, atol=1e-4, rtol=1e-4))
        _CHECKED.setdefault(key, False)
    return _CHECKED[key]
