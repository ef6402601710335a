"""Scheduled flow runs as a user would have them: a real `prefect server`, `flows/serve.py` registering the
nightly and watch deployments, runs triggered through the Prefect CLI."""

import hashlib
import json
import re
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient

from tests.compare.openai_server import ScriptedOpenAIServer
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


KEY = "thinkflow-watch-test-key"
NAME = "thinkflow-multiplication-tiny"


def _scripted_api(state: dict):
    """An API model answering the multiplication task: right with probability ``state["accuracy"]`` (a hash of the
    question and the draw decides), else one off. Changing ``accuracy`` is the provider changing the model."""

    def respond(prompt: str, seed: int, temperature: float) -> str:
        a, b = re.findall(r"(\d+)\*(\d)=", prompt)[-1]
        u = int.from_bytes(hashlib.sha256(f"{a}*{b}|{seed}|{temperature}".encode()).digest()[:8], "big") / 2**64
        return f">{int(a) * int(b) + (0 if u < state['accuracy'] else 1)}"

    return ScriptedOpenAIServer(respond=respond, api_key=KEY)


def _trigger(env, deployment: str, serve, *params: str, timeout: float = 420) -> tuple[str, str]:
    """Run the deployment now; returns (flow run id, final state)."""
    out = _prefect(env, "deployment", "run", deployment, *(a for p in params for a in ("--param", p))).stdout
    flow_run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
    return flow_run_id, _wait(lambda: _flow_run_state(env, flow_run_id), timeout, f"the {deployment} run", serve)


