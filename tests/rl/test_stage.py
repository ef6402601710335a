"""The rl stage on tiny configs: objectives end to end, KL to a reference, guards, a NaN loss
that stops cleanly and keeps the last good checkpoint, resume, and bad input."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import compose
from thinkflow.config import ConfigError, validate
from thinkflow.rl.learner import Guards, TrainingDivergedError
from thinkflow.runner import run_stage, start_pipeline_run

SIGNAL = ["seed=1", "rl.reward.format_weight=1.0", "rl.prompts_per_step=8"]  # reward variance for a tiny model


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
    """A 20-step tiny pretrain checkpoint (shared by the tests here)."""
    root = tmp_path_factory.mktemp("pre")
    config = compose(["seed=1"], root=root)
    parent = start_pipeline_run(config, None)
    return run_stage("pretrain", config, parent, {}, None).checkpoint


def rl_config(root: Path, init: str, extra: list[str] = ()) -> dict:
    """RL alone, from ``init`` (the pretrain section dropped, as a user's config would)."""
    return compose([*SIGNAL, f"rl.init_from={init}", *extra], root=root) | {"pretrain": None}


def history(root: Path, run_id: str, key: str) -> list[float]:
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    return [m.value for m in client.get_metric_history(run_id, key)]


@pytest.mark.parametrize("objective", ["grpo", "dr_grpo", "dapo"])
def test_each_objective_runs_the_stage(objective, pretrained, tmp_path):
    config = rl_config(tmp_path, pretrained, [f"rl.objective={objective}"])
    result = run_stage("rl", config, start_pipeline_run(config, None), {}, None)
    assert result.metrics["steps"] == 4 and 0 <= result.metrics["val_pass@1"] <= 1
    assert len(history(tmp_path, result.run_id, "rl/loss")) == 4
    if objective == "dapo":
        assert history(tmp_path, result.run_id, "rl/refill_rounds")


def test_kl_to_the_reference_grows_once_the_policy_moves(pretrained, tmp_path):
    config = rl_config(tmp_path, pretrained, ["rl.beta=0.1", "rl.lr=3e-3"])
    result = run_stage("rl", config, start_pipeline_run(config, None), {}, None)
    kl = history(tmp_path, result.run_id, "rl/kl")
    assert min(kl) >= 0 and max(kl) > 1e-6  # k3 is never negative; > 0 once the weights moved


def test_nan_loss_stops_keeps_the_last_good_checkpoint_and_resume_finishes(pretrained, tmp_path, monkeypatch):
    import thinkflow.rl.learner as learner

    config = rl_config(tmp_path, pretrained)
    calls = {"n": 0}
    real_loss = learner.policy_loss

    def nan_at_step_3(*args, **kwargs):  # 2 updates per RL step: call 7 is RL step 3
        out = real_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 7:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(learner, "policy_loss", nan_at_step_3)
    parent = start_pipeline_run(config, None)
    with pytest.raises(TrainingDivergedError, match="non-finite loss.*RL step 3.*last good checkpoint"):
        run_stage("rl", config, parent, {}, None)
    work = next((tmp_path / "mlruns" / "work" / "rl").iterdir())
    assert json.loads((work / "hf" / "thinkflow.json").read_text())["rl_step"] == 2
    assert (work / "lightning" / "last.ckpt").exists()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    failed = [
        r
        for r in client.search_runs([client.get_experiment_by_name("thinkflow").experiment_id])
        if r.data.tags.get("stage") == "rl"
    ]
    assert [r.info.status for r in failed] == ["FAILED"]

    monkeypatch.setattr(learner, "policy_loss", real_loss)
    result = run_stage("rl", config, parent, {}, None)  # same config: resumes from RL step 2
    assert result.metrics["steps"] == 4
    evals = client.download_artifacts(result.run_id, "rl/evals.json", str(tmp_path / "dl"))
    steps = [e["step"] for e in json.loads(Path(evals).read_text())["evals"]]
    assert steps == [0, 2, 4]  # step 0 came from the first attempt, restored with the checkpoint
    assert json.loads((work / "hf" / "thinkflow.json").read_text())["rl_step"] == 4


def test_guards_flag_reward_and_length_collapse():
    g = Guards(window=2, collapse_ratio=0.25, min_len=2.0)
    flags = [g.update(r, 10.0) for r in (0.8, 0.8, 0.5, 0.5)]
    assert all(f["guard/reward_collapse"] == 0 for f in flags)
    flags = [g.update(r, 1.0) for r in (0.1, 0.1)]
    assert flags[-1]["guard/reward_collapse"] == 1.0  # 0.1 < 0.25 * 0.8
    assert flags[-1]["guard/length_collapse"] == 1.0  # mean length 1 < 2 tokens


def test_collapse_can_stop_the_stage(pretrained, tmp_path):
    from thinkflow.rl.learner import CollapseError

    # min_response_len above anything the model writes: length "collapse" from step 1
    config = rl_config(tmp_path, pretrained, ["rl.guards.min_response_len=1000", "rl.guards.stop_on_collapse=true"])
    with pytest.raises(CollapseError, match="response length collapse at RL step 0"):
        run_stage("rl", config, start_pipeline_run(config, None), {}, None)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["rl.group_size=1"], r"rl.group_size: Input should be greater than or equal to 2"),
        (["rl.minibatches=1000"], "minibatches=1000 exceeds the rollout batch"),
        (["rl.objective=ppo"], "rl.objective"),
    ],
)
def test_bad_rl_config_is_named(overrides, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        validate(compose(overrides, root=tmp_path))


def test_rl_without_pretrain_or_init_from_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="rl needs a starting checkpoint"):
        validate(compose(root=tmp_path) | {"pretrain": None})


