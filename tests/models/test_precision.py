"""trainer.precision=auto: bf16 mixed precision where the hardware does bf16 natively (CUDA, AVX512-BF16, AMX),
fp32 elsewhere, recorded on the run; sampling under the same autocast."""

import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import compose
from thinkflow.inference import HFEngine, SamplingParams
from thinkflow.models import load_checkpoint
from thinkflow.models import precision as prec
from thinkflow.models.families import write_tiny
from thinkflow.runner import run_stage, start_pipeline_run


def test_auto_is_bf16_only_where_it_is_native(monkeypatch):
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert prec.resolve_precision("auto", "cpu") == ("bf16-mixed", "auto: native bf16 (cpu: avx512_bf16)")
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx2"})  # e.g. an AVX2-only EPYC
    assert prec.resolve_precision("auto", "cpu") == ("32-true", "auto: no native bf16 on this cpu (fp32)")
    assert prec.resolve_precision("bf16-mixed", "cpu")[0] == "bf16-mixed"  # an explicit choice stands
    assert prec.autocast_dtype("bf16-mixed") is torch.bfloat16 and prec.autocast_dtype("32-true") is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny("llama", tmp_path_factory.mktemp("prec") / "llama")


def test_sampling_under_bf16_autocast_is_close_to_fp32(tiny):
    model, tok = load_checkpoint(tiny)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=0)
    fp32 = HFEngine(model, tok).generate(["12*34=", "7+5="], params)
    bf16 = HFEngine(model, tok, autocast=torch.bfloat16).generate(["12*34=", "7+5="], params)
    a = torch.tensor([s.logprobs[0] for g in fp32 for s in g])
    b = torch.tensor([s.logprobs[0] for g in bf16 for s in g])
    assert not torch.equal(a, b)  # the matmuls did run in bf16 ...
    assert (a - b).abs().mean() < 0.1  # ... and the first token's log-prob moved little (a random, sharp model)
    assert model.dtype == torch.float32  # the weights stay fp32 (autocast, not a cast)


def test_the_rl_stage_records_the_precision_it_used(tiny, tmp_path):
    config = compose(["~pretrain", f"rl.init_from={tiny}", "rl.max_steps=1", "trainer.precision=auto"], root=tmp_path)
    result = run_stage("rl", config, start_pipeline_run(config, None), {}, None)
    used = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").get_run(result.run_id).data.params
    assert used["trainer.precision_used"] == prec.resolve_precision("auto", "cpu")[0]
