"""Arithmetic as a pretrained base model reads it: a few worked examples, then the question.

    Q: 47+38=
    A: 85

    Q: 12+60=
    A:

The answer is the first line of the completion (a base model goes on writing more Q/A pairs; nothing after
the first line counts). Made for open models such as Gemma 3 270M, which know this format and not
thinkflow's per-digit traces: measured here, 4-shot 2-digit addition is solved now and then (pass@k > 0),
which leaves RL something to learn.
"""

from __future__ import annotations

import random
import re

from thinkflow.tasks.base import Problem, SyntheticTask, TaskError

_NUMBER = re.compile(r"-?[0-9]+")


class FewShotAddition(SyntheticTask):
    name = "addition_qa"
    answer_delim = "A:"  # the prompt ends with it; the model writes the answer after it

    def __init__(self, difficulty: int = 2, shots: int = 4) -> None:
        super().__init__(difficulty)
        if not 1 <= self.difficulty <= 12:
            raise TaskError(f"task.difficulty for addition_qa is the digit count, 1..12; got {difficulty}")
        if not 0 <= shots <= 8:
            raise TaskError(f"task.shots for addition_qa is 0..8, got {shots}")
        rng = random.Random(f"addition_qa-shots-{self.difficulty}")  # the same examples for every problem
        self.examples = [self._pair(rng) for _ in range(shots)]
        self.header = "".join(f"Q: {a}+{b}=\nA: {a + b}\n\n" for a, b in self.examples)

    def _pair(self, rng: random.Random) -> tuple[int, int]:
        lo, hi = 10 ** (self.difficulty - 1) if self.difficulty > 1 else 0, 10**self.difficulty
        return rng.randrange(lo, hi), rng.randrange(lo, hi)

    def sample(self, rng: random.Random) -> Problem:
        a, b = self._pair(rng)
        if (a, b) in self.examples:  # a worked example is never a problem
            a, b = b + 1 if b + 1 < 10**self.difficulty else b - 1, a
        return Problem(
            id=f"{a}+{b}",
            prompt=f"{self.header}Q: {a}+{b}=\nA:",
            answer=str(a + b),
            trace="",
            meta={"a": a, "b": b, "question": f"{a}+{b}="},  # decontamination compares questions, not the shared shots
        )

    def completion(self, problem: Problem) -> str:
        return f" {problem.answer}\n"

    def answer_span(self, text: str) -> str | None:
        return text.strip().split("\n", 1)[0].strip() if text and text.strip() else None

    def extract_answer(self, text: str) -> str | None:
        span = self.answer_span(text)
        return str(int(span)) if span is not None and _NUMBER.fullmatch(span) else None
