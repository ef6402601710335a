"""Scoring generated completions with a task's verifier (shared by every stage)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from thinkflow.envs import sample_verdict, with_env
from thinkflow.inference import SamplingParams
from thinkflow.tasks import Problem, Task


@dataclass
class GreedyResult:
    accuracy: float
    n_problems: int
    n_no_answer: int
    gen_tokens: int
    rows: list[dict]  # one per problem: prompt, completion, answer, correct


def greedy_accuracy(engine, task: Task, problems: list[Problem], max_new_tokens: int) -> GreedyResult:
    """Greedy exact-match accuracy of ``engine`` on ``problems``."""
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    samples = with_env(engine, task, problems).generate([p.prompt for p in problems], params)
    rows, correct, no_answer, tokens = [], 0, 0, 0
    for problem, (sample,) in zip(problems, samples, strict=True):
        ok, _ = sample_verdict(task, problem, sample)
        correct += ok
        no_answer += task.extract_answer(sample.text) is None
        tokens += sample.gen_tokens
        rows.append(
            {
                "id": problem.id,
                "prompt": problem.prompt,
                "completion": sample.text,
                "answer": problem.answer,
                "correct": ok,
            }
        )
    return GreedyResult(correct / len(problems), len(problems), no_answer, tokens, rows)


@dataclass
class SampledResult:
    pass_at_1: float  # mean correctness over every sample (the unbiased pass@1)
    n_problems: int
    n_samples: int  # per problem
    gen_tokens: int
    correct: list[int]  # correct samples per problem


def sampled_pass_at_1(
    engine, task: Task, problems: list[Problem], n: int, temperature: float, max_new_tokens: int, seed: int = 0
) -> SampledResult:
    """pass@1 of temperature sampling: ``n`` samples per problem, mean correctness."""
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    groups = with_env(engine, task, problems).generate([p.prompt for p in problems], params)
    correct = [sum(sample_verdict(task, p, s)[0] for s in g) for p, g in zip(problems, groups, strict=True)]
    tokens = sum(s.gen_tokens for g in groups for s in g)
    return SampledResult(sum(correct) / (n * len(problems)), len(problems), n, tokens, correct)


BREAKDOWN_KEYS = ("level", "subject")  # Problem.meta keys a benchmark's report is broken down by (MATH-500)


def breakdown(table: pd.DataFrame, problems: list[Problem], column: str = "correct") -> pd.DataFrame:
    """Accuracy per level and per subject (problems carrying them in ``meta``): the mean over the group's
    problems of each problem's mean ``column`` (pass@1 for sampled tables, accuracy for greedy ones).
    Columns: group, value, n_problems, accuracy; empty when no problem carries a breakdown key."""
    per_problem = table.groupby("problem_id", sort=False)[column].mean()
    rows = []
    for key in BREAKDOWN_KEYS:
        groups: dict = {}
        for p in problems:
            if key in p.meta and p.id in per_problem.index:
                groups.setdefault(p.meta[key], []).append(p.id)
        for value in sorted(groups, key=str):
            accuracy = float(per_problem.loc[groups[value]].mean())
            rows.append({"group": key, "value": value, "n_problems": len(groups[value]), "accuracy": accuracy})
    return pd.DataFrame(rows, columns=["group", "value", "n_problems", "accuracy"])


def breakdown_metrics(frame: pd.DataFrame, prefix: str, name: str) -> dict[str, float]:
    """``{prefix}/level_3/{name}``, ``{prefix}/subject_number_theory/{name}``: stable, UI-comparable keys."""
    return {f"{prefix}/{r.group}_{slug(str(r.value))}/{name}": r.accuracy for r in frame.itertuples()}


def breakdown_markdown(frame: pd.DataFrame, title: str) -> list[str]:
    if frame.empty:
        return []
    lines = ["", f"| group | value | problems | {title} |", "|---|---|---:|---:|"]
    return lines + [f"| {r.group} | {r.value} | {r.n_problems} | {r.accuracy:.3f} |" for r in frame.itertuples()]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
