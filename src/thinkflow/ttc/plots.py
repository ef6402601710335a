"""PNG plots of the test-time-compute curves, with 95% CIs and the sample counts on each."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

LINE_STYLES = ("-", "--", ":", "-.")


def styles(points: pd.DataFrame, by: str) -> tuple[dict, dict]:
    """One colour per strategy (the same for every checkpoint) and one line style per checkpoint, the last
    checkpoint solid: ``pretrain: pass`` and ``rl: pass`` differ in style only, ``pass`` and ``maj`` in colour."""
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {s: palette[i % len(palette)] for i, s in enumerate(dict.fromkeys(points["strategy"]))}
    ckpts = list(dict.fromkeys(points[by]))
    lines = {c: LINE_STYLES[(len(ckpts) - 1 - i) % len(LINE_STYLES)] for i, c in enumerate(ckpts)}
    return colours, lines


def _counts(points: pd.DataFrame) -> str:
    return (
        f"{int(points['n_problems'].iloc[0])} problems x {int(points['n_samples'].iloc[0])} samples, 95% bootstrap CI"
    )


def accuracy_vs(points: pd.DataFrame, x: str, path: Path, title: str) -> Path:
    """One line per (checkpoint, strategy) against ``x`` (``k``, ``flops`` or ``gen_tokens``), log axis."""
    fig, ax = plt.subplots(figsize=(8, 5))
    colours, lines = styles(points, "checkpoint")
    for (ckpt, strategy), g in points.groupby(["checkpoint", "strategy"], sort=False):
        g = g.sort_values(x)
        colour = colours[strategy]
        ax.plot(g[x], g["accuracy"], lines[ckpt], color=colour, marker="o", ms=3, label=f"{ckpt}: {strategy}")
        ax.fill_between(g[x], g["ci_low"], g["ci_high"], color=colour, alpha=0.12)
    ax.set_xscale("log", base=2 if x == "k" else 10)
    ax.set_xlabel(
        {
            "k": "samples per problem (k)",
            "flops": "inference FLOPs per problem",
            "gen_tokens": "generated tokens per problem",
        }[x]
    )
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{title}\n{_counts(points)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def budget_plot(points: pd.DataFrame, path: Path) -> Path:
    """Accuracy against thinking tokens for the budget-forcing and Wait-extension points."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours, lines = styles(points, "checkpoint")
    for (ckpt, strategy), g in points.groupby(["checkpoint", "strategy"], sort=False):
        g = g.sort_values("thinking_tokens")
        colour, label = colours[strategy], f"{ckpt}: {strategy}"
        ax.plot(g["thinking_tokens"], g["accuracy"], lines[ckpt], color=colour, marker="o", label=label)
        ax.fill_between(g["thinking_tokens"], g["ci_low"], g["ci_high"], color=colour, alpha=0.12)
    ax.set_xlabel("thinking tokens per problem (mean)")
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_title(
        f"Sequential test-time compute\n{int(points['n_problems'].iloc[0])} problems, 95% bootstrap CI", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
