"""What thinkflow says while it runs goes through ``logging``, under ``thinkflow.<stage or part>``:

    log = logs.get("rl")                 # logger "thinkflow.rl"
    log.info("step %d: ...", step)       # printed as "rl: step 4: ..."

``setup`` (run when the package is imported) gives the ``thinkflow`` logger one handler: INFO and up to the
process's current stdout as ``<name>: <message>`` (warnings as ``<name>: WARNING: ...``), the same lines
whether the pipeline runs under Hydra, in a rank process or in a script. It does not propagate to the root
logger (Hydra's and Prefect's console handlers would print each line again); the flow entry point adds
Prefect's API handler to it (``PREFECT_LOGGING_EXTRA_LOGGERS``), so the lines also appear on the flow run in
the Prefect UI. Set the ``thinkflow`` logger's level (or ``THINKFLOW_LOG_LEVEL``) to see less or more.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "thinkflow"


def get(name: str) -> logging.Logger:
    """The logger of a stage or part of thinkflow (``thinkflow.<name>``)."""
    return logging.getLogger(f"{ROOT}.{name}")


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        name = record.name.removeprefix(ROOT).lstrip(".")
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        text = f"{name}: {level}{record.getMessage()}" if name else f"{level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _Stdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (pytest's capture, a redirected stream)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def setup() -> None:
    """Install the handler (idempotent)."""
    log = logging.getLogger(ROOT)
    if any(isinstance(h, _Stdout) for h in log.handlers):
        return
    handler = _Stdout()
    handler.setFormatter(_Format())
    log.addHandler(handler)
    log.setLevel(os.environ.get("THINKFLOW_LOG_LEVEL", "INFO").upper())
    log.propagate = False
