"""Checkpoint hygiene shared by the training stages: refuse corrupt resume files, and write
HF-format exports atomically so a crash mid-save never replaces the last good one."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from pytorch_lightning.callbacks import Callback

from thinkflow import logs, shutdown
from thinkflow.models import CheckpointError


def check_resume_checkpoint(path: Path) -> None:
    """Refuse a truncated or corrupt checkpoint with a clear error; never delete it.

    A directory (DeepSpeed's sharded checkpoint) is checked for its ``latest`` tag only."""
    if path.is_dir():
        if not (path / "latest").exists() and not any(path.glob("*/mp_rank_*")):
            raise CheckpointError(f"resume checkpoint {path} is an incomplete DeepSpeed checkpoint directory")
        return
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"resume checkpoint {path} is corrupt (not a readable torch archive); move it away to restart "
            f"this stage from its previous checkpoint or from scratch"
        )
    with zipfile.ZipFile(path) as zf:
        bad = zf.testzip()
    if bad is not None:
        raise CheckpointError(f"resume checkpoint {path} is corrupt (member {bad} fails its CRC)")


def hf_export_dir(work: Path) -> Path:
    """A training stage's HF-format export (``save_hf``) inside its work directory."""
    return work / "hf"


def training_dirs(work: Path, stage: str) -> tuple[Path, Path, Path | None]:
    """A training stage's Lightning checkpoint dir, HF export dir, and the checkpoint to resume
    from (checked, never deleted) or None."""
    ckpt_dir, hf_dir = work / "lightning", hf_export_dir(work)
    resume = ckpt_dir / "last.ckpt"
    if not resume.exists():
        return ckpt_dir, hf_dir, None
    check_resume_checkpoint(resume)
    logs.get(stage).info("resuming from %s", resume)
    return ckpt_dir, hf_dir, resume


def save_hf(model, tokenizer, path: Path) -> Path:
    """``save_pretrained`` into a temp dir beside ``path``, then swap it in."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


class CheckpointOnStop(Callback):
    """After a stop request (SIGTERM / Ctrl-C, see ``thinkflow.shutdown``): write ``last.ckpt`` at the next
    step boundary, then end the stage with ``StopRequested``; rerunning the command resumes there."""

    def __init__(self, ckpt_dir: Path, stage: str) -> None:
        self.ckpt_dir, self.stage = Path(ckpt_dir), stage

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not shutdown.requested():
            return
        path, tmp = self.ckpt_dir / "last.ckpt", self.ckpt_dir / "last.ckpt.tmp"
        trainer.save_checkpoint(tmp)  # then swapped in: a kill mid-write keeps the previous one
        os.replace(tmp, path)
        raise shutdown.StopRequested(
            f"{self.stage}: stopped on request after step {trainer.global_step}; saved {path} (rerun the same "
            "command to resume from it)"
        )
