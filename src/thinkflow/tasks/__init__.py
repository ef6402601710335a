"""Reasoning tasks: generators with difficulty knobs, prompts, traces, extractors, verifiers.

Building a task by name (these and the environment tasks of ``thinkflow.envs``) is
``thinkflow.catalog.build_task``."""

from __future__ import annotations

from thinkflow.tasks.arithmetic import Addition, Multiplication
from thinkflow.tasks.base import Problem, SyntheticTask, Task, TaskError
from thinkflow.tasks.countdown import Countdown
from thinkflow.tasks.fewshot import FewShotAddition
from thinkflow.tasks.gsm8k import GSM8K
from thinkflow.tasks.math500 import MATH500

__all__ = [
    "GSM8K",
    "MATH500",
    "Addition",
    "Countdown",
    "FewShotAddition",
    "Multiplication",
    "Problem",
    "SyntheticTask",
    "Task",
    "TaskError",
]
