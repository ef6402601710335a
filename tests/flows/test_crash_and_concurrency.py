"""A pipeline killed with SIGKILL (no cleanup at all) and two identical pipelines started together, with real
processes against one MLflow store and work dir: the temporary Prefect server dies with the killed pipeline, the
next start marks its runs FAILED, and of two twins only one trains each stage while the other waits and reuses."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile

import psutil
import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT
from thinkflow.caching import REUSED_TAG


def _pipeline(tmp_path, *overrides: str) -> tuple[list[str], dict]:
    cmd = [
        sys.executable,
        str(ROOT / "flows" / "pipeline.py"),
        "experiment=tiny",
        f"paths.root={tmp_path}",
        "~rl",
        "~ttc",
        "~compare",
        "pretrain.eval_every=5000",
        "pretrain.log_every=5",
        *overrides,
    ]
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
    return cmd, env


def _runs(tmp_path) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("thinkflow")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def _wait_for_fresh_checkpoint(tmp_path, proc: subprocess.Popen, log) -> None:
    """Until ``last.ckpt`` was written whole in the last 0.3 s (a checkpoint goes out every ~1 s here), so a
    kill now cannot cut one short."""
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, f"the pipeline ended before it was killed:\n{log.read_text()[-3000:]}"
        ckpt = next((tmp_path / "mlruns" / "work" / "pretrain").glob("*/lightning/last.ckpt"), None)
        if ckpt and time.time() - ckpt.stat().st_mtime < 0.3 and zipfile.is_zipfile(ckpt):
            return
        time.sleep(0.02)
    raise AssertionError("pretraining wrote no checkpoint")


@pytest.mark.slow
def test_kill_9_mid_pretraining_takes_the_prefect_server_along_and_the_next_start_marks_its_runs_failed(tmp_path):
    cmd, env = _pipeline(tmp_path, "pretrain.max_steps=160", "pretrain.ckpt_every=20")
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(
            cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    _wait_for_fresh_checkpoint(tmp_path, first, log)
    helpers = psutil.Process(first.pid).children()
    server = [p for p in helpers if "uvicorn" in p.cmdline()]
    watchdog = [p for p in helpers if any(a.endswith("liveness.py") for a in p.cmdline())]
    assert len(server) == 1 and len(watchdog) == 1, helpers
    first.kill()  # SIGKILL: no handler, no atexit, nothing closed
    first.wait()
    gone, alive = psutil.wait_procs(server + watchdog, timeout=15)  # SIGTERM, SIGKILL after 3 s if need be
    for p in alive:
        p.kill()
    assert alive == [], "the temporary Prefect server or its watchdog outlived the pipeline killed with SIGKILL"
    killed = {r.data.tags.get("stage", "pipeline"): r.info.run_id for r in _runs(tmp_path)}
    assert {r.info.status for r in _runs(tmp_path)} == {"RUNNING"} and set(killed) == {"pipeline", "pretrain"}

    second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    output = second.stdout + second.stderr  # the flow's prints go through Prefect's logger
    line = next(ln for ln in output.splitlines() if "tracking: marked" in ln)
    head, ids = line[line.index("tracking: marked") :].split(" FAILED: ")
    assert head == f"tracking: marked 2 runs of a process that is gone (pid {first.pid} on {socket.gethostname()})"
    assert set(ids.split(", ")) == set(killed.values())
    after = {r.info.run_id: r for r in _runs(tmp_path)}
    assert {after[i].info.status for i in killed.values()} == {"FAILED"}
    assert "ended without closing it" in after[killed["pretrain"]].data.tags["thinkflow.failed_because"]
    assert "pretrain: resuming from" in output  # and the rerun went on from the killed one's checkpoint
    assert {r.info.status for i, r in after.items() if i not in killed.values()} == {"FINISHED"}


def _owner(locks) -> int | None:
    """The pid written (whole) into the pretrain lock's owner file, once it is there."""
    for owner in locks.glob("pretrain-*.owner.json"):
        try:
            return int(json.loads(owner.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None
    return None


def _stop_outside_the_store(proc: subprocess.Popen, db) -> None:
    """SIGSTOP ``proc`` at a moment it holds no lock on the SQLite store (else the other pipeline would wait on
    the store, not on the stage): stop, try an exclusive transaction without waiting, let go and retry if busy."""
    for _ in range(2000):
        proc.send_signal(signal.SIGSTOP)
        probe = sqlite3.connect(db, timeout=0)
        try:
            probe.execute("BEGIN EXCLUSIVE")
            probe.rollback()
            return
        except sqlite3.OperationalError:
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.01)
        finally:
            probe.close()
    raise AssertionError("the first pipeline never left the MLflow store alone")


def _wait_for(predicate, what: str, procs: list[subprocess.Popen], logs: list) -> None:
    deadline = time.time() + 300
    while not predicate():
        for proc, log in zip(procs, logs, strict=False):
            assert proc.poll() is None, f"a pipeline ended before {what}:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no {what} within 300 s"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_identical_pipelines_the_second_waits_for_the_first_and_reuses_its_result(tmp_path):
    """The second pipeline reaches the stage while the first holds it. To make that certain on a loaded
    machine (the first could otherwise finish 120 steps before the second's Prefect server is up), the
    first is held with SIGSTOP once it owns the stage's lock (at a moment it holds no lock on the SQLite store),
    and let go once the second says it waits."""
    cmd, env = _pipeline(tmp_path, "pretrain.max_steps=120")
    procs, logs = [], [tmp_path / "a.log", tmp_path / "b.log"]
    owners = tmp_path / "mlruns" / "work" / "locks"
    try:
        with open(logs[0], "w") as out:
            procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT))
        _wait_for(lambda: _owner(owners) == procs[0].pid, "the pretrain lock taken", procs, logs)
        _stop_outside_the_store(procs[0], tmp_path / "mlruns" / "mlflow.db")
        with open(logs[1], "w") as out:
            procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT))
        _wait_for(lambda: "pretrain: waiting for another pipeline" in logs[1].read_text(), "wait", procs[1:], logs[1:])
        procs[0].send_signal(signal.SIGCONT)
        for proc, log in zip(procs, logs, strict=True):
            assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
    texts = [log.read_text() for log in logs]
    trained = [i for i, text in enumerate(texts) if "pretrain: done" in text]
    assert trained == [0], texts
    waited = texts[1]
    assert f"pretrain: waiting for another pipeline (pid {procs[0].pid}) running the same stage" in waited
    assert "pretrain: reused the result of MLflow run" in waited
    lightning = list((tmp_path / "mlruns" / "work" / "pretrain").glob("*/lightning"))
    assert len(lightning) == 1 and sorted(p.name for p in lightning[0].glob("last*.ckpt")) == ["last.ckpt"]
    stages = [r for r in _runs(tmp_path) if r.data.tags.get("stage") == "pretrain"]
    assert {r.info.status for r in _runs(tmp_path)} == {"FINISHED"} and len(stages) == 2
    fresh, reused = sorted(stages, key=lambda r: REUSED_TAG in r.data.tags)
    assert reused.data.tags[REUSED_TAG] == fresh.info.run_id and "train/loss" not in reused.data.metrics
