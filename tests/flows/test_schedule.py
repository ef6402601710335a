"""Scheduled flow runs as a user would have them: a real `prefect server`, `flows/serve.py`
registering the nightly deployment, a run triggered through the Prefect CLI."""

import json
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import ROOT


def _wait(predicate, timeout: float, what: str, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _prefect(env, *args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert not check or proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def _flow_run_state(env, flow_run_id: str) -> str:
    """The run's state type once it is final, else ""."""
    state = json.loads(_prefect(env, "flow-run", "inspect", flow_run_id, "--output", "json").stdout)["state"]
    return state["type"] if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else ""


@pytest.mark.slow
def test_served_deployment_has_its_schedule_and_a_triggered_run_completes(tmp_path, prefect_server_process):
    env = prefect_server_process | {"PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
    overrides = ["experiment=tiny", f"paths.root={tmp_path}", "~compare", "trainer.progress_bar=false"]
    serve = subprocess.Popen(
        [sys.executable, str(ROOT / "flows" / "serve.py"), "--", *overrides],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        name = "scheduled-pipeline/thinkflow-nightly"
        found = _wait(
            lambda: (
                _prefect(env, "deployment", "inspect", name, check=False).returncode == 0
                and _prefect(env, "deployment", "inspect", name).stdout
            ),
            120,
            "the served deployment",
            serve,
        )
        assert "0 2 * * *" in found  # the nightly cron schedule is registered
        assert "experiment=tiny" in found  # with the Hydra overrides as its parameters

        run = _prefect(env, "deployment", "run", name).stdout
        flow_run_id = next(line.split()[-1] for line in run.splitlines() if "UUID" in line)
        state = _wait(lambda: _flow_run_state(env, flow_run_id), 420, "the triggered flow run", serve)
        assert state == "COMPLETED", _prefect(env, "flow-run", "inspect", flow_run_id).stdout[-3000:]

        client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
        runs = client.search_runs([client.get_experiment_by_name("thinkflow").experiment_id])
        stages = sorted(r.data.tags.get("stage", "") for r in runs)
        assert stages == ["", "pretrain", "rl", "ttc"] and all(r.info.status == "FINISHED" for r in runs)

        # a malformed override list fails that run with a message naming the override
        bad = _prefect(env, "deployment", "run", name, "--param", 'overrides=["pretrain.max_steps=="]').stdout
        bad_id = next(line.split()[-1] for line in bad.splitlines() if "UUID" in line)
        assert _wait(lambda: _flow_run_state(env, bad_id), 120, "the malformed run", serve) == "FAILED"
        logs = _prefect(env, "flow-run", "logs", bad_id).stdout
        assert "bad overrides" in logs and "pretrain.max_steps==" in logs
    finally:
        serve.terminate()
        serve.wait(30)


def test_prefect_yaml_declares_the_nightly_deployment():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    nightly = next(d for d in spec["deployments"] if d["name"] == "thinkflow-nightly")
    assert nightly["entrypoint"] == "flows/pipeline.py:scheduled_pipeline"
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    assert set(nightly["parameters"]) == {"config_name", "overrides"}
    module, _, name = nightly["entrypoint"].partition(":")
    import importlib.util

    loaded = importlib.util.spec_from_file_location("entry", ROOT / module)
    mod = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(mod)
    assert getattr(mod, name).name == "scheduled-pipeline"
