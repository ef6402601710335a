"""Compute-optimal selection on a constructed table; the ttc_eval stage end to end on a tiny model."""

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT, compose
from thinkflow.config import ConfigError, validate
from thinkflow.scaling.curves import per_problem
from thinkflow.ttc.allocation import compute_optimal, compute_saving, difficulty_bins


def test_compute_optimal_picks_the_right_strategy_per_bin():
    # 4 easy problems: maj@1 already right; 4 hard ones: only bon@4 (which costs 4x) gets them right.
    ks = [1, 4]
    easy, hard = np.array([[1.0, 1.0]] * 4), np.array([[0.0, 1.0]] * 4)
    curves = {"maj": np.vstack([easy, np.zeros((4, 2))]), "bon": np.vstack([easy * [1, 1], hard])}
    flops = {s: np.tile([1.0, 4.0], (8, 1)) for s in curves}
    bins = difficulty_bins(np.array([1.0] * 4 + [0.1] * 4), 2)
    assert bins.tolist() == [0] * 4 + [1] * 4
    table = compute_optimal(curves, flops, ks, bins, budgets=[1.0, 4.0], baseline="bon")
    assert table["optimal_accuracy"].tolist() == [0.5, 1.0]
    assert table["choice_by_bin"].iloc[1].split()[1] == "bon@4"  # the hard bin needs the expensive setting
    assert compute_saving(table, baseline_best=1.0, baseline_flops=4.0) == 1.0
    assert compute_saving(table, baseline_best=0.0, baseline_flops=4.0) is None  # nothing to match


def test_per_problem_counts_missing_answers_as_wrong():
    table = pd.DataFrame(
        {
            "problem_id": ["a"] * 4,
            "correct": [True, False, False, False],
            "answer": ["7", None, None, "8"],
            "logprob_mean": [-0.1, -0.2, -0.3, -0.4],
            "logprob_sum": [-1.0, -2.0, -3.0, -4.0],
        }
    )
    curves = per_problem(table, [1, 2, 4])
    assert curves["pass"][0].tolist() == pytest.approx([0.25, 0.5, 1.0])
    assert curves["maj"][0, 0] == pytest.approx(0.25)  # k=1: the one correct sample
    assert curves["maj"][0, 2] == pytest.approx(0.5)  # k=4: "7" and "8" tie, None never votes
    assert all(not np.isnan(v).any() for v in curves.values())


def test_ttc_config_errors_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"ks=\[1, 128\] must be non-empty with 1 <= k <= n_max=64"):
        validate(compose(["ttc.ks=[1,128]"], root=tmp_path, tiny=False))
    with pytest.raises(ConfigError, match=r"none of ttc.checkpoints=\['rl'\] runs in this pipeline"):
        validate(compose(["ttc.checkpoints=[rl]"], root=tmp_path) | {"rl": None})
    with pytest.raises(ConfigError, match=r"ttc.strategies.1: Input should be 'pass', 'maj'"):
        validate(compose(["ttc.strategies=[pass,majority]"], root=tmp_path))
    with pytest.raises(ConfigError, match="must include pass and maj"):
        validate(compose(["ttc.strategies=[pass,bon]"], root=tmp_path))
    with pytest.raises(ConfigError, match="Input should be 'pretrain', 'sft' or 'rl'"):
        validate(compose(["ttc.checkpoints=[compare]"], root=tmp_path))
    with pytest.raises(ConfigError, match=r"none of ttc.checkpoints=\['sft'\] runs in this pipeline"):
        validate(compose(["ttc.checkpoints=[sft]"], root=tmp_path))  # sft is off by default


