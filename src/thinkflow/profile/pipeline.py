"""The compute-spend report of a pipeline run: per-stage ``profile/*`` metrics and, after the last stage,
the profile table, share-of-compute chart and roofline on the pipeline's parent run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from thinkflow.models import load_checkpoint
from thinkflow.profile.kernels import measure_model
from thinkflow.profile.probe import machine_peaks
from thinkflow.profile.report import CATEGORIES, profile_table, roofline_plot, share_plot, to_markdown
from thinkflow.registry import StageResult


def stage_metrics(profile: dict) -> dict[str, float]:
    """A stage's ``profile/*`` metrics for its MLflow run."""
    out = {"profile/wall_s": profile["wall_s"], "profile/peak_rss_mb": profile["peak_rss"] / 2**20}
    if profile.get("peak_gpu"):
        out["profile/peak_gpu_mb"] = profile["peak_gpu"] / 2**20
    for name, t in profile["phases"].items():
        out |= {
            f"profile/{name}/flops": t["flops"],
            f"profile/{name}/wall_s": t["wall_s"],
            f"profile/{name}/tokens_processed": t["tokens_processed"],
            f"profile/{name}/tokens_generated": t["tokens_generated"],
        }
        if t["wall_s"] > 0:
            out[f"profile/{name}/flops_per_s"] = t["flops"] / t["wall_s"]
    out["profile/flops"] = sum(t["flops"] for t in profile["phases"].values())
    return out


def final_checkpoint(results: dict[str, StageResult]) -> str | None:
    """The last model the run trained (the checkpoint of the latest stage that exported one)."""
    return next((r.checkpoint for r in reversed(list(results.values())) if r.checkpoint), None)


def pipeline_profile(
    cfg,
    tracker,
    parent_run_id: str,
    results: dict[str, StageResult],
    reused: set[str],
    pipeline_wall: float,
    setup_s: float = 0.0,
) -> str:
    """Profile table, share-of-compute chart and roofline on the parent run; returns the markdown.
    ``pipeline_wall``: from the flow's start to the last stage's end; ``setup_s``: the part before the
    first stage (config checks, tracking store, parent run)."""
    peaks = machine_peaks(cfg.profile.probe_cache)
    fresh = {s: r.profile for s, r in results.items() if s not in reused}
    table = profile_table(fresh, peaks, setup_s=setup_s)
    points: list[dict] = []
    ckpt = final_checkpoint(results)
    if cfg.profile.measure_model and ckpt:
        model, tokenizer = load_checkpoint(ckpt)
        points = measure_model(model, tokenizer)
    markdown = to_markdown(table, peaks, pipeline_wall, points) if not table.empty else "# Compute-spend profile\n"
    if reused:
        markdown += f"\nReused (their compute was spent by earlier runs): {', '.join(sorted(reused))}\n"
    metrics = {
        "profile/pipeline_wall_s": pipeline_wall,
        "machine/peak_flops": peaks["peak_flops"],
        "machine/peak_bytes_per_s": peaks["peak_bytes_per_s"],
    }
    if not table.empty:
        share = table.groupby("category").flops.sum()
        metrics |= {
            "profile/flops": float(table.flops.sum()),
            "profile/accounted_wall_s": float(table.wall_s.sum()),
            "profile/peak_rss_mb": float(table.peak_rss_mb.max()),
        }
        metrics |= {
            f"profile/share/{c.replace(' ', '_').lower()}": float(share.get(c, 0.0) / max(share.sum(), 1.0))
            for c in CATEGORIES
        }
    for p in points:
        key = p["kind"].replace(" ", "_")
        metrics |= {f"profile/{key}/tokens_per_s": p["tokens_per_s"], f"profile/{key}/flops_per_s": p["flops_per_s"]}
    if points:
        metrics["profile/kv_bytes_per_token"] = points[0]["kv_bytes_per_token"]
    tracker.log_metrics(parent_run_id, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "profile.md").write_text(markdown)
        table.to_csv(out / "profile.csv", index=False)
        if points:
            pd.DataFrame(points).to_csv(out / "roofline_points.csv", index=False)
        if not table.empty:
            share_plot(table, out / "compute_share.png")
            roofline_plot(table, points, peaks, out / "roofline.png")
        tracker.log_artifacts(parent_run_id, out, "profile")
    return markdown
