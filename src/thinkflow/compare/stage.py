"""The ``compare`` stage: the same benchmark and strategies on every contestant, normalised by cost.

    python flows/pipeline.py                                      # ... -> compare over pretrain, rl
    python flows/pipeline.py experiment=gsm8k_open_vs_frontier    # Gemma 3 270M + API contestants

Every contestant answers the same held-out problems (same prompts up to the form its interface
needs, same answer extraction and verification): greedy, and ``max(ks)`` samples at
``temperature`` scored as pass@k and maj@k for every k (``scaling.curves``), plus thinking budgets on
local backends. Cost per problem: API prices x reported token usage; for local models measured
seconds x ``usd_per_hour``. FLOPs from the architecture (local) or ~2 x ``n_params`` per token.

MLflow: one run per contestant (tags ``stage=compare``, ``contestant=<name>``) under the stage's
run, all with the same metric keys; the comparison table (markdown + CSV), the matched-compute
tables and the accuracy-vs-cost plot on the stage run and the pipeline's parent run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from thinkflow.api.client import APIError, SpendCapReached
from thinkflow.compare.report import comparison_table, cost_plot, markdown, matched_compute
from thinkflow.config import CompareConfig, PipelineConfig
from thinkflow.contestants import Contestant, Skip, open_contestant
from thinkflow.envs import with_env
from thinkflow.evaluation import breakdown, breakdown_metrics
from thinkflow.inference import Engine, GenerationError, SamplingParams
from thinkflow.models import CheckpointError
from thinkflow.models.precision import sampling_precision
from thinkflow.registry import StageResult, StageSpec
from thinkflow.scaling.curves import curve_points, per_problem, problem_compute
from thinkflow.scaling.estimators import bootstrap_ci
from thinkflow.scaling.sequential import budget_points
from thinkflow.scaling.table import sample_rows
from thinkflow.stages import StageContext, check_held_out_size, config_key, local_source, stage_work_dir
from thinkflow.tasks import Problem, Task
from thinkflow.tasks.prompts import stop_strings
from thinkflow.tracking import FLOW_RUN_TAG, STAGE_TAG
from thinkflow.tracking.model_registry import is_model_uri

CONTESTANT_TAG = "contestant"
log = logging.getLogger("thinkflow.compare")


def run_compare(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    cc = cfg.compare
    task = cfg.task.build()
    shots_needed = max(c.fewshot for c in cc.entrants.values())
    train, problems = task.splits(shots_needed, cc.n_problems or cfg.task.n_test, seed=cfg.seed)
    upstream_ckpts = {k: v.checkpoint for k, v in ctx.upstream.items()}
    precision, autocast = sampling_precision(cfg.trainer.precision, cfg.trainer.accelerator)  # local contestants
    work = stage_work_dir(
        cfg,
        "compare",
        {
            "compare": cc.model_dump(),
            "task": cfg.task.model_dump(),
            "ckpts": config_key(upstream_ckpts),
            "seed": cfg.seed,
            "precision": precision,
        },
    )
    ctx.tracker.log_params(
        ctx.run_id,
        {
            "compare.contestants": ",".join(cc.entrants),
            "compare.n_problems": str(len(problems)),
            "compare.ks": str(cc.ks),
            "trainer.precision_used": precision,
        },
    )
    t0 = time.perf_counter()
    points, summaries = [], {}
    for name, spec in cc.entrants.items():
        summary = {"kind": spec.kind, "model": spec.model or spec.stage or spec.run or spec.package, "status": "ok"}
        if spec.kind == "hf" and is_model_uri(spec.model):  # a registered version: its downloaded HF directory
            spec = spec.model_copy(update={"model": local_source(cfg, spec.model)})
        try:
            with open_contestant(name, spec, ctx.upstream, ctx.tracker, work, cc.api, autocast) as c:
                summary |= {"model": c.info.get("model", summary["model"]), "n_params": c.n_params}
                pts, s = _contestant_run(cfg, ctx, c, task, problems, train, work)
                points.append(pts)
                summary |= s
        except Skip as why:
            summary |= {"status": "skipped", "note": str(why)}
            log.info("%s: skipped: %s", name, why)
        except (APIError, CheckpointError, GenerationError, ValueError) as err:
            summary |= {"status": "failed", "note": str(err)}
            log.warning("%s failed: %s", name, err)
        summaries[name] = summary
    points = pd.concat(points, ignore_index=True) if points else pd.DataFrame(columns=["contestant", "strategy"])
    return _finish(cfg, ctx, work, points, summaries, len(problems), time.perf_counter() - t0)


def _contestant_run(
    cfg: PipelineConfig,
    ctx: StageContext,
    c: Contestant,
    task: Task,
    problems: list[Problem],
    train: list[Problem],
    work: Path,
) -> tuple[pd.DataFrame, dict]:
    """One MLflow run (FAILED if evaluation raises) holding this contestant's metrics."""
    tags = {
        STAGE_TAG: "compare",
        CONTESTANT_TAG: c.name,
        FLOW_RUN_TAG: ctx.tracker.client.get_run(ctx.run_id).data.tags.get(FLOW_RUN_TAG, ""),
    }
    with ctx.tracker.run(c.name, tags, parent_run_id=ctx.run_id) as run_id:
        ctx.tracker.log_params(run_id, {f"contestant.{k}": str(v) for k, v in c.info.items()})
        pts, budgets, table, s = evaluate(c, task, problems, train, cfg.compare)
        table.to_csv(work / f"samples_{c.name}.csv", index=False)
        _log_contestant(ctx, run_id, pts, budgets, s)
        if s["status"] != "ok":
            ctx.tracker.client.set_tag(run_id, "compare.status", f"{s['status']}: {s.get('note', '')}")
    s["run_id"] = run_id
    return pts, s


