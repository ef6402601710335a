"""The ``rl`` stage: GRPO-family RL from the pretrained checkpoint on the task's verifier.

    python flows/pipeline.py                                  # pretrain -> rl on the default task
    python flows/pipeline.py rl.objective=dapo rl.clip_high=0.28
    python flows/pipeline.py trainer=cpu_zero3                # ZeRO-3 on 2 CPU processes (gloo)

Runs in the calling process on one device; with several devices the runner starts it once
per rank through torchrun (``thinkflow.distributed.launch``). Resumable from its config-keyed
work directory; exports HF checkpoints every ``rl.ckpt_every`` steps and at the end.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from thinkflow import logs
from thinkflow.checkpoints import save_hf, training_dirs
from thinkflow.config import ConfigError, PipelineConfig, RLConfig
from thinkflow.distributed import is_rank_zero
from thinkflow.envs import EnvTask, transcripts_markdown
from thinkflow.models import CheckpointError, checkpoint_kind, load_checkpoint, n_params, resolve_source
from thinkflow.models.lora import AdaptersOff, apply_lora, is_lora, trainable_params
from thinkflow.models.precision import autocast_dtype, resolve_precision
from thinkflow.registry import StageResult, StageSpec
from thinkflow.rl.learner import GRPOModule
from thinkflow.rl.sync import InProcessPolicy, VLLMPolicy
from thinkflow.stages import (
    StageContext,
    check_context,
    config_key,
    local_source,
    stage_work_dir,
    training_problems,
    upstream_checkpoint,
)
from thinkflow.tasks import Problem
from thinkflow.tracking import flatten
from thinkflow.training import build_trainer, disable_dropout, export_hf, set_gradient_checkpointing

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from thinkflow.rl.actors import AsyncExperience

log = logs.get("rl")


def starting_checkpoint(cfg: PipelineConfig, upstream: dict[str, StageResult]) -> str:
    """``rl.init_from``, else the sft result when sft ran, else the pretrain result."""
    init = local_source(cfg, cfg.rl.init_from)
    init = init or upstream_checkpoint(upstream, "sft") or upstream_checkpoint(upstream, "pretrain")
    if not init:
        raise ConfigError("rl: no starting checkpoint (no sft or pretrain result upstream and rl.init_from is not set)")
    try:
        checkpoint_kind(init)  # an HF directory, a .gguf file or a hub id
    except CheckpointError as err:
        raise ConfigError(f"rl: starting checkpoint: {err}") from None
    return str(init)


def weights_digest(checkpoint: str | Path) -> str:
    """Content hash of a checkpoint's weight files: a re-export of the same weights (a rerun of a
    finished pretrain stage) keeps the digest, so a killed RL stage still finds its work dir."""
    h = hashlib.sha256()
    path = Path(resolve_source(checkpoint))
    if not path.exists():  # a hub id: its name (and the hub's revision) identify it
        return hashlib.sha256(str(checkpoint).encode()).hexdigest()[:16]
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()[:16]


def rl_section(cfg: PipelineConfig, init: str) -> dict:
    """What identifies an RL result: its config, task, seed, world size and starting weights."""
    ident = f"{Path(init).resolve()}:{weights_digest(init)}"
    return {
        "rl": cfg.rl.model_dump(),
        "task": cfg.task.model_dump(),
        "seed": cfg.seed,
        "world_size": cfg.trainer.world_size,
        "strategy": cfg.trainer.strategy,
        "deepspeed": cfg.trainer.deepspeed.model_dump() if cfg.trainer.deepspeed else None,
        "init": config_key({"init": ident}),
    }


# One RL step = several optimizer steps of manual optimization; checkpoints land between RL steps.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def run_rl(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    rc, tc = cfg.rl, cfg.trainer
    torch.set_num_threads(tc.num_threads or max(1, (os.cpu_count() or 1) // tc.world_size))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    init = starting_checkpoint(cfg, ctx.upstream)
    model, tokenizer = load_checkpoint(init)
    disable_dropout(model)  # the ratio and the KL compare the policy that sampled, not a random sub-network
    if rc.lora is not None:  # adapters only; the base weights stay frozen
        model = apply_lora(model, **rc.lora.model_dump(), where="rl.lora")
    set_gradient_checkpointing(model, tc.gradient_checkpointing)
    model.train()
    task = cfg.task.build(tokenizer)
    n_pool = rc.max_steps * rc.prompts_per_step * tc.world_size * (1 + rc.max_refill)
    train, val = training_problems(cfg, task, rc.n_problems or min(n_pool, 50_000), ctx)
    check_context(
        tokenizer, train[:1000] + val, model.config.max_position_embeddings, rc.max_new_tokens, "rl.max_new_tokens"
    )
    section = rl_section(cfg, init)
    work = stage_work_dir(cfg, "rl", section)
    ckpt_dir, hf_dir, resume = training_dirs(work, "rl")

    tracker, run_id = ctx.tracker, ctx.run_id
    tracker.log_params(run_id, flatten(section | {"trainer": tc.model_dump(), "init_from": init}))
    sizes = {"model.n_params": str(n_params(model)), "model.n_trainable": str(trainable_params(model))}
    precision, why = resolve_precision(tc.precision, tc.accelerator)
    tracker.log_params(run_id, sizes | {"task.n_train": str(len(train)), "trainer.precision_used": precision})
    if tc.precision == "auto":
        log.info("precision %s (%s)", precision, why)
    ref_model = _reference(model) if rc.beta > 0 else None
    updates = rc.ppo_epochs * rc.minibatches

    def export(step: int) -> None:  # HF checkpoint of the current policy (rank 0 writes)
        export_hf(model, tokenizer, hf_dir, {"stage": "rl", "rl_step": step, "init_from": init})

    with ExitStack() as stack:
        policy = _policy(rc.backend, model, tokenizer, work, stack, autocast_dtype(precision))
        source = _actors(cfg, init, train, work, stack) if rc.mode == "async" else None
        module = GRPOModule(
            model,
            tokenizer,
            task,
            train_problems=train,
            val_problems=val,
            rl=rc,
            seed=cfg.seed,
            policy=policy,
            tracker=tracker,
            run_id=run_id,
            ref_model=ref_model,
            ckpt_hook=export,
            ckpt_dir=str(ckpt_dir),
            source=source,
        )
        trainer = build_trainer(
            tc,
            stage="rl",
            work=work,
            ckpt_dir=ckpt_dir,
            ckpt_every=rc.ckpt_every * updates,
            grad_clip=rc.grad_clip,
            max_steps=rc.max_steps * updates,
            use_distributed_sampler=False,
            limit_val_batches=0,
        )
        t0 = time.perf_counter()
        steps = DataLoader(range(rc.max_steps), batch_size=1)  # one item per RL step; prompts come from the step
        trainer.fit(module, train_dataloaders=steps, ckpt_path=str(resume) if resume else None, weights_only=False)
        if not module.evals or module.evals[-1]["step"] != module.rl_step:
            module.evaluate(module.rl_step)  # resumed a finished run: score it
        if source is not None and is_rank_zero():  # the actors' final fault counters (restarts seen through)
            tracker.log_metrics(run_id, source.settle(), step=module.rl_step)
        wall = time.perf_counter() - t0
        export(module.rl_step)
    return _finish(cfg, ctx, module, work, hf_dir, wall)


def _reference(model: PreTrainedModel) -> PreTrainedModel | AdaptersOff:
    """The KL reference: the starting policy. With LoRA, the same weights with the adapters off (no copy)."""
    return AdaptersOff(model) if is_lora(model) else copy.deepcopy(model).eval().requires_grad_(False)


def _policy(
    backend: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    work: Path,
    stack: ExitStack,
    autocast: torch.dtype | None,
) -> InProcessPolicy | VLLMPolicy:
    if backend == "hf":
        return InProcessPolicy(autocast)
    from thinkflow.inference.vllm_server import VLLMEngine, VLLMServer

    serve_dir = save_hf(model, tokenizer, work / "policy")
    server = stack.enter_context(VLLMServer(serve_dir))
    return VLLMPolicy(server, VLLMEngine(server.base_url, tokenizer, server=server), serve_dir)


def _actors(cfg: PipelineConfig, init: str, train: list[Problem], work: Path, stack: ExitStack) -> AsyncExperience:
    """rl.mode=async: Ray rollout actors starting from ``init`` (closed with the stage)."""
    from thinkflow.rl.actors import AsyncExperience

    task = cfg.task.model_dump()  # the whole section: the actors validate it again (TaskConfig has no defaults)
    source = AsyncExperience(cfg.rl.actors, cfg.rl, init, task, train, cfg.seed, work)
    stack.callback(source.close)
    where = cfg.rl.actors.address or "a local Ray"
    log.info("%d rollout actors on %s (pids in %s)", cfg.rl.actors.num_actors, where, work / "actors.json")
    return source


def _finish(
    cfg: PipelineConfig, ctx: StageContext, module: GRPOModule, work: Path, hf_dir: Path, wall: float
) -> StageResult:
    first, last = module.evals[0], module.evals[-1]
    gain = last["val_pass@1"] - first["val_pass@1"]
    metrics = {
        "steps": module.rl_step,
        "val_acc": last["val_acc"],
        "val_pass@1": last["val_pass@1"],
        "val_acc_start": first["val_acc"],
        "val_pass@1_start": first["val_pass@1"],
        "gain_pass@1": gain,
        "n_val": last["n_val"],
        "eval_samples": last["eval_samples"],
        "wall_s": wall,
    }
    result = StageResult(stage="rl", run_id=ctx.run_id, checkpoint=str(hf_dir), metrics=metrics)
    if not is_rank_zero():
        return result
    tracker, run_id = ctx.tracker, ctx.run_id
    tracker.log_metrics(
        run_id, {"rl/wall_s": wall, "rl/gain_pass@1": gain, "rl/gain_acc": last["val_acc"] - first["val_acc"]}
    )
    if module.sample_rows:
        tracker.log_table(run_id, module.sample_rows, "samples/rollouts.json")
    tracker.log_text(run_id, "\n".join(json.dumps(r) for r in module.last_val_rows), "samples/val_greedy.jsonl")
    if isinstance(module.task, EnvTask):  # episodes to read: the last recorded RL batch, the held-out greedy ones
        name, rows = module.task.name, module.sample_rows
        rows = [r for r in rows if r["step"] == rows[-1]["step"]] if rows else []
        text = transcripts_markdown(f"{name}: RL rollouts at step {rows[0]['step']}", rows) if rows else ""
        val = transcripts_markdown(f"{name}: held-out episodes, greedy, final policy", module.last_val_rows)
        tracker.log_text(run_id, text + "\n" + val, "samples/transcripts.md")
    tracker.log_dict(run_id, {"evals": module.evals}, "rl/evals.json")
    if cfg.tracking.log_checkpoint:
        tracker.log_artifacts(run_id, hf_dir, "checkpoint")
    log.info(
        f"held-out pass@1 {first['val_pass@1']:.3f} -> {last['val_pass@1']:.3f}, greedy "
        f"{first['val_acc']:.3f} -> {last['val_acc']:.3f} ({last['n_val']} problems x {last['eval_samples']} samples, "
        f"{module.rl_step} steps, {wall:.0f} s)"
    )
    return result


def check_config(cfg: PipelineConfig) -> None:
    """What the rl section needs from the rest of the config."""
    if cfg.pretrain is None and not cfg.enabled("sft") and not cfg.rl.init_from:
        raise ValueError("rl needs a starting checkpoint: enable pretrain or sft, or set rl.init_from")
    if cfg.rl.mode == "async" and cfg.trainer.world_size > 1:
        raise ValueError("rl.mode=async runs one learner process with Ray actors; set trainer.devices=1")
    if cfg.rl.lora is not None and cfg.trainer.strategy == "deepspeed":
        raise ValueError("rl.lora with trainer.strategy=deepspeed is not supported yet; use ddp or one process")
    if cfg.rl.backend == "vllm" and cfg.trainer.world_size > 1:
        raise ValueError("rl.backend=vllm runs single-process; use backend=hf with several devices")


STAGE = StageSpec(
    name="rl",
    run=run_rl,
    config=RLConfig,
    order=20,
    inputs=("task", "model", "trainer", "seed"),
    upstream=("pretrain", "sft"),
    trains=True,
    headline=("val_acc", "val_pass@1"),
    check=check_config,
)
