"""What every stage receives: its tracking context and a config-keyed work directory."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from thinkflow.config import PipelineConfig
from thinkflow.tracking import Tracker


@dataclass
class StageContext:
    tracker: Tracker
    run_id: str  # this stage's MLflow child run
    parent_run_id: str
    upstream: dict  # results of earlier stages, by stage name (paths and run ids)


def config_key(section: dict) -> str:
    """A short stable hash of a config section (the identity of a stage's result)."""
    return hashlib.sha256(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stage_work_dir(cfg: PipelineConfig, stage: str, section: dict) -> Path:
    path = Path(cfg.paths.work_dir).resolve() / stage / config_key(section)
    path.mkdir(parents=True, exist_ok=True)
    return path
