"""Where the learner's experience comes from: one interface, two sources.

- ``InProcessExperience`` (``rl.mode=sync``): each RL step samples its batch now, in the learner's process,
  from the learner's current weights (through the policy's rollout engine), then learns from it.
- ``rl.actors.AsyncExperience`` (``rl.mode=async``): Ray actors generate with a slightly stale policy.

What the learner (``rl.learner.GRPOModule``) calls on either:

- ``next(model, step) -> Experience``: this rank's batch for RL step ``step``;
- ``publish(model)``: the weights after an update (a new policy version);
- ``step_metrics(step_s) -> dict``: the ``dist/...`` metrics of the step just done (``step_s`` seconds long);
- ``state() -> dict`` / ``load_state(state)``: its part of the learner's checkpoint;
- ``off_policy``: True when a batch may come from an older policy than the learner's (the learner then
  corrects with truncated importance weights).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from thinkflow.distributed import full_parameters, global_rank
from thinkflow.inference import SamplingParams
from thinkflow.profile.ledger import phase
from thinkflow.rl.rollout import Rollouts, collect
from thinkflow.rl.seeds import prompt_rng, sampling_seed


@dataclass
class Experience:
    """One batch of experience for the learner."""

    rollouts: Rollouts
    sync_s: float = 0.0  # seconds the learner spent bringing its weights to the sampler for this batch
    compute: dict = field(default_factory=dict)  # generation compute done elsewhere, to book in this stage's ledger


class InProcessExperience:
    """Synchronous: the learner waits while its current policy samples the batch; nothing is stale or moved."""

    off_policy = False

    def __init__(self, policy, tokenizer, task, problems: list, rl, seed: int, reward_cfg, objective) -> None:
        self.policy, self.tokenizer, self.task, self.problems = policy, tokenizer, task, problems
        self.rl, self.seed, self.reward_cfg, self.objective = rl, seed, reward_cfg, objective
        self._busy_s = 0.0  # time spent in next() since the last step_metrics

    def next(self, model, step: int) -> Experience:
        t0 = time.perf_counter()
        rank, rl = global_rank(), self.rl  # read now: the rank is known once the trainer has set up
        rng, refill = prompt_rng(self.seed, step, rank), prompt_rng(self.seed, step, rank, "refill")
        prompts = rng.sample(self.problems, min(rl.prompts_per_step, len(self.problems)))
        sampling = SamplingParams(
            temperature=rl.temperature,
            top_p=rl.top_p,
            max_new_tokens=rl.max_new_tokens,
            seed=sampling_seed(self.seed, step, rank),
        )
        with full_parameters(model), phase("rollout"):
            engine, sync_s = self.policy.engine(model, self.tokenizer)
            rollouts = collect(
                engine,
                self.task,
                prompts,
                rl.group_size,
                sampling,
                self.reward_cfg,
                self.objective,
                more_problems=lambda n: refill.sample(self.problems, min(n, len(self.problems))),
                max_refill=rl.max_refill,
            )
        model.train()
        self._busy_s += time.perf_counter() - t0
        return Experience(rollouts, sync_s)

    def publish(self, model) -> None:
        """Nothing to send: the next batch is sampled from the live weights."""

    def step_metrics(self, step_s: float) -> dict[str, float]:
        busy, self._busy_s = self._busy_s, 0.0
        return {
            "dist/learner_idle_frac": busy / max(step_s, 1e-9),
            "dist/staleness_mean": 0.0,
            "dist/bytes_per_step": 0.0,
        }

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        """Nothing to restore: the step's seeds come from the learner's restored step."""
