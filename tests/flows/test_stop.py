"""Stopping the pipeline with SIGTERM (what `kill`, `docker stop` and a Prefect cancellation send): the running
stage saves a checkpoint at its next step, the MLflow runs end KILLED, nothing it started outlives it, and
rerunning the command resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import ROOT
from thinkflow import shutdown


def test_stop_calls_the_immediate_hooks_waits_for_the_stage_then_ends_the_rest():
    calls, started = [], time.monotonic()
    done = threading.Event()

    def broken():
        raise RuntimeError("boom")

    def stage_sees_request():  # the stage's thread: notices the request, saves, ends
        while not shutdown.requested():
            time.sleep(0.01)
        time.sleep(0.3)
        done.set()

    threading.Thread(target=stage_sees_request, daemon=True).start()
    try:
        with (
            shutdown.on_stop("a", now=lambda: calls.append("a now"), last=lambda: calls.append("a last")),
            shutdown.on_stop("b", now=broken, last=lambda: calls.append(("b last", done.is_set()))),
        ):
            assert shutdown.stop(grace_s=10, running=lambda: not done.is_set()) is True
        assert calls == ["a now", "a last", ("b last", True)]  # a broken hook does not stop the others
        assert time.monotonic() - started < 5  # it waited for the stage, not the whole grace period

        calls.clear()
        with shutdown.on_stop("c", last=lambda: calls.append(time.monotonic())):
            t0 = time.monotonic()
            assert shutdown.stop(grace_s=0.5, running=lambda: True) is False  # the stage never ended
        assert calls and calls[0] - t0 >= 0.5
        with shutdown.on_stop("d", last=lambda: calls.append("d")):
            pass
        calls.clear()
        shutdown.stop(grace_s=0, running=lambda: False)
        assert calls == []  # hooks of blocks that have ended are gone
    finally:
        shutdown.reset()
    assert not shutdown.requested()


def _pipeline(tmp_path, *overrides: str) -> tuple[list[str], dict]:
    cmd = [sys.executable, str(ROOT / "flows" / "pipeline.py"), "experiment=tiny", f"paths.root={tmp_path}",
           "~rl", "~ttc", "~compare", "trainer.progress_bar=false", *overrides]  # fmt: skip
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
    return cmd, env


def _runs(tmp_path) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("thinkflow")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]) if experiment else []


def _leftovers(tmp_path) -> list[str]:
    """Processes of this pipeline still alive: anything with the test's PREFECT_HOME in its environment (the
    temporary Prefect server included) or its work dir on its command line (the launched ranks)."""
    home, left = str(tmp_path / "prefect"), []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.environ().get("PREFECT_HOME") == home or any(str(tmp_path) in a for a in p.info["cmdline"] or []):
                left.append(f"{p.pid}: {' '.join(p.info['cmdline'] or [])[:200]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return left


def _sigterm_once_training(tmp_path, proc: subprocess.Popen, log, timeout: float = 300) -> None:
    """SIGTERM the pipeline once the pretrain stage has logged a training loss."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the pipeline ended before it was stopped:\n{log.read_text()[-3000:]}"
        if "pipeline: MLflow parent run" in log.read_text():  # the store exists (opening it sooner races its setup)
            pretrain = [r for r in _runs(tmp_path) if r.data.tags.get("stage") == "pretrain"]
            if pretrain and "train/loss" in pretrain[0].data.metrics:
                proc.send_signal(signal.SIGTERM)
                return
        time.sleep(0.2)
    raise AssertionError("pretraining did not start")


@pytest.mark.slow
def test_sigterm_mid_pretraining_saves_a_checkpoint_ends_the_runs_killed_and_the_rerun_resumes(tmp_path):
    # no periodic checkpoint (ckpt_every > max_steps): the only one is what the stop writes
    cmd, env = _pipeline(tmp_path, "pretrain.max_steps=400", "pretrain.ckpt_every=5000", "pretrain.eval_every=5000",
                         "pretrain.log_every=5")  # fmt: skip
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    _sigterm_once_training(tmp_path, first, log)
    t0 = time.time()
    first.wait(timeout=120)
    stopped_in = time.time() - t0
    text = log.read_text()
    assert first.returncode == -signal.SIGTERM, text[-3000:]  # it still ends as killed by SIGTERM
    assert stopped_in < 60, f"took {stopped_in:.0f} s to stop"
    ckpts = list((tmp_path / "mlruns" / "work" / "pretrain").glob("*/lightning/last.ckpt"))
    assert len(ckpts) == 1, text[-3000:]
    step = torch.load(ckpts[0], map_location="cpu", weights_only=False)["global_step"]
    assert 0 < step < 400
    assert f"pretrain: stopped on request after step {step}; saved {ckpts[0]}" in text
    status = {r.data.tags.get("stage", "pipeline"): r.info.status for r in _runs(tmp_path)}
    assert status == {"pipeline": "KILLED", "pretrain": "KILLED"}
    assert _leftovers(tmp_path) == []

    second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"pretrain: resuming from {ckpts[0]}" in second.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    resumed = [r for r in _runs(tmp_path) if r.data.tags.get("stage") == "pretrain"][-1]
    assert resumed.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(resumed.info.run_id, "train/loss"))
    assert step <= steps[0] <= step + 5 and steps[-1] >= 395  # went on from the stop, not from step 0


@pytest.mark.slow
def test_sigterm_during_a_two_process_stage_ends_every_rank(tmp_path):
    cmd, env = _pipeline(tmp_path, "trainer=cpu_zero2", "pretrain.max_steps=3000", "pretrain.ckpt_every=5000",
                         "pretrain.eval_every=5000", "pretrain.log_every=5")  # fmt: skip
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    _sigterm_once_training(tmp_path, first, log)
    first.wait(timeout=120)
    assert first.returncode == -signal.SIGTERM, log.read_text()[-3000:]
    time.sleep(1)
    assert _leftovers(tmp_path) == []  # the launcher and both ranks included
    status = {r.data.tags.get("stage", "pipeline"): r.info.status for r in _runs(tmp_path)}
    assert status == {"pipeline": "KILLED", "pretrain": "KILLED"}
