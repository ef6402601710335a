"""The tracking around each stage (called by the Prefect flow): the parent run, a child run per stage, reuse
records and the closing summary. The stages themselves are declared in their modules (``thinkflow.registry``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from thinkflow import logs
from thinkflow.caching import REUSED_TAG, code_version
from thinkflow.config import ConfigError, PipelineConfig, validate
from thinkflow.distributed import world_size
from thinkflow.distributed.launch import launch
from thinkflow.profile.ledger import PeakMemory, stage_ledger
from thinkflow.profile.pipeline import pipeline_profile, stage_metrics
from thinkflow.registry import StageResult, StageSpec, stage_spec, stage_specs
from thinkflow.stages import StageContext, config_key

if TYPE_CHECKING:
    from mlflow.entities import Run

from thinkflow.tracking import (
    FLOW_RUN_TAG,
    STAGE_TAG,
    Tracker,
    check_server,
    defer_run_status,
    flatten,
    metric_key,
    resolve_uri,
    server_problem,
)
from thinkflow.tracking.model_registry import (
    is_model_uri,
    model_uri_name,
    register_checkpoint,
    registered_name,
    registered_version,
)

log = logging.getLogger("thinkflow")  # "<stage>: ..." lines name their stage themselves


def open_tracker(cfg: PipelineConfig) -> Tracker:
    return Tracker(resolve_uri(cfg.tracking.uri, cfg.paths.root), cfg.tracking.experiment, cfg.paths.root)


def enabled_stages(cfg: PipelineConfig) -> list[str]:
    """The stages this config runs (their section is set), in pipeline order."""
    return [spec.name for spec in stage_specs() if cfg.enabled(spec.name)]


def headline(spec: StageSpec, result: StageResult) -> dict[str, float]:
    """The stage's headline metrics as they go on the parent run (``<stage>/<key>``)."""
    return {f"{spec.name}/{k}": result.metrics[k] for k in spec.headline if k in result.metrics}


def start_pipeline_run(config: dict, flow_run_id: str | None, tags: dict[str, str] | None = None) -> str:
    """Validate and check the tracking server (before any compute), then open the parent run."""
    cfg = validate(config)
    check_server(resolve_uri(cfg.tracking.uri, cfg.paths.root))
    tracker = open_tracker(cfg)
    tracker.apply_pending()  # runs left open by an earlier run whose tracking server went down
    tracker.fail_orphaned_runs()  # runs left RUNNING by a pipeline process that died (kill -9) on this host
    tags = {FLOW_RUN_TAG: flow_run_id or "", "pipeline.stages": ",".join(enabled_stages(cfg))} | (tags or {})
    run_id = tracker.start_run(cfg.run_name or "pipeline", tags)
    tracker.log_params(run_id, flatten(config))
    tracker.log_dict(run_id, config, "config/resolved.yaml")
    logs.get("pipeline").info("MLflow parent run %s at %s", run_id, tracker.uri)
    return run_id


def end_pipeline_run(config: dict, run_id: str, results: dict[str, StageResult], status: str) -> None:
    """Copy each stage's headline metrics onto the parent run (for the runs table), then close it (or, with
    the tracking server down, keep its status to send at the next start)."""
    cfg = validate(config)
    uri = resolve_uri(cfg.tracking.uri, cfg.paths.root)
    if server_problem(uri):
        defer_run_status(cfg.paths.root, uri, run_id, status)
        return
    tracker = open_tracker(cfg)
    tracker.log_metrics(run_id, {k: v for name, r in results.items() for k, v in headline(stage_spec(name), r).items()})
    if status != "FINISHED":  # a stage still running when the pipeline stopped ends with it
        tracker.end_open_children(run_id, status)
    tracker.end_run(run_id, status)


def profile_pipeline_run(
    config: dict, run_id: str, results: dict[str, StageResult], reused: set[str], wall: float, setup: float
) -> str | None:
    """The compute-spend profile of this pipeline run on its parent run (``profile.enabled``)."""
    cfg = validate(config)
    if not cfg.profile.enabled:
        return None
    return pipeline_profile(cfg, open_tracker(cfg), run_id, results, reused, wall, setup)


