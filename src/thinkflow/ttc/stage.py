"""The ``ttc`` stage: accuracy as a function of inference compute, per strategy, per checkpoint.

    python flows/pipeline.py                                   # pretrain -> rl -> ttc
    python flows/pipeline.py ttc.n_max=16 "ttc.ks=[1,2,4,8,16]"
    python flows/pipeline.py "~pretrain" "~rl" ttc.init_from=path/to/hf     # any checkpoint alone

For every checkpoint (pretrain and RL by default, on the same plots): draw ``n_max`` samples per
held-out problem once, store them (``ttc/<ckpt>/samples.csv``), score them with a learned
verifier trained on samples of training problems, compute every parallel strategy's curve for
all k from that table, run the sequential strategies (thinking budgets, Wait-extension), and the
compute-optimal allocation. Metrics ``ttc/<ckpt>/<strategy>_at_k`` with step=k, PNG plots with
95% CIs, a CSV of every point, and a markdown summary (also a Prefect artifact).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from thinkflow import logs
from thinkflow.config import ConfigError, PipelineConfig, TTCConfig
from thinkflow.envs import EnvTask, transcripts_markdown
from thinkflow.evaluation import breakdown, breakdown_markdown, breakdown_metrics
from thinkflow.inference import open_engine
from thinkflow.models.flops import FlopModel
from thinkflow.models.precision import sampling_precision
from thinkflow.registry import StageResult, StageSpec
from thinkflow.scaling.curves import VERIFIER_SCORED, curve_points, per_problem, problem_compute
from thinkflow.scaling.sequential import BUDGET_COLUMNS, budget_points
from thinkflow.scaling.table import sample_table
from thinkflow.stages import (
    StageContext,
    check_context,
    check_held_out_size,
    config_key,
    local_source,
    stage_work_dir,
    upstream_checkpoint,
)
from thinkflow.tasks import Problem, Task
from thinkflow.ttc.allocation import compute_optimal, compute_saving, difficulty_bins
from thinkflow.ttc.plots import accuracy_vs, budget_plot
from thinkflow.ttc.search import search_points, supports_search

if TYPE_CHECKING:
    from transformers import PretrainedConfig

from thinkflow.ttc.verifier import LearnedVerifier, sample_stats

log = logs.get("ttc")


def evaluated_stages(cfg: PipelineConfig) -> list[str]:
    """The stages in ``ttc.checkpoints`` that run in this pipeline (those are evaluated)."""
    return [name for name in cfg.ttc.checkpoints if cfg.enabled(name)]


def checkpoints_to_evaluate(cfg: PipelineConfig, upstream: dict[str, StageResult]) -> dict[str, str]:
    if cfg.ttc.init_from:
        return {"init": local_source(cfg, cfg.ttc.init_from)}
    found = {name: upstream_checkpoint(upstream, name) for name in evaluated_stages(cfg)}
    missing = [n for n, path in found.items() if not path or not (Path(path) / "config.json").exists()]
    if missing:
        raise ConfigError(f"ttc: no checkpoint from {missing} (did those stages run?); or set ttc.init_from")
    return found


def check_config(cfg: PipelineConfig) -> None:
    check_held_out_size(cfg, "ttc.n_problems", cfg.ttc.n_problems)
    if not cfg.ttc.init_from and not evaluated_stages(cfg):
        raise ValueError(
            f"ttc: none of ttc.checkpoints={cfg.ttc.checkpoints} runs in this pipeline; enable one of "
            "those stages or set ttc.init_from"
        )


def run_ttc(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    tc = cfg.ttc
    ckpts = checkpoints_to_evaluate(cfg, ctx.upstream)
    precision, autocast = sampling_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    section = {"ttc": tc.model_dump(), "task": cfg.task.model_dump(), "ckpts": config_key(ckpts), "seed": cfg.seed}
    work = stage_work_dir(cfg, "ttc", section | {"precision": precision})
    ctx.tracker.log_params(
        ctx.run_id,
        {f"ttc.{k}": str(v) for k, v in tc.model_dump().items()}
        | {f"checkpoint.{n}": p for n, p in ckpts.items()}
        | {"trainer.precision_used": precision},
    )
    t0 = time.perf_counter()
    points, budgets, tables, summaries = [], [], {}, {}
    for name, path in ckpts.items():
        pts, bud, table, summary = _evaluate(cfg, ctx, name, path, work, autocast)
        points.append(pts)
        budgets.append(bud)
        tables[name], summaries[name] = table, summary
    points, budgets = pd.concat(points, ignore_index=True), pd.concat(budgets, ignore_index=True)
    wall = time.perf_counter() - t0
    return _finish(cfg, ctx, work, points, budgets, summaries, wall)


def _evaluate(
    cfg: PipelineConfig, ctx: StageContext, name: str, path: str, work: Path, autocast: torch.dtype | None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    tc = cfg.ttc
    with open_engine(tc.backend, path, autocast=autocast) as engine:
        # the same problems for every checkpoint; with task.prompt=chat, in each one's own chat template
        task = cfg.task.build(engine.tokenizer)
        train, problems = task.splits(tc.verifier.train_problems, tc.n_problems or cfg.task.n_test, seed=cfg.seed)
        context = getattr(getattr(engine, "model", None), "config", None)
        context = getattr(context, "max_position_embeddings", None)
        check_context(engine.tokenizer, problems + train, context, tc.max_new_tokens, "ttc.max_new_tokens")
        model = engine.model if hasattr(engine, "model") else None
        table, gen_wall = sample_table(engine, task, problems, tc.n_max, tc.temperature, tc.max_new_tokens, tc.seed)
        flop_model = FlopModel.from_config(_model_config(path))
        verifier_note = "no verifier (backend without model weights)"
        if model is not None:
            verifier = LearnedVerifier(model, engine.tokenizer).fit(
                engine, task, train, tc.verifier.samples, tc.max_new_tokens, seed=tc.seed + 1
            )
            prompts = {p.id: p.prompt for p in problems}
            stats = sample_stats(table["logprob_mean"], table["logprob_min"], table["gen_tokens"], table["has_answer"])
            table["verifier"] = verifier.score(
                [prompts[i] for i in table["problem_id"]], list(table["text"]), stats
            ).numpy()
            verifier_note = f"learned verifier train accuracy {verifier.train_acc:.3f}"
        if isinstance(task, EnvTask):  # thinking budgets and step search act on one completion, not episodes
            budgets = pd.DataFrame(columns=list(BUDGET_COLUMNS))
        else:
            budgets = budget_points(
                engine,
                task,
                problems,
                name,
                flop_model,
                tc.max_new_tokens,
                tc.budgets,
                tc.wait_min_think,
                tc.bootstrap,
                tc.answer_tokens,
            )
        if tc.search.widths and supports_search(task) and not isinstance(task, EnvTask):
            sc = tc.search
            search = search_points(
                engine,
                task,
                problems,
                name,
                flop_model,
                sc.widths,
                sc.expand,
                sc.max_steps,
                sc.step_tokens,
                tc.bootstrap,
            )
            budgets = pd.concat([budgets, search], ignore_index=True)
    log.info("%s: %d problems x %d samples in %.1f s; %s", name, len(problems), tc.n_max, gen_wall, verifier_note)
    t0 = time.perf_counter()
    levels = {p.id: p.meta["level"] for p in problems if "level" in p.meta}
    points, allocation = score_all(name, table, flop_model, gen_wall, tc, levels or None)
    scoring_s = time.perf_counter() - t0
    table.to_csv(work / f"samples_{name}.csv", index=False)
    _log_checkpoint(ctx, name, table, points, budgets, allocation, work)
    if isinstance(task, EnvTask):
        _log_episodes(ctx, name, task, problems, table, work)
    summary = _summary(points, budgets, allocation, gen_wall, scoring_s)
    summary["breakdown_md"] = _log_answers(ctx, name, table, problems, work)
    _log_answer_checks(ctx, name, task)
    return points, budgets, table, summary


def score_all(
    name: str, table: pd.DataFrame, flop_model: FlopModel, gen_wall: float, tc: TTCConfig, levels: dict | None = None
) -> tuple:
    """Every curve and the compute-optimal allocation from one stored table (no generation). ``levels``
    (problem id -> a benchmark's own difficulty level, e.g. MATH-500's 1-5) are the allocation's bins;
    without them, bins are quantiles of the model's own pass rate."""
    curves = {s: v for s, v in per_problem(table, tc.ks, tc.vote_draws, tc.seed).items() if s in tc.strategies}
    compute = problem_compute(table, flop_model, gen_wall)
    points = curve_points(name, curves, compute, tc.ks, tc.n_max, tc.bootstrap, tc.seed)
    return points, _allocation(curves, compute, tc.ks, table, tc.difficulty_bins, levels)


