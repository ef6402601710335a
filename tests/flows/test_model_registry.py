"""Registered models on a real MLflow store: pretrain and rl each register a version of thinkflow-<task>-<model>
with lineage tags (rl's parent is pretrain's version); a version loads with ``mlflow.transformers.load_model``;
``ttc.init_from=models:/NAME@ALIAS`` and a compare contestant use the version the alias points at, a moved alias
is a new result, and a URI naming nothing is a clear error; the gate stage promotes, then decides; ``mlflow
models serve`` serves a version."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow.transformers
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from tests.conftest import compose
from thinkflow.caching import stage_identity
from thinkflow.config import ConfigError, validate
from thinkflow.runner import run_stage, start_pipeline_run

REGISTER = ["tracking.register_models=true", "rl.max_steps=2", "rl.eval_every=2", "rl.ckpt_every=2"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    config = compose(REGISTER, root=root)
    parent = start_pipeline_run(config, None)
    pre = run_stage("pretrain", config, parent, {}, None)
    rl = run_stage("rl", config, parent, {"pretrain": pre}, None)
    return root, config, pre, rl


def test_training_stages_register_versions_with_their_lineage(registered, monkeypatch):
    root, config, pre, rl = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlruns/mlflow.db")  # for mlflow's own loader
    name = f"thinkflow-{config['task']['name']}-{config['model']['name']}"
    assert pre.details["registered"] == {"name": name, "version": "1"}
    assert rl.details["registered"] == {"name": name, "version": "2"}
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    v1, v2 = client.get_model_version(name, "1"), client.get_model_version(name, "2")
    assert v1.tags["stage"] == "pretrain" and v1.tags["parent_version"] == "none" and v1.run_id == pre.run_id
    assert v2.tags["stage"] == "rl" and v2.tags["parent_version"] == f"{name}/1" and v2.run_id == rl.run_id
    assert {"config_hash", "code_version", "data", "metric.val_pass_at_1"} <= set(v2.tags)
    assert v2.tags["data"].startswith(f"task={config['task']['name']} difficulty=")
    components = mlflow.transformers.load_model(f"models:/{name}/2", return_type="components")
    generator = mlflow.transformers.load_model(f"models:/{name}/2")
    assert components["model"].config.model_type == "llama"
    assert generator("12+34=", max_new_tokens=4, do_sample=False)[0]["generated_text"].startswith("12+34=")


def test_ttc_evaluates_a_registered_version_by_alias_and_a_moved_alias_is_a_new_result(registered):
    root, config, pre, rl = registered
    name = rl.details["registered"]["name"]
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    client.set_registered_model_alias(name, "champion", "2")
    uri = f"models:/{name}@champion"
    ttc = compose([*REGISTER, "~pretrain", "~rl", f"ttc.init_from={uri}", "ttc.n_max=2", "ttc.ks=[1,2]"], root=root)
    identity = stage_identity("ttc", validate(ttc).model_dump(), {})
    result = run_stage("ttc", ttc, start_pipeline_run(ttc, None), {}, None)
    evaluated = client.get_run(result.run_id).data.params["checkpoint.init"]
    assert evaluated.endswith(f"registry/{name}/2")  # the version the alias names, downloaded once
    assert identity["registered"] == {uri: "2"}
    compare = compose([*REGISTER, "~pretrain", "~rl", "~ttc", "compare.n_problems=4", "compare.ks=[1,2]"], root=root)
    compare["compare"]["contestants"] = {"champion": {"kind": "hf", "model": uri, "max_new_tokens": 8}}
    scored = run_stage("compare", compare, start_pipeline_run(compare, None), {}, None)
    assert scored.details["contestants"]["champion"]["status"] == "ok"  # a registered version as a contestant
    more = compose([*REGISTER, "~pretrain", f"rl.init_from={uri}", "~ttc", "~compare"], root=root)
    continued = run_stage("rl", more, start_pipeline_run(more, None), {}, None).details["registered"]
    assert continued == {"name": name, "version": "3"}  # the registered model's next version
    assert client.get_model_version(name, "3").tags["parent_version"] == f"{name}/2"  # what the alias named
    client.set_registered_model_alias(name, "champion", "1")
    assert stage_identity("ttc", validate(ttc).model_dump(), {})["registered"] == {uri: "1"}  # recomputed, not reused


def test_a_model_uri_naming_nothing_is_a_clear_error(registered):
    root = registered[0]
    ttc = compose([*REGISTER, "~pretrain", "~rl", "ttc.init_from=models:/nothing@champion"], root=root)
    with pytest.raises(ConfigError, match="models:/nothing@champion: no such registered model version"):
        run_stage("ttc", ttc, start_pipeline_run(ttc, None), {}, None)


def test_the_gate_makes_the_first_model_champion_then_decides_on_the_next_one(tmp_path):
    gate = [*REGISTER, "gate=default", "ttc.n_max=4", "ttc.ks=[1,2,4]", "ttc.budgets=[]", "ttc.search.widths=[]"]
    config = compose(gate, root=tmp_path)
    parent = start_pipeline_run(config, None)
    pre = run_stage("pretrain", config, parent, {}, None)
    up = {"pretrain": pre, "rl": run_stage("rl", config, parent, {"pretrain": pre}, None)}
    up["ttc"] = run_stage("ttc", config, parent, up, None)
    first = run_stage("gate", config, parent, up, None)
    name = up["rl"].details["registered"]["name"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert first.details["champion"] == f"{name}/2" and "no champion yet" in first.summary_md
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"

    again = compose([*gate, "rl.max_steps=4", "rl.eval_every=4", "rl.ckpt_every=4"], root=tmp_path)
    up2 = {"pretrain": pre, "rl": run_stage("rl", again, parent, {"pretrain": pre}, None)}
    up2["ttc"] = run_stage("ttc", again, parent, up2, None)
    assert up2["rl"].details["registered"]["version"] == "3"
    second = run_stage("gate", again, parent, up2, None)
    decision = pd.read_csv(second.table).set_index("metric")
    assert list(decision.index) == ["pass@1", "pass@4", "maj@4"] and decision.loc["pass@1", "role"] == "primary"
    tags = client.get_model_version(name, "3").tags
    promoted = tags["gate.decision"] == "promoted"
    assert tags["gate.against"] == f"{name}/2" and second.metrics["promoted"] == float(promoted)
    assert str(client.get_model_version_by_alias(name, "champion").version) == ("3" if promoted else "2")
    assert "| pass@1 | primary |" in second.summary_md
    with pytest.raises(ConfigError, match="gate compares registered versions: set tracking.register_models=true"):
        validate(compose(["gate=default"], root=tmp_path))


@pytest.mark.slow
def test_mlflow_models_serve_serves_a_registered_version(registered):
    root, _, _, rl = registered
    name, version = rl.details["registered"]["name"], rl.details["registered"]["version"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlruns/mlflow.db",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # its uvicorn
    }
    cmd = ["mlflow", "models", "serve", "-m", f"models:/{name}/{version}", "--env-manager", "local", "-p", str(port)]
    server = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, "mlflow models serve exited"
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.time() < deadline, "the model server did not come up in 120 s"
            time.sleep(0.5)
        reply = requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": ["12*34="]}, timeout=60)
        assert reply.ok, reply.text
        (completion,) = reply.json()["predictions"]
        assert completion.startswith("12*34=") and len(completion) > len("12*34=")
    finally:
        server.terminate()
        server.wait(timeout=30)
