"""Stopping the pipeline with SIGTERM (what `kill`, `docker stop` and a Prefect cancellation send): the running
stage saves a checkpoint at its next step, the MLflow runs end KILLED, nothing it started outlives it, and
rerunning the command resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
import torch
from mlflow import MlflowClient

from tests.stopping import (
    leftovers,
    no_leftovers,
    pipeline_command,
    runs,
    signal_once_logged,
    start,
    statuses,
    wait_for_line,
)
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


def test_a_second_signal_while_stopping_only_ends_the_wait():
    """SIGTERM or Ctrl-C again during the grace period raises nothing in the main thread (an exception there would
    cut the stop short: runs left RUNNING, the stage's processes behind); it ends the wait, and what the stage
    started is still ended."""
    calls, before_int = [], signal.getsignal(signal.SIGINT)
    before_term = signal.signal(signal.SIGTERM, shutdown.raise_terminated)  # as flows/pipeline.py's main sets it
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        threading.Timer(0.4, os.kill, (os.getpid(), signal.SIGINT)).start()
        with shutdown.on_stop("e", last=lambda: calls.append("e last")):
            t0 = time.monotonic()
            assert shutdown.stop(grace_s=30, running=lambda: True) is False  # the stage never ends by itself
        assert time.monotonic() - t0 < 5 and calls == ["e last"]
        time.sleep(0.3)  # the SIGINT, after the wait has ended: nothing either
        os.kill(os.getpid(), signal.SIGTERM)  # until the process exits (runs being closed, servers stopped)
        time.sleep(0.1)
        assert shutdown.raise_terminated(signal.SIGTERM, None) is None  # Prefect hands it back after the flow
    finally:
        shutdown.reset()
        signal.signal(signal.SIGTERM, before_term)
    assert signal.getsignal(signal.SIGINT) is before_int  # a new pipeline in this process gets them back


@pytest.mark.slow
def test_sigterm_mid_pretraining_saves_a_checkpoint_ends_the_runs_killed_and_the_rerun_resumes(tmp_path):
    # no periodic checkpoint (ckpt_every > max_steps): the only one is what the stop writes
    cmd, env = pipeline_command(
        tmp_path,
        "~rl",
        "~ttc",
        "~compare",
        "pretrain.max_steps=400",
        "pretrain.ckpt_every=5000",
        "pretrain.eval_every=5000",
        "pretrain.log_every=5",
    )
    log = tmp_path / "first.log"
    first = start(cmd, env, log)
    tree = signal_once_logged(tmp_path, first, log, "pretrain", "train/loss")
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
    assert statuses(tmp_path) == {"pipeline": "KILLED", "pretrain": "KILLED"}
    assert leftovers(tmp_path, tree) == []

    second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"pretrain: resuming from {ckpts[0]}" in second.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    resumed = [r for r in runs(tmp_path) if r.data.tags.get("stage") == "pretrain"][-1]
    assert resumed.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(resumed.info.run_id, "train/loss"))
    assert step <= steps[0] <= step + 5 and steps[-1] >= 395  # went on from the stop, not from step 0


@pytest.mark.slow
def test_a_second_sigterm_while_a_two_process_stage_stops_still_ends_every_rank_and_run(tmp_path):
    """SIGTERM, then SIGTERM again while the ranks are still stopping (an impatient user, a supervisor that
    repeats it): the second one cuts the grace period short, but the runs still end KILLED, the process still
    exits as killed by the signal, and neither the launcher, a rank nor the Prefect server is left."""
    cmd, env = pipeline_command(
        tmp_path,
        "~rl",
        "~ttc",
        "~compare",
        "trainer=cpu_zero2",
        "pretrain.max_steps=3000",
        "pretrain.ckpt_every=5000",
        "pretrain.eval_every=5000",
        "pretrain.log_every=5",
    )
    log = tmp_path / "first.log"
    first = start(cmd, env, log)
    tree = signal_once_logged(tmp_path, first, log, "pretrain", "train/loss")
    wait_for_line(first, log, "stop: requested")  # in the grace period, waiting for the ranks
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
    text = log.read_text()
    assert first.returncode == -signal.SIGTERM, text[-3000:]
    assert "stop: SIGTERM again" in text, text[-3000:]  # the second signal landed while it waited for the ranks
    assert no_leftovers(tmp_path, tree) == []  # the launcher and both ranks included
    assert statuses(tmp_path) == {"pipeline": "KILLED", "pretrain": "KILLED"}
