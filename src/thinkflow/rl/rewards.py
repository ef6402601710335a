"""Verifiable rewards: the task's own verifier, plus an optional format reward.

A reward function that raises, or returns NaN/inf, for one sample gives that sample zero
reward and is counted (``RewardBatch.failures``); the batch goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from thinkflow.tasks import Problem, Task

if TYPE_CHECKING:
    from thinkflow.config import RLConfig


@dataclass(frozen=True)
class RewardConfig:
    correct_weight: float = 1.0
    format_weight: float = 0.0  # reward for a well-formed answer (one delimiter, parseable answer)

    @classmethod
    def from_rl(cls, rl: RLConfig) -> RewardConfig:
        """The ``rl.reward`` section's weights, each by keyword."""
        return cls(correct_weight=rl.reward.correct_weight, format_weight=rl.reward.format_weight)


@dataclass
class RewardBatch:
    rewards: torch.Tensor  # (N,) total reward per sample
    correct: torch.Tensor  # (N,) bool
    well_formed: torch.Tensor  # (N,) bool
    failures: int = 0
    failure_messages: list[str] = field(default_factory=list)


def well_formed(task: Task, text: str) -> bool:
    """Exactly one answer delimiter and an extractable answer after it."""
    return text.count(task.answer_delim) == 1 and task.extract_answer(text) is not None


def score(
    task: Task,
    problems: list[Problem],
    texts: list[str],
    cfg: RewardConfig,
    extra: Callable[[Problem, str], float] | None = None,
    verdicts: list[tuple[bool, float]] | None = None,
) -> RewardBatch:
    """Reward per (problem, completion) pair; ``extra`` is an optional user reward term. ``verdicts``:
    (solved, reward in [0, 1]) per pair where an environment already judged the episode (e.g. the
    share of unit tests passed); otherwise the task's verifier gives 0 or 1."""
    if len(problems) != len(texts):
        raise ValueError(f"{len(problems)} problems but {len(texts)} completions")
    rewards, correct, formed, failures, messages = [], [], [], 0, []
    for i, (problem, text) in enumerate(zip(problems, texts, strict=True)):
        try:
            ok, earned = verdicts[i] if verdicts is not None else (bool(task.verify(text, problem)), None)
            form = well_formed(task, text)
            value = cfg.correct_weight * (ok if earned is None else earned) + cfg.format_weight * form
            if extra is not None:
                value += float(extra(problem, text))
            if not math.isfinite(value):
                raise ValueError(f"non-finite reward {value}")
        except Exception as err:  # a broken reward must not stop the batch
            failures += 1
            messages.append(f"{problem.id}: {type(err).__name__}: {err}")
            ok, form, value = False, False, 0.0
        rewards.append(value)
        correct.append(ok)
        formed.append(form)
    return RewardBatch(torch.tensor(rewards), torch.tensor(correct), torch.tensor(formed), failures, messages)
