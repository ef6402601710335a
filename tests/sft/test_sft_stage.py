"""The sft stage through ``runner.run_stage`` on a tiny pretrained checkpoint (1-digit addition, where a
1-layer model solves some problems after seconds): expert iteration on its own verified samples with
provenance, gold traces lowering the held-out loss (packed batches), resume, and bad input."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import compose
from thinkflow.checkpoints import save_hf
from thinkflow.config import ConfigError, validate
from thinkflow.models import build_model_and_tokenizer, load_checkpoint
from thinkflow.runner import run_stage, start_pipeline_run
from thinkflow.sft.sources import SFTDataError

TASK = ["seed=1", "task=addition", "task.difficulty=1"]
SMALL = [
    "sft=default",
    "sft.n_problems=64",
    "sft.max_steps=10",
    "sft.batch_size=8",
    "sft.warmup_steps=2",
    "sft.eval_every=5",
    "sft.ckpt_every=5",
    "sft.log_every=5",
    "sft.max_new_tokens=8",
    "sft.eval_max_new_tokens=8",
]
NO_GOLD = "sft.sources.gold=null"
PROVENANCE = ["problem_id", "source", "kind", "model", "round", "sample_index", "verdict", "cost_usd", "status"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
    """200 steps on 1-digit addition: a checkpoint that gets some held-out problems right."""
    root = tmp_path_factory.mktemp("pre")
    steps = ["pretrain.max_steps=200", "pretrain.batch_size=16", "pretrain.eval_every=200", "pretrain.ckpt_every=200"]
    config = compose([*TASK, *steps], root=root)
    return run_stage("pretrain", config, start_pipeline_run(config, None), {}, None).checkpoint


def sft_config(root: Path, init: str, extra: list[str] = ()) -> dict:
    return compose([*TASK, *SMALL, f"sft.init_from={init}", *extra], root=root) | {
        "pretrain": None,
        "rl": None,
        "ttc": None,
        "compare": None,
    }


def client(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")


def test_expert_iteration_keeps_verified_self_samples_and_logs_their_provenance(pretrained, tmp_path):
    config = sft_config(tmp_path, pretrained, [NO_GOLD, "sft.rounds=2"])
    result = run_stage("sft", config, start_pipeline_run(config, None), {}, None)
    assert result.metrics["rounds"] == 2 and result.metrics["examples"] > 0
    assert 0 < result.metrics["accept_rate/self"] <= 1
    assert (Path(result.checkpoint) / "config.json").exists()

    mlflow = client(tmp_path)
    run = mlflow.get_run(result.run_id)
    for key in ("sft/loss", "val/loss", "sft/val_acc", "sft/examples", "sft/accept_rate/self"):
        assert key in run.data.metrics, key
    assert run.data.metrics["sft/teacher_cost_usd/self"] == 0 and "sft/contaminated_dropped" in run.data.metrics
    assert [m.step for m in mlflow.get_metric_history(result.run_id, "sft/examples")] == [0, 1]  # one per round
    assert max(m.step for m in mlflow.get_metric_history(result.run_id, "sft/loss")) >= 10  # round 1 after round 0

    local = mlflow.download_artifacts(result.run_id, "sft/provenance.parquet", str(tmp_path))
    table = pd.read_parquet(local)
    assert set(PROVENANCE) <= set(table.columns)
    assert set(table["round"]) == {0, 1} and set(table.kind) == {"self"}
    kept = table[table.status == "kept"]
    assert len(kept) > 0 and kept.verdict.all() and (kept.groupby(["round", "problem_id"]).size() <= 1).all()
    assert set(table.status) <= {"kept", "wrong", "truncated", "duplicate", "over_max_per_problem"}
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "sft-train" and {t.value for t in dataset.tags} == {"training"}

    again = run_stage("sft", config, start_pipeline_run(config, None), {}, None)  # every round done: reused
    assert (
        again.metrics["val_acc"] == result.metrics["val_acc"]
        and again.metrics["examples"] == result.metrics["examples"]
    )


def test_gold_traces_lower_the_held_out_loss_with_packed_batches(pretrained, tmp_path):
    extra = ["sft.sources.self=null", "sft.packing=true", "sft.max_steps=30", "sft.lr=3e-3", "sft.eval_every=30"]
    config = sft_config(tmp_path, pretrained, extra)
    result = run_stage("sft", config, start_pipeline_run(config, None), {}, None)
    assert result.metrics["accept_rate/gold"] == 1
    assert result.metrics["val_loss"] < result.metrics["val_loss_start"]


def test_lora_adapters_with_gradient_checkpointing_learn_and_leave_the_rest_unchanged(tmp_path):
    """From a random model (the pretrained one sits near its floor on gold traces, where rank-8 adapters on a
    one-layer model have nothing to show): the adapters learn, and only the layers they target change."""
    model_cfg = validate(compose([*TASK], root=tmp_path)).model.model_dump()
    init = save_hf(*build_model_and_tokenizer(model_cfg, seed=4), tmp_path / "init")
    lora = "sft.lora={r:8,alpha:16,dropout:0.0,target_modules:[q_proj,v_proj,up_proj,down_proj]}"
    extra = ["sft.sources.self=null", lora, "trainer.gradient_checkpointing=true", "sft.max_steps=30", "sft.lr=1e-2"]
    config = sft_config(tmp_path, str(init), [*extra, "sft.eval_every=30"])
    result = run_stage("sft", config, start_pipeline_run(config, None), {}, None)
    assert result.metrics["val_loss"] < result.metrics["val_loss_start"] - 0.2
    before, after = load_checkpoint(init)[0].state_dict(), load_checkpoint(result.checkpoint)[0].state_dict()
    assert before.keys() == after.keys()  # the export is a plain model, the adapters merged in
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(any(t in k for t in ("q_proj", "v_proj", "up_proj", "down_proj")) for k in changed)
    adapter = Path(result.checkpoint).parent / "round_0" / "hf" / "adapter"
    assert (adapter / "adapter_config.json").exists()  # the round's adapters, kept beside its merged export


def test_a_teacher_whose_traces_are_all_rejected_fails_before_training(tmp_path):
    model_cfg = validate(compose([*TASK], root=tmp_path)).model.model_dump()
    teacher = save_hf(*build_model_and_tokenizer(model_cfg, seed=3), tmp_path / "random_teacher")  # knows nothing
    init = save_hf(*build_model_and_tokenizer(model_cfg, seed=4), tmp_path / "init")
    source = f"+sft.sources.distill={{kind: teacher, weight: 1.0, k: 2, max_per_problem: 1, teacher: {teacher}}}"
    config = sft_config(tmp_path, str(init), [NO_GOLD, "sft.sources.self=null", source])
    with pytest.raises(SFTDataError, match=r"source 'distill' \(teacher .*random_teacher\) kept 0 of 128 sampled"):
        run_stage("sft", config, start_pipeline_run(config, None), {}, None)
    assert not list((tmp_path / "mlruns" / "work" / "sft").glob("*/round_0/lightning"))  # never trained


def test_a_teacher_that_cannot_be_loaded_fails_with_the_reason(tmp_path):
    model_cfg = validate(compose([*TASK], root=tmp_path)).model.model_dump()
    init = save_hf(*build_model_and_tokenizer(model_cfg, seed=4), tmp_path / "init")
    source = "+sft.sources.distill={kind: teacher, weight: 1.0, k: 2, max_per_problem: 1, teacher: /nonexistent/ckpt}"
    config = sft_config(tmp_path, str(init), [source])
    with pytest.raises(SFTDataError, match="teacher of source 'distill' cannot be loaded: /nonexistent/ckpt"):
        run_stage("sft", config, start_pipeline_run(config, None), {}, None)


def test_an_earlier_runs_checkpoint_teaches_by_run_filter(pretrained, tmp_path):
    """A ``kind: thinkflow`` teacher (the distill preset's): the pretrain checkpoint of the latest finished run that
    matches an MLflow filter, downloaded from its artifacts; its verified traces train a random student."""
    from thinkflow.runner import end_pipeline_run

    steps = ["pretrain.max_steps=2", "pretrain.warmup_steps=1", "pretrain.eval_every=2", "pretrain.ckpt_every=2"]
    teacher_cfg = compose([*TASK, *steps, "pretrain.init_from=" + pretrained], root=tmp_path)
    teacher_cfg |= {"rl": None, "ttc": None, "compare": None}
    parent = start_pipeline_run(teacher_cfg, None)
    done = {"pretrain": run_stage("pretrain", teacher_cfg, parent, {}, None)}
    end_pipeline_run(teacher_cfg, parent, done, "FINISHED")
    model_cfg = validate(compose([*TASK], root=tmp_path)).model.model_dump()
    init = save_hf(*build_model_and_tokenizer(model_cfg, seed=4), tmp_path / "init")
    teacher = "{kind: thinkflow, run: latest, stage: pretrain, run_filter: \"params.`pretrain.max_steps` = '2'\"}"
    source = f"+sft.sources.distill={{kind: teacher, weight: 1.0, k: 2, max_per_problem: 1, teacher: {teacher}}}"
    config = sft_config(tmp_path, str(init), [NO_GOLD, "sft.sources.self=null", source])
    result = run_stage("sft", config, start_pipeline_run(config, None), {}, None)
    table = pd.read_parquet(Path(result.checkpoint).parent / "provenance" / "provenance.parquet")
    assert set(table.model) == {
        str(tmp_path / "mlruns" / "work" / "sft" / "runs" / done["pretrain"].run_id / "checkpoint")
    }
    assert (table.status == "kept").sum() == result.metrics["examples"] > 0


def test_rl_starts_from_sft_and_sft_needs_a_start(tmp_path):
    cfg = validate(compose(["sft=default"], root=tmp_path))
    assert cfg.sft is not None and cfg.rl is not None  # pretrain -> sft -> rl
    validate(compose(["sft=default", "sft.init_from=/some/dir"], root=tmp_path) | {"pretrain": None})  # rl from sft
    with pytest.raises(ConfigError, match="sft needs a starting checkpoint"):
        validate(compose(["sft=default"], root=tmp_path) | {"pretrain": None})
    with pytest.raises(ConfigError, match="rounds=3 re-samples a kind=self source"):
        validate(compose(["sft=default", "sft.rounds=3", "sft.sources.self=null"], root=tmp_path))
    assert validate(compose(root=tmp_path)).sft is None  # off by default