def test_missing_or_too_short_checkpoint_context(pretrained, tmp_path):
    config = rl_config(tmp_path, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="starting checkpoint: no HF checkpoint at .*nowhere"):
        run_stage("rl", config, start_pipeline_run(config, None), {}, None)
    config = rl_config(tmp_path, pretrained, ["rl.max_new_tokens=60"])
    with pytest.raises(ConfigError, match="rl.max_new_tokens=60 .* exceeds the model context of 64"):
        run_stage("rl", config, start_pipeline_run(config, None), {}, None)


def test_beta_without_a_reference_model_is_refused(pretrained, tmp_path):
    from thinkflow.catalog import build_task
    from thinkflow.models import load_checkpoint
    from thinkflow.rl.learner import GRPOModule
    from thinkflow.rl.sync import InProcessPolicy

    model, tok = load_checkpoint(pretrained)
    rl = validate(rl_config(tmp_path, pretrained, ["rl.beta=0.1"])).rl
    with pytest.raises(ValueError, match="beta > 0 needs a reference model"):
        GRPOModule(
            model,
            tok,
            build_task("multiplication", 2),
            train_problems=[],
            val_problems=[],
            rl=rl,
            seed=0,
            policy=InProcessPolicy(),
            tracker=None,
            run_id="r",
        )


def test_rl_work_dir_survives_a_reexport_of_the_same_weights(pretrained, tmp_path):
    """A rerun re-exports the finished pretrain checkpoint; RL must still resume from its own work dir."""
    import torch

    from thinkflow.checkpoints import save_hf
    from thinkflow.models import load_checkpoint
    from thinkflow.rl.stage import rl_section

    init = tmp_path / "init"
    model, tok = load_checkpoint(pretrained)
    save_hf(model, tok, init)
    cfg = validate(rl_config(tmp_path, str(init)))
    before = rl_section(cfg, str(init))
    save_hf(model, tok, init)  # same weights, new files
    assert rl_section(cfg, str(init)) == before
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_hf(model, tok, init)
    assert rl_section(cfg, str(init)) != before
