"""Hydra sweeps: every job's pipeline run carries one ``sweep_id``; a summary when the sweep ends.

    python flows/pipeline.py -m rl.group_size=4,8 ttc.n_max=16,64

Each job is one pipeline run (one MLflow parent run) tagged ``sweep_id`` (the same for every job of
the sweep), ``sweep.job`` (Hydra's job number) and ``sweep.overrides``. When the last job returns,
``SweepSummary`` (a Hydra callback registered in ``conf/pipeline.yaml``) gathers the parent runs of
the sweep from MLflow into one table (jobs x headline metrics), prints it and logs it as
``sweep/summary.md`` and ``.csv`` on a run named ``sweep <id>``. Stages shared by jobs are reused
(``thinkflow.caching``): a sweep over evaluation settings trains once. Before the first job starts,
``SweepSummary`` validates every job's config and checks its data (``check_jobs``): a bad value in
any job stops the sweep at once with one message naming the job and the key.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from thinkflow.config import ConfigError, drop_removed_stages, validate
from thinkflow.tasks import TaskError
from thinkflow.tracking import Tracker, resolve_uri

SWEEP_TAG = "sweep_id"
SUMMARY_TAG = "sweep.summary"


def sweep_id(sweep_dir: str | Path) -> str:
    """One id per sweep: the sweep directory's name (its start time) and a hash of its full path."""
    path = str(Path(sweep_dir).resolve())
    return f"{Path(path).name}-{hashlib.sha256(path.encode()).hexdigest()[:6]}"


def job_tags() -> dict[str, str]:
    """Tags for the current Hydra job's pipeline run: empty outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return {}
    return {
        SWEEP_TAG: sweep_id(hc.sweep.dir),
        "sweep.job": str(hc.job.num),
        "sweep.overrides": " ".join(hc.overrides.task)[:5000],
    }


def summary_table(tracker: Tracker, sid: str) -> pd.DataFrame:
    """One row per job of the sweep: its overrides, status and the parent run's metrics."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.{SWEEP_TAG} = '{sid}'", order_by=["attributes.start_time ASC"]
    )
    rows = []
    for r in runs:
        if r.data.tags.get(SUMMARY_TAG) or r.data.tags.get("mlflow.parentRunId"):
            continue
        rows.append(
            {
                "job": int(r.data.tags.get("sweep.job", -1)),
                "overrides": r.data.tags.get("sweep.overrides", ""),
                "status": r.info.status,
                "run_id": r.info.run_id,
                **dict(sorted(r.data.metrics.items())),
            }
        )
    return pd.DataFrame(rows).sort_values("job") if rows else pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame, sid: str) -> str:
    if table.empty:
        return f"# Sweep {sid}\n\nNo finished jobs.\n"
    cols = list(table.columns)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"# Sweep {sid}: {len(table)} jobs", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if pd.isna(v) else fmt(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines) + "\n"


def job_labels(table: pd.DataFrame) -> dict[int, str]:
    """Each job's overrides that not every job shares (what the sweep varied)."""
    tokens = {row.job: str(row.overrides).split() for row in table.itertuples(False)}
    common = set.intersection(*(set(t) for t in tokens.values())) if len(tokens) > 1 else set()
    return {job: " ".join(t for t in ts if t not in common) or f"job {job}" for job, ts in tokens.items()}


