"""The compare stage end to end: a real MLflow store, a real Prefect server, a real HTTP API server,
a local HF model; no component mocked."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.compare.openai_server import ScriptedOpenAIServer
from tests.conftest import ROOT, compose
from thinkflow.checkpoints import save_hf
from thinkflow.config import ConfigError, validate
from thinkflow.models import build_model_and_tokenizer
from thinkflow.runner import run_stage, start_pipeline_run

KEY = "sk-THINKFLOW-FAKE-KEY-d41d8cd98f00b204"  # recognisable: scanned for everywhere afterwards
TINY = {"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64, "max_seq_len": 2048}
N = 12


def _answers(gsm8k_dir: Path, n: int) -> dict[str, str]:
    rows = [json.loads(line) for line in (gsm8k_dir / "test.jsonl").read_text().splitlines()[: n + 8]]
    return {r["question"].strip(): r["answer"].rsplit("####", 1)[1].strip().replace(",", "") for r in rows}


def _api(url: str, key_env: str = "THINKFLOW_TEST_KEY", **extra) -> dict:
    return {
        "kind": "openai",
        "base_url": url,
        "model": "scripted",
        "api_key_env": key_env,
        "prompt": "chat",
        "usd_per_mtok_in": 2.0,
        "usd_per_mtok_out": 8.0,
        "n_params": 100_000_000_000,
    } | extra


def _config(tmp_path: Path, gsm8k_dir: Path, contestants: dict, overrides: list[str] = ()) -> dict:
    config = compose(
        [
            "task=gsm8k",
            f"task.source={gsm8k_dir}",
            f"task.n_test={N}",
            "compare.ks=[1,2,4]",
            "compare.api.backoff_base_s=0.05",
            "compare.api.backoff_max_s=0.5",
            # the fault plan is cycled over all requests (2 faults in 7): with 6 retries, 1 call in ~2,000 that
            # starts on a fault can land on faults 7 times running under concurrency; 12 make that negligible
            "compare.api.max_retries=12",
            "compare.api.requests_per_minute=null",
            *overrides,
        ],
        root=tmp_path,
    )
    config["compare"]["contestants"] = contestants
    return _only_compare(config)


def _only_compare(config: dict) -> dict:
    """Drop the other stages (``~pretrain`` on the command line; experiment=tiny would re-add keys)."""
    return config | {"pretrain": None, "rl": None, "ttc": None}


def _local_checkpoint(tmp_path: Path) -> str:
    model, tok = build_model_and_tokenizer(TINY, seed=3)
    return str(save_hf(model, tok, tmp_path / "local-model"))


def _mlflow(root: Path):
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    return client, client.search_runs([client.get_experiment_by_name("thinkflow").experiment_id])


def test_compare_flow_runs_every_contestant_alike_and_never_leaks_the_key(
    tmp_path, gsm8k_dir, prefect_server, monkeypatch, capfd
):
    from flows.pipeline import pipeline

    monkeypatch.setenv("THINKFLOW_TEST_KEY", KEY)
    monkeypatch.delenv("THINKFLOW_UNSET_KEY", raising=False)
    answers = _answers(gsm8k_dir, N)
    with ScriptedOpenAIServer(
        answers,
        accuracy=0.75,
        api_key=KEY,
        usd_per_mtok_in=2.0,
        usd_per_mtok_out=8.0,
        faults=[None, None, "429", None, None, "500", None],
    ) as server:
        contestants = {
            "frontier": _api(server.base_url),
            "nokey": _api(server.base_url, key_env="THINKFLOW_UNSET_KEY"),
            "local": {
                "kind": "hf",
                "model": _local_checkpoint(tmp_path),
                "prompt": "fewshot",
                "fewshot": 1,
                "max_new_tokens": 12,
            },
        }
        result = pipeline(_config(tmp_path, gsm8k_dir, contestants))
    out = result["compare"].details["contestants"]
    assert out["nokey"]["status"] == "skipped" and "THINKFLOW_UNSET_KEY" in out["nokey"]["note"]
    assert out["frontier"]["status"] == "ok" and out["local"]["status"] == "ok"

    client, runs = _mlflow(tmp_path)
    stage_run = next(r for r in runs if r.data.tags.get("stage") == "compare" and "contestant" not in r.data.tags)
    per = {r.data.tags["contestant"]: r for r in runs if "contestant" in r.data.tags}
    assert sorted(per) == ["frontier", "local"]  # one run per contestant that ran
    for run in per.values():
        assert run.data.tags["stage"] == "compare" and run.data.tags["mlflow.parentRunId"] == stage_run.info.run_id
        assert [m.step for m in client.get_metric_history(run.info.run_id, "compare/maj_at_k")] == [1, 2, 4]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "compare/pass_at_k")] == [1, 2, 4]
    keys = {n: set(r.data.metrics) for n, r in per.items()}
    shared = {
        "compare/acc_greedy",
        "compare/maj_at_k",
        "compare/pass_at_k",
        "compare/cost_usd",
        "compare/tokens_out",
        "compare/flops",
        "compare/usd_per_problem_at_k",
        "compare/flops_per_problem_at_k",
    }
    assert shared <= keys["frontier"] and shared <= keys["local"]

    # the frontier's greedy accuracy is exactly what the scripted server answered right, scored by the task
    problems = list(answers)[:N]
    expected = sum(server.answer(q, 0, 0.0).endswith(f"#### {answers[q]}") for q in problems) / N
    assert per["frontier"].data.metrics["compare/acc_greedy"] == pytest.approx(expected)
    assert per["frontier"].data.metrics["compare/cost_usd"] == pytest.approx(server.spent_usd)
    assert server.duplicates == 0 and sum(server.paid.values()) == N * (1 + 4)  # greedy + 4 samples each

    # the report on the pipeline's parent run, and as a Prefect artifact
    parent = result["parent_run_id"]
    names = {a.path for a in client.list_artifacts(parent, "compare")}
    assert {"compare/comparison.md", "compare/comparison.csv", "compare/accuracy_vs_cost.png"} <= names
    md = Path(client.download_artifacts(parent, "compare/comparison.md", str(tmp_path / "dl"))).read_text()
    assert "| frontier | openai |" in md and "skipped: environment variable THINKFLOW_UNSET_KEY" in md
    matched = Path(client.download_artifacts(parent, "compare/matched_compute_flops.csv", str(tmp_path / "dl")))
    assert "local" in matched.read_text() and "frontier" in matched.read_text()  # small + maj@k vs large greedy
    from prefect.artifacts import Artifact

    artifact = Artifact.get("compare-summary")
    assert artifact is not None and "frontier" in artifact.data

    # the key appears nowhere: MLflow store and artifacts, the response cache, work dirs, logs, Prefect
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaks, leaks
    captured = capfd.readouterr()
    assert KEY not in captured.out and KEY not in captured.err
    assert KEY not in artifact.data
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(stage_run.data.tags["prefect.flow_run_id"])
        assert KEY not in json.dumps(flow_run.parameters, default=str)
        assert "THINKFLOW_TEST_KEY" in json.dumps(flow_run.parameters)  # the variable's name is all it holds
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    db = Path(PREFECT_API_DATABASE_CONNECTION_URL.value().split("///")[-1])
    if db.is_file():
        assert KEY.encode() not in db.read_bytes()


def test_spend_cap_keeps_the_partial_results(tmp_path, gsm8k_dir, monkeypatch):
    monkeypatch.setenv("THINKFLOW_TEST_KEY", KEY)
    answers = _answers(gsm8k_dir, N)
    prices = {"usd_per_mtok_in": 2000.0, "usd_per_mtok_out": 8000.0}  # ~ $0.1-0.9 a call: the cap binds
    with ScriptedOpenAIServer(answers, api_key=KEY, usd_per_mtok_in=2000.0, usd_per_mtok_out=8000.0) as server:
        config = _config(
            tmp_path,
            gsm8k_dir,
            {"frontier": _api(server.base_url, **prices)},
            ["compare.api.spend_cap_usd=12", "compare.api.concurrency=2"],
        )
        result = run_stage("compare", config, start_pipeline_run(config, None), {}, None)
    s = result.details["contestants"]["frontier"]
    assert s["status"] == "partial" and "spend cap" in s["note"]
    assert 0 < s["n_problems"] < N and server.spent_usd <= 12.0
    client, runs = _mlflow(tmp_path)
    run = next(r for r in runs if r.data.tags.get("contestant") == "frontier")
    assert run.data.tags["compare.status"].startswith("partial") and run.info.status == "FINISHED"
    assert run.data.metrics["compare/n_problems"] == s["n_problems"]


def test_thinkflow_contestant_from_an_earlier_pipeline_run(tmp_path, gsm8k_dir):
    """`run: latest` + an MLflow filter finds an earlier pipeline's checkpoint and downloads it."""
    earlier = compose([], root=tmp_path) | {"rl": None, "ttc": None, "compare": None}
    parent = start_pipeline_run(earlier, None)
    run_stage("pretrain", earlier, parent, {}, None)
    MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").set_terminated(parent, "FINISHED")

    spec = {"kind": "thinkflow", "run": "latest", "run_filter": "params.`model.d_model` = '32'"}
    config = _only_compare(compose(["compare.ks=[1,2]"], root=tmp_path))
    config["compare"]["contestants"] = {"earlier": spec}
    result = run_stage("compare", config, start_pipeline_run(config, None), {}, None)
    s = result.details["contestants"]["earlier"]
    assert s["status"] == "ok", s
    assert Path(s["model"]).name == "checkpoint" and (Path(s["model"]) / "config.json").exists()

    config["compare"]["contestants"] = {
        "none": spec | {"run_filter": "params.`model.d_model` = '4096'"},
        "no_rl": spec | {"stage": "rl"},
    }
    result = run_stage("compare", config, start_pipeline_run(config, None), {}, None).details["contestants"]
    assert result["none"]["status"] == "failed" and "no finished pipeline run matches" in result["none"]["note"]
    assert result["no_rl"]["status"] == "failed" and "has no rl stage run" in result["no_rl"]["note"]


