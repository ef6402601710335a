"""Shared benchmark helpers: compose the real config, write a section of docs/benchmarks.md."""

from __future__ import annotations

import platform
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def compose(overrides: list[str] | None = None) -> dict:
    from flows.pipeline import compose as compose_config

    return compose_config(overrides)


def machine_line() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def write_section(name: str, body: str) -> None:
    """Replace (or append) the ``<!-- name -->`` section of docs/benchmarks.md."""
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nEach section is written by the script it names.\n"
    block = f"<!-- {name}:start -->\n{body.strip()}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def rl_stage_run(init: str, overrides: list[str]) -> tuple[dict, Callable[[str], list[float]]]:
    """The real ``rl`` stage from checkpoint ``init`` in a fresh root: its result, and a metric's history
    (values in step order) from its MLflow run."""
    from mlflow import MlflowClient

    from thinkflow.runner import run_stage, start_pipeline_run

    root = Path(tempfile.mkdtemp(prefix="rl-bench-"))
    config = compose([f"paths.root={root}", f"rl.init_from={init}", "trainer.progress_bar=false",
                      "tracking.log_checkpoint=false", *overrides])  # fmt: skip
    config.pop("hydra", None)
    config["pretrain"] = None
    result = run_stage("rl", config, start_pipeline_run(config, None), {}, None)
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")

    def series(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(result["run_id"], key), key=lambda m: m.step)]

    return result, series
