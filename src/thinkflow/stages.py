"""What every stage receives: its tracking context, a config-keyed work directory, and for training
stages their problems, checked against the held-out ones (``task.decontaminate``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from thinkflow import logs
from thinkflow.config import ConfigError, PipelineConfig
from thinkflow.contamination import ContaminationError, check_training_problems
from thinkflow.registry import StageResult, stage_specs
from thinkflow.tasks import Problem, Task
from thinkflow.tracking import Tracker, resolve_uri
from thinkflow.tracking.model_registry import RegistryError, is_model_uri, resolve_model_uri

log = logs.get("data")


@dataclass
class StageContext:
    tracker: Tracker
    run_id: str  # this stage's MLflow child run
    parent_run_id: str
    upstream: dict[str, StageResult]  # results of earlier stages, by stage name (paths and run ids)


def upstream_checkpoint(upstream: dict[str, StageResult], stage: str) -> str | None:
    """The HF checkpoint an earlier stage of this pipeline exported (None when it did not run)."""
    result = upstream.get(stage)
    return result.checkpoint if result is not None else None


def config_key(section: dict) -> str:
    """A short stable hash of a config section (the identity of a stage's result)."""
    return hashlib.sha256(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stage_work_path(cfg: PipelineConfig, stage: str, section: dict) -> Path:
    """``<paths.work_dir>/<stage>/<config_key(section)>``: where a stage keeps the result of this config
    (nothing is created; what reads a stage's result without running it looks here)."""
    return Path(cfg.paths.work_dir).resolve() / stage / config_key(section)


def stage_work_dir(cfg: PipelineConfig, stage: str, section: dict) -> Path:
    """The stage's work directory, created."""
    path = stage_work_path(cfg, stage, section)
    path.mkdir(parents=True, exist_ok=True)
    return path


def training_problems(cfg: PipelineConfig, task: Task, n_train: int, ctx: StageContext) -> tuple[list, list]:
    """(train, held-out) problems for a training stage. Train problems whose text overlaps a held-out
    problem (``task.decontaminate``: n-grams, exact match for short problems) are dropped, reported or
    fail the stage; ``data/contamination/*`` metrics say how many were checked and found."""
    train, test = task.splits(n_train, cfg.task.n_test, seed=cfg.seed)
    dc = cfg.task.decontaminate
    if dc.action == "off" or not train:
        return train, test
    held_out = {task.name: [_text(p) for p in test]}
    try:
        report = check_training_problems([_text(p) for p in train], held_out, dc.n, dc.action)
    except ContaminationError as err:
        raise ConfigError(f"task.decontaminate.action={dc.action}: {err}") from None
    dropped = len(train) - len(report.kept) if dc.action == "drop" else 0
    counts = {"checked": report.checked, "overlapping": report.contaminated, "dropped": dropped}
    ctx.tracker.log_metrics(ctx.run_id, {f"data/contamination/{k}": float(v) for k, v in counts.items()})
    if report.contaminated:
        what = "dropped" if dropped else "kept"
        log.info(
            "%s: %d of %d training problems overlap held-out ones (%s): %s",
            task.name,
            report.contaminated,
            len(train),
            what,
            report.describe(),
        )
    return ([train[i] for i in report.kept] if dropped else train), test


def local_source(cfg: PipelineConfig, source: str | None) -> str | None:
    """A model source as the stage loads it: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` becomes that
    registered version's HF directory (downloaded once under ``<work_dir>/registry``); anything else as given."""
    if not is_model_uri(source):
        return source
    uri = resolve_uri(cfg.tracking.uri, cfg.paths.root)
    try:
        return str(resolve_model_uri(str(source), uri, Path(cfg.paths.work_dir) / "registry"))
    except RegistryError as err:
        raise ConfigError(str(err)) from None


def check_context(tokenizer, problems: list[Problem], context: int | None, new_tokens: int, key: str) -> None:
    """Before any compute: the longest prompt plus ``new_tokens`` (config key ``key``) must fit the model's
    context of ``context`` tokens (None: no limit known)."""
    if not context or not problems:
        return
    longest = max(len(ids) for ids in tokenizer([p.prompt for p in problems]).input_ids)
    if longest + new_tokens > context:
        raise ConfigError(
            f"{key}={new_tokens} + the longest prompt ({longest} tokens) exceeds the model context of {context} "
            f"tokens; lower {key}"
        )


def _text(problem: Problem) -> str:
    return problem.meta.get("question", problem.prompt)


def check_held_out_size(cfg: PipelineConfig, key: str, n_problems: int | None) -> None:
    """An evaluation of more held-out problems than ``task.n_test`` would reach problems the training stages did not
    keep out of their training data (they exclude the first ``task.n_test`` held-out problems): refused."""
    trains = [s.name for s in stage_specs() if s.trains and cfg.enabled(s.name)]
    if n_problems and n_problems > cfg.task.n_test and trains:
        raise ValueError(
            f"{key}={n_problems} evaluates more held-out problems than task.n_test={cfg.task.n_test}, the ones "
            f"{', '.join(trains)} keep out of training: raise task.n_test to {n_problems} instead"
        )
