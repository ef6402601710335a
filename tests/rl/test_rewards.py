import math

import pytest

from thinkflow.catalog import build_task
from thinkflow.rl.rewards import RewardConfig, score, well_formed


@pytest.fixture
def task_and_problems():
    task = build_task("multiplication", 4)
    return task, task.splits(0, 3, seed=0)[1]


def test_correct_and_format_rewards(task_and_problems):
    task, probs = task_and_problems
    texts = [task.completion(probs[0]), "12 34>999999", "garbage without delimiter"]
    out = score(task, probs, texts, RewardConfig(correct_weight=1.0, format_weight=0.1))
    assert out.correct.tolist() == [True, False, False]
    assert out.well_formed.tolist() == [True, True, False]
    assert out.rewards.tolist() == pytest.approx([1.1, 0.1, 0.0])
    assert out.failures == 0


@pytest.mark.parametrize("text", ["", ">>>", "\x00\xff" * 100, "1>2>3", "9" * 10_000, "é>ü"])
def test_verifier_on_garbage_text_never_raises(task_and_problems, text):
    task, probs = task_and_problems
    out = score(task, probs[:1], [text], RewardConfig(format_weight=0.5))
    assert out.failures == 0 and out.rewards.tolist() == [0.5 * well_formed(task, text)]


def test_a_failing_or_nan_reward_zeroes_that_sample_and_is_counted(task_and_problems):
    task, probs = task_and_problems

    def flaky(problem, text):
        if problem.id == probs[1].id:
            raise RuntimeError("reward server down")
        return math.nan if problem.id == probs[2].id else 0.5

    texts = [task.completion(p) for p in probs]
    out = score(task, probs, texts, RewardConfig(), extra=flaky)
    assert out.rewards.tolist() == [1.5, 0.0, 0.0]
    assert out.failures == 2
    assert "reward server down" in out.failure_messages[0] and "non-finite" in out.failure_messages[1]


def test_length_mismatch_is_an_error(task_and_problems):
    task, probs = task_and_problems
    with pytest.raises(ValueError, match="3 problems but 1 completions"):
        score(task, probs, ["x"], RewardConfig())
