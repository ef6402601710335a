"""MATH-500 as a task (real data, real math-verify worker), GSM8K's strict and lenient answers, and the
training stages' decontamination against held-out problems."""

import json
from collections import Counter

import pytest

from tests.conftest import ROOT, compose
from thinkflow.catalog import build_task
from thinkflow.config import ConfigError, validate
from thinkflow.stages import StageContext, training_problems
from thinkflow.tasks import GSM8K, MATH500, TaskError
from thinkflow.tasks.base import Problem
from thinkflow.tracking import Tracker

MATH500_DIR = ROOT.parent / "shared" / "datasets" / "math500"


@pytest.fixture(scope="module")
def math500() -> MATH500:
    if not (MATH500_DIR / "test.jsonl").exists():
        pytest.skip(f"MATH-500 not found at {MATH500_DIR}")
    task = build_task("math500", source=str(MATH500_DIR))
    yield task
    task.checker.close()


def test_every_reference_solution_verifies_and_a_wrong_one_does_not(math500):
    _, problems = math500.splits(0, 500, seed=0)
    assert len(problems) == 500 and len({p.id for p in problems}) == 500
    assert all(math500.verify(math500.completion(p), p) for p in problems)  # \boxed{} in LaTeX, checked by sympy
    wrong = [p for p in problems if p.answer not in ("0", "-12345")][:20]
    assert not any(math500.verify(" so the answer is $\\boxed{-12345}$.", p) for p in wrong)


def test_draw_is_stratified_by_level_and_seeded(math500):
    _, full = math500.splits(0, 500, seed=0)
    share = Counter(p.meta["level"] for p in full)
    _, fifty = math500.splits(0, 50, seed=0)
    got = Counter(p.meta["level"] for p in fifty)
    assert sum(got.values()) == 50 and all(abs(got[lv] - 50 * n / 500) < 1 for lv, n in share.items())
    assert [p.id for p in math500.splits(0, 50, seed=0)[1]] == [p.id for p in fifty]
    assert [p.id for p in math500.splits(0, 50, seed=1)[1]] != [p.id for p in fifty]
    assert {"level", "subject", "question"} <= set(fifty[0].meta)


def test_minerva_prompt_and_zero_shot(math500):
    train, (problem, *_) = math500.splits(4, 5, seed=0)
    assert len(train) == 4 and problem.prompt.count("Problem:\n") == 5  # four worked examples, then the question
    assert problem.prompt.count("I hope it is correct.") == 4 and problem.prompt.endswith("\n\nSolution:")
    bare = MATH500(source=str(MATH500_DIR), shots=0).splits(0, 5, seed=0)[1][0]
    assert bare.prompt == f"Problem:\n{problem.meta['question']}\n\nSolution:"
    with pytest.raises(TaskError, match="task.shots for math500 is 0..4"):
        MATH500(source=str(MATH500_DIR), shots=5)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("<think>maybe \\boxed{1}</think>so $\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),  # read after thinking
        ("<think>it is \\boxed{7} but let me check", None),  # unfinished thinking: no answer
        (" work \\boxed{3}.\nFinal Answer: ...\n\nProblem:\nNext one \\boxed{9}", "3"),  # an invented next problem
        (
            " Final Answer: The final answer is $\\left( 3, \\frac{\\pi}{2} \\right)$. I hope",
            "\\left( 3, \\frac{\\pi}{2} \\right)",
        ),
        ("no answer at all", None),
    ],
)
def test_answer_extraction_is_thinking_aware(math500, text, answer):
    assert math500.extract_answer(text) == answer


def test_equivalent_forms_are_right(math500):
    p = Problem(id="x", prompt="", answer="\\left( 3, \\frac{\\pi}{2} \\right)", trace="")
    assert math500.verify("$\\boxed{(3,\\pi/2)}$", p)
    assert math500.verify("$\\boxed{0.5}$", Problem(id="y", prompt="", answer="\\frac{1}{2}", trace=""))
    assert not math500.verify("$\\boxed{q - p}$", Problem(id="z", prompt="", answer="p - q", trace=""))


