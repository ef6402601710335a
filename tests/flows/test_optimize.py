"""Optuna search over RL hyperparameters: each trial a pipeline run, pretraining reused across trials."""

import pytest
from mlflow import MlflowClient

from flows.optimize import optimize, parse_space
from thinkflow.config import ConfigError
from thinkflow.sweeps import SWEEP_TAG


@pytest.mark.slow
def test_optuna_trials_are_pipeline_runs_and_pretraining_is_reused(tmp_path, prefect_server):
    base = ["experiment=tiny", f"paths.root={tmp_path}", "~ttc", "~compare", "rl.reward.format_weight=1.0"]
    space = parse_space(["rl.lr=log:1e-4:1e-2", "rl.clip_high=float:0.2:0.4"])
    out = optimize(3, space, base, "test-study", seed=0)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("thinkflow").experiment_id
    runs = client.search_runs([exp], f"tags.{SWEEP_TAG} = 'test-study'")
    trials = sorted((r for r in runs if "optuna.trial" in r.data.tags), key=lambda r: r.data.tags["optuna.trial"])
    assert [r.data.tags["optuna.trial"] for r in trials] == ["0", "1", "2"] and out["trials"] == 3
    values = [r.data.metrics["rl/val_pass_at_1"] for r in trials]
    assert out["best_value"] == pytest.approx(max(values))
    lrs = {r.data.params["rl.lr"] for r in trials}
    assert len(lrs) == 3  # the sampler proposed different learning rates
    # pretraining ran once: trials 1 and 2 reused trial 0's pretrain stage
    reused = [
        client.search_runs([exp], f"tags.mlflow.parentRunId = '{r.info.run_id}' and tags.stage = 'pretrain'")[0]
        for r in trials[1:]
    ]
    first_pretrain = client.search_runs(
        [exp], f"tags.mlflow.parentRunId = '{trials[0].info.run_id}' and tags.stage = 'pretrain'"
    )[0]
    assert all(r.data.tags.get("thinkflow.reused_from") == first_pretrain.info.run_id for r in reused)
    summary = client.get_run(out["run_id"])
    assert summary.data.metrics["optuna/best_val_pass_at_1"] == pytest.approx(max(values))
    assert {"best.rl.lr", "best.rl.clip_high"} <= set(summary.data.params)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("rl.lr=log:0:1", "low > 0"),
        ("rl.lr=uniform:1:2", "unknown kind"),
        ("rl.group_size=choice:4", "two choices"),
        ("rl.lr", "expected key=kind:args"),
        ("rl.lr=float:2:1", "low < high"),
    ],
)
def test_bad_search_space_is_named(spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_space([spec])
    assert spec in str(err.value)
