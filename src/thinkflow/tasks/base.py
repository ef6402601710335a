"""Task interface: problems with chain-of-thought traces, an answer extractor and a verifier.

A completion is ``trace + answer_delim + answer``; everything before the delimiter is the
model's thinking, everything after it (up to the end of the line) is its final answer.
Verifiers parse text; they never evaluate it.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One problem. ``id`` is a stable key used to keep train and test disjoint."""

    id: str
    prompt: str
    answer: str
    trace: str
    meta: dict = field(default_factory=dict, compare=False)


class TaskError(ValueError):
    """Bad task configuration or data."""


class Task(ABC):
    """A reasoning task: generates problems, formats traces, extracts and verifies answers."""

    name: str = ""
    answer_delim: str = ">"

    def completion(self, problem: Problem) -> str:
        """The training target that follows the prompt: thinking, delimiter, answer."""
        return problem.trace + self.answer_delim + problem.answer

    def completion_segments(self, problem: Problem) -> list[tuple[str, bool]]:
        """The training target as (text, written by the model) pieces; environment tasks interleave
        observations the model reads but is not trained to write."""
        return [(self.completion(problem), True)]

    def answer_span(self, text: str) -> str | None:
        """The raw text after the last answer delimiter, up to the end of its line."""
        if not text or self.answer_delim not in text:
            return None
        return text.rsplit(self.answer_delim, 1)[1].split("\n", 1)[0].strip()

    @abstractmethod
    def extract_answer(self, text: str) -> str | None:
        """Canonical answer string from a completion, or None if there is none."""

    def verify(self, text: str, problem: Problem) -> bool:
        """True iff the completion's final answer is correct for ``problem``."""
        got = self.extract_answer(text)
        return got is not None and self.answers_equal(got, problem.answer)

    def answers_equal(self, got: str, want: str) -> bool:
        return got == want

    @abstractmethod
    def splits(self, n_train: int, n_test: int, seed: int) -> tuple[list[Problem], list[Problem]]:
        """Disjoint train and held-out test problems (by ``Problem.id``)."""

    def check(self) -> None:
        """Check the task's data before any compute (``thinkflow.config.preflight``); raise a TaskError naming
        the file, the line and what is wrong."""
        return None  # generated tasks: nothing to read


class SyntheticTask(Task):
    """A task whose problems come from a seeded generator with a difficulty knob."""

    # How many draws per wanted problem before concluding the space is too small.
    max_draws_per_problem = 50

    def __init__(self, difficulty: int) -> None:
        self.difficulty = int(difficulty)

    @abstractmethod
    def sample(self, rng: random.Random) -> Problem:
        """Draw one problem."""

    def splits(self, n_train: int, n_test: int, seed: int) -> tuple[list[Problem], list[Problem]]:
        if n_train < 0 or n_test < 1:
            raise TaskError(f"task sizes must be n_train >= 0 and n_test >= 1, got {n_train}, {n_test}")
        test = self._unique(n_test, _rng(seed, self.name, "test"), exclude=set())
        # Train may come out smaller than asked when the problem space is small (it is cycled).
        train = self._unique(n_train, _rng(seed, self.name, "train"), exclude={p.id for p in test}, strict=False)
        return train, test

    def _unique(self, n: int, rng: random.Random, exclude: set[str], strict: bool = True) -> list[Problem]:
        seen, out = set(exclude), []
        for _ in range(n * self.max_draws_per_problem + 100):
            if len(out) == n:
                return out
            p = self.sample(rng)
            if p.id not in seen:
                seen.add(p.id)
                out.append(p)
        if len(out) == n or (out and not strict):
            return out
        raise TaskError(
            f"task {self.name!r} at difficulty {self.difficulty} has too few distinct problems "
            f"for {n} unique ones (got {len(out)}); raise the difficulty or lower the set sizes"
        )


def _rng(seed: int, *parts: str) -> random.Random:
    """A generator seeded by ``seed`` and a purpose, stable across Python processes."""
    digest = hashlib.sha256(":".join([str(seed), *parts]).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))
