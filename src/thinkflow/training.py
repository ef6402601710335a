"""Helpers shared by the training stages (``pretrain``, ``rl``): the learning-rate schedule, AdamW with it,
the Lightning ``Trainer`` and the HF-format export."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from thinkflow.checkpoints import CheckpointOnStop, save_hf
from thinkflow.config import TrainerConfig
from thinkflow.distributed import full_parameters, is_rank_zero
from thinkflow.distributed.strategy import build_strategy
from thinkflow.evaluation import greedy_accuracy
from thinkflow.inference import HFEngine
from thinkflow.models.lora import base_model, is_lora, merged_copy
from thinkflow.models.precision import resolve_precision
from thinkflow.profile.ledger import record_training
from thinkflow.tracking import write_json

IGNORE = -100  # label of a position that is not trained on (prompt, padding, an environment's observation)


def pad_batch(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Examples (``input_ids``, ``labels``) right-padded to the longest: ``input_ids``, ``labels`` (``IGNORE`` on
    padding), ``attention_mask``, each (B, T)."""
    width = max(len(ex["input_ids"]) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ex in enumerate(batch):
        n = len(ex["input_ids"])
        ids[i, :n] = torch.tensor(ex["input_ids"])
        labels[i, :n] = torch.tensor(ex["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, cosine decay to ``min_ratio`` at ``total``."""
    # Not transformers' get_cosine_schedule_with_warmup: that one starts its warm-up at 0 (step / warmup, here
    # (step + 1) / warmup) and, past ``total``, its cosine climbs again (here it stays at ``min_ratio``).
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def disable_dropout(model: torch.nn.Module) -> int:
    """Dropout off in every module (``p = 0``; returns how many had it on). For RL: the policy's log-probs in the
    importance ratio and the KL must be those of the policy that sampled, not of a random sub-network (GPT-2's
    configs, for one, ship 0.1 dropout)."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            module.p, changed = 0.0, changed + 1
        rate = getattr(module, "attention_dropout", None)  # attention kernels take it as a float (Llama, Qwen, ...)
        if isinstance(rate, float) and rate > 0:
            module.attention_dropout, changed = 0.0, changed + 1
    return changed


def set_gradient_checkpointing(model, enabled: bool) -> None:
    """``trainer.gradient_checkpointing``: each decoder layer's activations are recomputed in the backward pass
    instead of kept (non-reentrant, so frozen inputs, e.g. under LoRA, still pass gradients). Same gradients."""
    if enabled:
        base_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def adamw_warmup_cosine(
    model: torch.nn.Module,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
) -> dict:
    """AdamW (weight decay on matrices only, not on norms and biases) with the ``warmup_cosine`` schedule,
    stepped every optimizer step: a ``LightningModule.configure_optimizers`` return value.

    ``min_lr_ratio=1.0`` is warm-up, then a constant learning rate (the cosine term vanishes exactly)."""
    params = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters only
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=betas,
    )
    # a plain function: LambdaLR keeps it out of its state_dict (a callable object's attributes would go in)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup_steps, total_steps, min_lr_ratio))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def build_trainer(
    tc: TrainerConfig,
    *,
    stage: str,
    work: Path,
    ckpt_dir: Path,
    ckpt_every: int,
    grad_clip: float,
    max_steps: int,
    **extra,
) -> pl.Trainer:
    """The ``pl.Trainer`` of a training stage: devices and strategy from ``trainer`` config (``grad_clip`` goes
    into DeepSpeed's config), a ``last.ckpt`` every ``ckpt_every`` optimizer steps and on a stop request, no
    sanity validation, no model summary. ``extra``: the stage's own ``Trainer`` arguments (logger, validation,
    clipping, ...); without ``logger`` there is none (Lightning's default would write TensorBoard/CSV logs)."""
    kwargs = {"logger": False} | extra
    return pl.Trainer(
        accelerator=tc.accelerator,
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        strategy=build_strategy(tc, grad_clip),
        precision=resolve_precision(tc.precision, tc.accelerator)[0],
        max_steps=max_steps,
        callbacks=[
            ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=ckpt_every, save_last=True),
            CheckpointOnStop(ckpt_dir, stage),
        ],
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(work),
        **kwargs,
    )


def export_hf(model, tokenizer, hf_dir: Path, meta: dict | None = None) -> None:
    """The HF-format checkpoint of ``model`` in ``hf_dir`` (and ``meta`` as ``thinkflow.json`` beside it). Every
    rank calls it (ZeRO-3 gathers the full weights collectively); rank 0 writes. A LoRA model is exported merged
    (what later stages load as a plain model), with its adapters in ``hf_dir/adapter``."""
    with full_parameters(model):
        if is_rank_zero():
            save_hf(merged_copy(model) if is_lora(model) else model, tokenizer, hf_dir)
            if is_lora(model):
                model.save_pretrained(Path(hf_dir) / "adapter")
            if meta is not None:
                write_json(Path(hf_dir) / "thinkflow.json", meta)


class SupervisedLM(pl.LightningModule):
    """What the supervised training stages (``pretrain``, ``sft``) share: next-token loss, throughput and the
    compute ledger per step, AdamW with the warm-up/cosine schedule, and held-out greedy accuracy through the
    inference engine. A stage's module names its metrics (``loss_key``) and may redefine ``loss`` and
    ``row_tokens`` (the tokens each row trains on)."""

    loss_key = "train/loss"  # the lr goes beside it (train/lr)

    def __init__(
        self,
        model,
        tokenizer,
        task,
        eval_problems: list,
        *,
        lr: float,
        max_steps: int,
        warmup_steps: int,
        min_lr_ratio: float,
        weight_decay: float,
        betas: tuple[float, float],
        eval_max_new_tokens: int,
        log_every: int,
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.eval_problems = eval_problems
        self.lr, self.max_steps, self.warmup_steps = lr, max_steps, warmup_steps
        self.min_lr_ratio, self.weight_decay, self.betas = min_lr_ratio, weight_decay, betas
        self.eval_max_new_tokens, self.log_every = eval_max_new_tokens, log_every
        self.last_eval: dict | None = None
        self._tokens = 0
        self._t0: float | None = None

    def loss(self, batch: dict) -> torch.Tensor:
        return self.model(**batch).loss

    def row_tokens(self, batch: dict) -> list[int]:
        return batch["attention_mask"].sum(-1).tolist()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self._t0 is None:
            self._t0 = time.perf_counter()
        loss = self.loss(batch)
        self._tokens += int(sum(self.row_tokens(batch)))
        self.log(self.loss_key, loss, prog_bar=True)
        self.log(self.loss_key.replace("/loss", "/lr"), self.trainer.optimizers[0].param_groups[0]["lr"])
        if (self.global_step + 1) % self.log_every == 0:
            elapsed = time.perf_counter() - self._t0
            self.log("perf/train_tokens_per_s", self._tokens / elapsed, prog_bar=True)
            self._tokens, self._t0 = 0, time.perf_counter()
        return loss

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._step_t0 = time.perf_counter()

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        """Book the step (forward, backward, optimizer) in the stage's compute ledger."""
        record_training("train", self.model.config, self.row_tokens(batch), time.perf_counter() - self._step_t0)

    def greedy_eval(self):
        """Held-out greedy accuracy (every rank scores the same full set, so rank 0's number is the number);
        evaluation time is not training throughput."""
        with full_parameters(self.model):  # whole weights for the engine under ZeRO-3 (all ranks)
            result = greedy_accuracy(
                HFEngine(self.model, self.tokenizer), self.task, self.eval_problems, self.eval_max_new_tokens
            )
        self.model.train()
        self._t0 = None
        return result

    def configure_optimizers(self) -> dict:
        return adamw_warmup_cosine(
            self.model,
            lr=self.lr,
            betas=self.betas,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
            total_steps=self.max_steps,
            min_lr_ratio=self.min_lr_ratio,
        )
