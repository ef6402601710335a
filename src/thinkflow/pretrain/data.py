"""Pretraining data: a task's traces as HF ``datasets``, loss on the completion only."""

from __future__ import annotations

import datasets
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from thinkflow.tasks import Problem, Task
from thinkflow.training import IGNORE, pad_batch


def encode_examples(problems: list[Problem], task: Task, tokenizer) -> datasets.Dataset:
    """``<bos> prompt completion <eos>`` token ids; labels mask the prompt with -100, and in environment
    traces also the observations (tool results the model reads but does not write)."""
    prompts = tokenizer([p.prompt for p in problems]).input_ids  # with <bos>
    segments = [task.completion_segments(p) for p in problems]
    pieces = iter(tokenizer([t for seg in segments for t, _ in seg], add_special_tokens=False).input_ids)
    eos = tokenizer.eos_token_id
    input_ids, labels = [], []
    for prompt, seg in zip(prompts, segments, strict=True):
        ids, lab = list(prompt), [IGNORE] * len(prompt)
        for _, trained in seg:
            piece = next(pieces)
            ids += piece
            lab += piece if trained else [IGNORE] * len(piece)
        input_ids.append(ids + [eos])
        labels.append(lab + [eos])
    return datasets.Dataset.from_dict({"input_ids": input_ids, "labels": labels})


def collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example in the batch."""
    return pad_batch(batch, pad_id)


class TraceDataModule(pl.LightningDataModule):
    """Train traces (``max_steps x batch_size`` distinct problems) and held-out test traces."""

    def __init__(self, task: Task, tokenizer, train: list[Problem], test: list[Problem], batch_size: int, seed: int):
        super().__init__()
        self.task, self.tokenizer = task, tokenizer
        self.train_problems, self.test_problems = train, test
        self.batch_size, self.seed = batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "train_ds"):
            self.train_ds = encode_examples(self.train_problems, self.task, self.tokenizer)
            self.test_ds = encode_examples(self.test_problems, self.task, self.tokenizer)

    def _loader(self, ds: datasets.Dataset, shuffle: bool) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        pad = self.tokenizer.pad_token_id
        return DataLoader(
            ds, batch_size=self.batch_size, shuffle=shuffle, generator=gen, collate_fn=lambda b: collate(b, pad)
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_ds, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.test_ds, shuffle=False)
