"""Scheduled runs that do new work each time: the ``thinkflow-nightly`` and ``thinkflow-watch`` deployments.

- **nightly** (``nightly_plan``): tonight's overrides for a config. Until the pipeline's registered model has a
  champion (the version holding the gate's alias), the whole pipeline runs and its gate makes the first one. Every
  night after that continues from the champion: ``rl.init_from=models:/NAME@champion`` (pretrain and sft off),
  tonight's seed (new RL draws and a new draw of held-out problems, so repeated gating does not wear out one
  held-out set) and ``gate=default``, which promotes the new version only when it beats the champion.
- **watch** (``watch_plan``, ``log_watch_series``): the champion and the config's API contestants through the
  ``compare`` stage on the day's draw of held-out problems (seed = the day), with a response cache of the day's
  own (a model changed behind a fixed API name is asked again; a rerun of the same day pays nothing twice). Each
  contestant's numbers are appended to its series run (step = day number, timestamp = the day), so the drift of an
  API model, or the champion changing, shows up as a line in MLflow's charts.

The flows (``flows/pipeline.py``: ``nightly_pipeline``, ``watch``) are thin: they call these and ``pipeline``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient

from thinkflow import logs
from thinkflow.composition import compose
from thinkflow.config import ConfigError, PipelineConfig, validate
from thinkflow.registry import StageResult, stage_names
from thinkflow.runner import lineage_name, open_tracker
from thinkflow.tracking import resolve_uri
from thinkflow.tracking.model_registry import MODELS_PREFIX, alias_version

log = logs.get("schedule")

EPOCH = dt.date(1970, 1, 1)
WATCH_TAG = "thinkflow.watch"  # on a series run: the contestant whose numbers it holds, one point per day
# compare's per-contestant metrics a series keeps (latest value: maj/pass at the largest k)
WATCH_METRICS = (
    "acc_greedy",
    "maj_at_k",
    "pass_at_k",
    "no_answer_frac",
    "usd_per_problem_greedy",
    "cost_usd",
    "n_problems",
)
VERSION_METRIC = "watch/version"  # the champion series: which version held the alias that day


@dataclass
class Plan:
    overrides: list[str]  # the config to run: the caller's overrides, then the plan's
    name: str  # the registered model
    alias: str
    champion: str | None  # the version holding the alias when planned
    tags: dict[str, str] = field(default_factory=dict)  # for the pipeline's parent run

    def describe(self) -> str:
        return " ".join(self.overrides)


def night_seed(when: dt.datetime | dt.date) -> int:
    """The night's seed: its date as YYYYMMDD (a rerun of the same night reuses its results)."""
    return int(when.strftime("%Y%m%d"))


def day_number(day: dt.date) -> int:
    """A day as the MLflow step of the watch series: days since 1970-01-01."""
    return (day - EPOCH).days


def _planned(overrides: list[str], config_name: str) -> PipelineConfig:
    return validate(compose(overrides, config_name))


def _client(cfg: PipelineConfig) -> MlflowClient:
    return MlflowClient(resolve_uri(cfg.tracking.uri, cfg.paths.root))


def nightly_plan(overrides: list[str], config_name: str, seed: int) -> Plan:
    """Tonight's run: the whole pipeline while there is no champion, else rl continuing from the champion."""
    base = [*overrides, "tracking.register_models=true"]
    cfg = _planned(base, config_name)
    if not cfg.enabled("gate"):
        base.append("gate=default")
        cfg = _planned(base, config_name)
    if not cfg.enabled("rl"):
        raise ConfigError("the nightly run continues the champion with rl: enable rl (drop `~rl` / `rl: null`)")
    name, alias = lineage_name(cfg), cfg.gate.alias
    champion = alias_version(_client(cfg), name, alias)
    tags = {"nightly.model": name, "nightly.seed": str(seed)}
    if champion is None:
        log.info("%s has no %s yet: tonight runs the whole pipeline, and its gate makes the first", name, alias)
        return Plan([*base, f"seed={seed}"], name, alias, None, tags | {"nightly.continues": "none"})
    uri = f"{MODELS_PREFIX}{name}@{alias}"
    drop = [f"~{s}" for s in ("pretrain", "sft") if cfg.enabled(s)]
    log.info("tonight continues %s (version %s) with rl, seed %d, then gates against it", uri, champion, seed)
    plan = [*base, *drop, f"rl.init_from={uri}", f"seed={seed}"]
    return Plan(plan, name, alias, champion, tags | {"nightly.continues": f"{name}/{champion}"})


