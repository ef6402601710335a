"""Column arithmetic with a compact per-digit chain of thought: addition and multiplication.

``0347+0586=`` is answered by working from the least significant digit, writing for each
position the sum digit and the carry (``31 31 90``), then the answer (``>933``). Operands are
zero-padded to the difficulty's width so every trace token sits at a fixed offset from the
digits it depends on: that is what lets a tiny model learn the algorithm in minutes.
"""

from __future__ import annotations

import random
import re

from thinkflow.tasks.base import Problem, SyntheticTask, TaskError

_DIGITS = re.compile(r"[0-9]+", re.ASCII)


class Addition(SyntheticTask):
    name = "addition"
    answer_delim = ">"

    def __init__(self, difficulty: int = 3) -> None:
        super().__init__(difficulty)
        if not 1 <= self.difficulty <= 30:
            raise TaskError(f"task.difficulty for addition is the digit count, 1..30; got {difficulty}")

    def sample(self, rng: random.Random) -> Problem:
        hi = 10**self.difficulty
        a, b = rng.randrange(hi), rng.randrange(hi)
        return self.make(a, b)

    def make(self, a: int, b: int) -> Problem:
        width = self.difficulty
        sa, sb = f"{a:0{width}d}", f"{b:0{width}d}"
        groups, carry = [], 0
        for da, db in zip(reversed(sa), reversed(sb), strict=True):  # least significant digit first
            s = int(da) + int(db) + carry
            carry = s // 10
            groups.append(f"{s % 10}{carry}")
        return Problem(
            id=f"{a}+{b}",
            prompt=f"{sa}+{sb}=",
            answer=str(a + b),
            trace=" ".join(groups),
            meta={"a": a, "b": b},
        )

    def extract_answer(self, text: str) -> str | None:
        span = self.answer_span(text)
        if not span or not _DIGITS.fullmatch(span):
            return None
        return span.lstrip("0") or "0"  # string compare: no int() on huge numbers

    def step_correct(self, text: str, problem: Problem) -> list[bool]:
        """Per-digit correctness of the trace's groups (an exact process checker)."""
        want = problem.trace.split(" ")
        got = text.split(self.answer_delim, 1)[0].split(" ")
        return [i < len(want) and g == want[i] for i, g in enumerate(got) if g]


class Multiplication(Addition):
    """An n-digit number times one digit: ``0347*6=`` -> ``24 82 02>2082``.

    Each trace group is the product digit and the carry (0..8) of ``a_i * b + carry``: a
    table of 900 facts the model learns gradually, so accuracy rises smoothly with training
    and samples disagree where the model is unsure (room for voting and RL).
    """

    name = "multiplication"

    def sample(self, rng: random.Random) -> Problem:
        return self.make(rng.randrange(10**self.difficulty), rng.randrange(10))

    def make(self, a: int, b: int) -> Problem:
        if not 0 <= b <= 9:
            raise TaskError(f"multiplication takes a one-digit multiplier, got {b}")
        sa = f"{a:0{self.difficulty}d}"
        groups, carry = [], 0
        for da in reversed(sa):
            s = int(da) * b + carry
            carry = s // 10
            groups.append(f"{s % 10}{carry}")
        return Problem(
            id=f"{a}*{b}", prompt=f"{sa}*{b}=", answer=str(a * b), trace=" ".join(groups), meta={"a": a, "b": b}
        )
