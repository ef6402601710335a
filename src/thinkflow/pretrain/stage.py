"""The ``pretrain`` stage: train a small causal LM on a task's reasoning traces.

Resumable: the stage's work directory is keyed by its config, so running the same config
again continues from ``last.ckpt`` instead of starting over. Returns where its results are
(HF checkpoint directory, MLflow run id), never objects.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from thinkflow.checkpoints import hf_export_dir, training_dirs
from thinkflow.config import ConfigError, PipelineConfig, PretrainConfig
from thinkflow.distributed import is_rank_zero
from thinkflow.models import build_model_and_tokenizer, load_checkpoint, n_params
from thinkflow.models.precision import resolve_precision
from thinkflow.pretrain.data import TraceDataModule
from thinkflow.pretrain.module import CausalLMModule
from thinkflow.registry import StageResult, StageSpec
from thinkflow.stages import StageContext, stage_work_dir, stage_work_path, training_problems
from thinkflow.tracking import flatten
from thinkflow.tracking.lightning import TrackerLogger
from thinkflow.training import build_trainer, export_hf, set_gradient_checkpointing


def pretrain_section(cfg: PipelineConfig) -> dict:
    """The config that identifies a pretraining result (and names its work directory)."""
    section = {k: getattr(cfg, k).model_dump() for k in ("task", "model", "pretrain")} | {"seed": cfg.seed}
    tc = cfg.trainer
    if tc.world_size > 1:  # data parallel changes the effective batch, so the result
        section["distributed"] = {"world_size": tc.world_size, "strategy": tc.strategy} | (
            {"deepspeed": tc.deepspeed.model_dump()} if tc.deepspeed else {}
        )
    return section


def pretrained_checkpoint(cfg: PipelineConfig) -> Path:
    """Where this config's pretraining exports its HF checkpoint (``run_pretrain`` writes it there);
    nothing is created or checked: the directory exists once the stage has run."""
    return hf_export_dir(stage_work_path(cfg, "pretrain", pretrain_section(cfg)))


def run_pretrain(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    pc, tc = cfg.pretrain, cfg.trainer
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    task = cfg.task.build()
    train, test = training_problems(cfg, task, pc.max_steps * pc.batch_size, ctx)
    if pc.init_from:
        model, tokenizer = load_checkpoint(pc.init_from)
    else:
        model, tokenizer = build_model_and_tokenizer(cfg.model.model_dump(), seed=cfg.seed)
    set_gradient_checkpointing(model, tc.gradient_checkpointing)
    section = pretrain_section(cfg)
    work = stage_work_dir(cfg, "pretrain", section)
    ckpt_dir, hf_dir, resume = training_dirs(work, "pretrain")

    tracker, run_id = ctx.tracker, ctx.run_id
    tracker.log_params(run_id, flatten(section | {"trainer": tc.model_dump()}))
    tracker.log_params(run_id, {"trainer.precision_used": resolve_precision(tc.precision, tc.accelerator)[0]})
    tracker.log_params(run_id, {"model.n_params": str(n_params(model)), "task.n_train": str(len(train))})
    data = TraceDataModule(task, tokenizer, train, test, pc.batch_size, cfg.seed)
    data.setup()
    limit = model.config.max_position_embeddings
    longest = max(len(ids) for ds in (data.train_ds, data.test_ds) for ids in ds["input_ids"])
    longest_prompt = max(len(ids) for ids in tokenizer([p.prompt for p in test]).input_ids)
    if longest > limit:
        raise ConfigError(
            f"model.max_seq_len={limit} is too short for task {task.name!r}: its longest example has "
            f"{longest} tokens; raise model.max_seq_len or lower task.difficulty"
        )
    if longest_prompt + pc.eval_max_new_tokens > limit:
        raise ConfigError(
            f"pretrain.eval_max_new_tokens={pc.eval_max_new_tokens} + the longest prompt ({longest_prompt} tokens) "
            f"exceeds model.max_seq_len={limit}"
        )
    tracker.log_metrics(run_id, {"data/skipped_rows": getattr(task, "skipped_rows", 0)})
    module = CausalLMModule(
        model,
        tokenizer,
        task,
        test,
        lr=pc.lr,
        max_steps=pc.max_steps,
        warmup_steps=pc.warmup_steps,
        min_lr_ratio=pc.min_lr_ratio,
        weight_decay=pc.weight_decay,
        betas=pc.betas,
        eval_max_new_tokens=pc.eval_max_new_tokens,
        log_every=pc.log_every,
    )
    trainer = build_trainer(
        tc,
        stage="pretrain",
        work=work,
        ckpt_dir=ckpt_dir,
        ckpt_every=pc.ckpt_every,
        grad_clip=pc.grad_clip,
        max_steps=pc.max_steps,
        logger=TrackerLogger(tracker, run_id),
        val_check_interval=pc.eval_every,
        check_val_every_n_epoch=None,
        gradient_clip_val=pc.grad_clip or None,
        log_every_n_steps=pc.log_every,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None, weights_only=False)
    if module.last_eval is None or module.last_eval["step"] != trainer.global_step:
        trainer.validate(module, datamodule=data, verbose=False)  # resumed a finished run: score it
    wall = time.perf_counter() - t0

    export_hf(model, tokenizer, hf_dir)  # every rank takes part (ZeRO-3 gathers); rank 0 writes
    evaluation = module.last_eval
    metrics = {
        "val_acc": evaluation["accuracy"],
        "n_val": evaluation["n"],
        "steps": trainer.global_step,
        "wall_s": wall,
    }
    result = StageResult(stage="pretrain", run_id=run_id, checkpoint=str(hf_dir), metrics=metrics)
    if not is_rank_zero():
        return result
    tracker.log_metrics(run_id, {"pretrain/wall_s": wall, "pretrain/final_val_acc": evaluation["accuracy"]})
    tracker.log_text(run_id, "\n".join(json.dumps(r) for r in evaluation["rows"]), "samples/val_greedy.jsonl")
    if cfg.tracking.log_checkpoint:
        tracker.log_artifacts(run_id, hf_dir, "checkpoint")
    return result


STAGE = StageSpec(
    name="pretrain",
    run=run_pretrain,
    config=PretrainConfig,
    order=10,
    inputs=("task", "model", "trainer", "seed"),
    trains=True,
    headline=("val_acc",),
)
