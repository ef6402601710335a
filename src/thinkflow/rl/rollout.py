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


@dataclass
class Rollouts:
    """One RL step's experience: G samples per prompt, rewarded and turned into advantages."""

    batch: RolloutBatch
    rewards: torch.Tensor  # (groups, G)
    advantages: torch.Tensor  # (groups * G,)
    metrics: dict[str, float]


def collect(engine, task, problems, group_size: int, params, reward_cfg, objective_cfg, extra_reward=None) -> Rollouts:
    """Sample ``group_size`` completions per problem through the inference engine, score them
    with the task's verifier, and compute group advantages (dapo drops zero-variance groups)."""
    from dataclasses import replace

    from thinkflow.rl.objectives import group_advantages, informative_groups
    from thinkflow.rl.rewards import score

    if group_size < 2:
        raise ValueError(f"rl.group_size must be >= 2 for group-relative advantages, got {group_size}")
    prompts = [p.prompt for p in problems]
    groups = engine.generate(prompts, replace(params, n=group_size))
    samples = [s for g in groups for s in g]
    scored = score(
        task, [problems[s.prompt_index] for s in samples], [s.text for s in samples], reward_cfg, extra_reward
    )
    rewards = scored.rewards.view(len(problems), group_size)
    keep = informative_groups(rewards)
    metrics = {
        "rl/reward_mean": float(rewards.mean()),
        "rl/reward_std": float(rewards.std(dim=1, unbiased=False).mean()),
        "rl/frac_zero_std": float(1 - keep.float().mean()),
        "rl/accuracy": float(scored.correct.float().mean()),
        "rl/response_len": float(sum(s.gen_tokens for s in samples) / len(samples)),
        "rl/reward_failures": float(scored.failures),
    }
    if objective_cfg.name == "dapo" and keep.any():  # dynamic sampling: only groups with signal
        rows = keep.repeat_interleave(group_size)
        samples = [s for s, k in zip(samples, rows.tolist(), strict=True) if k]
        rewards = rewards[keep]
    advantages = group_advantages(rewards, objective_cfg).reshape(-1)
    return Rollouts(build_batch(engine.tokenizer, prompts, samples), rewards, advantages, metrics)
