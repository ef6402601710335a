"""Countdown: combine the given numbers with + - * / (each exactly once) to hit a target.

Prompt ``3,5,2,7:10=``; trace ``3*5=15,15+2=17,17-7=10``; answer ``((3*5)+2)-7``.
The verifier parses the answer expression with a small recursive-descent parser over exact
rationals (never ``eval``), checks every given number is used exactly once, and compares the
value with the target.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from fractions import Fraction

from thinkflow.tasks.base import Problem, SyntheticTask, TaskError

_TOKEN = re.compile(r"\s*(?:(\d{1,6})|([-+*/()]))", re.ASCII)
MAX_EXPR_CHARS = 200


class ExprError(ValueError):
    pass


def parse_expression(text: str) -> tuple[Fraction, list[int]]:
    """Value and the integer literals of an arithmetic expression over + - * / and ()."""
    if len(text) > MAX_EXPR_CHARS:
        raise ExprError("expression too long")
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExprError(f"unexpected character at {pos}")
        tokens.append(int(m.group(1)) if m.group(1) else m.group(2))
        pos = m.end()
    literals: list[int] = []
    value, rest = _sum(tokens, literals)
    if rest:
        raise ExprError("trailing tokens")
    return value, literals


def _sum(toks: list, lits: list[int]) -> tuple[Fraction, list]:
    value, toks = _product(toks, lits)
    while toks and toks[0] in ("+", "-"):
        op, (rhs, toks) = toks[0], _product(toks[1:], lits)
        value = value + rhs if op == "+" else value - rhs
    return value, toks


def _product(toks: list, lits: list[int]) -> tuple[Fraction, list]:
    value, toks = _atom(toks, lits)
    while toks and toks[0] in ("*", "/"):
        op, (rhs, toks) = toks[0], _atom(toks[1:], lits)
        if op == "/" and rhs == 0:
            raise ExprError("division by zero")
        value = value * rhs if op == "*" else value / rhs
    return value, toks


def _atom(toks: list, lits: list[int]) -> tuple[Fraction, list]:
    if not toks:
        raise ExprError("unexpected end")
    head = toks[0]
    if isinstance(head, int):
        lits.append(head)
        return Fraction(head), toks[1:]
    if head == "(":
        value, rest = _sum(toks[1:], lits)
        if not rest or rest[0] != ")":
            raise ExprError("unbalanced parenthesis")
        return value, rest[1:]
    raise ExprError(f"unexpected token {head!r}")


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
            value, literals = parse_expression(expr)
        except ExprError:
            return False
        return Counter(literals) == Counter(problem.meta["numbers"]) and value == problem.meta["target"]
