"""Environment tasks through the whole pipeline: pretraining traces, RL episodes, ttc_eval over episodes
and compare on open and API models (scripted OpenAI-compatible servers on 127.0.0.1)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.compare.openai_server import ScriptedOpenAIServer
from tests.conftest import compose
from thinkflow.checkpoints import save_hf
from thinkflow.models import build_model_and_tokenizer

KEY = "sk-env-test"


def _runs(root: Path):
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("thinkflow").experiment_id])
    return client, runs


def _artifact(client, run_id: str, path: str) -> str:
    return Path(client.download_artifacts(run_id, path)).read_text()


def _api(url: str, **extra) -> dict:
    return {
        "kind": "openai",
        "base_url": url,
        "model": "scripted",
        "api_key_env": "THINKFLOW_ENV_KEY",
        "prompt": "chat",
        "usd_per_mtok_in": 1.0,
        "usd_per_mtok_out": 4.0,
        "n_params": 10**11,
    } | extra


def calculator_user(prompt: str, seed: int, temperature: float) -> str:
    """A chat model that uses the calculator: it calls it on the question, then answers with its result."""
    last = prompt.rstrip().splitlines()[-1]
    if re.fullmatch(r"\{-?\d+\}", last):
        return "> " + last[1:-1]
    question = re.search(r"(\d+\*\d+(?:\+\d+\*\d+)*)=", prompt).group(1)
    return f"Let me use the calculator. [{question}] and then I would continue"  # the stop string cuts it


@pytest.mark.slow
def test_calc_pipeline_runs_episodes_in_every_stage(tmp_path, prefect_server, monkeypatch):
    from flows.pipeline import pipeline

    monkeypatch.setenv("THINKFLOW_ENV_KEY", KEY)
    with ScriptedOpenAIServer(respond=calculator_user, api_key=KEY) as server:
        config = compose(
            [
                "task=calc",
                "task.difficulty=2",
                "task.n_test=8",
                "model.max_seq_len=64",
                "rl.max_new_tokens=20",
                "ttc.max_new_tokens=20",
                "compare.max_new_tokens=20",
                "compare.ks=[1,2]",
                "profile.measure_model=false",
                "pretrain.max_steps=30",
            ],
            root=tmp_path,
        )
        config["compare"]["contestants"]["frontier"] = _api(server.base_url)
        result = pipeline(config)
    client, runs = _runs(tmp_path)
    by_stage = {r.data.tags.get("stage"): r for r in runs if "contestant" not in r.data.tags}

    rl = by_stage["rl"]
    for key in (
        "env/turns",
        "env/tool_calls_per_episode",
        "env/invalid_action_rate",
        "env/step_seconds",
        "env/sandbox_violations",
        "env/well_formed_call_frac",
    ):
        history = client.get_metric_history(rl.info.run_id, key)
        assert len(history) == config["rl"]["max_steps"], key  # one value per RL step
    assert client.get_metric_history(rl.info.run_id, "env/turns")[0].value >= 1
    transcripts = _artifact(client, rl.info.run_id, "samples/transcripts.md")
    assert "held-out episodes" in transcripts and "reward" in transcripts

    ttc = by_stage["ttc"]
    for ckpt in ("pretrain", "rl"):
        assert f"ttc/{ckpt}/env/tool_calls_per_episode" in ttc.data.metrics
        assert f"ttc/{ckpt}/env/seconds_total" in ttc.data.metrics
        assert "calc: " in _artifact(client, ttc.info.run_id, f"ttc/transcripts_{ckpt}.md")
    points = _artifact(client, ttc.info.run_id, "ttc/points.csv").splitlines()[0].split(",")
    assert "tool_calls" in points and "env_s" in points  # tool calls and env seconds in the compute accounting

    out = result["compare"].details["contestants"]
    assert out["frontier"]["status"] == "ok" and out["frontier"]["env/tool_calls_per_episode"] == 1.0
    frontier = next(r for r in runs if r.data.tags.get("contestant") == "frontier")
    assert frontier.data.metrics["compare/acc_greedy"] == 1.0  # two turns over the API: a call, then the answer
    assert frontier.data.metrics["compare/env/invalid_actions_per_episode"] == 0.0
    assert "tool calls / episode" in _artifact(client, by_stage["compare"].info.run_id, "compare/comparison.md")


def programmer(prompt: str, seed: int, temperature: float) -> str:
    """A chat model that reads f's examples and writes f; wrong on purpose for odd seeds when sampling."""
    f0, f1 = map(int, re.findall(r"f\(0\)=(-?\d+) f\(1\)=(-?\d+)", prompt)[-1])
    a, b = f1 - f0, f0
    if temperature > 0 and seed % 2:
        a += 1
    return f"Here it is:\n```python\ndef f(x):\n    return x*{a}+({b})\n```"


def saboteur(prompt: str, seed: int, temperature: float) -> str:
    """A chat model whose programs try to escape: reading host files, or loading ctypes."""
    attack = "print(open('/etc/passwd').read())" if seed % 2 == 0 else "import ctypes"
    return f"```python\n{attack}\ndef f(x):\n    return x\n```"


def test_code_env_in_compare_scores_api_models_in_the_sandbox(tmp_path, monkeypatch):
    from thinkflow.runner import run_stage, start_pipeline_run

    monkeypatch.setenv("THINKFLOW_ENV_KEY", KEY)
    with (
        ScriptedOpenAIServer(respond=programmer, api_key=KEY) as good,
        ScriptedOpenAIServer(respond=saboteur, api_key=KEY) as bad,
    ):
        config = compose(
            [
                "task=code",
                "task.n_test=6",
                "compare.ks=[1,2,4]",
                "compare.max_new_tokens=64",
                "task.env.sandbox.cpu_s=1",
                "task.env.sandbox.wall_s=3",
            ],
            root=tmp_path,
        )
        config |= {"pretrain": None, "rl": None, "ttc": None}
        model, tok = build_model_and_tokenizer(
            dict(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, d_ff=64, max_seq_len=128), seed=0
        )
        local = {"kind": "hf", "model": str(save_hf(model, tok, tmp_path / "local")), "prompt": "plain"}
        config["compare"]["contestants"] = {
            "programmer": _api(good.base_url),
            "saboteur": _api(bad.base_url),
            "local": local,
        }
        result = run_stage("compare", config, start_pipeline_run(config, None), {}, None)
    out = result.details["contestants"]
    assert out["programmer"]["status"] == "ok" and out["saboteur"]["status"] == "ok" and out["local"]["status"] == "ok"
    assert out["local"]["env/mean_reward"] == 0.0  # an untrained open model writes no function: invalid, scored 0
    assert out["programmer"]["env/sandbox_violations"] == 0 and out["programmer"]["env/mean_reward"] > 0.5
    # every saboteur program ran (greedy + 4 samples per problem), broke a rule, scored 0; the stage went on
    assert out["saboteur"]["env/sandbox_violations"] == 6 * 5 and out["saboteur"]["env/mean_reward"] == 0.0
    client, runs = _runs(tmp_path)
    per = {r.data.tags["contestant"]: r.data.metrics for r in runs if "contestant" in r.data.tags}
    assert per["programmer"]["compare/acc_greedy"] == 1.0 and per["saboteur"]["compare/acc_greedy"] == 0.0
    assert per["programmer"]["compare/pass_at_k"] == 1.0  # pass@4: some sample of each problem is right
    assert "sandbox violations" in result.summary_md