def run_stage(
    name: str, config: dict, parent_run_id: str, upstream: dict[str, StageResult], flow_run_id: str | None
) -> StageResult:
    """Run one stage inside its own MLflow child run (tagged ``stage=<name>``), on ``trainer.devices`` ranks
    when it trains; it sees the results of its declared upstream stages."""
    spec = stage_spec(name)
    cfg = validate(config)
    tracker = open_tracker(cfg)
    tags = {STAGE_TAG: spec.name, FLOW_RUN_TAG: flow_run_id or ""}
    upstream = {k: r for k, r in upstream.items() if k in spec.upstream}
    memory = PeakMemory().start()
    try:
        with tracker.run(spec.name, tags, parent_run_id=parent_run_id) as run_id:
            if spec.trains and world_size() == 1 and cfg.trainer.world_size > 1:  # one process per rank
                spool = Path(cfg.paths.work_dir).resolve() / "launch" / run_id
                result = launch(spec.name, config, run_id, parent_run_id, upstream, cfg.trainer, spool)
                phases = result.profile.get("phases", {})  # the ranks' ledgers, summed by the worker
            else:
                with stage_ledger() as ledger:
                    result = spec.run(cfg, StageContext(tracker, run_id, parent_run_id, upstream))
                phases = ledger.as_dict()
            result.profile = memory.stop() | {"phases": phases}  # wall, peak memory and compute by phase
            tracker.log_metrics(run_id, stage_metrics(result.profile))
            if spec.trains and result.checkpoint and cfg.tracking.register_models:
                result.details["registered"] = register_result(cfg, spec, tracker, run_id, result, upstream)
    finally:
        memory.stop()
    numbers = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if k in spec.headline)
    where = ", ".join(f for f in (numbers, result.checkpoint or result.table or "") if f)
    logs.get(spec.name).info("done; MLflow run %s; %s", run_id, where)
    return result


def register_result(
    cfg: PipelineConfig, spec: StageSpec, tracker: Tracker, run_id: str, result: StageResult, upstream: dict
) -> dict[str, str]:
    """The stage's checkpoint as a new version of ``thinkflow-<task>-<model>``, tagged with its lineage: the
    version it started from (the registered upstream result it trained on, or a ``models:/`` init_from)."""
    parents = [r.details["registered"] for r in upstream.values() if "registered" in r.details]
    init = getattr(getattr(cfg, spec.name), "init_from", None)
    if is_model_uri(init):  # continuing a registered model: its next version, the parent as the version it was
        name, version = registered_version(tracker.client, init)
        parent = f"{name}/{version}"
    elif parents and not init:  # the last registered result upstream (stages run in order: sft after pretrain)
        parent, name = f"{parents[-1]['name']}/{parents[-1]['version']}", parents[-1]["name"]
    else:
        parent, name = "", registered_name(cfg.task.name, _model_label(cfg, init))
    task = cfg.task
    tags = {
        "stage": spec.name,
        "parent_version": parent or "none",
        "config_hash": config_key(cfg.model_dump(include={spec.name, *spec.inputs})),
        "code_version": code_version(),
        "data": f"task={task.name} difficulty={task.difficulty} source={task.source} prompt={task.prompt}",
        "run_id": run_id,
        **{f"metric.{metric_key(k)}": f"{v:.4g}" for k, v in result.metrics.items() if k in spec.headline},
    }
    version = register_checkpoint(tracker, run_id, name, result.checkpoint, tags, f"{spec.name} of run {run_id}")
    return {"name": name, "version": version}


def lineage_name(cfg: PipelineConfig) -> str:
    """The registered model this pipeline's checkpoints become versions of: the one its first training stage
    continues (``init_from: models:/NAME@...``), else ``thinkflow-<task>-<model>`` of what that stage starts from."""
    spec = next((s for s in stage_specs() if s.trains and cfg.enabled(s.name)), None)
    if spec is None:
        raise ConfigError("no training stage runs in this pipeline, so it registers no model")
    init = getattr(getattr(cfg, spec.name), "init_from", None)
    if is_model_uri(init):
        return model_uri_name(init)
    return registered_name(cfg.task.name, _model_label(cfg, init))


