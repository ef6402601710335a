"""Rollouts as learner tensors: prompt + sampled completion per row, and the masks and
behaviour log-probs the objectives need.

Row layout (right-padded to the longest row): ``<bos> prompt completion <pad>...``. Targets are
the inputs shifted by one, so every ``(B, L-1)`` tensor here is aligned with
``logits[:, :-1]`` predicting ``input_ids[:, 1:]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from thinkflow.envs import env_metrics, sample_verdict, with_env
from thinkflow.inference import Sample
from thinkflow.models.heads import LARGE_VOCAB, chosen_logprobs, full_logprobs
from thinkflow.models.lora import AdaptersOff
from thinkflow.rl.objectives import group_advantages, informative_groups
from thinkflow.rl.rewards import score


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    loss_mask: torch.Tensor  # (B, L-1) 1 where the target is a sampled completion token
    old_logp: torch.Tensor  # (B, L-1) behaviour log-probs at those targets, 0 elsewhere
    prompt_index: torch.Tensor  # (B,) which prompt each row answers

    def select(self, rows: torch.Tensor) -> RolloutBatch:
        """The rows ``rows`` (a minibatch), trimmed to their longest row."""
        width = int(self.attention_mask[rows].sum(dim=1).max())
        return RolloutBatch(
            self.input_ids[rows, :width],
            self.attention_mask[rows, :width],
            self.loss_mask[rows, : width - 1],
            self.old_logp[rows, : width - 1],
            self.prompt_index[rows],
        )

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
        # episodes: only the model's own tokens are trained on, never the environment's observations
        loss_mask[i, start : start + len(s.token_ids)] = torch.tensor(s.mask, dtype=torch.float) if s.mask else 1
        old_logp[i, start : start + len(s.token_ids)] = torch.tensor(s.logprobs)
    return RolloutBatch(ids, attn, loss_mask, old_logp, torch.tensor([s.prompt_index for s in samples]))


def token_logprobs(model, batch: RolloutBatch, with_entropy: bool = False):
    """(B, L-1) log-probs of each next token under ``model`` (and the entropy of its distribution), where
    ``batch.loss_mask`` says a completion token is trained on (elsewhere: unspecified; the objectives mask them).
    ``model`` may be an ``AdaptersOff`` view (the LoRA policy's base). Models with a large vocabulary never
    materialise the batch's logits: the head runs in checkpointed chunks at the completion positions only."""
    adapters_off = isinstance(model, AdaptersOff)
    net = model.model if adapters_off else model
    with net.disable_adapter() if adapters_off else contextlib.nullcontext():
        if net.config.vocab_size >= LARGE_VOCAB:
            logp, entropy = chosen_logprobs(net, batch.input_ids, batch.attention_mask, batch.loss_mask, with_entropy)
        else:
            logp, entropy = full_logprobs(net, batch.input_ids, batch.attention_mask, with_entropy)
    return (logp, entropy) if with_entropy else logp


@dataclass
class Rollouts:
    """One RL step's experience: G samples per prompt, rewarded and turned into advantages."""

    batch: RolloutBatch
    rewards: torch.Tensor  # (groups, G)
    advantages: torch.Tensor  # (groups * G,)
    metrics: dict[str, float]
    problems: list  # the problem of each group, in batch order
    texts: list[str]  # completion text of each row
    gen_tokens: int  # tokens generated this step, refills included


def _sample_groups(engine, task, problems, group_size, params, reward_cfg, extra_reward):
    """(samples grouped per problem, (groups, G) rewards, RewardBatch) for one sampling round."""
    groups = with_env(engine, task, problems).generate([p.prompt for p in problems], replace(params, n=group_size))
    flat = [s for g in groups for s in g]
    owners = [problems[s.prompt_index] for s in flat]
    verdicts = [sample_verdict(task, p, s) for p, s in zip(owners, flat, strict=True)] if flat[0].env else None
    scored = score(task, owners, [s.text for s in flat], reward_cfg, extra_reward, verdicts)
    return groups, scored.rewards.view(len(problems), group_size), scored


def collect(
    engine,
    task,
    problems,
    group_size: int,
    params,
    reward_cfg,
    objective_cfg,
    extra_reward=None,
    more_problems: Callable[[int], list] | None = None,
    max_refill: int = 0,
) -> Rollouts:
    """Sample ``group_size`` completions per problem through the inference engine, score them
    with the task's verifier, and compute group advantages.

    ``dapo`` (dynamic sampling) keeps only groups whose rewards differ and, up to ``max_refill``
    extra rounds, samples fresh problems from ``more_problems(n)`` to fill the batch back up.
    The policy statistics in ``metrics`` describe the first round (the policy as it is).
    """
    if group_size < 2:
        raise ValueError(f"rl.group_size must be >= 2 for group-relative advantages, got {group_size}")
    groups, rewards, scored = _sample_groups(engine, task, problems, group_size, params, reward_cfg, extra_reward)
    samples = [s for g in groups for s in g]
    keep = informative_groups(rewards)
    metrics = {
        "rl/reward_mean": float(rewards.mean()),
        "rl/reward_std": float(rewards.std(dim=1, unbiased=False).mean()),
        "rl/frac_zero_std": float(1 - keep.float().mean()),
        "rl/accuracy": float(scored.correct.float().mean()),
        "rl/format_ok": float(scored.well_formed.float().mean()),
        "rl/response_len": float(sum(s.gen_tokens for s in samples) / len(samples)),
        "rl/reward_failures": float(scored.failures),
    } | env_metrics(samples)
    gen_tokens = sum(s.gen_tokens for s in samples)
    kept = list(zip(problems, groups, rewards, strict=True))
    if objective_cfg.name == "dapo":
        kept = [k for k, informative in zip(kept, keep.tolist(), strict=True) if informative]
        rounds = 0
        while len(kept) < len(problems) and rounds < max_refill and more_problems is not None:
            rounds += 1
            extra = more_problems(len(problems) - len(kept))
            g2, r2, _ = _sample_groups(
                engine,
                task,
                extra,
                group_size,
                replace(params, seed=params.seed + 7919 * rounds),
                reward_cfg,
                extra_reward,
            )
            gen_tokens += sum(s.gen_tokens for g in g2 for s in g)
            kept += [
                k for k, ok in zip(zip(extra, g2, r2, strict=True), informative_groups(r2).tolist(), strict=True) if ok
            ]
        metrics["rl/refill_rounds"] = float(rounds)
        if not kept:  # no signal anywhere: train on nothing but keep the step (advantages are all 0)
            kept = list(zip(problems, groups, rewards, strict=True))
        kept = kept[: len(problems)]
    metrics["rl/groups_trained"] = float(len(kept))
    problems_k = [k[0] for k in kept]
    rewards_k = torch.stack([k[2] for k in kept])
    rows = [replace(s, prompt_index=i) for i, k in enumerate(kept) for s in k[1]]
    advantages = group_advantages(rewards_k, objective_cfg).reshape(-1)
    batch = build_batch(engine.tokenizer, [p.prompt for p in problems_k], rows)
    return Rollouts(batch, rewards_k, advantages, metrics, problems_k, [s.text for s in rows], gen_tokens)
