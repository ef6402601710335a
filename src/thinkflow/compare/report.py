"""The comparison table, the matched-compute answer, and the accuracy-vs-cost plot.

``points`` has one row per (contestant, strategy, k): accuracy with its 95% CI, and the mean
per-problem compute at that k: FLOPs, dollars, generated tokens, seconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def _fmt(x: float, spec: str = ".3g") -> str:
    return format(x, spec) if _known(x) else "n/a"


def _known(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _acc(r: dict, key: str, ci: str) -> str:
    return f"{r[key]:.3f} {r.get(ci, '')}" if _known(r.get(key)) else "n/a"


def comparison_table(points: pd.DataFrame, summaries: dict[str, dict]) -> pd.DataFrame:
    """One row per contestant: headline accuracies and what they cost."""
    rows = []
    for name, s in summaries.items():
        row = {
            "contestant": name,
            "kind": s["kind"],
            "model": s["model"],
            "n_params": s.get("n_params"),
            "status": s["status"],
            "note": s.get("note", ""),
        }
        p = points[points.contestant == name] if not points.empty else points
        if not p.empty:
            greedy = p[p.strategy == "greedy"]
            if not greedy.empty:
                g = greedy.iloc[0]
                row |= {
                    "acc_greedy": g.accuracy,
                    "greedy_ci": f"[{g.ci_low:.2f}, {g.ci_high:.2f}]",
                    "usd_per_problem_greedy": g.usd,
                    "flops_per_problem_greedy": g.flops,
                }
            for strategy in ("maj", "pass"):
                q = p[p.strategy == strategy]
                if not q.empty:
                    top = q.sort_values("k").iloc[-1]
                    row |= {
                        f"{strategy}_k": int(top.k),
                        f"acc_{strategy}_at_kmax": top.accuracy,
                        f"{strategy}_ci": f"[{top.ci_low:.2f}, {top.ci_high:.2f}]",
                    }
            row |= {"n_problems": int(p.n_problems.iloc[0])}
        row |= {
            k: s.get(k)
            for k in ("tokens_out", "cost_usd", "flops", "wall_s", "api_paid_calls", "api_cache_hits", "api_retries")
        }
        row |= {k: v for k, v in s.items() if k.startswith("env/")}  # environment tasks' episode counts
        rows.append(row)
    return pd.DataFrame(rows)


def matched_compute(points: pd.DataFrame, sizes: dict[str, int | None], by: str = "flops") -> pd.DataFrame:
    """For each pair (small, large), small having fewer parameters where both sizes are known, and
    the large one's greedy answer costing more per problem: the small model's best majority vote
    within that budget, against the large model's greedy."""
    rows = []
    greedy = points[points.strategy == "greedy"].set_index("contestant")
    maj = points[points.strategy == "maj"]
    for large, g in greedy.iterrows():
        for small, sg in greedy.iterrows():
            if small == large or not (0 < sg[by] < g[by]):  # NaN compares False: unknown costs are skipped
                continue
            if sizes.get(small) and sizes.get(large) and sizes[small] >= sizes[large]:
                continue
            votes = maj[(maj.contestant == small) & (maj[by] <= g[by])]
            if votes.empty:
                continue
            best = votes.sort_values("k").iloc[-1]
            rows.append(
                {
                    "small": small,
                    "small_strategy": f"maj@{int(best.k)}",
                    "small_acc": best.accuracy,
                    "small_ci": f"[{best.ci_low:.2f}, {best.ci_high:.2f}]",
                    f"small_{by}": best[by],
                    "large": large,
                    "large_acc_greedy": g.accuracy,
                    "large_ci": f"[{g.ci_low:.2f}, {g.ci_high:.2f}]",
                    f"large_{by}": g[by],
                    "small_wins": bool(best.ci_low > g.ci_high),
                    "large_wins": bool(g.ci_low > best.ci_high),
                }
            )
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame, matched: dict[str, pd.DataFrame], n_problems: int, benchmark: str) -> str:
    lines = [
        f"# Open versus frontier: {benchmark}, {n_problems} problems (95% bootstrap CIs)",
        "",
        "| contestant | kind | params | greedy | maj@k | pass@k | $ / problem (greedy) | FLOPs / problem "
        "(greedy) | tokens out | $ total | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in table.to_dict("records"):
        maj = f"@{int(r['maj_k'])}: " + _acc(r, "acc_maj_at_kmax", "maj_ci") if _known(r.get("maj_k")) else "n/a"
        pas = f"@{int(r['pass_k'])}: " + _acc(r, "acc_pass_at_kmax", "pass_ci") if _known(r.get("pass_k")) else "n/a"
        status = r["status"] + (f": {r['note']}" if r.get("note") else "")
        lines.append(
            f"| {r['contestant']} | {r['kind']} | {_fmt(r.get('n_params'))} | {_acc(r, 'acc_greedy', 'greedy_ci')} "
            f"| {maj} | {pas} | {_fmt(r.get('usd_per_problem_greedy'))} | "
            f"{_fmt(r.get('flops_per_problem_greedy'))} | {_fmt(r.get('tokens_out'), '.0f')} | "
            f"{_fmt(r.get('cost_usd'))} | {status} |"
        )
    if "env/sandbox_violations" in table.columns or "env/tool_calls_per_episode" in table.columns:
        lines += [
            "",
            "| contestant | tool calls / episode | invalid actions / episode | sandbox violations | "
            "env seconds | mean reward |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in table.to_dict("records"):
            cells = [
                _fmt(r.get(f"env/{k}"), ".2f")
                for k in (
                    "tool_calls_per_episode",
                    "invalid_actions_per_episode",
                    "sandbox_violations",
                    "seconds",
                    "mean_reward",
                )
            ]
            lines.append(f"| {r['contestant']} | " + " | ".join(cells) + " |")
    for by, m in matched.items():
        if m.empty:
            continue
        unit = "FLOPs" if by == "flops" else "dollars"
        lines += [
            "",
            f"Matched compute ({unit} per problem): the cheaper contestant's majority vote within the "
            "costlier one's greedy budget (pairs where a size is known only if the cheaper one is smaller)",
            "",
            f"| cheaper + majority vote ({unit}) | accuracy | costlier, greedy ({unit}) | accuracy | verdict |",
            "|---|---:|---|---:|---|",
        ]
        for r in m.to_dict("records"):
            verdict = "cheaper wins" if r["small_wins"] else "costlier wins" if r["large_wins"] else "CIs overlap"
            lines.append(
                f"| {r['small']} {r['small_strategy']} ({_fmt(r[f'small_{by}'])}) | {r['small_acc']:.3f} "
                f"{r['small_ci']} | {r['large']} ({_fmt(r[f'large_{by}'])}) | {r['large_acc_greedy']:.3f} "
                f"{r['large_ci']} | {verdict} |"
            )
    return "\n".join(lines) + "\n"


def cost_plot(points: pd.DataFrame, path: Path) -> Path:
    """Accuracy against dollars and against FLOPs per problem: greedy points, majority-vote curves."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, x, label in ((axes[0], "usd", "dollars per problem"), (axes[1], "flops", "inference FLOPs per problem")):
        hidden = []
        for name, p in points.groupby("contestant", sort=False):
            p = p[p[x] > 0]  # NaN (unknown size) and 0 (no price) have no place on a log axis
            if p.empty:
                hidden.append(str(name))
                continue
            maj = p[p.strategy == "maj"].sort_values(x)
            color = None
            if not maj.empty:
                line = ax.plot(maj[x], maj.accuracy, "-", marker="o", ms=3, label=f"{name}: maj@k")[0]
                ax.fill_between(maj[x], maj.ci_low, maj.ci_high, color=line.get_color(), alpha=0.12)
                color = line.get_color()
            g = p[p.strategy == "greedy"]
            if not g.empty:
                ax.errorbar(
                    g[x],
                    g.accuracy,
                    yerr=[g.accuracy - g.ci_low, g.ci_high - g.accuracy],
                    fmt="*",
                    ms=10,
                    color=color,
                    label=f"{name}: greedy",
                )
        ax.set_xscale("log")
        ax.set_xlabel(
            label + (f"\n(not shown, no {'price' if x == 'usd' else 'size'}: {', '.join(hidden)})" if hidden else "")
        )
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no contestant with known " + label, ha="center", transform=ax.transAxes)
    fig.suptitle("Accuracy vs inference cost (95% bootstrap CIs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
