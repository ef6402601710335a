"""Shared benchmark helpers: the default pretrained checkpoint, write a section of docs/benchmarks.md."""

from __future__ import annotations

import platform
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from thinkflow.composition import compose

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def require_pretrained(cfg) -> Path:
    """This config's pretrained checkpoint, where the pretrain stage exports it
    (``thinkflow.pretrain.stage.pretrained_checkpoint``); stops, saying how to produce it, when it is not there."""
    from thinkflow.pretrain.stage import pretrained_checkpoint

    ckpt = pretrained_checkpoint(cfg)
    if not (ckpt / "config.json").is_file():
        raise SystemExit(
            f"no pretrained checkpoint for the default config at {ckpt} (paths.work_dir={cfg.paths.work_dir} is "
            f"relative to the directory the benchmark runs in). Produce it from {Path.cwd()} with "
            "`python flows/pipeline.py '~rl' '~ttc' '~compare'` (the default pretrain stage alone), then run this again."
        )
    return ckpt


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
    config = compose(
        [
            f"paths.root={root}",
            f"rl.init_from={init}",
            "trainer.progress_bar=false",
            "tracking.log_checkpoint=false",
            *overrides,
        ]
    )
    config.pop("hydra", None)
    config["pretrain"] = None
    result = run_stage("rl", config, start_pipeline_run(config, None), {}, None)
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")

    def series(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(result.run_id, key), key=lambda m: m.step)]

    return result, series
