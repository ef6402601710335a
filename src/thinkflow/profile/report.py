"""The compute-spend profile of a pipeline run, on its parent MLflow run.

``profile_table`` turns the stages' ledgers (``StageResult.profile``) into one row per stage and phase:
FLOPs, analytic bytes, tokens, wall seconds, achieved FLOP/s and bytes/s and their share of the
machine's measured peaks (``probe``), plus the stage's peak memory and the seconds spent outside any
phase (setup, checkpoint I/O, tracking). ``share_plot`` stacks the compute by what it was for
(pretraining, RL rollouts, RL learning, evaluation); ``roofline_plot`` places the run's phases and
the final model's measured prefill / decode / training points against the machine's ceilings.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

CATEGORY = {
    ("pretrain", "train"): "pretraining",
    ("sft", "train"): "SFT",
    ("sft", "rollout"): "SFT",  # sampling the teacher and self traces it trains on
    ("rl", "rollout"): "RL rollouts",
    ("rl", "learn"): "RL learning",
}
CATEGORIES = ["pretraining", "SFT", "RL rollouts", "RL learning", "evaluation"]


def category(stage: str, phase: str) -> str:
    return CATEGORY.get((stage, phase), "evaluation")


def profile_table(profiles: dict[str, dict], peaks: dict, setup_s: float = 0.0) -> pd.DataFrame:
    """One row per (stage, phase), a row per stage for the time outside its phases, and the pipeline's
    setup (before the first stage)."""
    zero = {"flops": 0.0, "bytes": 0.0, "tokens_processed": 0, "tokens_generated": 0, "calls": 0}
    rows = (
        [
            {
                "stage": "pipeline",
                "phase": "setup",
                "category": "other",
                **zero,
                "wall_s": setup_s,
                "peak_rss_mb": float("nan"),
                "peak_gpu_mb": 0.0,
            }
        ]
        if setup_s
        else []
    )
    for stage, prof in profiles.items():  # each stage's ``StageResult.profile``
        if not prof:
            continue
        common = {
            "stage": stage,
            "peak_rss_mb": prof["peak_rss"] / 2**20,
            "peak_gpu_mb": prof.get("peak_gpu", 0) / 2**20,
        }
        in_phases = 0.0
        for phase, t in prof["phases"].items():
            in_phases += t["wall_s"]
            rows.append(common | {"phase": phase, "category": category(stage, phase), **t})
        rows.append(
            common | {"phase": "other", "category": "other", **zero, "wall_s": max(prof["wall_s"] - in_phases, 0)}
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    wall = table.wall_s.where(table.wall_s > 0)
    table["flops_per_s"] = table.flops / wall
    table["bytes_per_s"] = table.bytes / wall
    table["flops_frac_of_peak"] = table.flops_per_s / peaks["peak_flops"]
    table["bytes_frac_of_peak"] = table.bytes_per_s / peaks["peak_bytes_per_s"]
    table["intensity"] = table.flops / table.bytes.where(table.bytes > 0)
    table["flops_share"] = table.flops / max(table.flops.sum(), 1.0)
    return table


def to_markdown(table: pd.DataFrame, peaks: dict, pipeline_wall: float, points: list[dict]) -> str:
    cols = [
        "stage",
        "phase",
        "category",
        "flops",
        "tokens_processed",
        "tokens_generated",
        "wall_s",
        "flops_per_s",
        "flops_frac_of_peak",
        "bytes_per_s",
        "intensity",
        "peak_rss_mb",
    ]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [
        "# Compute-spend profile",
        "",
        f"Machine ({peaks['device']}, {peaks['threads']} threads): {peaks['peak_flops']:.3g} FLOP/s matmul "
        f"({peaks['dtype']}), {peaks['peak_bytes_per_s']:.3g} B/s copy bandwidth. Pipeline wall "
        f"{pipeline_wall:.1f} s, of which setup and stages account for {table.wall_s.sum():.1f} s.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for row in table[cols].itertuples(False):
        lines.append("| " + " | ".join("" if pd.isna(v) else fmt(v) for v in row) + " |")
    share = table.groupby("category").flops.sum()
    lines += [
        "",
        "Share of FLOPs: " + ", ".join(f"{c} {share.get(c, 0) / max(share.sum(), 1):.1%}" for c in CATEGORIES),
    ]
    if points:
        lines += [
            "",
            "Final model, measured: "
            + "; ".join(
                f"{p['kind']} {p['tokens_per_s']:.4g} tok/s ({p['flops_per_s']:.3g} FLOP/s, intensity {p['intensity']:.3g})"
                for p in points
            ),
        ]
    return "\n".join(lines) + "\n"


def share_plot(table: pd.DataFrame, path: Path) -> Path:
    """Stacked bars: the share of FLOPs and of wall seconds by what they were spent on."""
    fig, ax = plt.subplots(figsize=(9, 3.2))
    cats = [*CATEGORIES, "other"]
    colors = dict(zip(cats, ["#4c72b0", "#8172b3", "#dd8452", "#c44e52", "#55a868", "#b0b0b0"], strict=True))
    for y, col in enumerate(("flops", "wall_s")):
        by = table.groupby("category")[col].sum()
        total, left = max(by.sum(), 1e-12), 0.0
        for c in cats:
            share = by.get(c, 0.0) / total
            if share > 0:
                ax.barh(y, share, left=left, color=colors[c], label=c if y == 0 or c == "other" else None)
                if share > 0.06:
                    ax.text(left + share / 2, y, f"{share:.0%}", ha="center", va="center", fontsize=8)
                left += share
        ax.text(1.01, y, f"{by.sum():.3g}", va="center", fontsize=8)
    ax.set_yticks([0, 1], ["FLOPs", "wall s"])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the pipeline run")
    ax.legend(ncol=5, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    ax.set_title("Where the compute went: training vs inference", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def roofline_plot(table: pd.DataFrame, points: list[dict], peaks: dict, path: Path) -> Path:
    """Achieved FLOP/s against arithmetic intensity, under min(peak FLOP/s, bandwidth x intensity)."""
    fig, ax = plt.subplots(figsize=(7, 5))
    phases = table[(table.flops > 0) & (table.bytes > 0) & (table.wall_s > 0)]
    xs = [*phases.intensity, *(p["intensity"] for p in points)] or [1.0]
    x = np.logspace(
        np.log10(min(xs) / 4), np.log10(max(max(xs) * 4, 4 * peaks["peak_flops"] / peaks["peak_bytes_per_s"])), 200
    )
    ax.plot(x, np.minimum(peaks["peak_flops"], peaks["peak_bytes_per_s"] * x), "k-", lw=1.5, label="machine ceiling")
    for row in phases.itertuples():
        ax.plot(row.intensity, row.flops_per_s, "o", ms=7, label=f"{row.stage}/{row.phase} (run)")
    for p in points:
        ax.plot(p["intensity"], p["flops_per_s"], "s", ms=6, mfc="none", label=f"{p['kind']} (final model)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs / byte, analytic)")
    ax.set_ylabel("achieved FLOP/s")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title(f"Roofline: {peaks['device']}, {peaks['threads']} threads", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
