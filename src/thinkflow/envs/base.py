"""The environment interface: multi-turn episodes where a model acts through its own text.

An episode alternates model turns and environment observations::

    obs = env.reset(problem)                   # the prompt the model sees first
    obs, reward, done, info = env.step(text)   # the model's turn in, the environment's reply out

A model turn ends at end-of-sequence or at one of the environment's ``stop`` strings (e.g. the
``]`` closing a tool call), so the environment can answer before the model goes on. The episode
ends when the environment says ``done`` (a final answer, a program run), at ``max_turns``, or
when the episode's token budget is spent; the reward comes with the last step.

An ``EnvTask`` is a task whose problems are solved through an environment: it makes one per
episode, and its ``completion_segments`` say which parts of a training trace the model writes
(observations are the environment's, masked out of every loss).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import NamedTuple

from thinkflow.tasks.base import Problem, Task, TaskError


class StepResult(NamedTuple):
    observation: str
    reward: float
    done: bool
    info: dict


@dataclass
class EpisodeStats:
    """What an environment counts over one episode (the ``env/*`` metrics)."""

    turns: int = 0
    tool_calls: int = 0
    grounded_calls: int = 0  # answered calls whose every number was in the prompt or an earlier observation
    invalid_actions: int = 0
    sandbox_violations: int = 0
    step_seconds: float = 0.0
    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Environment(ABC):
    """One episode at a time; a fresh environment per episode (``EnvTask.make_env``)."""

    stop: tuple[str, ...] = ()  # strings that end a model turn so the environment can act

    def __init__(self, max_turns: int) -> None:
        if max_turns < 1:
            raise TaskError(f"task.env.max_turns must be >= 1, got {max_turns}")
        self.max_turns = max_turns
        self.stats = EpisodeStats()
        self.problem: Problem | None = None
        self.transcript = ""  # everything after the prompt: model turns and observations

    def completed(self, text: str, stopped: bool) -> str:
        """A turn's text as the model wrote it, for backends that drop the stop string (APIs)."""
        return text

    def reset(self, problem: Problem) -> str:
        self.problem, self.transcript, self.stats = problem, "", EpisodeStats()
        return problem.prompt

    def step(self, action: str) -> StepResult:
        """Take the model's turn; the episode also ends (reward as it stands) at ``max_turns``."""
        if self.problem is None:
            raise RuntimeError("Environment.step before reset")
        self.stats.turns += 1
        self.transcript += action
        result = self.act(action)
        if not result.done and self.stats.turns >= self.max_turns:
            return StepResult("", self.final_reward(), True, result.info | {"end": "max_turns"})
        self.transcript += result.observation
        return result

    @abstractmethod
    def act(self, action: str) -> StepResult:
        """React to one model turn (``self.transcript`` already holds it)."""

    @abstractmethod
    def final_reward(self) -> float:
        """The reward of the episode as it stands (turn limit or token budget reached)."""


class EnvTask(Task):
    """A task solved through an environment."""

    parallel_steps = False  # True: environment steps wait on other processes (run a batch's steps in threads)

    def __init__(self, max_turns: int = 8) -> None:
        if max_turns < 1:
            raise TaskError(f"task.env.max_turns must be >= 1, got {max_turns}")
        self.max_turns = max_turns

    @abstractmethod
    def make_env(self) -> Environment:
        """A fresh environment for one episode."""