def test_bad_math500_file_names_file_line_and_problem(tmp_path):
    good = json.loads((MATH500_DIR / "test.jsonl").read_text().splitlines()[0])
    (tmp_path / "test.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good | {"level": "hard"}) + "\n")
    with pytest.raises(TaskError, match=r"test.jsonl, line 2: field 'level' must be an integer 1..5"):
        build_task("math500", source=str(tmp_path)).check()


def test_math500_is_evaluation_only(tmp_path):
    with pytest.raises(ConfigError, match=r"task math500 is evaluation-only .* drop them \(~pretrain ~rl\)"):
        validate(compose(["task=math500", f"task.source={MATH500_DIR}"], root=tmp_path))


def test_gsm8k_strict_and_lenient_answers():
    task = GSM8K(source="unused")
    p = Problem(id="g", prompt="", answer="18", trace="")
    for text, strict, lenient in [
        ("so she makes $18.\n#### 18", True, True),
        ("so the answer is \\boxed{18}", False, True),  # a format failure: right number, no ####
        ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars", False, True),  # last number
        ("<think>#### 18</think> I am not sure", False, False),  # the answer is read after thinking only
        ("#### 17", False, False),
    ]:
        assert (task.verify(text, p), task.verify_lenient(text, p)) == (strict, lenient), text


def test_training_stages_drop_held_out_problems_from_their_training_data(tmp_path, gsm8k_dir):
    """A GSM8K copy whose train split contains two test questions: the exact copy is already kept out by the
    split (same problem id), the one reworded in case and spacing by the n-gram check."""
    data = tmp_path / "gsm8k"
    data.mkdir()
    test = (gsm8k_dir / "test.jsonl").read_text().splitlines()[:8]
    leaked = [json.loads(test[0]), json.loads(test[1])]
    leaked[1]["question"] = "  " + leaked[1]["question"].upper().replace(" ", "  ")
    train = (gsm8k_dir / "train.jsonl").read_text().splitlines()[:30] + [json.dumps(r) for r in leaked]
    (data / "train.jsonl").write_text("\n".join(train) + "\n")
    (data / "test.jsonl").write_text("\n".join(test) + "\n")
    cfg = validate(compose(["task=gsm8k", f"task.source={data}", "task.n_test=8"], root=tmp_path))
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "decontamination", tmp_path)
    run_id = tracker.start_run("pretrain", {})
    ctx = StageContext(tracker, run_id, run_id, {})
    kept, held_out = training_problems(cfg, cfg.task.build(), 32, ctx)
    assert len(held_out) == 8 and len(kept) == 30
    assert not {p.meta.get("question", p.prompt) for p in kept} & {p.meta.get("question", p.prompt) for p in held_out}
    metrics = tracker.client.get_run(run_id).data.metrics
    assert metrics["data/contamination/checked"] == 31
    assert metrics["data/contamination/overlapping"] == 1 and metrics["data/contamination/dropped"] == 1
    fail = validate(
        compose(["task=gsm8k", f"task.source={data}", "task.n_test=8", "task.decontaminate.action=fail"], root=tmp_path)
    )
    with pytest.raises(ConfigError, match=r"1 of 31 training problems overlap the evaluation sets"):
        training_problems(fail, fail.task.build(), 32, ctx)


def test_synthetic_splits_stay_clean_under_the_check(tmp_path):
    cfg = validate(compose([], root=tmp_path))
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "decontamination", tmp_path)
    run_id = tracker.start_run("pretrain", {})
    train, _ = training_problems(cfg, cfg.task.build(), 2000, StageContext(tracker, run_id, run_id, {}))
    assert len(train) == 2000
    assert tracker.client.get_run(run_id).data.metrics["data/contamination/overlapping"] == 0