def _allocation(
    curves: dict, compute: pd.DataFrame, ks: list[int], table: pd.DataFrame, bins: int, levels: dict | None = None
) -> dict:
    flops = {
        s: np.stack(
            [
                compute["prompt_flops"].to_numpy()
                + k
                * (
                    compute["sample_flops"].to_numpy()
                    + (compute["verify_flops"].to_numpy() if s in VERIFIER_SCORED else 0)
                )
                for k in ks
            ],
            axis=1,
        )
        for s in curves
    }
    rate = table.groupby("problem_id", sort=False)["correct"].mean()
    base = next(s for s in ("bon", "bon_logprob", "weighted_maj", "weighted_maj_logprob", "maj") if s in curves)
    budgets = sorted({float(flops[base][:, j].mean()) for j in range(len(ks))})
    by = np.array([levels[i] for i in rate.index]) - 1 if levels else difficulty_bins(rate.to_numpy(), bins)
    result = compute_optimal(curves, flops, ks, by, budgets, baseline=base)
    best, at = result["baseline_accuracy"].max(), budgets[-1]
    return {"table": result, "baseline": base, "saving": compute_saving(result, best, at)}


def _model_config(path: str) -> PretrainedConfig:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


def _log_checkpoint(
    ctx: StageContext,
    name: str,
    table: pd.DataFrame,
    points: pd.DataFrame,
    budgets: pd.DataFrame,
    allocation: dict,
    work: Path,
) -> None:
    tracker, run_id = ctx.tracker, ctx.run_id
    for _, r in points.iterrows():
        tracker.log_metrics(run_id, {f"ttc/{name}/{r.strategy}_at_k": r.accuracy}, step=int(r.k))
    for k, g in points[points.strategy == "maj"].groupby("k"):
        tracker.log_metrics(run_id, {f"ttc/{name}/flops_at_k": float(g.flops.iloc[0])}, step=int(k))
    # samples without an extractable answer count as wrong everywhere; how many there were:
    tracker.log_metrics(run_id, {f"ttc/{name}/no_answer_frac": float(1 - table["has_answer"].mean())})
    for _, r in budgets.iterrows():
        tracker.log_metrics(run_id, {f"ttc/{name}/{r.strategy}_acc": r.accuracy}, step=int(r.knob))
    allocation["table"].to_csv(work / f"allocation_{name}.csv", index=False)