def _model_label(cfg: PipelineConfig, init: str | None) -> str:
    """What the lineage starts from: thinkflow's own model config by name, or the checkpoint a stage starts at."""
    if not init:
        return cfg.model.name
    return Path(str(init).removeprefix("package:")).name.removesuffix(".gguf") or "model"


def record_reuse(name: str, config: dict, parent_run_id: str, result: StageResult, flow_run_id: str | None) -> str:
    """A child run saying this stage was reused, linking the run that produced its result."""
    spec = stage_spec(name)
    tracker = open_tracker(validate(config))
    source = result.run_id
    note = (
        f"Reused: the `{name}` stage's config, upstream results and code are unchanged, so this pipeline "
        f"run reuses the result of run [{source}](#/experiments/{tracker.experiment_id}/runs/{source}); "
        "recompute it with `cache.refresh=[" + name + "]`."
    )
    tags = {STAGE_TAG: name, FLOW_RUN_TAG: flow_run_id or "", REUSED_TAG: source, "mlflow.note.content": note}
    with tracker.run(name, tags, parent_run_id=parent_run_id) as run_id:
        # the reused run's params, so MLflow's Compare view shows what this stage ran with (its metrics stay
        # with the run that measured them: nothing was computed here)
        original = _run_or_none(tracker, source)
        if original is not None:
            tracker.log_params(run_id, original.data.params)
        tracker.log_metrics(run_id, headline(spec, result))
    logs.get(name).info("reused the result of MLflow run %s (unchanged config, inputs and code)", source)
    return run_id


def _run_or_none(tracker: Tracker, run_id: str) -> Run | None:
    from mlflow.exceptions import MlflowException

    try:
        return tracker.client.get_run(run_id) if run_id else None
    except MlflowException:
        return None  # deleted, or in another store: the link in the note still says where it came from


def closing_summary(config: dict, result: dict, flow_run_id: str | None = None) -> str:
    """The block a pipeline run ends with: each stage's headline numbers and where its results are (MLflow run,
    checkpoint or table), then how to look (the MLflow UI command and the parent run's page, the Prefect flow run)."""
    cfg = validate(config)
    uri = resolve_uri(cfg.tracking.uri, cfg.paths.root)
    tracker = open_tracker(cfg)
    parent = result.get("parent_run_id", "")
    ui = "http://127.0.0.1:5000" if uri.startswith("sqlite:") else uri.rstrip("/")
    lines = ["", "=" * 80, f"thinkflow: pipeline finished; MLflow parent run {parent}"]
    for spec in stage_specs():
        r = result.get(spec.name)
        if not isinstance(r, StageResult):
            continue
        m = r.metrics
        shown = [k for k in spec.headline if k in m and not k.startswith("pass_at_1_ci")]
        numbers = ", ".join(f"{k}={m[k]:.3f}" for k in shown)
        if "pass_at_1_ci_low" in m:  # the interval beside its estimate
            ci = f"[{m['pass_at_1_ci_low']:.3f}, {m['pass_at_1_ci_high']:.3f}]"
            numbers = numbers.replace(f"pass_at_1={m['pass_at_1']:.3f}", f"pass_at_1={m['pass_at_1']:.3f} {ci}")
        lines.append(f"  {spec.name:<9} {numbers or '-'}")
        lines.append(f"  {'':<9} run {r.run_id}  {r.checkpoint or r.table or ''}")
    if uri.startswith("sqlite:"):
        lines.append(f"  look:     mlflow ui --backend-store-uri {uri}")
    lines.append(f"            {ui}/#/experiments/{tracker.experiment_id}/runs/{parent}")
    if flow_run_id:
        lines.append(f"  prefect:  flow run {flow_run_id} (prefect flow-run inspect {flow_run_id})")
    lines.append("=" * 80)
    return "\n".join(lines)
