"""Trace selection: wrong, cut-off, duplicate and surplus traces are dropped with their reason; a held-out
problem planted among the examples is dropped and counted; dropping everything names the overlap."""

import pytest

from thinkflow.catalog import build_task
from thinkflow.contamination import ContaminationError
from thinkflow.sft.sources import (
    KEPT,
    Candidate,
    SFTDataError,
    decontaminate,
    gold_candidates,
    require_examples,
    select,
    source_counts,
)


def _cand(pid: str, completion: str, *, source="self", ok=True, finish="stop", question=None) -> Candidate:
    return Candidate(
        problem_id=pid,
        source=source,
        kind="self",
        model="ckpt",
        round=0,
        sample_index=0,
        verdict=ok,
        finish_reason=finish,
        cost_usd=0.0,
        prompt=question or pid,
        completion=completion,
        question=question or pid,
    )


def test_select_keeps_verified_distinct_traces_up_to_the_cap():
    cands = [
        _cand("a", "x>1", ok=False),
        _cand("a", "y>2", finish="length"),
        _cand("a", "z>3"),
        _cand("a", "z>3"),  # the same trace again
        _cand("a", "w>3"),  # a second distinct one: over max_per_problem=1
        _cand("b", "v>4"),
    ]
    select(cands, {"self": 1})
    assert [c.status for c in cands] == ["wrong", "truncated", KEPT, "duplicate", "over_max_per_problem", KEPT]
    assert source_counts(cands)["self"] == {
        "samples": 6,
        "verified": 5,
        "wrong": 1,
        "truncated": 1,
        KEPT: 2,
        "duplicate": 1,
        "over_max_per_problem": 1,
    }


def test_gold_traces_pass_the_task_verifier():
    task = build_task("multiplication", 4, None, {}, {})
    train, _ = task.splits(8, 4, seed=0)
    cands = gold_candidates(task, train, "gold")
    assert len(cands) == 8 and all(c.verdict and c.kind == "gold" for c in cands)
    assert cands[0].completion == task.completion(train[0])


def test_a_planted_held_out_problem_is_dropped_and_counted():
    task = build_task("multiplication", 4, None, {}, {})
    train, test = task.splits(16, 8, seed=0)
    cands = gold_candidates(task, train + [test[3]], "gold")  # a held-out problem among the training traces
    held_out = {task.name: [p.prompt for p in test]}
    report = decontaminate(cands, held_out, n=13, action="drop")
    dropped = [c for c in cands if c.status == "contaminated"]
    assert [c.problem_id for c in dropped] == [test[3].id]
    assert report.contaminated == 1 and "exact match" in report.describe()


def test_decontamination_that_removes_everything_names_the_overlap():
    task = build_task("multiplication", 4, None, {}, {})
    _, test = task.splits(0, 8, seed=0)
    cands = gold_candidates(task, test[:2], "gold")
    with pytest.raises(
        ContaminationError, match=r"dropped all 2 SFT examples .*multiplication problem 0 \(exact match"
    ):
        decontaminate(cands, {task.name: [p.prompt for p in test]}, n=13, action="drop")
    with pytest.raises(ContaminationError, match="2 of 2 SFT examples overlap"):
        decontaminate(cands, {task.name: [p.prompt for p in test]}, n=13, action="fail")


def test_a_source_that_keeps_nothing_fails_with_its_counts():
    cands = [_cand("a", "x>1", ok=False), _cand("b", "y>2", finish="length"), _cand("c", "z", ok=False)]
    select(cands, {"self": 1})
    with pytest.raises(SFTDataError, match=r"'self' \(teacher T\) kept 0 of 3 sampled traces.*2 wrong, 1 truncated"):
        require_examples(cands, {"self": "teacher T"}, round_=0)


def test_duplicates_are_counted_per_source():
    """On a task with deterministic traces every correct self sample equals the gold trace: still a self example."""
    cands = [_cand("a", "z>3", source="gold"), _cand("a", "z>3"), _cand("a", "z>3")]
    select(cands, {"gold": None, "self": 2})
    assert [c.status for c in cands] == [KEPT, KEPT, "duplicate"]
