"""trainer.precision=auto: bf16 mixed precision where the hardware does bf16 natively (CUDA, AVX512-BF16, AMX),
fp32 elsewhere, recorded on the run; sampling under the same autocast."""

import pandas as pd
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


def test_ttc_samples_in_the_training_precision_and_records_it(tiny, tmp_path):
    """ttc (like compare) samples under trainer.precision's autocast; a precision change is a new result."""
    common = ["~pretrain", "~rl", "~compare", f"ttc.init_from={tiny}", "ttc.n_max=2", "ttc.ks=[1,2]"]
    common += ["ttc.n_problems=4", "ttc.max_new_tokens=6", "ttc.budgets=[]", "ttc.search.widths=[]"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    tables = {}
    for precision in ("32-true", "bf16-mixed"):
        config = compose([*common, f"trainer.precision={precision}"], root=tmp_path)
        result = run_stage("ttc", config, start_pipeline_run(config, None), {}, None)
        assert client.get_run(result.run_id).data.params["trainer.precision_used"] == precision
        tables[precision] = client.download_artifacts(result.run_id, "ttc/samples_init.csv", str(tmp_path / precision))
    fp32, bf16 = (pd.read_csv(tables[p]) for p in ("32-true", "bf16-mixed"))
    assert not fp32.logprob_mean.equals(bf16.logprob_mean)  # sampled in bf16, not reused from the fp32 run
