"""End to end: the Prefect flow on a tiny config, a real MLflow SQLite store, a Prefect server."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import ROOT, compose

# a format reward gives the 20-step tiny model some reward variance (signal) to learn from
RL_SIGNAL = ["rl.reward.format_weight=1.0", "rl.prompts_per_step=8"]


def _runs(root):
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("thinkflow")
    return client, client.search_runs([exp.experiment_id])


def test_pipeline_parent_and_stage_runs(tmp_path, prefect_server):
    from flows.pipeline import pipeline

    config = compose(root=tmp_path)
    result = pipeline(config)

    client, runs = _runs(tmp_path)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {
        r.data.tags["stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    }
    assert len(parents) == 1 and sorted(children) == ["compare", "pretrain", "rl", "ttc"]
    # the compare stage's contestants (this pipeline's checkpoints), one run each under the stage's run
    contestants = {r.data.tags["contestant"]: r for r in runs if "contestant" in r.data.tags}
    assert sorted(contestants) == ["pretrain", "rl"]
    assert all(r.data.tags["mlflow.parentRunId"] == children["compare"].info.run_id for r in contestants.values())
    assert {"compare/pretrain/acc_greedy", "compare/rl/acc_greedy"} <= set(parents[0].data.metrics)
    parent, child = parents[0], children["pretrain"]
    assert result["parent_run_id"] == parent.info.run_id
    flow_run_id = parent.data.tags["prefect.flow_run_id"]
    for run in children.values():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert flow_run_id and run.data.tags["prefect.flow_run_id"] == flow_run_id
        assert run.info.status == "FINISHED"
    assert parent.info.status == "FINISHED"

    # the compute-spend profile: per stage on its run, the table and charts on the parent
    for name, run in children.items():
        assert run.data.metrics["profile/wall_s"] > 0 and run.data.metrics["profile/peak_rss_mb"] > 100, name
        assert run.data.metrics["profile/flops"] > 0, name
    assert children["pretrain"].data.metrics["profile/train/tokens_processed"] > 0
    assert {"profile/rollout/flops", "profile/learn/flops", "profile/eval/flops"} <= set(children["rl"].data.metrics)
    pm = parent.data.metrics
    # the stage times (and the setup before the first stage) add up to the pipeline's wall time
    assert pm["profile/accounted_wall_s"] == pytest.approx(pm["profile/pipeline_wall_s"], rel=0.05)
    assert pm["profile/flops"] == pytest.approx(sum(r.data.metrics["profile/flops"] for r in children.values()))
    assert sum(v for k, v in pm.items() if k.startswith("profile/share/")) == pytest.approx(1.0)
    assert pm["profile/decode_b64/tokens_per_s"] > pm["profile/decode_b1/tokens_per_s"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "profile")} == {
        f"profile/{f}"
        for f in ("profile.md", "profile.csv", "compute_share.png", "roofline.png", "roofline_points.csv")
    }

    # the ttc summary table is a Prefect markdown artifact of the flow run
    from prefect.artifacts import Artifact

    artifact = Artifact.get("ttc-summary")
    assert artifact is not None and str(artifact.flow_run_id) == flow_run_id
    assert "held-out problems x 8 samples" in artifact.data and result["ttc"].summary_md is None
    assert "Share of FLOPs: pretraining" in Artifact.get("compute-profile").data
    assert {"ttc/pass_at_1", "rl/val_pass_at_1", "pretrain/val_acc"} <= set(parent.data.metrics)

    # The full resolved config: flattened params on the parent, an artifact too.
    assert parent.data.params["pretrain.max_steps"] == "20"
    assert parent.data.params["model.d_model"] == "32"
    assert child.data.params["pretrain.lr"] == str(config["pretrain"]["lr"])
    cfg_file = client.download_artifacts(parent.info.run_id, "config/resolved.yaml", str(tmp_path / "dl"))
    assert "max_steps: 20" in Path(cfg_file).read_text()

    # Stage metrics with slash keys, histories with steps.
    for key in ("train/loss", "val/loss", "pretrain/val_acc", "perf/train_tokens_per_s"):
        assert key in child.data.metrics, key
    acc_history = client.get_metric_history(child.info.run_id, "pretrain/val_acc")
    assert [m.step for m in acc_history] == [9, 19]
    assert 0.0 <= child.data.metrics["pretrain/val_acc"] <= 1.0
    assert "pretrain/val_acc" in parent.data.metrics

    # The checkpoint is HF format, in the work dir and logged as an artifact.
    ckpt = result["pretrain"].checkpoint
    assert ckpt.startswith(str(tmp_path)) and (tmp_path / ckpt / "model.safetensors").exists()
    names = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")}
    assert {"checkpoint/config.json", "checkpoint/model.safetensors", "checkpoint/tokenizer.json"} <= names
    samples = client.download_artifacts(child.info.run_id, "samples/val_greedy.jsonl", str(tmp_path / "dl"))
    rows = [json.loads(line) for line in Path(samples).read_text().splitlines()]
    assert len(rows) == config["task"]["n_test"] and {"prompt", "completion", "correct"} <= set(rows[0])


def test_rl_stage_logs_learns_from_and_exports_a_checkpoint(tmp_path, prefect_server):
    """The rl child run of the same kind of pipeline: rollout/learner metrics per RL step, held-out
    evaluation at step 0 and every eval_every, a samples table, an HF checkpoint with new weights."""
    from flows.pipeline import pipeline
    from thinkflow.models import load_checkpoint

    config = compose(["seed=1", *RL_SIGNAL], root=tmp_path)
    result = pipeline(config)
    client, runs = _runs(tmp_path)
    rl = next(r for r in runs if r.data.tags.get("stage") == "rl")
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    keys = (
        "rl/reward_mean",
        "rl/reward_std",
        "rl/frac_zero_std",
        "rl/kl",
        "rl/entropy",
        "rl/clip_frac",
        "rl/response_len",
        "rl/loss",
        "perf/rollout_tokens_per_s",
        "perf/learner_tokens_per_s",
        "rl/val_acc",
        "rl/val_pass_at_1",
        "guard/reward_collapse",
        "guard/length_collapse",
    )
    for key in keys:
        assert key in rl.data.metrics, key
    assert [m.step for m in client.get_metric_history(rl.info.run_id, "rl/reward_mean")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(rl.info.run_id, "rl/val_pass_at_1")] == [0, 2, 4]
    assert rl.data.metrics["perf/rollout_tokens_per_s"] > 0 and rl.data.metrics["rl/entropy"] > 0
    assert parent.data.metrics["rl/val_pass_at_1"] == result["rl"].metrics["val_pass@1"]
    assert result["rl"].metrics["steps"] == 4 and result["rl"].metrics["n_val"] == config["task"]["n_test"]

    table = client.download_artifacts(rl.info.run_id, "samples/rollouts.json", str(tmp_path / "dl"))
    data = json.loads(Path(table).read_text())
    assert {"prompt", "completion", "reward", "advantage", "step"} <= set(data["columns"])
    assert {row[data["columns"].index("step")] for row in data["data"]} == {0, 2}

    before, _ = load_checkpoint(result["pretrain"].checkpoint)
    after, _ = load_checkpoint(result["rl"].checkpoint)
    assert json.loads((Path(result["rl"].checkpoint) / "thinkflow.json").read_text())["rl_step"] == 4
    zero_std = [m.value for m in client.get_metric_history(rl.info.run_id, "rl/frac_zero_std")]
    assert min(zero_std) < 1  # some group had signal, so the policy gradient was not zero
    moved = [not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters(), strict=True)]
    assert any(moved)  # RL changed the weights


@pytest.mark.slow
def test_cli_sweep_runs_one_pipeline_per_job(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "flows/pipeline.py",
            "-m",
            f"paths.root={tmp_path}",
            "experiment=tiny",
            "pretrain.max_steps=10,20",
            "pretrain.eval_every=10",
            "trainer.progress_bar=false",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, runs = _runs(tmp_path)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.data.params["pretrain.max_steps"] for r in parents if r.data.params) == ["10", "20"]
    # 2 x (parent, pretrain, rl, ttc_eval, compare + its 2 contestants) + the sweep summary
    assert all(r.info.status == "FINISHED" for r in runs) and len(runs) == 15
    summary = [r for r in parents if r.data.tags.get("sweep.summary")]
    jobs = [r for r in parents if not r.data.tags.get("sweep.summary")]
    sweep_ids = {r.data.tags["sweep_id"] for r in parents}
    assert len(summary) == 1 and len(sweep_ids) == 1  # every job and the summary share one sweep id
    assert sorted(r.data.tags["sweep.job"] for r in jobs) == ["0", "1"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    table = client.download_artifacts(summary[0].info.run_id, "sweep/summary.csv", str(tmp_path / "dl"))
    rows = pd.read_csv(table)
    assert list(rows.job) == [0, 1] and "pretrain/val_acc" in rows.columns
    assert rows.overrides.str.contains("pretrain.max_steps=10").iloc[0]
    assert "# Sweep" in proc.stdout  # the table is printed at the end of the sweep
    # each job ends with one block: headline numbers, where results are, how to look at them
    assert proc.stdout.count("thinkflow: pipeline finished; MLflow parent run") == 2
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlruns/mlflow.db" in proc.stdout
    assert "prefect flow-run inspect" in proc.stdout
    # third-party noise that tells a user nothing is gone (thinkflow.quiet); Lightning's own lines stay
    noise = (
        "litlogger",
        "Writing model shards",
        "Loading weights",
        "isinstance(treespec, LeafSpec)",
        "Setting accelerator to CPU",
    )
    assert not [n for n in noise if n in proc.stdout + proc.stderr]
    # the jobs' accuracy-vs-inference-FLOPs curves and their models' measured decode speed, as plots
    plots = {a.path for a in client.list_artifacts(summary[0].info.run_id, "sweep")}
    assert {"sweep/ttc_curves.png", "sweep/decode_tokens_per_s.png"} <= plots
    assert (rows["profile/decode_b64/tokens_per_s"] > 0).all()


def test_sweep_plot_labels_keep_what_the_jobs_vary():
    from thinkflow.sweeps import job_labels

    table = pd.DataFrame({"job": [0, 1], "overrides": ["model=mha experiment=x a=1", "model=mqa experiment=x a=1"]})
    assert job_labels(table) == {0: "model=mha", 1: "model=mqa"}
    assert job_labels(table.iloc[:1]) == {0: "model=mha experiment=x a=1"}


@pytest.mark.slow
def test_pipeline_on_two_processes_with_zero3(tmp_path, prefect_server):
    """trainer=cpu_zero3: the Prefect tasks launch pretrain, sft and rl on 2 ranks (torchrun), rank 0 logs; sft's
    traces are collected once (by rank 0) and both ranks train on them."""
    from flows.pipeline import pipeline
    from thinkflow.models import load_checkpoint

    sft = ["sft=default", "sft.sources.self=null", "sft.n_problems=32", "sft.max_steps=4", "sft.batch_size=4"]
    sft += ["sft.warmup_steps=1", "sft.eval_every=4", "sft.ckpt_every=4", "sft.log_every=1"]
    config = compose(["trainer=cpu_zero3", "trainer.progress_bar=false", *RL_SIGNAL, *sft], root=tmp_path)
    result = pipeline(config)
    client, runs = _runs(tmp_path)
    stages = {r.data.tags["stage"]: r for r in runs if "stage" in r.data.tags and "contestant" not in r.data.tags}
    assert sorted(stages) == ["compare", "pretrain", "rl", "sft", "ttc"]
    sft_run = stages["sft"]
    assert sft_run.data.params["distributed.world_size"] == "2"
    assert len(client.get_metric_history(sft_run.info.run_id, "sft/loss")) == 4  # every step, logged by rank 0
    assert result["sft"].metrics["examples"] == 32  # the gold traces, collected once
    assert result["sft"].profile["phases"]["train"]["calls"] == 2 * 4  # both ranks trained every step
    assert all(r.info.status == "FINISHED" for r in runs)
    rl = stages["rl"]
    assert rl.data.params["world_size"] == "2" and rl.data.params["deepspeed.stage"] == "3"
    # logged once per RL step (rank 0 only), and the evaluation covered every held-out problem across ranks
    assert [m.step for m in client.get_metric_history(rl.info.run_id, "rl/loss")] == [1, 2, 3, 4]
    assert result["rl"].metrics["n_val"] == config["task"]["n_test"]
    for stage in ("pretrain", "sft", "rl"):  # whole (gathered) weights in the HF exports
        model, _ = load_checkpoint(result[stage].checkpoint)
        assert all(p.numel() > 0 for p in model.parameters())
    launch_logs = list((tmp_path / "mlruns" / "work" / "launch").glob("*/launch.log"))
    assert len(launch_logs) == 3
    # the compute profile sums the ranks' ledgers: each rank books every training step
    train = result["pretrain"].profile["phases"]["train"]
    assert train["calls"] == 2 * config["pretrain"]["max_steps"] and train["flops"] > 0
    assert {"rollout", "learn", "eval"} <= set(result["rl"].profile["phases"])


@pytest.mark.slow
def test_a_failing_rank_fails_the_stage_with_its_output(tmp_path):
    from thinkflow.distributed.launch import LaunchError
    from thinkflow.runner import run_stage, start_pipeline_run

    config = compose(["trainer=cpu_zero2", f"rl.init_from={tmp_path / 'absent'}"], root=tmp_path)
    config["pretrain"] = None
    with pytest.raises(
        LaunchError, match=r"(?s)rl on 2 processes failed.*starting checkpoint: no HF checkpoint at .*absent"
    ):
        run_stage("rl", config, start_pipeline_run(config, None), {}, None)
