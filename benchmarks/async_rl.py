"""Synchronous vs asynchronous RL (Ray rollout actors), with and without a simulated slow link.

    python -m benchmarks.async_rl [--steps 200] [--seeds 0 1 2]  # from the repo root

Same default task, pretrained checkpoint and budget of learner steps for every run: ``rl.mode=sync``
and ``rl.mode=async`` with 2 local Ray actors, each at every seed of ``--seeds`` (the seed drives
sampling, batch order and the held-out split, so a pair at one seed shares its problems); at the
first seed only, async with every weight download and experience upload delayed by 100 ms +
bytes / 10 MB/s, and async with ``max_staleness=1``. Reports wall time, the held-out ``rl/val_pass@1`` gain, mean
staleness, bytes moved, the learner's idle fraction (sync: the share of each step spent waiting for
rollouts) and batches dropped or lost. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks.common import machine_line, rl_stage_run, write_section
from benchmarks.rl_step import pretrained_checkpoint

PAIRED = {
    "sync": ["rl.mode=sync"],
    "async, 2 actors": ["rl.mode=async", "rl.actors.num_actors=2"],
}
VARIANTS = {
    "async, 2 actors, slow link (100 ms, 10 MB/s)": [
        "rl.mode=async",
        "rl.actors.num_actors=2",
        "rl.actors.link.latency_s=0.1",
        "rl.actors.link.bandwidth_mb_s=10",
    ],
    "async, 2 actors, max_staleness=1": ["rl.mode=async", "rl.actors.num_actors=2", "rl.actors.max_staleness=1"],
}


def run(init: str, steps: int, extra: list[str]) -> dict:
    result, series = rl_stage_run(init, [f"rl.max_steps={steps}", *extra])
    last = lambda key: (series(key) or [0.0])[-1]  # noqa: E731
    return {
        "wall_s": result.metrics["wall_s"],
        "gain": result.metrics["gain_pass@1"],
        "start": result.metrics["val_pass@1_start"],
        "end": result.metrics["val_pass@1"],
        "staleness": statistics.mean(series("dist/staleness_mean")),
        "bytes": sum(series("dist/bytes_per_step")),
        "idle": statistics.mean(series("dist/learner_idle_frac")),
        "dropped": last("dist/dropped_stale"),
        "lost": last("dist/lost_batches"),
    }


def report(results: dict[tuple[str, int], dict], steps: int, eval_samples: int = 4) -> str:
    """One row per run (gain vs the sync run at the same seed), then the mean over seeds of each paired mode."""
    rows = [
        "| run | seed | wall s | val pass@1 start -> end | gain | gain vs sync | mean staleness | MB moved | "
        "learner idle | dropped / lost |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (name, seed), r in results.items():
        sync = results[("sync", seed)]
        share = r["gain"] / sync["gain"] if sync["gain"] > 0 else float("nan")
        rows.append(
            f"| {name} | {seed} | {r['wall_s']:.0f} | {r['start']:.3f} -> {r['end']:.3f} | {r['gain']:+.3f} | "
            f"{share:.0%} | {r['staleness']:.2f} | {r['bytes'] / 1e6:.1f} | {r['idle']:.2f} | "
            f"{r['dropped']:.0f} / {r['lost']:.0f} |"
        )
    seeds = sorted({seed for name, seed in results if name == "sync"})
    gains = {name: [results[(name, s)]["gain"] for s in seeds] for name in PAIRED}
    summary = [
        "",
        f"Over seeds {seeds}: "
        + "; ".join(
            f"{name} mean gain {statistics.mean(g):+.3f} (per seed {', '.join(f'{x:+.3f}' for x in g)})"
            for name, g in gains.items()
        ),
    ]
    if statistics.mean(gains["sync"]) > 0:
        summary.append(
            f"Mean async gain / mean sync gain: "
            f"{statistics.mean(gains['async, 2 actors']) / statistics.mean(gains['sync']):.0%}."
        )
    if len(seeds) > 1:
        from scipy import stats

        diff = [a - s for a, s in zip(gains["async, 2 actors"], gains["sync"], strict=True)]
        half = stats.t.ppf(0.975, len(diff) - 1) * statistics.stdev(diff) / len(diff) ** 0.5
        summary.append(
            f"Paired difference async - sync: {statistics.mean(diff):+.3f} (95% t-interval "
            f"{statistics.mean(diff) - half:+.3f} to {statistics.mean(diff) + half:+.3f}, {len(diff)} seeds)."
        )
    return "\n".join(
        [
            f"Machine: {machine_line()}. Default config (DAPO, 16 prompts x 8 samples), {steps} learner "
            "steps per run from the same pretrained checkpoint; 2 actors with 1 torch thread each share "
            f"the machine's cores with the learner; held-out pass@1 over 256 problems x {eval_samples} "
            "samples.",
            "",
            *rows,
            *summary,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-samples", type=int, default=4, help="held-out samples per problem (rl.eval_samples)")
    parser.add_argument("--no-variants", action="store_true", help="only the sync / async pairs")
    args = parser.parse_args()
    init = pretrained_checkpoint()
    # held-out pass@1 only at the start and the end (the gain); no evaluations in between to pay for
    common = [f"rl.eval_samples={args.eval_samples}", f"rl.eval_every={args.steps}"]
    results = {}
    for seed in args.seeds:
        for name, extra in PAIRED.items():
            results[(name, seed)] = run(init, args.steps, [f"seed={seed}", *common, *extra])
            print(name, seed, results[(name, seed)], flush=True)
    for name, extra in {} if args.no_variants else VARIANTS.items():
        results[(name, args.seeds[0])] = run(init, args.steps, [f"seed={args.seeds[0]}", *common, *extra])
    body = report(results, args.steps, args.eval_samples)
    print(body)
    write_section("async_rl", "## Synchronous vs asynchronous RL (`python -m benchmarks.async_rl`)\n\n" + body)


if __name__ == "__main__":
    main()