def test_ttc_eval_stage_on_a_tiny_checkpoint(tmp_path):
    from mlflow import MlflowClient

    from thinkflow.runner import run_stage, start_pipeline_run

    config = compose(["seed=1"], root=tmp_path) | {"rl": None}  # evaluates the stages that run: pretrain
    parent = start_pipeline_run(config, None)
    up = {"pretrain": run_stage("pretrain", config, parent, {}, None)}
    result = run_stage("ttc", config, parent, up, None)
    points = pd.read_csv(result.table)
    assert set(points.strategy) == {"pass", "maj", "bon", "bon_logprob", "weighted_maj", "weighted_maj_logprob"}
    assert sorted(set(points.k)) == [1, 2, 4, 8] and (points.n_problems == 16).all() and (points.n_samples == 8).all()
    assert (points.ci_low <= points.accuracy).all() and (points.accuracy <= points.ci_high).all()
    assert points.groupby("strategy").flops.is_monotonic_increasing.all()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    history = client.get_metric_history(result.run_id, "ttc/pretrain/maj_at_k")
    assert [m.step for m in history] == [1, 2, 4, 8]
    names = {a.path for a in client.list_artifacts(result.run_id, "ttc")}
    assert {"ttc/points.csv", "ttc/accuracy_vs_flops.png", "ttc/samples_pretrain.csv", "ttc/summary.md"} <= names
    assert "16 held-out problems x 8 samples" in result.summary_md
    no_answer = client.get_metric_history(result.run_id, "ttc/pretrain/no_answer_frac")[0].value
    table = pd.read_csv(client.download_artifacts(result.run_id, "ttc/samples_pretrain.csv", str(tmp_path / "dl")))
    assert no_answer == pytest.approx(1 - table.has_answer.mean())  # counted, and they are all wrong:
    assert not table[~table.has_answer].correct.any()
    too_long = compose(["seed=1", "ttc.max_new_tokens=60"], root=tmp_path) | {"rl": None}
    with pytest.raises(ConfigError, match=r"ttc.max_new_tokens=60 \+ the longest prompt .* context of 64 tokens"):
        run_stage("ttc", too_long, parent, up, None)  # before any sampling


def test_ttc_eval_on_math500_reports_by_level_and_allocates_over_levels(tmp_path):
    """An evaluation-only benchmark through ttc_eval: a local checkpoint (``ttc.init_from``), pass@1 by level and
    subject, the compute-optimal allocation binned by MATH-500's five levels."""
    from mlflow import MlflowClient

    from thinkflow.checkpoints import save_hf
    from thinkflow.models import build_model_and_tokenizer
    from thinkflow.runner import run_stage, start_pipeline_run

    math500 = ROOT.parent / "shared" / "datasets" / "math500"
    if not (math500 / "test.jsonl").exists():
        pytest.skip(f"MATH-500 not found at {math500}")
    tiny = {"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64, "max_seq_len": 2048}
    ckpt = save_hf(*build_model_and_tokenizer(tiny, seed=3), tmp_path / "model")
    overrides = [
        "task=math500",
        f"task.source={math500}",
        "task.n_test=10",
        "task.shots=0",
        f"ttc.init_from={ckpt}",
        "ttc.n_max=4",
        "ttc.ks=[1,2,4]",
        "ttc.budgets=[]",
        "ttc.wait_min_think=[]",
        "ttc.verifier.samples=2",
    ]
    config = compose(overrides, root=tmp_path) | {"pretrain": None, "rl": None, "compare": None}
    result = run_stage("ttc", config, start_pipeline_run(config, None), {}, None)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    metrics = client.get_run(result.run_id).data.metrics
    levels = {k for k in metrics if k.startswith("ttc/init/level_")}
    assert levels == {f"ttc/init/level_{lv}/pass_at_1" for lv in range(1, 6)}  # 10 problems, stratified: 1 2 2 2 3
    assert any(k.startswith("ttc/init/subject_") for k in metrics)
    assert "ttc/init/thinking_tokens" in metrics and "ttc/init/answer_tokens" in metrics
    assert metrics["ttc/init/answer_checks/timeouts"] == 0 and "ttc/init/answer_checks/screened" in metrics
    allocation = pd.read_csv(client.download_artifacts(result.run_id, "ttc/allocation_init.csv", str(tmp_path)))
    assert (allocation.choice_by_bin.str.split().str.len() == 5).all()  # one choice per level
    assert "| group | value | problems | init: pass@1 |" in result.summary_md
    assert "| level | 3 | 2 | " in result.summary_md and "| level | 5 | 3 | " in result.summary_md