def _log_answers(ctx: StageContext, name: str, table: pd.DataFrame, problems: list[Problem], work: Path) -> str:
    """Benchmarks: pass@1 by level and subject (``ttc/<ckpt>/level_3/pass_at_1``), the lenient-minus-strict
    answer gap, thinking vs answer tokens; returns the breakdown as markdown for the summary."""
    metrics = {}
    if "correct_lenient" in table.columns:
        metrics[f"ttc/{name}/lenient_minus_strict"] = float(table["correct_lenient"].mean() - table["correct"].mean())
    if "thinking_tokens" in table.columns:
        metrics[f"ttc/{name}/thinking_tokens"] = float(table["thinking_tokens"].mean())
        metrics[f"ttc/{name}/answer_tokens"] = float(table["answer_tokens"].mean())
    frame = breakdown(table, problems)
    metrics |= breakdown_metrics(frame, f"ttc/{name}", "pass_at_1")
    if metrics:
        ctx.tracker.log_metrics(ctx.run_id, metrics)
    if frame.empty:
        return ""
    frame.to_csv(work / f"breakdown_{name}.csv", index=False)
    return "\n".join(breakdown_markdown(frame, f"{name}: pass@1"))


def _log_answer_checks(ctx: StageContext, name: str, task: Task) -> None:
    """Benchmarks checked by math-verify (MATH-500): checks made, answers screened out as hostile and checks
    that hit their time bound (both counted wrong), so far in this process (the checker is the task's)."""
    if hasattr(task, "check_stats"):
        stats = {f"ttc/{name}/answer_checks/{k}": float(v) for k, v in task.check_stats().items()}
        ctx.tracker.log_metrics(ctx.run_id, stats)


