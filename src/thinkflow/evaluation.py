"""Scoring generated completions with a task's verifier (shared by every stage)."""

from __future__ import annotations

from dataclasses import dataclass

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
    samples = engine.generate([p.prompt for p in problems], params)
    rows, correct, no_answer, tokens = [], 0, 0, 0
    for problem, (sample,) in zip(problems, samples, strict=True):
        ok = task.verify(sample.text, problem)
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