@pytest.mark.slow
def test_nightly_continues_from_the_champion_and_the_watch_logs_a_daily_series(tmp_path, prefect_server_process):
    """Both deployments served from flows/serve.py on a real Prefect server: the first nightly run trains from
    scratch and its gate makes the first champion; the second continues from that champion (rl from
    models:/NAME@champion) and is gated against it; the watch, on two days, logs the champion and an API model
    (the local OpenAI-compatible server, whose model gets worse between the days) as series with step = day."""
    state = {"accuracy": 1.0}
    with _scripted_api(state) as api:
        env = prefect_server_process | {"PYTHONPATH": f"{ROOT}:{ROOT / 'src'}", "THINKFLOW_WATCH_KEY": KEY}
        contestant = (
            f"+compare.contestants.api={{kind: openai, base_url: '{api.base_url}', model: scripted, "
            "api_key_env: THINKFLOW_WATCH_KEY, prompt: chat}"
        )
        overrides = [
            "experiment=tiny",
            f"paths.root={tmp_path}",
            contestant,  # the nightly's compare stage has it too
            "compare.ks=[1,4]",
            "compare.api.requests_per_minute=60000",
            "trainer.progress_bar=false",
        ]
        serve = subprocess.Popen(
            [sys.executable, str(ROOT / "flows" / "serve.py"), "--", *overrides],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            nightly, watch = "nightly/thinkflow-nightly", "watch/thinkflow-watch"
            for name, cron in ((nightly, "0 2 * * *"), (watch, "0 6 * * *")):
                found = _wait(
                    lambda name=name: (
                        _prefect(env, "deployment", "inspect", name, check=False).returncode == 0
                        and _prefect(env, "deployment", "inspect", name).stdout
                    ),
                    120,
                    f"the served deployment {name}",
                    serve,
                )
                assert cron in found and "experiment=tiny" in found  # its schedule, the overrides as parameters

            client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
            for night in (1, 2):
                run_id, state_ = _trigger(env, nightly, serve)
                assert state_ == "COMPLETED", _prefect(env, "flow-run", "logs", run_id).stdout[-4000:]
                if night == 1:  # from scratch: pretrain v1 -> rl v2, which the gate makes the first champion
                    assert _version(client, "1").tags["stage"] == "pretrain"
                    first = _version(client, "2")
                    assert first.tags["stage"] == "rl" and first.tags["parent_version"] == f"{NAME}/1"
                    assert first.tags["gate.decision"] == "promoted" and _champion(client) == "2"
            # the second night continued from the champion: rl only, its version's parent is version 2, gated
            second = _version(client, "3")
            assert second.tags["stage"] == "rl" and second.tags["parent_version"] == f"{NAME}/2"
            assert second.tags["gate.against"] == f"{NAME}/2"
            promoted = second.tags["gate.decision"] == "promoted"
            assert second.tags["gate.decision"] in ("promoted", "kept champion")
            assert _champion(client) == ("3" if promoted else "2")  # the alias follows the decision
            exp = client.get_experiment_by_name("thinkflow").experiment_id
            parents = client.search_runs([exp], "tags.trigger = 'nightly'", order_by=["attributes.start_time ASC"])
            assert [p.data.tags["nightly.continues"] for p in parents] == ["none", f"{NAME}/2"]
            assert parents[1].data.tags["pipeline.stages"] == "rl,ttc,gate,compare"
            assert parents[0].data.tags["nightly.seed"] == parents[1].data.tags["nightly.seed"]  # the same date
            champion = _champion(client)

            # the watch on two days; between them the API model behind the same name gets worse
            for day, accuracy in (("2026-11-29", 1.0), ("2026-11-30", 0.2)):
                state["accuracy"], paid = accuracy, sum(api.paid.values())
                run_id, state_ = _trigger(env, watch, serve, f"day={day}")
                assert state_ == "COMPLETED", _prefect(env, "flow-run", "logs", run_id).stdout[-4000:]
                # each day asks the API anew (a response cache of the day's own): 16 problems x (greedy + 4 samples)
                assert sum(api.paid.values()) - paid == 16 * (1 + 4)
            wexp = client.get_experiment_by_name("thinkflow-watch").experiment_id
            series = {
                r.data.tags["thinkflow.watch"]: r.info.run_id
                for r in client.search_runs([wexp], "tags.`thinkflow.watch` != ''")
            }
            assert sorted(series) == ["api", "champion"]
            days = [20786, 20787]  # 2026-11-29 and -30 as days since 1970-01-01
            api_acc = client.get_metric_history(series["api"], "watch/acc_greedy")
            assert [m.step for m in api_acc] == days
            assert api_acc[0].value == 1.0 and api_acc[1].value < 0.5  # the drift, as a line in MLflow's charts
            versions = client.get_metric_history(series["champion"], "watch/version")
            assert [(m.step, m.value) for m in versions] == [(d, float(champion)) for d in days]
            assert [m.step for m in client.get_metric_history(series["champion"], "watch/acc_greedy")] == days

            # a malformed override list fails that run with a message naming the override
            bad_id, bad = _trigger(env, nightly, serve, 'overrides=["pretrain.max_steps=="]', timeout=120)
            assert bad == "FAILED"
            logs = _prefect(env, "flow-run", "logs", bad_id).stdout
            assert "bad overrides" in logs and "pretrain.max_steps==" in logs
        finally:
            serve.terminate()
            serve.wait(30)


def _version(client, version: str):
    return client.get_model_version(NAME, version)


def _champion(client) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def test_prefect_yaml_declares_the_nightly_and_watch_deployments():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    import importlib.util

    for name, flow, cron in (("thinkflow-nightly", "nightly", "0 2 * * *"), ("thinkflow-watch", "watch", "0 6 * * *")):
        d = deployments[name]
        assert d["schedules"][0]["cron"] == cron
        assert set(d["parameters"]) == {"config_name", "overrides"}
        module, _, entry = d["entrypoint"].partition(":")
        loaded = importlib.util.spec_from_file_location("entry", ROOT / module)
        mod = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(mod)
        assert getattr(mod, entry).name == flow


def test_the_watch_refuses_a_config_without_compare_or_without_a_champion(tmp_path):
    import datetime as dt

    from thinkflow.config import ConfigError
    from thinkflow.schedules import watch_plan

    day = dt.date(2026, 11, 30)
    with pytest.raises(ConfigError, match="turns the compare stage off"):
        watch_plan(["experiment=expert_iteration", f"paths.root={tmp_path}"], "pipeline", day)
    with pytest.raises(ConfigError, match=f"{NAME} has no version holding 'champion'.*the nightly deployment makes"):
        watch_plan(["experiment=tiny", f"paths.root={tmp_path}"], "pipeline", day)