def _log_episodes(
    ctx: StageContext, name: str, task: Task, problems: list[Problem], table: pd.DataFrame, work: Path
) -> None:
    """``ttc/<ckpt>/env/*``: tool calls, invalid actions, turns, sandbox violations and environment seconds
    per episode; the first sample of each problem as readable transcripts."""
    turns = max(1, int(table["turns"].sum()))
    calls, invalid = table["tool_calls"].sum(), table["invalid_actions"].sum()
    ctx.tracker.log_metrics(
        ctx.run_id,
        {
            f"ttc/{name}/env/tool_calls_per_episode": float(table["tool_calls"].mean()),
            f"ttc/{name}/env/invalid_action_rate": float(invalid / turns),
            f"ttc/{name}/env/well_formed_call_frac": float(calls / (calls + invalid)) if calls + invalid else 1.0,
            f"ttc/{name}/env/grounded_call_frac": float(table["grounded_calls"].sum() / calls) if calls else 1.0,
            f"ttc/{name}/env/turns": float(table["turns"].mean()),
            f"ttc/{name}/env/sandbox_violations": float(table["sandbox_violations"].sum()),
            f"ttc/{name}/env/step_seconds": float(table["env_s"].mean()),
            f"ttc/{name}/env/seconds_total": float(table["env_s"].sum()),
        },
    )
    prompts = {p.id: p.prompt for p in problems}
    first = table[table["sample"] == 0]
    rows = [
        {
            "prompt": prompts[r.problem_id],
            "completion": r.text,
            "reward": float(r.reward),
            "turns": int(r.turns),
            "tool_calls": int(r.tool_calls),
            "invalid": int(r.invalid_actions),
        }
        for r in first.itertuples()
    ]
    (work / f"transcripts_{name}.md").write_text(
        transcripts_markdown(f"{task.name}: {name}, sample 0 per problem", rows)
    )


def _summary(points: pd.DataFrame, budgets: pd.DataFrame, allocation: dict, gen_wall: float, scoring_s: float) -> dict:
    acc = {(r.strategy, int(r.k)): r for r in points.itertuples()}
    ks = sorted({int(k) for k in points.k})
    k16 = 16 if 16 in ks else ks[-1]
    return {
        "pass_at_1": acc[("pass", 1)].accuracy,
        f"maj_at_{k16}": acc[("maj", k16)].accuracy,
        "maj_k": k16,
        "maj_ci": (acc[("maj", k16)].ci_low, acc[("maj", k16)].ci_high),
        "pass_at_1_ci": (acc[("pass", 1)].ci_low, acc[("pass", 1)].ci_high),
        f"pass_at_{ks[-1]}": acc[("pass", ks[-1])].accuracy,
        "generation_s": gen_wall,
        "scoring_s": scoring_s,
        "compute_saving": allocation["saving"],
        "baseline": allocation["baseline"],
        "best_budget_acc": float(budgets.accuracy.max()) if len(budgets) else float("nan"),
    }


