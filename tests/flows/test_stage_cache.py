"""Stage reuse across pipeline runs: Prefect caches each stage on its identity (config sections,
upstream results, code), MLflow records the reuse, and ``cache.refresh`` recomputes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, compose
from thinkflow.caching import REUSED_TAG, stage_identity
from thinkflow.registry import StageResult


def _stage_runs(root: Path, parent_run_id: str) -> dict:
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("thinkflow").experiment_id
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {r.data.tags["stage"]: r for r in runs}


def _task_states(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state.name for r in runs}


def test_a_ttc_only_change_reuses_pretrain_and_rl(tmp_path, prefect_server):
    from flows.pipeline import pipeline

    config = compose(["~compare"], root=tmp_path)
    first = pipeline(config)
    ckpt = Path(first["rl"].checkpoint) / "model.safetensors"
    written = ckpt.stat().st_mtime_ns

    changed = compose(["~compare", "ttc.n_max=4", "ttc.ks=[1,2,4]"], root=tmp_path)
    second = pipeline(changed)

    assert ckpt.stat().st_mtime_ns == written  # nothing retrained
    assert second["pretrain"].run_id == first["pretrain"].run_id and second["rl"] == first["rl"]
    assert second["ttc"].run_id != first["ttc"].run_id
    runs = _stage_runs(tmp_path, second["parent_run_id"])
    assert runs["pretrain"].data.tags[REUSED_TAG] == first["pretrain"].run_id
    assert runs["rl"].data.tags[REUSED_TAG] == first["rl"].run_id
    assert first["rl"].run_id in runs["rl"].data.tags["mlflow.note.content"]
    assert REUSED_TAG not in runs["ttc"].data.tags
    flow_run = runs["rl"].data.tags["prefect.flow_run_id"]
    states = _task_states(flow_run)
    assert states["pretrain"] == "Cached" and states["rl"] == "Cached" and states["ttc"] == "Completed"
    # the reused stage runs hold no training metrics of their own (nothing trained; timing is for benchmarks)
    assert "train/loss" not in runs["pretrain"].data.metrics and "rl/loss" not in runs["rl"].data.metrics
    # ... but they carry the params of the runs they reuse (MLflow's Compare view showed them blank)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    for stage in ("pretrain", "rl"):
        original = client.get_run(first[stage].run_id).data.params
        assert original and runs[stage].data.params == original

    # cache.refresh=[rl] recomputes RL, and so everything downstream of it, but not pretrain
    third = pipeline(compose(["~compare", "ttc.n_max=4", "ttc.ks=[1,2,4]", "cache.refresh=[rl]"], root=tmp_path))
    assert third["pretrain"].run_id == first["pretrain"].run_id
    assert third["rl"].run_id != first["rl"].run_id and third["ttc"].run_id != second["ttc"].run_id


def _result(identity: str, run_id: str) -> StageResult:
    return StageResult(stage="any", identity_key=identity, run_id=run_id)


def test_identity_covers_config_upstream_and_location(tmp_path, monkeypatch):
    base = compose([], root=tmp_path)
    up = {"pretrain": _result("a", "r1")}
    same = stage_identity("rl", base, up)
    assert stage_identity("rl", compose(["ttc.n_max=4"], root=tmp_path), up) == same  # ttc is not an rl input
    assert stage_identity("rl", compose(["rl.lr=1e-3"], root=tmp_path), up) != same
    assert stage_identity("rl", base, {"pretrain": _result("a", "r2")}) != same
    # compare reads the pretrain and rl checkpoints, not ttc's tables: a new ttc run keeps it cached
    ups = up | {"rl": _result("b", "r3")}
    assert stage_identity("compare", base, ups | {"ttc": _result("c", "r4")}) == stage_identity(
        "compare", base, ups | {"ttc": _result("d", "r5")}
    )
    assert stage_identity("rl", compose([], root=tmp_path / "other"), up) != same
    # a relative root names a different store from each working directory
    relative = compose(["paths.root=."])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    in_a = stage_identity("rl", relative, up)
    monkeypatch.chdir(tmp_path / "b")
    assert stage_identity("rl", relative, up) != in_a


LOCK_USER = """
import sys, time
from thinkflow.caching import stage_lock
with stage_lock("pretrain", {"stage": "pretrain", "config": {"seed": 1}}, sys.argv[1]) as path:
    print("holding", path, time.time(), flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_pipeline_waits_for_the_stage_lock_and_takes_it_over_when_its_holder_is_killed(tmp_path):
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}

    def start(hold_s: float) -> subprocess.Popen:
        cmd = [sys.executable, "-c", LOCK_USER, str(tmp_path / "work"), str(hold_s)]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    holder = start(120)
    assert holder.stdout.readline().startswith("holding")
    waiter = start(0)
    try:
        line = waiter.stdout.readline()  # printed at once, while it waits
        lock = next((tmp_path / "work" / "locks").glob("pretrain-*.lock"))
        expected = f"pretrain: waiting for another pipeline (pid {holder.pid}) running the same stage; lock {lock}"
        assert line.strip() == expected
        time.sleep(1.5)
        assert waiter.poll() is None  # still waiting
        killed_at = time.time()
        holder.send_signal(signal.SIGKILL)  # no cleanup: the kernel drops its flock
        out, _ = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, out
        took_over_at = float(out.split()[-1])
        assert took_over_at - killed_at < 5
    finally:
        for proc in (holder, waiter):
            if proc.poll() is None:
                proc.kill()


def test_a_stopped_stage_keeps_its_lock_until_the_stop_has_waited_for_it(tmp_path):
    from filelock import FileLock, Timeout

    from thinkflow import shutdown
    from thinkflow.caching import stage_lock

    identity = {"stage": "rl", "config": {"seed": 1}}
    try:
        with stage_lock("rl", identity, tmp_path) as path:
            raise KeyboardInterrupt  # Ctrl-C while the stage's thread still saves its checkpoint
    except KeyboardInterrupt:
        pass
    with pytest.raises(Timeout):
        FileLock(path).acquire(blocking=False)  # a twin pipeline must not resume from a half-written checkpoint
    shutdown.stop(grace_s=0, running=lambda: False)
    shutdown.reset()
    FileLock(path).acquire(blocking=False)  # released once the stop has waited
