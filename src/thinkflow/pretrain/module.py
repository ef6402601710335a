"""The pretraining LightningModule: next-token loss on traces (``training.SupervisedLM``: schedule, throughput,
ledger, engine-based evaluation), held-out loss each validation batch and greedy accuracy each evaluation."""

from __future__ import annotations

from thinkflow.training import SupervisedLM


class CausalLMModule(SupervisedLM):
    loss_key = "train/loss"

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.model(**batch).loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        result = self.greedy_eval()
        self.log("pretrain/val_acc", result.accuracy, prog_bar=True, rank_zero_only=True)
        self.log("pretrain/val_no_answer_frac", result.n_no_answer / result.n_problems, rank_zero_only=True)
        self.last_eval = {
            "step": self.global_step,
            "accuracy": result.accuracy,
            "n": result.n_problems,
            "rows": result.rows,
        }
