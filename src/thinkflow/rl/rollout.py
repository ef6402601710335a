"""Rollouts as learner tensors: prompt + sampled completion per row, and the masks and
behaviour log-probs the objectives need.

Row layout (right-padded to the longest row): ``<bos> prompt completion <pad>...``. Targets are
the inputs shifted by one, so every ``(B, L-1)`` tensor here is aligned with
``logits[:, :-1]`` predicting ``input_ids[:, 1:]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from thinkflow.inference import Sample


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    loss_mask: torch.Tensor  # (B, L-1) 1 where the target is a sampled completion token
    old_logp: torch.Tensor  # (B, L-1) behaviour log-probs at those targets, 0 elsewhere
    prompt_index: torch.Tensor  # (B,) which prompt each row answers

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.loss_mask.sum(dim=1)


def build_batch(tokenizer, prompts: list[str], samples: list[Sample]) -> RolloutBatch:
    """One row per sample; ``samples[i].prompt_index`` indexes ``prompts``."""
    prompt_ids = tokenizer(prompts).input_ids
    rows = [prompt_ids[s.prompt_index] + s.token_ids for s in samples]
    width = max(len(r) for r in rows)
    b = len(samples)
    ids = torch.full((b, width), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros(b, width, dtype=torch.long)
    loss_mask = torch.zeros(b, width - 1)
    old_logp = torch.zeros(b, width - 1)
    for i, (row, s) in enumerate(zip(rows, samples, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        attn[i, : len(row)] = 1
        start = len(prompt_ids[s.prompt_index]) - 1  # target index of the first completion token
        loss_mask[i, start : start + len(s.token_ids)] = 1
        old_logp[i, start : start + len(s.token_ids)] = torch.tensor(s.logprobs)
    return RolloutBatch(ids, attn, loss_mask, old_logp, torch.tensor([s.prompt_index for s in samples]))


def token_logprobs(model, batch: RolloutBatch, with_entropy: bool = False):
    """(B, L-1) log-probs of each next token under ``model`` (and the entropy of its distribution)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    logp_all = F.log_softmax(logits, dim=-1)  # (B, L-1, V)
    logp = logp_all.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    if not with_entropy:
        return logp
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, L-1)
    return logp, entropy