def evaluate(
    c: Contestant, task: Task, problems: list[Problem], train: list[Problem], cc: CompareConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Greedy and sampled answers of one contestant, scored: (points, budget points, samples, summary)."""
    max_new = c.spec.max_new_tokens or cc.max_new_tokens
    stop = stop_strings(c.spec.prompt)
    prompts = [c.prompt(task, p, train) for p in problems]
    engine = with_env(c.engine, task, problems)  # environment tasks: every answer is an episode
    status, note = "ok", ""
    greedy, t_greedy, capped = _generate(
        c, engine, prompts, SamplingParams(1, 0.0, max_new_tokens=max_new, stop=stop, seed=cc.seed)
    )
    n = max(cc.ks) if {"pass", "maj"} & set(cc.strategies) else 0
    sampled, t_sampled = [[] for _ in problems], 0.0
    if n and not capped:
        params = SamplingParams(n, cc.temperature, max_new_tokens=max_new, stop=stop, seed=cc.seed + 1)
        sampled, t_sampled, capped = _generate(c, engine, prompts, params)
    if capped:
        status, note = "partial", capped
    keep = [i for i in range(len(problems)) if len(greedy[i]) == 1 and (not n or len(sampled[i]) == n)]
    if not keep:
        raise APIError(f"{c.name}: no problem fully answered ({note or 'nothing returned'})")
    if len(keep) < len(problems):
        note += f"; scored on the {len(keep)} of {len(problems)} problems fully answered"
    kept = [problems[i] for i in keep]
    rate = (c.spec.usd_per_hour if c.spec.usd_per_hour is not None else cc.usd_per_hour) / 3600
    g_table = _with_cost(c, sample_rows(task, kept, [greedy[i] for i in keep]), t_greedy, rate)
    rows = [_greedy_point(c, g_table, cc)]
    tables = [g_table.assign(kind="greedy")]
    if n:
        s_table = _with_cost(c, sample_rows(task, kept, [sampled[i] for i in keep]), t_sampled, rate)
        tables.append(s_table.assign(kind="sampled"))
        curves = {
            k: v
            for k, v in per_problem(s_table, cc.ks, 128, cc.seed).items()
            if k in cc.strategies and k in ("pass", "maj")
        }
        pts = curve_points(
            c.name, curves, problem_compute(s_table, c.flop_model, t_sampled), cc.ks, n, cc.bootstrap, cc.seed
        )
        per_sample_usd = s_table.groupby("problem_id", sort=False)["usd"].mean().mean()
        pts["usd"] = pts["k"] * per_sample_usd
        rows.append(pts.rename(columns={"checkpoint": "contestant"}))
    points = pd.concat([pd.DataFrame(rows[:1]), *rows[1:]], ignore_index=True)
    budgets = pd.DataFrame()
    if "budget" in cc.strategies and c.local and all(isinstance(p, str) for p in prompts):
        rendered = [replace(p, prompt=prompts[i]) for i, p in zip(keep, kept, strict=True)]
        budgets = budget_points(
            c.engine, task, rendered, c.name, c.flop_model, max_new, cc.budgets, [], cc.bootstrap, cc.answer_tokens
        )
    table = pd.concat(tables, ignore_index=True)
    summary = (
        _episode_totals(table)
        | _answer_totals(g_table, kept)
        | {
            "status": status,
            "note": note.strip("; "),
            "n_problems": len(kept),
            "tokens_out": int(table.gen_tokens.sum()),
            "cost_usd": float(table.usd.sum()),
            "flops": float(table.flops.sum()),
            "wall_s": t_greedy + t_sampled,
        }
    )
    if c.client is not None:
        u = c.client.usage
        summary |= {
            "api_paid_calls": u.paid_calls,
            "api_cache_hits": u.cache_hits,
            "api_retries": u.retries,
            "api_spent_this_run_usd": u.spent_usd,
        }
    return points, budgets, table, summary


def _episode_totals(table: pd.DataFrame) -> dict:
    """Environment tasks: tool calls and invalid actions per episode, sandbox violations, environment seconds."""
    if "tool_calls" not in table.columns:
        return {}
    return {
        "env/tool_calls_per_episode": float(table.tool_calls.mean()),
        "env/invalid_actions_per_episode": float(table.invalid_actions.mean()),
        "env/sandbox_violations": float(table.sandbox_violations.sum()),
        "env/seconds": float(table.env_s.sum()),
        "env/mean_reward": float(table.reward.mean()),
    }


def _answer_totals(greedy: pd.DataFrame, problems: list[Problem]) -> dict:
    """Greedy answers: share without an answer, the lenient-minus-strict gap (GSM8K), accuracy by level and
    subject (MATH-500; ``breakdown`` rows)."""
    out = {"no_answer_frac": float(1 - greedy["has_answer"].mean())}
    if "correct_lenient" in greedy.columns:
        out["lenient_minus_strict"] = float(greedy["correct_lenient"].mean() - greedy["correct"].mean())
    frame = breakdown(greedy, problems)
    return out | ({"breakdown": frame.to_dict("records")} if not frame.empty else {})


def _generate(c: Contestant, engine: Engine, prompts: list, params: SamplingParams) -> tuple[list, float, str]:
    """(groups, wall seconds, spend-cap note or ""); partial groups are kept when the cap stops it."""
    t0 = time.perf_counter()
    try:
        groups, capped = engine.generate(prompts, params), ""
    except SpendCapReached as stop:
        groups, capped = stop.results, str(stop)
    return groups, time.perf_counter() - t0, capped


def _with_cost(c: Contestant, table: pd.DataFrame, wall: float, usd_per_s: float) -> pd.DataFrame:
    """Per-sample FLOPs and dollars: API prices x tokens, or the generation time shared out by tokens."""
    table["flops"] = [
        c.flop_model.sequence(int(p), int(g)) for p, g in zip(table.prompt_tokens, table.gen_tokens, strict=True)
    ]
    if c.client is not None:
        ep = c.client.endpoint
        table["usd"] = [ep.cost(int(p), int(g)) for p, g in zip(table.prompt_tokens, table.gen_tokens, strict=True)]
    else:
        table["usd"] = wall * usd_per_s * table.gen_tokens / max(1, table.gen_tokens.sum())
    return table


def _greedy_point(c: Contestant, table: pd.DataFrame, cc: CompareConfig) -> dict:
    correct = table["correct"].to_numpy(float)
    lo, hi = bootstrap_ci(correct, cc.bootstrap, cc.seed)
    return {
        "contestant": c.name,
        "strategy": "greedy",
        "k": 1,
        "accuracy": float(correct.mean()),
        "ci_low": lo,
        "ci_high": hi,
        "n_problems": len(table),
        "n_samples": 1,
        "gen_tokens": float(table.gen_tokens.mean()),
        "flops": float(table.flops.mean()),
        "usd": float(table.usd.mean()),
    }


def _log_contestant(ctx: StageContext, run_id: str, points: pd.DataFrame, budgets: pd.DataFrame, s: dict) -> None:
    t = ctx.tracker
    for r in points.itertuples():
        if r.strategy == "greedy":
            t.log_metrics(
                run_id,
                {
                    "compare/acc_greedy": r.accuracy,
                    "compare/usd_per_problem_greedy": r.usd,
                    "compare/flops_per_problem_greedy": r.flops,
                },
            )
        else:
            t.log_metrics(run_id, {f"compare/{r.strategy}_at_k": r.accuracy}, step=int(r.k))
            if r.strategy == "maj":
                t.log_metrics(
                    run_id,
                    {"compare/usd_per_problem_at_k": r.usd, "compare/flops_per_problem_at_k": r.flops},
                    step=int(r.k),
                )
    for r in budgets.itertuples():
        t.log_metrics(run_id, {"compare/budget_acc": r.accuracy}, step=int(r.knob))
    keys = (
        "cost_usd",
        "tokens_out",
        "flops",
        "wall_s",
        "n_problems",
        "api_paid_calls",
        "api_cache_hits",
        "api_retries",
        "no_answer_frac",
        "lenient_minus_strict",
        *(k for k in s if k.startswith("env/")),
    )
    totals = {f"compare/{k}": float(s[k]) for k in keys if k in s and np.isfinite(float(s[k]))}
    by = breakdown_metrics(pd.DataFrame(s.get("breakdown", [])), "compare", "acc_greedy")
    t.log_metrics(run_id, totals | by)


def _finish(
    cfg: PipelineConfig,
    ctx: StageContext,
    work: Path,
    points: pd.DataFrame,
    summaries: dict,
    n_problems: int,
    wall: float,
) -> StageResult:
    tracker = ctx.tracker
    out = work / "report"
    out.mkdir(exist_ok=True)
    table = comparison_table(points, summaries)
    sizes = {n: s.get("n_params") for n, s in summaries.items()}
    matched = {by: matched_compute(points, sizes, by) for by in ("flops", "usd")} if not points.empty else {}
    benchmark = cfg.task.name + (f" ({cfg.task.source})" if cfg.task.source else "")
    md = markdown(table, matched, n_problems, benchmark)
    parts = [pd.DataFrame(s["breakdown"]).assign(contestant=n) for n, s in summaries.items() if s.get("breakdown")]
    if parts:  # greedy accuracy by level and subject, one column per contestant
        by = pd.concat(parts, ignore_index=True)
        by.to_csv(out / "breakdown.csv", index=False)
        wide = by.pivot_table(index=["group", "value"], columns="contestant", values="accuracy", sort=False)
        rows = [f"| {g} | {v} | " + " | ".join(f"{a:.3f}" for a in r) + " |" for (g, v), r in wide.iterrows()]
        head = ["| group | value | " + " | ".join(wide.columns) + " |", "|---|---|" + "---:|" * len(wide.columns)]
        md += "\n## Greedy accuracy by level and subject\n\n" + "\n".join(head + rows) + "\n"
    (out / "comparison.md").write_text(md)
    table.to_csv(out / "comparison.csv", index=False)
    points.to_csv(out / "points.csv", index=False)
    for by, m in matched.items():
        m.to_csv(out / f"matched_compute_{by}.csv", index=False)
    if not points.empty:
        cost_plot(points, out / "accuracy_vs_cost.png")
    for run_id in (ctx.run_id, ctx.parent_run_id):
        tracker.log_artifacts(run_id, out, "compare")
    headline = (
        {
            f"compare/{n}/acc_greedy": float(g.accuracy)
            for n, g in points[points.strategy == "greedy"].set_index("contestant").iterrows()
        }
        if not points.empty
        else {}
    )
    tracker.log_metrics(ctx.parent_run_id, headline)
    tracker.log_metrics(ctx.run_id, headline | {"compare/wall_s": wall})
    contestants = {
        n: {k: v for k, v in s.items() if k != "note"} | {"note": s.get("note", "")} for n, s in summaries.items()
    }
    return StageResult(
        stage="compare",
        run_id=ctx.run_id,
        table=str(out / "comparison.csv"),
        metrics={"wall_s": wall},
        details={"contestants": contestants},
        summary_md=md,
    )


def check_config(cfg: PipelineConfig) -> None:
    check_held_out_size(cfg, "compare.n_problems", cfg.compare.n_problems)


STAGE = StageSpec(
    name="compare",
    run=run_compare,
    config=CompareConfig,
    order=40,
    inputs=("task", "trainer", "seed"),  # trainer: the precision it samples in
    upstream=("pretrain", "sft", "rl"),
    check=check_config,
)
