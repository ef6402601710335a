"""addition_qa: few-shot Q/A addition for pretrained base models; the answer is the completion's first line."""

import pytest

from thinkflow.catalog import build_task
from thinkflow.contamination import check_training_problems
from thinkflow.tasks import TaskError


def test_prompt_shots_and_answer_extraction():
    task = build_task("addition_qa", 2, options={"shots": 2})
    train, test = task.splits(50, 20, seed=0)
    p = test[0]
    a, b = p.meta["a"], p.meta["b"]
    assert p.prompt == task.header + f"Q: {a}+{b}=\nA:" and p.prompt.count("Q: ") == 3
    assert all(10 <= x < 100 for q in train + test for x in (q.meta["a"], q.meta["b"]))
    assert not {(q.meta["a"], q.meta["b"]) for q in train + test} & set(task.examples)  # shots are never problems
    assert task.verify(f" {a + b}\n\nQ: 1+1=\nA: 7", p)  # only the first line counts
    assert not task.verify(f" {a + b + 1}\n\nQ: 1+1=\nA: {a + b}", p)
    assert task.extract_answer(" eighty") is None and task.extract_answer("") is None
    assert task.completion(p) == f" {a + b}\n"  # what sft's gold source trains on


def test_decontamination_compares_questions_not_the_shared_shots():
    task = build_task("addition_qa", 2, options={"shots": 4})
    train, test = task.splits(200, 50, seed=0)
    report = check_training_problems(
        [q.meta["question"] for q in train], {"addition_qa": [q.meta["question"] for q in test]}, 13, "drop"
    )
    assert report.contaminated == 0  # disjoint questions, though every prompt starts with the same examples


def test_bad_settings_name_the_key():
    with pytest.raises(TaskError, match="task.shots for addition_qa is 0..8"):
        build_task("addition_qa", 2, options={"shots": 9})
    with pytest.raises(TaskError, match="task.difficulty for addition_qa"):
        build_task("addition_qa", 13)