def _finish(
    cfg: PipelineConfig,
    ctx: StageContext,
    work: Path,
    points: pd.DataFrame,
    budgets: pd.DataFrame,
    summaries: dict,
    wall: float,
) -> StageResult:
    tracker, run_id = ctx.tracker, ctx.run_id
    points.to_csv(work / "points.csv", index=False)
    budgets.to_csv(work / "budget_points.csv", index=False)
    accuracy_vs(points, "k", work / "accuracy_vs_k.png", "Accuracy vs samples per problem")
    accuracy_vs(points, "flops", work / "accuracy_vs_flops.png", "Accuracy vs inference FLOPs")
    accuracy_vs(points, "gen_tokens", work / "accuracy_vs_tokens.png", "Accuracy vs generated tokens")
    if len(budgets):
        budget_plot(budgets, work / "accuracy_vs_thinking_tokens.png")
    markdown = summary_markdown(points, budgets, summaries)
    (work / "summary.md").write_text(markdown)
    tracker.log_artifacts(run_id, work, "ttc")
    last = list(summaries)[-1]
    s = summaries[last]
    k = s["maj_k"]
    headline = {
        "pass_at_1": s["pass_at_1"],
        "pass_at_1_ci_low": s["pass_at_1_ci"][0],
        "pass_at_1_ci_high": s["pass_at_1_ci"][1],
        f"maj_at_{k}": s[f"maj_at_{k}"],
        "maj_gain": s[f"maj_at_{k}"] - s["pass_at_1"],
    }
    tracker.log_metrics(run_id, {"ttc/wall_s": wall} | {f"ttc/{last}/maj_gain": headline["maj_gain"]})
    return StageResult(
        stage="ttc",
        run_id=run_id,
        table=str(work / "points.csv"),
        summary_md=markdown,
        metrics=headline | {"wall_s": wall},
        details={"summaries": summaries},
    )


STAGE = StageSpec(
    name="ttc",
    run=run_ttc,
    config=TTCConfig,
    order=30,
    inputs=("task", "trainer", "seed"),  # trainer: the precision it samples in
    upstream=("pretrain", "sft", "rl"),
    headline=("pass_at_1", "pass_at_1_ci_low", "pass_at_1_ci_high", "maj_at_16", "maj_gain"),
    check=check_config,
    aliases=("ttc_eval",),
)


def summary_markdown(points: pd.DataFrame, budgets: pd.DataFrame, summaries: dict) -> str:
    n_p, n_s = int(points.n_problems.iloc[0]), int(points.n_samples.iloc[0])
    lines = [f"# Test-time compute: {n_p} held-out problems x {n_s} samples (95% bootstrap CIs)", ""]
    ks = sorted({int(k) for k in points.k})
    lines += ["| checkpoint | strategy | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|---|" + "---:|" * len(ks)]
    for (ckpt, strategy), g in points.groupby(["checkpoint", "strategy"], sort=False):
        cells = [f"{r.accuracy:.3f} [{r.ci_low:.2f}, {r.ci_high:.2f}]" for r in g.sort_values("k").itertuples()]
        lines.append(f"| {ckpt} | {strategy} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| checkpoint | sequential / search | knob | thinking tokens | accuracy |",
        "|---|---|---:|---:|---:|",
    ]
    for r in budgets.itertuples():
        lines.append(
            f"| {r.checkpoint} | {r.strategy} | {r.knob} | {r.thinking_tokens:.1f} | "
            f"{r.accuracy:.3f} [{r.ci_low:.2f}, {r.ci_high:.2f}] |"
        )
    lines.append("")
    lines += [s["breakdown_md"] + "\n" for s in summaries.values() if s.get("breakdown_md")]
    for ckpt, s in summaries.items():
        saving = f"{s['compute_saving']:.2f}x less compute" if s["compute_saving"] else "never"
        k = s["maj_k"]
        maj = s[f"maj_at_{k}"]
        lines.append(
            f"- {ckpt}: pass@1 {s['pass_at_1']:.3f}, maj@{k} {maj:.3f}; compute-optimal "
            f"allocation reaches best-of-N ({s['baseline']}) accuracy with {saving}; generation "
            f"{s['generation_s']:.1f} s, scoring every curve {s['scoring_s']:.1f} s"
        )
    return "\n".join(lines) + "\n"
