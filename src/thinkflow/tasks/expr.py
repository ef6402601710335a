"""Arithmetic expressions over + - * / and (), parsed into exact rationals: never ``eval``.

A small recursive-descent parser shared by the Countdown verifier and the calculator tool.
Everything is bounded so a hostile expression cannot make it do unbounded work: characters,
digits per literal, operator count, nesting depth and the size of every intermediate value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_TOKEN = re.compile(r"\s*(?:(\d+)|([-+*/()]))", re.ASCII)


class ExprError(ValueError):
    """An expression that is malformed or over a limit; the message says which."""


@dataclass(frozen=True)
class ExprLimits:
    max_chars: int = 200
    max_digits: int = 6  # per literal
    max_ops: int = 32  # operators and parentheses together
    max_depth: int = 16  # parenthesis nesting
    max_value_digits: int = 60  # numerator / denominator of every intermediate value
    unary_minus: bool = True


@dataclass
class _State:
    toks: list
    pos: int
    lits: list[int]
    limits: ExprLimits
    depth: int = 0

    def peek(self):
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self):
        self.pos += 1
        return self.toks[self.pos - 1]


def parse_expression(text: str, limits: ExprLimits = ExprLimits()) -> tuple[Fraction, list[int]]:
    """Value and the integer literals (in order) of an arithmetic expression."""
    text = text.strip()
    if len(text) > limits.max_chars:
        raise ExprError(f"expression too long ({len(text)} > {limits.max_chars} characters)")
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExprError(f"unexpected character {text[pos]!r} at {pos}")
        if m.group(1) and len(m.group(1)) > limits.max_digits:
            raise ExprError(f"number {m.group(1)[:12]}... has more than {limits.max_digits} digits")
        tokens.append(int(m.group(1)) if m.group(1) else m.group(2))
        pos = m.end()
    if not tokens:
        raise ExprError("empty expression")
    if sum(isinstance(t, str) for t in tokens) > limits.max_ops:
        raise ExprError(f"more than {limits.max_ops} operators")
    state = _State(tokens, 0, [], limits)
    value = _sum(state)
    if state.peek() is not None:
        raise ExprError(f"unexpected {state.peek()!r} after a complete expression")
    return value, state.lits


def _checked(value: Fraction, limits: ExprLimits) -> Fraction:
    bound = 10**limits.max_value_digits
    if abs(value.numerator) >= bound or value.denominator >= bound:
        raise ExprError(f"a value exceeds {limits.max_value_digits} digits")
    return value


def _sum(s: _State) -> Fraction:
    value = _product(s)
    while s.peek() in ("+", "-"):
        op, rhs = s.take(), _product(s)
        value = _checked(value + rhs if op == "+" else value - rhs, s.limits)
    return value


def _product(s: _State) -> Fraction:
    value = _atom(s)
    while s.peek() in ("*", "/"):
        op, rhs = s.take(), _atom(s)
        if op == "/" and rhs == 0:
            raise ExprError("division by zero")
        value = _checked(value * rhs if op == "*" else value / rhs, s.limits)
    return value


def _atom(s: _State) -> Fraction:
    head = s.peek()
    if head is None:
        raise ExprError("unexpected end of expression")
    s.take()
    if isinstance(head, int):
        s.lits.append(head)
        return Fraction(head)
    if head == "-" and s.limits.unary_minus:
        return -_atom(s)
    if head == "(":
        s.depth += 1
        if s.depth > s.limits.max_depth:
            raise ExprError(f"parentheses nested deeper than {s.limits.max_depth}")
        value = _sum(s)
        if s.peek() != ")":
            raise ExprError("unbalanced parenthesis")
        s.take()
        s.depth -= 1
        return value
    raise ExprError(f"unexpected token {head!r}")


def format_value(value: Fraction) -> str:
    """An integer as digits; a non-integer as an exact fraction ``p/q``."""
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