@pytest.mark.parametrize(
    "contestant, message",
    [
        ({"kind": "openai", "model": "m", "base_url": "http://x/v1"}, "kind=openai needs api_key_env"),
        ({"kind": "thinkflow"}, "needs stage"),
        ({"kind": "hf"}, "kind=hf needs model"),
        ({"kind": "gguf", "model": "m.gguf", "backend": "vllm"}, "runs on backend=hf"),
        ({"kind": "openai", "model": "m", "base_url": "u", "api_key_env": "K", "api_key": "sk-x"}, "api_key"),
    ],
)
def test_bad_contestants_are_named(tmp_path, contestant, message):
    config = compose([], root=tmp_path)
    config["compare"]["contestants"] = {"bad": contestant}
    with pytest.raises(ConfigError, match=message) as err:
        validate(config)
    assert "compare.contestants.bad" in str(err.value)


def test_empty_contestants_and_budget_without_budgets_are_rejected(tmp_path):
    config = compose(["compare.strategies=[greedy,budget]"], root=tmp_path)
    with pytest.raises(ConfigError, match="strategy budget needs budgets"):
        validate(config)
    config = compose([], root=tmp_path)
    config["compare"]["contestants"] = {}
    with pytest.raises(ConfigError, match="contestants is empty"):
        validate(config)