def watch_plan(overrides: list[str], config_name: str, day: dt.date, alias: str = "champion") -> Plan:
    """The day's watch: only ``compare``, over the champion and the config's API contestants, on the day's draw."""
    cfg = _planned(overrides, config_name)
    if not cfg.enabled("compare"):
        raise ConfigError(
            "watch: this config turns the compare stage off (compare: null, e.g. from an experiment preset), and the "
            "watch is the compare stage: serve the watch with a config that keeps compare"
        )
    name = lineage_name(cfg)
    champion = alias_version(_client(cfg), name, alias)
    if champion is None:
        raise ConfigError(
            f"watch: {name} has no version holding {alias!r} in {resolve_uri(cfg.tracking.uri, cfg.paths.root)}; "
            "the nightly deployment makes the first champion"
        )
    api = [n for n, c in cfg.compare.entrants.items() if c.kind == "openai"]
    others = [n for n in cfg.compare.entrants if n not in api]
    if alias in api:
        raise ConfigError(f"watch: an API contestant is named {alias!r}, the name the champion's series takes")
    stages = [f"~{s}" for s in stage_names() if s != "compare" and cfg.enabled(s)]
    cache = Path(cfg.paths.work_dir).resolve() / "watch" / day.isoformat() / "api_cache.sqlite"
    plan = [
        *overrides,
        *stages,
        *(f"~compare.contestants.{n}" for n in others),
        f"+compare.contestants.{alias}={{kind: hf, model: '{MODELS_PREFIX}{name}@{alias}'}}",
        f"seed={day_number(day)}",
        f"compare.api.cache={cache}",
        f"tracking.experiment={cfg.tracking.experiment}-watch",
        f"run_name=watch-{day.isoformat()}",
    ]
    tags = {"watch.day": day.isoformat(), "watch.model": f"{name}/{champion}", "watch.api": ",".join(api)}
    return Plan(plan, name, alias, champion, tags)


def log_watch_series(config: dict, compare: StageResult, plan: Plan, day: dt.date) -> str:
    """Append the day's numbers of every contestant that ran to its series run; returns the day's table (markdown),
    each headline beside the previous day's. A day already in a series is not logged twice."""
    tracker = open_tracker(validate(config))
    client = tracker.client
    step = day_number(day)
    midnight = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000)
    rows = [
        f"# Watch {day.isoformat()}: {plan.name} @{plan.alias} (version {plan.champion}) and the API contestants",
        "",
        "| contestant | status | acc_greedy | previous day | change | maj@k | cost (USD) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for contestant, summary in compare.details.get("contestants", {}).items():
        if summary.get("status") == "skipped" or not summary.get("run_id"):
            rows.append(f"| {contestant} | {summary.get('status')}: {summary.get('note', '')} | | | | | |")
            continue
        measured = client.get_run(summary["run_id"]).data.metrics
        metrics = {f"watch/{k}": measured[f"compare/{k}"] for k in WATCH_METRICS if f"compare/{k}" in measured}
        if contestant == plan.alias:
            metrics[VERSION_METRIC] = float(plan.champion)
        series = _series_run(tracker, contestant)
        history = client.get_metric_history(series, "watch/acc_greedy")
        before = [m for m in history if m.step < step]
        if all(m.step != step for m in history):
            tracker.log_metrics(series, metrics, step=step, timestamp_ms=midnight)
        today = metrics.get("watch/acc_greedy", float("nan"))
        prev = max(before, key=lambda m: m.step).value if before else None
        change = f"{today - prev:+.3f}" if prev is not None else ""
        rows.append(
            f"| {contestant} | {summary.get('status')} | {today:.3f} | {'' if prev is None else f'{prev:.3f}'} | "
            f"{change} | {metrics.get('watch/maj_at_k', float('nan')):.3f} | {metrics.get('watch/cost_usd', 0):.4f} |"
        )
    log.info("watch %s: logged to the series runs of experiment %s", day.isoformat(), tracker.experiment_id)
    return "\n".join(rows) + "\n"


def _series_run(tracker, contestant: str) -> str:
    """The run holding one contestant's watch series (made on its first day)."""
    found = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`{WATCH_TAG}` = '{contestant}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    note = (
        f"The daily numbers of `{contestant}` on the watch's draw of held-out problems (step: days since "
        "1970-01-01; open Model metrics, or chart `watch/acc_greedy` across the series runs)."
    )
    run_id = tracker.start_run(f"watch: {contestant}", {WATCH_TAG: contestant, "mlflow.note.content": note})
    tracker.end_run(run_id, "FINISHED")
    return run_id
