"""The SFT LightningModule: completion-only loss on padded or packed batches, warm-up + cosine AdamW,
held-out loss and greedy accuracy through the inference engine; and a logger that numbers the steps of
successive expert-iteration rounds one after the other."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from thinkflow.distributed import full_parameters
from thinkflow.evaluation import greedy_accuracy
from thinkflow.inference import HFEngine
from thinkflow.profile.ledger import record_training
from thinkflow.sft.data import model_inputs
from thinkflow.tasks import Problem, Task
from thinkflow.tracking.lightning import TrackerLogger
from thinkflow.training import adamw_warmup_cosine


class SFTModule(pl.LightningModule):
    def __init__(
        self,
        model,
        tokenizer,
        task: Task,
        eval_problems: list[Problem],
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
        self._val_losses: list[tuple[float, int]] = []
        self._tokens = 0
        self._t0: float | None = None

    def loss(self, batch: dict) -> torch.Tensor:
        """Mean next-token loss over the batch's completion tokens (padded or packed alike)."""
        return self.model(**model_inputs(batch, self.model)).loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self._t0 is None:
            self._t0 = time.perf_counter()
        loss = self.loss(batch)
        self._tokens += int(batch["seq_lens"].sum())
        self.log("sft/loss", loss, prog_bar=True)
        self.log("sft/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        if (self.global_step + 1) % self.log_every == 0:
            elapsed = time.perf_counter() - self._t0
            self.log("perf/train_tokens_per_s", self._tokens / elapsed, prog_bar=True)
            self._tokens, self._t0 = 0, time.perf_counter()
        return loss

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._step_t0 = time.perf_counter()

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        """Book the step (forward, backward, optimizer) in the stage's compute ledger."""
        record_training("train", self.model.config, batch["seq_lens"].tolist(), time.perf_counter() - self._step_t0)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        n = int((batch["labels"][:, 1:] != -100).sum())  # target tokens: the epoch's loss is their mean
        self._val_losses.append((float(self.loss(batch)), n))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        val_loss = sum(v * n for v, n in self._val_losses) / max(1, sum(n for _, n in self._val_losses))
        self._val_losses = []
        with full_parameters(self.model):  # whole weights for the engine under ZeRO-3 (all ranks)
            result = greedy_accuracy(
                HFEngine(self.model, self.tokenizer), self.task, self.eval_problems, self.eval_max_new_tokens
            )
        self.model.train()
        self.log("val/loss", val_loss, prog_bar=True, rank_zero_only=True)
        self.log("sft/val_acc", result.accuracy, prog_bar=True, rank_zero_only=True)
        self.log("sft/val_no_answer_frac", result.n_no_answer / result.n_problems, rank_zero_only=True)
        self.last_eval = {
            "step": self.global_step,
            "accuracy": result.accuracy,
            "val_loss": val_loss,
            "n": result.n_problems,
            "rows": result.rows,
        }
        self._t0 = None  # evaluation time is not training throughput

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


class RoundLogger(TrackerLogger):
    """Lightning's steps of round ``r`` logged as ``offset + step``: the rounds' curves follow one another."""

    def __init__(self, tracker, run_id: str, offset: int) -> None:
        super().__init__(tracker, run_id)
        self.offset = offset

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, step=self.offset + (step or 0))
