"""Tool use: multi-digit arithmetic with a calculator the model calls from its own text.

Protocol (one character per token for the char-level models, readable for any model)::

    347*586+12*45=[347*586]{203342}[12*45]{540}[203342+540]{203882}>203882

``[expr]`` is a tool call: the model's turn stops at ``]``, the environment evaluates ``expr``
and answers ``{value}`` (or ``{error: reason}`` for a malformed call, counted as invalid); the
model goes on and ends with ``>answer``. The calculator parses the expression into a tree over
exact rationals (``tasks.expr``: no ``eval``; bounded characters, digits, operators and value
size). The task generator writes traces that call the tool once per operation, the way a
person with a pocket calculator would, so pretraining teaches the protocol. With
``task.env.tools=false`` the same problems are answered directly (``347*586=>203342``) and any
call is answered with an error: the same-size model without the tool.
"""

from __future__ import annotations

import random
import re

from thinkflow.envs.base import Environment, EnvTask, StepResult
from thinkflow.tasks.base import Problem, SyntheticTask, TaskError
from thinkflow.tasks.expr import ExprError, ExprLimits, format_value, parse_expression

CALL = re.compile(r"\[([^\[\]]*)\]\s*$")  # a tool call closing the turn
CALC_LIMITS = ExprLimits(max_chars=80, max_digits=12, max_ops=16, max_depth=4, max_value_digits=40)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def calculate(expr: str, limits: ExprLimits = CALC_LIMITS) -> str:
    """The calculator: ``expr`` evaluated exactly, or ExprError naming what is wrong."""
    value, _ = parse_expression(expr, limits)
    return format_value(value)


class CalculatorEnv(Environment):
    stop = ("]",)

    def __init__(self, task: ToolArithmetic, tools: bool, max_turns: int) -> None:
        super().__init__(max_turns)
        self.task, self.tools = task, tools

    def completed(self, text: str, stopped: bool) -> str:
        return text + "]" if stopped and text.rfind("[") > text.rfind("]") else text

    def act(self, action: str) -> StepResult:
        call = CALL.search(action)
        if call is None and "]" not in action:  # no call: the model has answered (or broke off a call)
            if action.rfind("[") > action.rfind(self.task.answer_delim):
                self.stats.invalid_actions += 1  # "[..." never closed: a malformed call
                self.stats.errors.append("a [ without its ]")
            return StepResult("", self.final_reward(), True, {"end": "answer"})
        try:
            if call is None:
                raise ExprError("a ] without its [")
            if not self.tools:
                raise ExprError("no calculator here")
            value, literals = parse_expression(call.group(1), CALC_LIMITS)
            self.stats.tool_calls += 1  # answered calls; malformed ones count as invalid actions
            seen = self.problem.prompt + self.transcript[: -len(action)]
            self.stats.grounded_calls += set(literals) <= {int(n) for n in _DIGITS.findall(seen)}
            return StepResult("{" + format_value(value) + "}", 0.0, False, {"call": call.group(1)})
        except ExprError as err:
            self.stats.invalid_actions += 1
            self.stats.errors.append(str(err))
            return StepResult("{error: " + str(err)[:40] + "}", 0.0, False, {"error": str(err)})

    def final_reward(self) -> float:
        return float(self.task.verify(self.transcript, self.problem))


class ToolArithmetic(SyntheticTask, EnvTask):
    """Sums of products of ``difficulty``-digit numbers (``terms`` products), solved with a calculator."""

    name = "calc"
    answer_delim = ">"
    chat_instruction = (
        "You have a calculator. To use it, write an arithmetic expression in square brackets, e.g. [12*34], "
        "and stop; its result comes back in braces, e.g. {408}. Call it as often as you need, then write the "
        "final answer as '> <number>' and nothing after it."
    )

    def __init__(self, difficulty: int = 3, tools: bool = True, terms: int = 1, max_turns: int = 8) -> None:
        SyntheticTask.__init__(self, difficulty)
        EnvTask.__init__(self, max_turns)
        if not 1 <= self.difficulty <= 9:
            raise TaskError(f"task.difficulty for calc is the digits per number, 1..9; got {difficulty}")
        if not 1 <= terms <= 4:
            raise TaskError(f"task.env.terms for calc is the count of products, 1..4; got {terms}")
        self.tools, self.terms = tools, terms

    def make_env(self) -> CalculatorEnv:
        return CalculatorEnv(self, self.tools, self.max_turns)

    def sample(self, rng: random.Random) -> Problem:
        lo, hi = 10 ** (self.difficulty - 1), 10**self.difficulty
        return self.problem([(rng.randrange(lo, hi), rng.randrange(lo, hi)) for _ in range(self.terms)])

    def problem(self, pairs: list[tuple[int, int]]) -> Problem:
        prompt = "+".join(f"{a}*{b}" for a, b in pairs) + "="
        return Problem(
            id=prompt, prompt=prompt, answer=str(sum(a * b for a, b in pairs)), trace="", meta={"pairs": pairs}
        )

    def make(self, prompt: str) -> Problem:
        """The problem a prompt such as ``12*34+56*78=`` states."""
        if not re.fullmatch(r"\d+\*\d+(\+\d+\*\d+)*=", prompt):
            raise TaskError(f"calc: not a prompt of this task: {prompt!r}")
        return self.problem([tuple(map(int, term.split("*"))) for term in prompt[:-1].split("+")])

    def completion_segments(self, problem: Problem) -> list[tuple[str, bool]]:
        if not self.tools:
            return [(self.answer_delim + problem.answer, True)]
        segments, total = [], None
        for a, b in problem.meta["pairs"]:
            segments += [(f"[{a}*{b}]", True), ("{" + str(a * b) + "}", False)]
            if total is not None:
                segments += [(f"[{total}+{a * b}]", True), ("{" + str(total + a * b) + "}", False)]
            total = a * b if total is None else total + a * b
        return [*segments, (self.answer_delim + problem.answer, True)]

    def completion(self, problem: Problem) -> str:
        return "".join(text for text, _ in self.completion_segments(problem))

    def extract_answer(self, text: str) -> str | None:
        span = self.answer_span(text)
        if not span or not _DIGITS.fullmatch(span):
            return None
        return span.lstrip("0") or "0"


def replay(task: ToolArithmetic, problem: Problem, transcript: str) -> CalculatorEnv:
    """The environment after re-running a stored transcript's actions (its counts, for analysis)."""
    env = task.make_env()
    env.reset(problem)
    pieces = re.split(r"(?<=\])(\{[^{}]*\})", transcript)  # action, observation, action, ...
    for action in pieces[::2]:
        if action and env.step(action).done:
            break
    return env
