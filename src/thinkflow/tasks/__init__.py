"""Reasoning tasks: generators with difficulty knobs, prompts, traces, extractors, verifiers."""

from __future__ import annotations

from thinkflow.tasks.arithmetic import Addition, Multiplication
from thinkflow.tasks.base import Problem, SyntheticTask, Task, TaskError
from thinkflow.tasks.countdown import Countdown
from thinkflow.tasks.gsm8k import GSM8K
from thinkflow.tasks.math500 import MATH500

ENV_TASKS = ("calc", "code")  # solved through an environment (thinkflow.envs)
TASKS = {
    "addition": Addition,
    "multiplication": Multiplication,
    "countdown": Countdown,
    "gsm8k": GSM8K,
    "math500": MATH500,
    **dict.fromkeys(ENV_TASKS),
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
    return TASKS[name](difficulty)


def _env_task(name: str, difficulty: int, env: dict) -> Task:
    from thinkflow.envs.calculator import ToolArithmetic  # envs build on tasks: imported when asked for
    from thinkflow.envs.code import CodeTask
    from thinkflow.envs.sandbox import SandboxLimits

    # every key read by name from the whole section: a renamed key fails here instead of falling back
    turns = {"max_turns": env["max_turns"]} if env["max_turns"] is not None else {}
    if name == "calc":
        return ToolArithmetic(difficulty, tools=env["tools"], terms=env["terms"], **turns)
    box = env["sandbox"]
    limits = SandboxLimits(cpu_s=box["cpu_s"], wall_s=box["wall_s"], memory_mb=box["memory_mb"], file_mb=box["file_mb"])
    return CodeTask(difficulty, limits=limits, isolation=box["isolation"], **turns)


__all__ = [
    "TASKS",
    "Addition",
    "Countdown",
    "GSM8K",
    "MATH500",
    "Multiplication",
    "Problem",
    "SyntheticTask",
    "Task",
    "TaskError",
    "build_task",
]
