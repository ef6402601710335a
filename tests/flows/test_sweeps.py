"""Parallel sweep jobs (Hydra's joblib launcher) against one persistent Prefect server."""

import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT

SWEEP = [
    "-m",
    "hydra/launcher=joblib",
    "hydra.launcher.n_jobs=2",
    "experiment=tiny",
    "~compare",
    "pretrain.max_steps=10,20",
    "pretrain.eval_every=10",
    "trainer.progress_bar=false",
]


@pytest.mark.slow
def test_joblib_sweep_runs_jobs_in_parallel_on_a_persistent_server(tmp_path, prefect_server_process):
    env = prefect_server_process | {"PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "flows" / "pipeline.py"), *SWEEP, f"paths.root={tmp_path}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("thinkflow").experiment_id])
    jobs = [r for r in runs if "sweep.job" in r.data.tags]
    assert sorted(r.data.params["pretrain.max_steps"] for r in jobs) == ["10", "20"]
    assert all(r.info.status == "FINISHED" for r in runs) and len({r.data.tags["sweep_id"] for r in jobs}) == 1
    (a, b) = sorted(jobs, key=lambda r: r.info.start_time)
    assert b.info.start_time < a.info.end_time  # the two pipeline runs overlapped: they ran in parallel


def test_joblib_sweep_without_a_persistent_server_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "flows" / "pipeline.py"), *SWEEP, f"paths.root={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "prefect server start" in proc.stderr and "PREFECT_API_URL" in proc.stderr
    assert not (tmp_path / "mlruns" / "work").exists()
