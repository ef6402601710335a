"""Code: small programming problems whose reward is the share of unit tests a sandbox sees pass.

Two kinds of problem, both about a function ``f`` of one integer:

- write: ``# f(0)=2 f(1)=5 f(2)=8\\n`` -> ``def f(x): return x*3+2``
- fix a planted bug: ``def f(x): return x*3-2\\n# fix: f(0)=2 f(1)=5\\n`` -> ``def f(x): return x*3+2``

The examples in the prompt are not the tests: hidden tests check ``f`` on other inputs. The model's
program runs in ``envs.sandbox`` (its own process, CPU / wall / memory / file / process limits, and
with ``task.env.sandbox.isolation: os`` its own namespaces and root, no capabilities, seccomp); reward
= tests passed / tests. A program that
trips a limit gets reward 0 and the violation is counted. With ``task.env.max_turns > 1`` a
failing program is answered with the first failing test and the model may try again; the last
program counts. API models get the same problems in words (``chat_instruction``) and may answer
in a fenced code block.
"""

from __future__ import annotations

import random
import re

from thinkflow import logs
from thinkflow.envs.base import Environment, EnvTask, StepResult
from thinkflow.envs.sandbox import SandboxLimits, SandboxResult, SandboxUnavailable, require, run_tests
from thinkflow.tasks.base import Problem, SyntheticTask, TaskError

FEEDBACK = "\n# failed: "
_FEEDBACK_LINE = re.compile(r"\n# failed: [^\n]*\n")
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)
_OPS = {"+": lambda x, b: x + b, "-": lambda x, b: x - b}
TEST_INPUTS = (3, 4, 7, 10, -2)


def program_of(text: str) -> str | None:
    """The last program in a transcript: after the last feedback, inside a fence if there is one."""
    last = _FEEDBACK_LINE.split(text)[-1]
    fenced = _FENCE.findall(last)
    code = (fenced[-1] if fenced else last).strip()
    return code if "def f(" in code else None


class CodeEnv(Environment):
    def __init__(self, task: CodeTask, max_turns: int) -> None:
        super().__init__(max_turns)
        self.task = task
        self.last: SandboxResult | None = None

    def act(self, action: str) -> StepResult:
        code = program_of(action)
        if code is None:
            self.stats.invalid_actions += 1
            return self._reply(None, "no function f in the answer")
        self.last = run_tests(code, self.problem.meta["tests"], self.task.limits, self.task.isolation)
        if self.last.violation:
            self.stats.sandbox_violations += 1
            self.stats.violations.append(self.last.violation)
        if self.last.reward == 1.0:
            return StepResult("", 1.0, True, {"passed": self.last.passed, "total": self.last.total})
        why = self.last.violation or (self.last.failures[0] if self.last.failures else self.last.detail)
        return self._reply(self.last, why)

    def _reply(self, result: SandboxResult | None, why: str) -> StepResult:
        reward = result.reward if result else 0.0
        info = {"violation": result.violation if result else None, "detail": why}
        if self.stats.turns >= self.max_turns:
            return StepResult("", reward, True, info)
        return StepResult(FEEDBACK + " ".join(why.split())[:80] + "\n", reward, False, info)

    def final_reward(self) -> float:
        return self.last.reward if self.last else 0.0


class CodeTask(SyntheticTask, EnvTask):
    """Write or fix ``f(x) = x*a+b``-style functions; ``difficulty`` bounds the constants."""

    name = "code"
    parallel_steps = True  # each step waits on a sandbox process
    answer_delim = "def f("  # the program starts here (no answer delimiter of its own)
    chat_instruction = (
        "Write a Python function f(x) of one integer that does what the comment asks and passes hidden "
        "tests beyond the examples shown. Reply with only the code of f, in a ```python block."
    )

    def __init__(
        self, difficulty: int = 3, max_turns: int = 1, limits: SandboxLimits | None = None, isolation: str = "os"
    ) -> None:
        SyntheticTask.__init__(self, difficulty)
        EnvTask.__init__(self, max_turns)
        if not 1 <= self.difficulty <= 9:
            raise TaskError(f"task.difficulty for code bounds the constants, 1..9; got {difficulty}")
        self.limits = limits or SandboxLimits()
        self.isolation = isolation

    def check(self) -> None:
        """Before any compute: the sandbox this task asks for can be had here (``task.env.sandbox.isolation``)."""
        try:
            require(self.isolation)
        except SandboxUnavailable as err:
            raise TaskError(str(err)) from None
        if self.isolation != "os":
            logs.get("code").warning(
                "sandbox: isolation=hook (task.env.sandbox.isolation): resource limits and an in-process audit "
                "hook only, which a hostile program can disable; logged on the run as that param"
            )

    def make_env(self) -> CodeEnv:
        return CodeEnv(self, self.max_turns)

    def sample(self, rng: random.Random) -> Problem:
        a, b, op = rng.randint(1, self.difficulty), rng.randint(0, self.difficulty), rng.choice("+-")
        body = f"return x*{a}{op}{b}"
        f = lambda x: _OPS[op](x * a, b)  # noqa: E731
        tests = [f"f({x}) == {f(x)}" for x in TEST_INPUTS]
        examples = " ".join(f"f({x})={f(x)}" for x in (0, 1, 2))
        if rng.random() < 0.5:
            prompt = f"# {examples}\n"
        else:
            bug = rng.choice([f"return x*{a}{'-' if op == '+' else '+'}{b}", f"return x*{a + 1}{op}{b}"])
            prompt = f"def f(x): {bug}\n# fix: {examples}\n"
        return Problem(id=prompt, prompt=prompt, answer=f"def f(x): {body}", trace="", meta={"tests": tests})

    def completion(self, problem: Problem) -> str:
        return problem.answer

    def extract_answer(self, text: str) -> str | None:
        code = program_of(text)
        return " ".join(code.split()) if code else None  # whitespace-normalised, for voting

    def verify(self, text: str, problem: Problem) -> bool:
        code = program_of(text)
        return code is not None and run_tests(code, problem.meta["tests"], self.limits, self.isolation).reward == 1.0
