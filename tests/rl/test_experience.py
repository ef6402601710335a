"""The experience sources: the in-process one has the Ray one's interface, samples each step's batch from
seeds of (run seed, step, rank), and the seeds are the numbers earlier versions produced."""

from __future__ import annotations

import inspect
import random

from tests.conftest import compose
from thinkflow.catalog import build_task
from thinkflow.config import validate
from thinkflow.models import build_model_and_tokenizer
from thinkflow.rl.actors import AsyncExperience
from thinkflow.rl.experience import Experience, InProcessExperience
from thinkflow.rl.objectives import ObjectiveConfig
from thinkflow.rl.rewards import RewardConfig
from thinkflow.rl.seeds import prompt_rng, sampling_seed
from thinkflow.rl.sync import InProcessPolicy

TINY = dict(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)


def test_seeds_are_the_numbers_runs_have_used():
    # the formulas the learner and the actors wrote out before they shared these functions
    assert sampling_seed(3, 17, 1) == (3 * 1_000_003 + 17) * 64 + 1
    assert sampling_seed(3, 17) == (3 * 1_000_003 + 17) * 64  # an actor's batch: no rank
    assert prompt_rng(3, 17, 1).random() == random.Random("3-17-1").random()
    assert prompt_rng(3, 17, 1, "refill").random() == random.Random("3-17-1-refill").random()
    assert prompt_rng(3, 17).random() == random.Random("3-17").random()


def test_in_process_source_has_the_ray_sources_interface():
    for name in ("next", "publish", "step_metrics", "state", "load_state"):
        mine, ray = getattr(InProcessExperience, name), getattr(AsyncExperience, name)
        assert list(inspect.signature(mine).parameters) == list(inspect.signature(ray).parameters), name
    assert InProcessExperience.off_policy is False and AsyncExperience.off_policy is True


def test_in_process_source_samples_each_step_from_its_seeds():
    rl = validate(compose(["rl.objective=grpo", "rl.prompts_per_step=3", "rl.group_size=2", "rl.max_new_tokens=6"])).rl
    model, tok = build_model_and_tokenizer(TINY, seed=5)
    task = build_task("multiplication", 2)
    problems = task.splits(20, 1, seed=1)[0]
    source = InProcessExperience(
        InProcessPolicy(), tok, task, problems, rl, 7, RewardConfig.from_rl(rl), ObjectiveConfig.from_rl(rl)
    )
    exp = source.next(model, 4)
    assert isinstance(exp, Experience) and exp.compute == {} and exp.sync_s >= 0
    assert [p.id for p in exp.rollouts.problems] == [p.id for p in prompt_rng(7, 4, 0).sample(problems, 3)]
    assert exp.rollouts.batch.input_ids.shape[0] == 3 * 2
    assert model.training  # handed back ready to learn
    assert source.next(model, 4).rollouts.texts == exp.rollouts.texts  # same step, same weights: same batch
    metrics = source.step_metrics(step_s=1e9)
    assert metrics["dist/staleness_mean"] == 0.0 and metrics["dist/bytes_per_step"] == 0.0
    assert 0 < metrics["dist/learner_idle_frac"] < 1e-3
    assert source.step_metrics(step_s=1.0)["dist/learner_idle_frac"] == 0.0  # counted per step
    assert source.state() == {}  # the learner's checkpoint keeps "actors": {} in sync mode
