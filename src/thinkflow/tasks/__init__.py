"""Reasoning tasks: generators with difficulty knobs, prompts, traces, extractors, verifiers."""

from __future__ import annotations

from thinkflow.tasks.arithmetic import Addition, Multiplication
from thinkflow.tasks.base import Problem, SyntheticTask, Task, TaskError
from thinkflow.tasks.countdown import Countdown
from thinkflow.tasks.gsm8k import GSM8K

TASKS = {"addition": Addition, "multiplication": Multiplication, "countdown": Countdown, "gsm8k": GSM8K}


def build_task(name: str, difficulty: int = 3, source: str | None = None) -> Task:
    """Task by name; synthetic tasks take ``difficulty``, GSM8K takes ``source``."""
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    if name == "gsm8k":
        return GSM8K(source=source or "openai/gsm8k")
    return TASKS[name](difficulty)


__all__ = [
    "TASKS",
    "Addition",
    "Countdown",
    "GSM8K",
    "Multiplication",
    "Problem",
    "SyntheticTask",
    "Task",
    "TaskError",
    "build_task",
]
