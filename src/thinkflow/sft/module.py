"""The SFT LightningModule: completion-only loss on padded or packed batches, warm-up + cosine AdamW,
held-out loss and greedy accuracy through the inference engine; and a logger that numbers the steps of
successive expert-iteration rounds one after the other."""

from __future__ import annotations

import torch
from pytorch_lightning.utilities import rank_zero_only

from thinkflow.distributed import all_sum
from thinkflow.sft.data import model_inputs
from thinkflow.tracking.lightning import TrackerLogger
from thinkflow.training import SupervisedLM


class SFTModule(SupervisedLM):
    """Completion-only loss on padded or packed batches; ``val/loss`` is the mean over the held-out batches'
    target tokens, then greedy accuracy (``training.SupervisedLM`` does the rest)."""

    loss_key = "sft/loss"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._val_losses: list[tuple[float, int]] = []

    def loss(self, batch: dict) -> torch.Tensor:
        """Mean next-token loss over the batch's completion tokens (padded or packed alike)."""
        return self.model(**model_inputs(batch, self.model)).loss

    def row_tokens(self, batch: dict) -> list[int]:
        return batch["seq_lens"].tolist()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        n = int((batch["labels"][:, 1:] != -100).sum())  # target tokens: the epoch's loss is their mean
        self._val_losses.append((float(self.loss(batch)), n))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        # every rank scored its share of the held-out batches: the mean over all their target tokens
        total, count = all_sum([sum(v * n for v, n in self._val_losses), sum(n for _, n in self._val_losses)])
        val_loss = total / max(1.0, count)
        self._val_losses = []
        result = self.greedy_eval()
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


class RoundLogger(TrackerLogger):
    """Lightning's steps of round ``r`` logged as ``offset + step``: the rounds' curves follow one another."""

    def __init__(self, tracker, run_id: str, offset: int) -> None:
        super().__init__(tracker, run_id)
        self.offset = offset

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, step=self.offset + (step or 0))
