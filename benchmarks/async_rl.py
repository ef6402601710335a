"""Synchronous vs asynchronous RL (Ray rollout actors), with and without a simulated slow link.

    python -m benchmarks.async_rl [--steps 200]                  # from the repo root

Same default task, pretrained checkpoint and budget of learner steps for every run: ``rl.mode=sync``;
``rl.mode=async`` with 2 local Ray actors; the same with every weight download and experience upload
delayed by 100 ms + bytes / 10 MB/s. Reports wall time, the held-out ``rl/val_pass@1`` gain, mean
staleness, bytes moved, the learner's idle fraction (sync: the share of each step spent waiting for
rollouts) and batches dropped or lost. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks.common import machine_line, rl_stage_run, write_section
from benchmarks.rl_step import pretrained_checkpoint

RUNS = {
    "sync": ["rl.mode=sync"],
    "async, 2 actors": ["rl.mode=async", "rl.actors.num_actors=2"],
    "async, 2 actors, slow link (100 ms, 10 MB/s)": ["rl.mode=async", "rl.actors.num_actors=2",
                                                     "rl.actors.link.latency_s=0.1", "rl.actors.link.bandwidth_mb_s=10"],
    "async, 2 actors, max_staleness=1": ["rl.mode=async", "rl.actors.num_actors=2", "rl.actors.max_staleness=1"],
}  # fmt: skip


def run(init: str, steps: int, extra: list[str]) -> dict:
    result, series = rl_stage_run(init, [f"rl.max_steps={steps}", *extra])
    last = lambda key: (series(key) or [0.0])[-1]  # noqa: E731
    return {
        "wall_s": result["wall_s"], "gain": result["gain_pass@1"], "start": result["val_pass@1_start"],
        "end": result["val_pass@1"], "staleness": statistics.mean(series("dist/staleness_mean")),
        "bytes": sum(series("dist/bytes_per_step")), "idle": statistics.mean(series("dist/learner_idle_frac")),
        "dropped": last("dist/dropped_stale"), "lost": last("dist/lost_batches"),
    }  # fmt: skip


def report(results: dict, steps: int) -> str:
    sync = results["sync"]
    rows = ["| run | wall s | val pass@1 start -> end | gain | gain vs sync | mean staleness | MB moved | "
            "learner idle | dropped / lost |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, r in results.items():
        share = r["gain"] / sync["gain"] if sync["gain"] > 0 else float("nan")
        rows.append(f"| {name} | {r['wall_s']:.0f} | {r['start']:.3f} -> {r['end']:.3f} | {r['gain']:+.3f} | "
                    f"{share:.0%} | {r['staleness']:.2f} | {r['bytes'] / 1e6:.1f} | {r['idle']:.2f} | "
                    f"{r['dropped']:.0f} / {r['lost']:.0f} |")  # fmt: skip
    return "\n".join([f"Machine: {machine_line()}. Default config (DAPO, 16 prompts x 8 samples), {steps} learner "
                      "steps per run from the same pretrained checkpoint; 2 actors with 1 torch thread each share "
                      "the machine's cores with the learner.", "", *rows])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    init = pretrained_checkpoint()
    results = {name: run(init, args.steps, extra) for name, extra in RUNS.items()}
    body = report(results, args.steps)
    print(body)
    write_section("async_rl", "## Synchronous vs asynchronous RL (`python -m benchmarks.async_rl`)\n\n" + body)


if __name__ == "__main__":
    main()
