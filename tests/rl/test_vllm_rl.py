"""The rl stage with rollouts from a real vLLM server whose weights are reloaded every step."""

import pytest

from tests.conftest import compose
from tests.inference.test_backends import TINY, _vllm_available
from thinkflow.checkpoints import save_hf
from thinkflow.models import build_model_and_tokenizer
from thinkflow.runner import run_stage, start_pipeline_run


@pytest.mark.slow
@pytest.mark.skipif(
    not _vllm_available(),
    reason="vLLM venv not installed; create it with `python -m thinkflow.inference.vllm_server create-venv`",
)
def test_rl_with_vllm_rollouts_refreshes_weights_in_place(tmp_path):
    from mlflow import MlflowClient

    model, tok = build_model_and_tokenizer(TINY, seed=7)  # head_dim 32, untied: vLLM CPU reloads in place
    init = save_hf(model, tok, tmp_path / "init")
    overrides = [
        "rl.backend=vllm",
        "rl.max_steps=3",
        "rl.eval_every=3",
        "rl.ckpt_every=3",
        "rl.lr=1e-2",
        "rl.reward.format_weight=1.0",
        f"rl.init_from={init}",
    ]
    config = compose(overrides, root=tmp_path) | {"pretrain": None}
    result = run_stage("rl", config, start_pipeline_run(config, None), {}, None)
    assert result.metrics["steps"] == 3
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    sync = {m.step: m.value for m in client.get_metric_history(result.run_id, "perf/weight_sync_s")}
    assert sync[1] == 0 and sync[2] > 0 and sync[3] > 0  # step 1 samples the initial weights; then reloads
    served = tmp_path / "mlruns" / "work" / "rl"
    log = next(served.glob("*/vllm-*.log")).read_text()
    # reloads after updates 1 and 2 (for steps 2 and 3) and 3 (for the final evaluation), no restart
    assert log.count("Reloading and processing weights took") == 3, log[-2000:]
    assert log.count("Starting vLLM") <= 1 and log.count("Application startup complete") == 1
