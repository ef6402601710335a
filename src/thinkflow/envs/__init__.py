"""Agentic environments: multi-turn episodes where the model calls tools or runs code.

- ``base``: the ``Environment`` interface (``reset`` / ``step``) and ``EnvTask``;
- ``calculator``: the ``calc`` task, arithmetic with a calculator tool;
- ``code``: the ``code`` task, programs scored by unit tests in ``sandbox``;
- ``episodes``: ``with_env(engine, task, problems)``, an engine whose samples are episodes.
"""

from thinkflow.envs.base import Environment, EnvTask, StepResult
from thinkflow.envs.episodes import EnvEngine, env_metrics, sample_verdict, transcripts_markdown, with_env

__all__ = [
    "EnvEngine",
    "EnvTask",
    "Environment",
    "StepResult",
    "env_metrics",
    "sample_verdict",
    "transcripts_markdown",
    "with_env",
]