def ttc_curves(tracker: Tracker, table: pd.DataFrame, out: Path) -> Path | None:
    """Each job's majority-vote (and pass@k) accuracy against inference FLOPs per problem, from its
    ttc run's ``ttc/points.csv`` (its last evaluated checkpoint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    labels = job_labels(table)
    for row in table.itertuples(False):
        runs = tracker.client.search_runs(
            [tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{row.run_id}' and tags.stage = 'ttc'"
        )
        if not runs:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = tracker.client.download_artifacts(runs[0].info.run_id, "ttc/points.csv", tmp)
            except Exception:  # a failed job without points: left out of the plot
                continue
            points = pd.read_csv(path)
        points = points[points.checkpoint == points.checkpoint.iloc[-1]]
        for strategy, style in (("maj", "-o"), ("pass", ":^")):
            p = points[points.strategy == strategy].sort_values("flops")
            if not p.empty:
                ax.plot(p.flops, p.accuracy, style, ms=4, label=f"{labels[row.job]}: {strategy}@k")
    if not ax.has_data():
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_xlabel("inference FLOPs per problem")
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Accuracy vs inference compute, per sweep job", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "ttc_curves.png", dpi=120)
    plt.close(fig)
    return out / "ttc_curves.png"


def decode_plot(table: pd.DataFrame, out: Path) -> Path | None:
    """Measured decode tokens/s of each job's final model (batch 1 and 64, short and long context)."""
    kinds = ["decode_b1", "decode_b1_long", "decode_b64", "decode_b64_long"]
    cols = [f"profile/{k}/tokens_per_s" for k in kinds]
    if not set(cols) <= set(table.columns):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4))
    width, labels = 0.8 / max(len(table), 1), job_labels(table)
    for i, row in enumerate(table.to_dict("records")):
        kv = row.get("profile/kv_bytes_per_token")
        label = labels[row["job"]] + (f" ({kv:.0f} KV B/token)" if kv == kv else "")
        ax.bar(np.arange(len(kinds)) + i * width, [row[c] for c in cols], width, label=label)
    ax.set_xticks(np.arange(len(kinds)) + width * (len(table) - 1) / 2, [k.replace("_", " ") for k in kinds])
    ax.set_yscale("log")
    ax.set_ylabel("decode tokens/s (measured)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "decode_tokens_per_s.png", dpi=120)
    plt.close(fig)
    return out / "decode_tokens_per_s.png"


def _plain(config: DictConfig, overrides: list[str]) -> dict:
    # resolve everything but the hydra node (its job-level keys are unset outside a job)
    plain = {
        key: OmegaConf.to_container(config[key], resolve=True) if OmegaConf.is_config(config[key]) else config[key]
        for key in config
        if key != "hydra"
    }
    return drop_removed_stages(plain, overrides)


def _tracker(config: DictConfig) -> Tracker:
    cfg = validate(_plain(config, OmegaConf.to_container(config.hydra.overrides.task, resolve=False)))
    return Tracker(resolve_uri(cfg.tracking.uri, cfg.paths.root), cfg.tracking.experiment, cfg.paths.root)


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides, in Hydra's job order, for the basic sweeper (None for another sweeper, which
    picks values as it goes)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return None
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    return [job for batch in BasicSweeper.split_arguments(parser.parse_overrides(params + task), None) for job in batch]


def check_jobs(config: DictConfig) -> None:
    """Every job of the sweep validated, and its task's data checked, before the first job starts: a bad
    value anywhere ends the sweep with one message naming the job and the key (no traceback)."""
    from hydra.core.global_hydra import GlobalHydra

    loader, checked = GlobalHydra.instance().config_loader(), set()
    for num, overrides in enumerate(sweep_jobs(config) or []):
        try:
            cfg = validate(_plain(loader.load_sweep_config(config, overrides), overrides))
            if (task := cfg.task.model_dump_json()) not in checked:  # each task's data read once
                cfg.task.build().check()
                checked.add(task)
        except (ConfigError, TaskError, OmegaConfBaseException) as err:
            what = f"invalid config: {err}" if isinstance(err, OmegaConfBaseException) else err
            raise SystemExit(f"sweep job {num} ({' '.join(overrides)}): {what}") from None


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, the table of its jobs in MLflow and on stdout."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_jobs(config)
        # Create (migrate) the tracking store and the experiment once, before jobs that may run in
        # parallel (hydra/launcher=joblib) race to do it.
        _tracker(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        tracker = _tracker(config)
        sid = sweep_id(sweep_dir)
        table = summary_table(tracker, sid)
        markdown = to_markdown(table, sid)
        print(markdown)
        with tracker.run(f"sweep {sid}", {SWEEP_TAG: sid, SUMMARY_TAG: "true"}) as run_id:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "summary.md").write_text(markdown)
                table.to_csv(Path(tmp) / "summary.csv", index=False)
                if not table.empty:
                    ttc_curves(tracker, table, Path(tmp))
                    decode_plot(table, Path(tmp))
                tracker.log_artifacts(run_id, tmp, "sweep")
            tracker.client.set_tag(run_id, "mlflow.note.content", markdown)
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        (Path(sweep_dir) / "summary.md").write_text(markdown)


__all__ = ["SWEEP_TAG", "SweepSummary", "check_jobs", "job_tags", "summary_table", "sweep_id"]
