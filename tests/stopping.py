"""Helpers for the tests that stop a pipeline with a signal (tests/flows/test_stop.py, tests/flows/test_multinode.py,
tests/rl/test_async_actors.py): the pipeline as a command, waiting for a stage to train, its MLflow runs, and what
it left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from mlflow import MlflowClient

from tests.conftest import ROOT


def pipeline_command(tmp_path: Path, *overrides: str) -> tuple[list[str], dict]:
    """``python flows/pipeline.py`` on the tiny experiment under ``tmp_path``, with its own PREFECT_HOME (the marker
    ``leftovers`` looks for)."""
    cmd = [
        sys.executable,
        str(ROOT / "flows" / "pipeline.py"),
        "experiment=tiny",
        f"paths.root={tmp_path}",
        "trainer.progress_bar=false",
        *overrides,
    ]
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
    return cmd, env


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """The pipeline in the background, its output in ``log`` (a file, not a pipe: processes it leaves behind
    would hold a pipe open)."""
    with open(log, "w") as out:  # the child keeps its own copy of the file descriptor
        return subprocess.Popen(cmd, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT)


def runs(tmp_path: Path) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("thinkflow")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]) if experiment else []


def statuses(tmp_path: Path) -> dict[str, str]:
    """Each run's status by stage (``pipeline`` for the parent run)."""
    return {r.data.tags.get("stage", "pipeline"): r.info.status for r in runs(tmp_path)}


def leftovers(tmp_path: Path, tree: list = (), ignore: set[int] = frozenset()) -> list[str]:
    """Processes of this pipeline still alive: those of ``tree`` (its process tree as ``signal_once_logged`` found
    it: Ray's agents, for one, overwrite their command line and environment), anything with the test's PREFECT_HOME
    in its environment (the temporary Prefect server, local ranks) or its work dir on its command line (ranks
    started over ssh, which are sshd's children), except the pids in ``ignore``."""
    home, left = str(tmp_path / "prefect"), {}
    for p in [*tree, *psutil.process_iter()]:
        try:
            if p.pid in ignore or p.pid in left or not p.is_running() or p.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = p.cmdline()
            if p in tree or p.environ().get("PREFECT_HOME") == home or any(str(tmp_path) in a for a in cmdline):
                left[p.pid] = f"{p.pid} ({p.name()}): {' '.join(cmdline)[:200]}"
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return list(left.values())


def no_leftovers(tmp_path: Path, tree: list = (), ignore: set[int] = frozenset(), within: float = 5.0) -> list[str]:
    """``leftovers`` once they are gone, or after ``within`` seconds (a process being killed takes a moment)."""
    deadline = time.time() + within
    while (left := leftovers(tmp_path, tree, ignore)) and time.time() < deadline:
        time.sleep(0.2)
    return left


def signal_when(
    proc: subprocess.Popen, log: Path, ready, what: str, sig: int = signal.SIGTERM, timeout: float = 300
) -> list[psutil.Process]:
    """Send ``sig`` to the pipeline once ``ready()``; returns the pipeline's process tree as it was just before
    (for ``leftovers``; ``.info`` holds each one's name and cmdline)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the pipeline ended before it was stopped:\n{log.read_text()[-3000:]}"
        if ready():
            tree = psutil.Process(proc.pid).children(recursive=True)
            for child in tree:  # what each was, as psutil.process_iter(attrs) records it
                child.info = child.as_dict(["name", "cmdline"])
            proc.send_signal(sig)
            return tree
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def signal_once_logged(
    tmp_path: Path,
    proc: subprocess.Popen,
    log: Path,
    stage: str,
    metric: str,
    sig: int = signal.SIGTERM,
    timeout: float = 300,
) -> list[psutil.Process]:
    """``signal_when`` ``stage``'s run has logged ``metric`` (it is training)."""

    def logged() -> bool:
        if "pipeline: MLflow parent run" not in log.read_text():  # the store exists (opening it sooner races its setup)
            return False
        found = [r for r in runs(tmp_path) if r.data.tags.get("stage") == stage]
        return bool(found) and metric in found[-1].data.metrics

    return signal_when(proc, log, logged, f"{metric} from {stage}", sig, timeout)


def wait_for_line(proc: subprocess.Popen, log: Path, text: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, f"the pipeline ended before printing {text!r}:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no {text!r} within {timeout:.0f} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.02)
