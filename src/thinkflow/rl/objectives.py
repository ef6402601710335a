"""GRPO-family policy-gradient objectives on verifiable rewards.

Shapes: ``B`` sequences (= groups x G samples), ``T`` completion tokens (right-padded; ``mask``
is 1 on real completion tokens). All three objectives use the PPO clipped importance ratio
against the behaviour policy that sampled the tokens, and an optional k3 KL penalty to a
frozen reference policy. They differ in advantages and in how token terms are aggregated:

- ``grpo``: advantages normalised by the group's std; loss = mean over sequences of the
  per-sequence token mean (short answers weigh more per token: GRPO's length bias).
- ``dr_grpo`` (Dr. GRPO): no std normalisation; token terms summed per sequence and divided
  by a constant (the generation budget), so neither length nor difficulty reweights.
- ``dapo``: std-normalised advantages, token-level mean over the whole batch, asymmetric
  "clip-higher" (``clip_high > clip_low``), and dynamic sampling (groups whose rewards all
  match carry no signal and are dropped or refilled: ``informative_groups``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from thinkflow.config import RLConfig

OBJECTIVES = ("grpo", "dr_grpo", "dapo")


@dataclass(frozen=True)
class ObjectiveConfig:
    name: str = "grpo"
    clip_low: float = 0.2
    clip_high: float = 0.2  # dapo's clip-higher uses e.g. 0.28
    beta: float = 0.0  # k3 KL penalty weight; 0 means no reference model at all
    std_eps: float = 1e-6
    length_norm: int = 1  # dr_grpo's constant divisor (the generation budget in tokens)

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"rl.objective must be one of {OBJECTIVES}, got {self.name!r}")
        if self.clip_low < 0 or self.clip_high < 0:
            raise ValueError(f"clip ranges must be >= 0, got low={self.clip_low}, high={self.clip_high}")
        if self.beta < 0:
            raise ValueError(f"rl.beta must be >= 0, got {self.beta}")
        if self.length_norm < 1:
            raise ValueError(f"length_norm must be >= 1, got {self.length_norm}")

    @classmethod
    def from_rl(cls, rl: RLConfig) -> ObjectiveConfig:
        """The objective the ``rl`` section names, each field by keyword (dr_grpo's divisor: the generation budget)."""
        return cls(
            name=rl.objective, clip_low=rl.clip_low, clip_high=rl.clip_high, beta=rl.beta, length_norm=rl.max_new_tokens
        )


def group_advantages(rewards: torch.Tensor, cfg: ObjectiveConfig) -> torch.Tensor:
    """(groups, G) rewards -> (groups, G) advantages: centred, and std-scaled except dr_grpo."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if cfg.name == "dr_grpo":
        return centred
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=False) + cfg.std_eps)


def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """(groups,) bool: groups whose rewards are not all equal (DAPO's dynamic sampling)."""
    return (rewards.max(dim=1).values - rewards.min(dim=1).values) > 0


@dataclass
class LossOutput:
    loss: torch.Tensor
    kl: torch.Tensor  # mean k3 KL per completion token (0 without a reference)
    clip_frac: float  # share of completion tokens whose clipped branch was taken
    ratio_mean: float


def policy_loss(
    logp_new: torch.Tensor,  # (B, T) log-probs of the sampled tokens under the policy being trained
    logp_old: torch.Tensor,  # (B, T) the same under the behaviour policy (no grad)
    advantages: torch.Tensor,  # (B,) one per sequence
    mask: torch.Tensor,  # (B, T) 1 on completion tokens
    cfg: ObjectiveConfig,
    logp_ref: torch.Tensor | None = None,  # (B, T) frozen reference, needed iff beta > 0
    token_weights: torch.Tensor | None = None,  # (B, T) off-policy correction (truncated IS weights), no grad
    tokens_per_rank: float | None = None,  # dapo: completion tokens of the whole batch over all ranks / ranks
) -> LossOutput:
    if cfg.beta > 0 and logp_ref is None:
        raise ValueError("rl.beta > 0 needs reference log-probs (a reference model), but none were given")
    mask = mask.to(logp_new.dtype)
    adv = advantages[:, None]  # (B, 1)
    ratio = torch.exp(logp_new - logp_old)  # (B, T)
    clipped = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)  # (B, T)
    if token_weights is not None:
        per_token = per_token * token_weights.detach()
    kl = torch.zeros_like(per_token)
    if cfg.beta > 0:
        delta = logp_ref - logp_new
        kl = torch.exp(delta) - delta - 1  # k3: unbiased, always >= 0
        per_token = per_token + cfg.beta * kl
    loss = aggregate(per_token, mask, cfg, tokens_per_rank)
    n_tok = mask.sum().clamp(min=1)
    took_clip = ((ratio * adv) > (clipped * adv)).to(mask.dtype) * mask
    return LossOutput(
        loss=loss,
        kl=(kl * mask).sum() / n_tok,
        clip_frac=float(took_clip.sum() / n_tok),
        ratio_mean=float((ratio.detach() * mask).sum() / n_tok),
    )


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, cfg: ObjectiveConfig, tokens_per_rank: float | None = None
) -> torch.Tensor:
    """Token terms (B, T) -> scalar, the way each objective weighs tokens and sequences.

    Data-parallel ranks average their gradients, so every objective must be a mean of equal-weight per-rank
    terms. grpo and dr_grpo are means over sequences, and every rank holds as many: that holds. dapo's mean
    over *tokens* does not (ranks hold different token counts), so each rank divides its token sum by the
    batch's token count over all ranks divided by the number of ranks (``tokens_per_rank``): the average of
    the ranks' losses is then exactly the token mean of the whole batch. Without it: this rank's own count."""
    if cfg.name == "grpo":
        per_seq = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return per_seq.mean()
    if cfg.name == "dr_grpo":
        return ((per_token * mask).sum(dim=1) / cfg.length_norm).mean()
    norm = mask.sum().clamp(min=1) if tokens_per_rank is None else max(tokens_per_rank, 1e-6)
    return (per_token * mask).sum() / norm  # dapo: token-level


def truncated_is_weights(
    logp_learner: torch.Tensor, logp_behaviour: torch.Tensor, mask: torch.Tensor, cap: float
) -> tuple[torch.Tensor, float]:
    """Off-policy correction for rollouts sampled by an older policy (``rl.mode=async``): per-token
    ``min(exp(logp_learner - logp_behaviour), cap)`` on masked tokens (1 elsewhere), and the share of
    masked tokens whose weight was truncated."""
    raw = torch.exp(logp_learner - logp_behaviour)
    weights = torch.where(mask.bool(), raw.clamp(max=cap), torch.ones_like(raw))
    truncated = float(((raw > cap) & mask.bool()).sum() / mask.sum().clamp(min=1))
    return weights, truncated
