"""The ``gate`` stage: should this pipeline's model replace the champion?

    python flows/pipeline.py gate=default            # pretrain -> rl -> ttc -> gate (registers and gates)

The challenger is the registered version of the last training stage (rl, else sft, else pretrain), scored on
the samples ttc drew from it. The champion is the version holding ``gate.alias`` in the same registered model,
sampled here on the same held-out problems with ttc's settings (n_max, temperature, seed). The decision
(``thinkflow.scaling.gate.decide``: paired bootstrap over problems, guarded metrics, coverage crossover) goes to
the run (table, markdown, ``gate/*`` metrics), to the challenger version's tags, and to the Prefect UI (summary);
a promotion moves the alias. With no champion yet, the challenger becomes it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from thinkflow import logs
from thinkflow.config import ConfigError, PipelineConfig
from thinkflow.gate.config import GateConfig
from thinkflow.inference import open_engine
from thinkflow.models.precision import sampling_precision
from thinkflow.registry import StageResult, StageSpec
from thinkflow.scaling.gate import GateError, GateRule, decide
from thinkflow.scaling.table import sample_table
from thinkflow.stages import StageContext, local_source
from thinkflow.tracking.model_registry import alias_version

log = logs.get("gate")

TRAINING = ("rl", "sft", "pretrain")  # the challenger: the last of these that ran


def check_config(cfg: PipelineConfig) -> None:
    if not cfg.tracking.register_models:
        raise ValueError("gate compares registered versions: set tracking.register_models=true")
    if not cfg.enabled("ttc") or cfg.ttc.init_from:
        raise ValueError("gate scores the challenger on ttc's samples: enable ttc on this pipeline's checkpoints")
    stage = next((s for s in TRAINING if cfg.enabled(s)), None)
    if stage is None or stage not in cfg.ttc.checkpoints:
        raise ValueError(f"gate: ttc.checkpoints={cfg.ttc.checkpoints} must include the last training stage ({stage})")


def run_gate(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    gc, tc = cfg.gate, cfg.ttc
    stage = next(s for s in TRAINING if s in ctx.upstream)
    challenger = ctx.upstream[stage].details.get("registered")
    if not challenger:
        raise ConfigError(f"gate: the {stage} result has no registered version (was tracking.register_models on?)")
    name, version = challenger["name"], challenger["version"]
    client = ctx.tracker.client
    samples = Path(ctx.upstream["ttc"].table).parent / f"samples_{stage}.csv"
    ours = pd.read_csv(samples)
    champion = alias_version(client, name, gc.alias)
    params = {"gate.challenger": f"{name}/{version}", "gate.champion": f"{name}/{champion}" if champion else "none"}
    ctx.tracker.log_params(ctx.run_id, params | {f"gate.{k}": str(v) for k, v in gc.model_dump().items()})
    if champion is None or champion == version:
        why = "no champion yet" if champion is None else "the challenger already holds it"
        return _promote(ctx, client, name, version, gc.alias, f"{why}: {name}/{version} is the {gc.alias}")
    path = local_source(cfg, f"models:/{name}/{champion}")
    _, autocast = sampling_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    with open_engine(tc.backend, path, autocast=autocast) as engine:
        task = cfg.task.build(engine.tokenizer)
        _, problems = task.splits(tc.verifier.train_problems, tc.n_problems or cfg.task.n_test, seed=cfg.seed)
        theirs, _ = sample_table(engine, task, problems, tc.n_max, tc.temperature, tc.max_new_tokens, tc.seed)
    rule = GateRule(gc.primary, tuple(gc.guarded), gc.tolerance, gc.level, gc.resamples, cfg.seed)
    try:
        decision = decide(theirs, ours, rule)
    except GateError as err:
        raise ConfigError(f"gate: {err}") from None
    markdown = f"# Gate: {name}/{version} against {gc.alias} {name}/{champion}\n\n{decision.markdown()}\n"
    work = Path(cfg.paths.work_dir) / "gate" / ctx.run_id  # one decision per run: it depends on the registry
    work.mkdir(parents=True, exist_ok=True)
    decision.table.to_csv(work / "gate.csv", index=False)
    (work / "gate.md").write_text(markdown)
    ctx.tracker.log_artifacts(ctx.run_id, work, "gate")
    rows = decision.table.set_index("metric")
    metrics = {f"gate/{m.replace('@', '_at_')}_diff": float(r["diff"]) for m, r in rows.iterrows()}
    metrics |= {"gate/promote": float(decision.promote), "gate/crossover": float(decision.crossover)}
    ctx.tracker.log_metrics(ctx.run_id, metrics)
    tags = {"gate.decision": "promoted" if decision.promote else "kept champion", "gate.reason": decision.reason}
    tags |= {"gate.against": f"{name}/{champion}", "gate.crossover": str(decision.crossover).lower()}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value[:5000])
    if decision.promote:
        client.set_registered_model_alias(name, gc.alias, version)
    log.info("%s/%s against %s/%s: %s", name, version, name, champion, tags["gate.decision"] + "; " + decision.reason)
    return StageResult(
        stage="gate",
        run_id=ctx.run_id,
        table=str(work / "gate.csv"),
        summary_md=markdown,
        metrics={"promoted": float(decision.promote), "crossover": float(decision.crossover)},
        details={"decision": tags, "champion": f"{name}/{version if decision.promote else champion}"},
    )


def current_champion(config: dict, upstream: dict[str, StageResult]) -> dict:
    """The version holding the alias now (part of the cache identity: a moved champion is a new decision)."""
    from mlflow import MlflowClient

    from thinkflow.tracking import resolve_uri

    registered = [r.details["registered"] for r in upstream.values() if "registered" in r.details]
    if not registered:
        return {}
    client = MlflowClient(resolve_uri(config["tracking"]["uri"], config["paths"]["root"]))
    return {"champion": alias_version(client, registered[-1]["name"], config["gate"]["alias"])}


def _promote(ctx: StageContext, client, name: str, version: str, alias: str, reason: str) -> StageResult:
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "gate.decision", "promoted")
    client.set_model_version_tag(name, version, "gate.reason", reason)
    ctx.tracker.log_metrics(ctx.run_id, {"gate/promote": 1.0})
    log.info(reason)
    return StageResult(
        stage="gate",
        run_id=ctx.run_id,
        summary_md=f"# Gate\n\n{reason}\n",
        metrics={"promoted": 1.0, "crossover": 0.0},
        details={"decision": {"gate.decision": "promoted", "gate.reason": reason}, "champion": f"{name}/{version}"},
    )


STAGE = StageSpec(
    name="gate",
    run=run_gate,
    config=GateConfig,
    order=35,
    inputs=("task", "trainer", "seed", "ttc", "tracking"),
    upstream=("pretrain", "sft", "rl", "ttc"),
    headline=("promoted", "crossover"),
    check=check_config,
    outside=current_champion,
)
