"""The pretraining LightningModule: next-token loss on traces, warm-up + cosine schedule,
periodic held-out greedy accuracy through the inference engine."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from thinkflow.distributed import full_parameters
from thinkflow.evaluation import greedy_accuracy
from thinkflow.inference import HFEngine
from thinkflow.profile.ledger import record_training
from thinkflow.tasks import Problem, Task
from thinkflow.training import adamw_warmup_cosine


class CausalLMModule(pl.LightningModule):
    def __init__(
        self,
        model,
        tokenizer,
        task: Task,
        eval_problems: list[Problem],
        lr: float,
        max_steps: int,
        warmup_steps: int,
        min_lr_ratio: float = 0.1,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.98),
        eval_max_new_tokens: int = 32,
        log_every: int = 10,
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

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self._t0 is None:
            self._t0 = time.perf_counter()
        loss = self.model(**batch).loss
        self._tokens += int(batch["attention_mask"].sum())
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        if (self.global_step + 1) % self.log_every == 0:
            elapsed = time.perf_counter() - self._t0
            self.log("perf/train_tokens_per_s", self._tokens / elapsed, prog_bar=True)
            self._tokens, self._t0 = 0, time.perf_counter()
        return loss

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._step_t0 = time.perf_counter()

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        """Book the step (forward, backward, optimizer) in the stage's compute ledger."""
        record_training(
            "train", self.model.config, batch["attention_mask"].sum(-1).tolist(), time.perf_counter() - self._step_t0
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.model(**batch).loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        with full_parameters(self.model):  # whole weights for the engine under ZeRO-3 (all ranks)
            result = greedy_accuracy(
                HFEngine(self.model, self.tokenizer), self.task, self.eval_problems, self.eval_max_new_tokens
            )
        self.model.train()
        # every rank scores the same full set, so rank 0's number is the number
        self.log("pretrain/val_acc", result.accuracy, prog_bar=True, rank_zero_only=True)
        self.log("pretrain/val_no_answer_frac", result.n_no_answer / result.n_problems, rank_zero_only=True)
        self.last_eval = {
            "step": self.global_step,
            "accuracy": result.accuracy,
            "n": result.n_problems,
            "rows": result.rows,
        }
        self._t0 = None  # evaluation time is not training throughput

    def configure_optimizers(self):
        return adamw_warmup_cosine(
            self.model, self.lr, self.betas, self.weight_decay, self.warmup_steps, self.max_steps, self.min_lr_ratio
        )
