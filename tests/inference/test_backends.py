"""Backend selection, and the vLLM backend against a real ``vllm serve`` where vLLM is installed."""

import os
from pathlib import Path

import pytest

from thinkflow.inference import GenerationError, HFEngine, SamplingParams, open_engine
from thinkflow.inference.vllm_server import DEFAULT_VENV, vllm_python
from thinkflow.models import build_model_and_tokenizer

TINY = dict(n_layers=2, d_model=64, n_heads=2, n_kv_heads=1, d_ff=128, max_seq_len=128, tie_embeddings=False)
# (vLLM's CPU attention needs head_dim >= 32; untied embeddings reload in place)
PROMPTS = ["0347*6=", "1234*5=", "9,8,8,4:29="]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt")
    model, tok = build_model_and_tokenizer(TINY, seed=7)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_unknown_backend_names_the_choices(checkpoint):
    with (
        pytest.raises(GenerationError, match="unknown inference backend 'tgi'; known backends: hf, vllm"),
        open_engine("tgi", checkpoint),
    ):
        pass


def test_vllm_not_installed_is_a_clear_error(checkpoint, tmp_path):
    with (
        pytest.raises(GenerationError, match="needs vLLM in its own venv.*create-venv"),
        open_engine("vllm", checkpoint, vllm_python=str(tmp_path / "nope" / "bin" / "python")),
    ):
        pass


def test_hf_backend_from_a_checkpoint_dir(checkpoint):
    with open_engine("hf", checkpoint) as engine:
        out = engine.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=1))
    assert isinstance(engine, HFEngine) and [len(g) for g in out] == [2, 2, 2]


def _vllm_available() -> bool:
    try:
        vllm_python()
        return True
    except GenerationError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(
    not _vllm_available(),
    reason=f"vLLM venv not found ({os.environ.get('THINKFLOW_VLLM_PYTHON') or DEFAULT_VENV}); "
    "create it with `python -m thinkflow.inference.vllm_server create-venv`",
)
def test_vllm_backend_matches_hf_and_reloads_weights(checkpoint, tmp_path):
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    served = tmp_path / "served"
    shutil.copytree(checkpoint, served)
    with open_engine("hf", served) as hf:
        want = hf.generate(PROMPTS, SamplingParams(max_new_tokens=10, ignore_eos=True))
    with open_engine("vllm", served, max_model_len=128) as engine:
        got = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, ignore_eos=True))
        sampled = engine.generate(PROMPTS[:1], SamplingParams(n=4, temperature=1.0, max_new_tokens=6, seed=3))
        # New weights on disk reach the running server without a restart.
        model = AutoModelForCausalLM.from_pretrained(served)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(-1.0)
        model.save_pretrained(served)
        with open_engine("hf", served) as hf2:
            want2 = hf2.generate(PROMPTS, SamplingParams(max_new_tokens=10, ignore_eos=True))
        reload_s = engine.server.refresh_weights()
        got2 = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, ignore_eos=True))
    for g, w in zip(got, want, strict=True):
        assert g[0].token_ids == w[0].token_ids
        assert torch.allclose(torch.tensor(g[0].logprobs), torch.tensor(w[0].logprobs), atol=1e-3)
        assert g[0].prompt_tokens == w[0].prompt_tokens and g[0].gen_tokens == 10
    assert len(sampled[0]) == 4 and all(s.gen_tokens >= 1 for s in sampled[0])
    assert [g[0].token_ids for g in got2] == [w[0].token_ids for w in want2] != [g[0].token_ids for g in got]
    assert reload_s < 5  # in place, not a restart
