"""Every task by name: the plain reasoning tasks (``thinkflow.tasks``) and the environment tasks
(``thinkflow.envs``: ``calc``, ``code``). It sits above both packages, so neither imports the other's
way back: environments build on tasks, and this module builds either from a config."""

from __future__ import annotations

from thinkflow.envs.calculator import ToolArithmetic
from thinkflow.envs.code import CodeTask
from thinkflow.envs.sandbox import SandboxLimits
from thinkflow.tasks import GSM8K, MATH500, Addition, Countdown, FewShotAddition, Multiplication, Task, TaskError

ENV_TASKS = ("calc", "code")  # solved through an environment (thinkflow.envs)
TASKS: dict[str, type[Task]] = {
    "addition": Addition,
    "addition_qa": FewShotAddition,
    "multiplication": Multiplication,
    "countdown": Countdown,
    "gsm8k": GSM8K,
    "math500": MATH500,
    "calc": ToolArithmetic,
    "code": CodeTask,
}


def build_task(
    name: str,
    difficulty: int = 3,
    source: str | None = None,
    env: dict | None = None,
    options: dict | None = None,
) -> Task:
    """Task by name; synthetic tasks take ``difficulty``, GSM8K and MATH-500 take ``source`` and ``options``
    (thinking delimiters; MATH-500 also shots and the check timeout), environment tasks ``env`` (the whole
    ``task.env`` section: tools, terms, max_turns, sandbox limits)."""
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    if name == "gsm8k":
        thinking = (options or {}).get("thinking", ("<think>", "</think>"))
        return GSM8K(source=source or "openai/gsm8k", thinking=thinking)
    if name == "math500":
        return MATH500(source=source or "HuggingFaceH4/MATH-500", **(options or {}))
    if name in ENV_TASKS:
        return _env_task(name, difficulty, env or {})
    if name == "addition_qa":
        return FewShotAddition(difficulty, shots=(options or {}).get("shots", 4))
    return TASKS[name](difficulty)


def _env_task(name: str, difficulty: int, env: dict) -> Task:
    # every key read by name from the whole section: a renamed key fails here instead of falling back
    turns = {"max_turns": env["max_turns"]} if env["max_turns"] is not None else {}
    if name == "calc":
        return ToolArithmetic(difficulty, tools=env["tools"], terms=env["terms"], **turns)
    box = env["sandbox"]
    limits = SandboxLimits(cpu_s=box["cpu_s"], wall_s=box["wall_s"], memory_mb=box["memory_mb"], file_mb=box["file_mb"])
    return CodeTask(difficulty, limits=limits, isolation=box["isolation"], **turns)
