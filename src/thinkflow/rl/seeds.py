"""The seeds of one RL step's rollouts, shared by the learner's in-process sampling and the Ray actors: which
prompts a step draws and the sampling seed of its completions are a function of (run seed, step, rank)."""

from __future__ import annotations

import random


def sampling_seed(seed: int, step: int, rank: int = 0) -> int:
    """The sampling seed of RL step (or actor batch) ``step`` on ``rank``: distinct for every (seed, step, rank)
    with fewer than 64 ranks and 1,000,003 steps."""
    return (seed * 1_000_003 + step) * 64 + rank


def prompt_rng(seed: int, step: int, *parts: int | str) -> random.Random:
    """The generator that draws RL step ``step``'s prompts, seeded ``"seed-step-part-..."``; ``parts`` name the
    rank and the purpose (e.g. ``"refill"``) where those draw their own."""
    return random.Random("-".join(str(x) for x in (seed, step, *parts)))
