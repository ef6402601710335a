"""Countdown: combine the given numbers with + - * / (each exactly once) to hit a target.

Prompt ``3,5,2,7:10=``; trace ``3*5=15,15+2=17,17-7=10``; answer ``((3*5)+2)-7``.
The verifier parses the answer expression with a small recursive-descent parser over exact
rationals (never ``eval``), checks every given number is used exactly once, and compares the
value with the target.
"""

from __future__ import annotations

import random
from collections import Counter

from thinkflow.tasks.base import Problem, SyntheticTask, TaskError
from thinkflow.tasks.expr import ExprError, ExprLimits, parse_expression

__all__ = ["Countdown", "ExprError", "parse_expression"]

COUNTDOWN_LIMITS = ExprLimits(max_digits=6, unary_minus=False)  # only the four binary operators


class Countdown(SyntheticTask):
    name = "countdown"
    answer_delim = ">"
    max_number = 9

    def __init__(self, difficulty: int = 3) -> None:
        super().__init__(difficulty)
        if not 2 <= self.difficulty <= 6:
            raise TaskError(f"task.difficulty for countdown is the count of numbers, 2..6; got {difficulty}")

    def sample(self, rng: random.Random) -> Problem:
        while True:
            nums = [rng.randint(1, self.max_number) for _ in range(self.difficulty)]
            acc, expr, steps = nums[0], str(nums[0]), []
            for i, n in enumerate(nums[1:], start=2):
                op = rng.choice("+-*/")
                if op == "-" and acc - n < 0 or op == "/" and acc % n:
                    op = "+"
                new = {"+": acc + n, "-": acc - n, "*": acc * n, "/": acc // n}[op]
                steps.append(f"{acc}{op}{n}={new}")
                expr = f"({expr}{op}{n})" if i < len(nums) else f"{expr}{op}{n}"
                acc = new
            shown = nums[:]
            rng.shuffle(shown)
            return Problem(
                id=f"{','.join(map(str, sorted(nums)))}:{acc}",
                prompt=f"{','.join(map(str, shown))}:{acc}=",
                answer=expr,
                trace=",".join(steps),
                meta={"numbers": shown, "target": acc},
            )

    def extract_answer(self, text: str) -> str | None:
        span = self.answer_span(text)
        return span or None

    def verify(self, text: str, problem: Problem) -> bool:
        expr = self.extract_answer(text)
        if expr is None:
            return False
        try:
            value, literals = parse_expression(expr, COUNTDOWN_LIMITS)
        except ExprError:
            return False
        return Counter(literals) == Counter(problem.meta["numbers"]) and value == problem.meta["target"]