def _server_key(request: dict) -> str:
    """The scripted server's identity of a request, from the cache's stored request description."""
    import hashlib

    prompt = "\n".join(c for _, c in request["prompt"])
    parts = ["/v1/chat/completions", prompt, request["seed"], request["temperature"], request["max_tokens"]]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


@pytest.mark.slow
def test_killed_stage_resumes_from_the_cache_without_paying_twice(tmp_path, gsm8k_dir):
    """Kill -9 the pipeline mid-way through the API calls, rerun it: everything cached is reused;
    only calls in flight at the kill (billed, never received) can be bought again."""
    answers = _answers(gsm8k_dir, N)
    env = os.environ | {"THINKFLOW_TEST_KEY": KEY, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
    with ScriptedOpenAIServer(answers, api_key=KEY, latency_s=0.25) as server:
        api = json.dumps(_api(server.base_url)).replace('"', "")
        cmd = [
            sys.executable,
            str(ROOT / "flows" / "pipeline.py"),
            f"paths.root={tmp_path}",
            "~pretrain",
            "~rl",
            "~ttc",
            "~compare.contestants.pretrain",
            "~compare.contestants.rl",
            "task=gsm8k",
            f"task.source={gsm8k_dir}",
            f"task.n_test={N}",
            "compare.ks=[1,2,4]",
            "compare.api.concurrency=3",
            "compare.api.requests_per_minute=null",
            f"+compare.contestants.frontier={api}",
        ]
        # its own process group: the kill takes its temporary Prefect server too
        proc = subprocess.Popen(
            cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.time() + 300
        while sum(server.paid.values()) < 25 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        server.wait_idle()  # requests sent before the kill are billed when answered, latency_s later
        paid_at_kill = {k for k, c in server.paid.items() if c}
        cache = next((tmp_path / "mlruns" / "work" / "compare").glob("api_cache.sqlite"))
        with sqlite3.connect(cache) as db:
            cached = {_server_key(json.loads(r[0])) for r in db.execute("SELECT request FROM responses")}
        assert cached and cached <= paid_at_kill and len(cached) < N * 5

        rerun = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert len(server.paid) == N * 5  # every request bought
    assert all(server.paid[k] == 1 for k in cached)  # nothing the cache held was paid for again
    in_flight = paid_at_kill - cached
    assert server.duplicates == sum(server.paid[k] - 1 for k in in_flight) <= 3  # at most `concurrency`
    client, runs = _mlflow(tmp_path)
    run = max((r for r in runs if r.data.tags.get("contestant") == "frontier"), key=lambda r: r.info.start_time)
    assert run.data.metrics["compare/api_cache_hits"] == len(cached)
