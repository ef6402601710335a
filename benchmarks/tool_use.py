"""The tool-use experiment: the same model with and without a calculator, pretrained and RL-tuned.

    python -m benchmarks.tool_use                                # from the repo root, ~11 min on 2 cores

Runs ``python flows/pipeline.py -m experiment=tool_use`` (a 2-job Hydra sweep over
``task.env.tools=true,false``) in a fresh root, timing it, then reads both jobs' MLflow runs:
held-out pass@1 with its 95% bootstrap CI and maj@16 for the pretrained and the RL checkpoint, the
share of well-formed tool calls and calls per episode (temperature-1 episodes of ``ttc``), the
RL stage's gain and each stage's wall time. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, machine_line, write_section


def run_sweep(root: Path) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "flows/pipeline.py", "-m", "experiment=tool_use", f"paths.root={root}"]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - t0


def job_results(root: Path) -> dict[str, dict]:
    """tools on / off -> the figures of that job."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("thinkflow").experiment_id])
    parents = [r for r in runs if "sweep.job" in r.data.tags and "mlflow.parentRunId" not in r.data.tags]
    out = {"_span_s": (max(p.info.end_time for p in parents) - min(p.info.start_time for p in parents)) / 1000}
    for parent in parents:
        tools = "task.env.tools=true" in parent.data.tags.get("sweep.overrides", "").lower()
        stages = {
            r.data.tags.get("stage"): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        }
        ttc = client.get_run(stages["ttc"].info.run_id).data.metrics
        rl = stages["rl"].data.metrics
        points = _points(client, stages["ttc"].info.run_id)
        row = {
            "wall_s": {s: (r.info.end_time - r.info.start_time) / 1000 for s, r in stages.items() if s},
            "rl_gain": rl.get("rl/gain_pass_at_1"),
        }
        for ckpt in ("pretrain", "rl"):
            p1 = points[(points.checkpoint == ckpt) & (points.strategy == "pass") & (points.k == 1)].iloc[0]
            maj = points[(points.checkpoint == ckpt) & (points.strategy == "maj") & (points.k == 16)].iloc[0]
            row[ckpt] = {
                "pass1": p1.accuracy,
                "ci": (p1.ci_low, p1.ci_high),
                "maj16": maj.accuracy,
                "maj_ci": (maj.ci_low, maj.ci_high),
                "well_formed": ttc.get(f"ttc/{ckpt}/env/well_formed_call_frac"),
                "grounded": _grounded_share(client, stages["ttc"].info.run_id, ckpt),
                "calls": ttc.get(f"ttc/{ckpt}/env/tool_calls_per_episode"),
                "invalid": ttc.get(f"ttc/{ckpt}/env/invalid_action_rate"),
            }
        out["with calculator" if tools else "without calculator"] = row
    return out


def _grounded_share(client, run_id: str, ckpt: str) -> float:
    """Share of answered calls whose numbers all appear in the prompt or an earlier result, from the stored
    episodes replayed through the environment (the ``env/grounded_call_frac`` definition)."""
    import pandas as pd

    from thinkflow.envs.calculator import ToolArithmetic, replay

    table = pd.read_csv(client.download_artifacts(run_id, f"ttc/samples_{ckpt}.csv"), keep_default_na=False)
    task = ToolArithmetic(3, terms=2)
    envs = [replay(task, task.make(r.problem_id), str(r.text)) for r in table.itertuples()]
    calls = sum(e.stats.tool_calls for e in envs)
    return sum(e.stats.grounded_calls for e in envs) / calls if calls else float("nan")


def _points(client, run_id: str):
    import pandas as pd

    return pd.read_csv(client.download_artifacts(run_id, "ttc/points.csv"))


def _share(value: float, c: dict) -> str:
    return f"{value:.3f}" if c["calls"] > 0 else "n/a (no calls)"


def report(results: dict, wall: float | None) -> str:
    span = results.pop("_span_s")
    rows = [
        "| model | checkpoint | pass@1 [95% CI] | maj@16 [95% CI] | tool calls / episode | well-formed calls | "
        "grounded calls | invalid actions / turn |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        for ckpt in ("pretrain", "rl"):
            c = r[ckpt]
            rows.append(
                f"| {name} | {ckpt} | {c['pass1']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}] | {c['maj16']:.3f} "
                f"[{c['maj_ci'][0]:.3f}, {c['maj_ci'][1]:.3f}] | {c['calls']:.2f} | {_share(c['well_formed'], c)} | "
                f"{_share(c['grounded'], c)} | {c['invalid']:.3f} |"
            )
    walls = "; ".join(
        f"{name}: " + ", ".join(f"{s} {w:.0f} s" for s, w in r["wall_s"].items() if s != "sweep")
        for name, r in results.items()
    )
    return "\n".join(
        [
            f"Machine: {machine_line()}. `python flows/pipeline.py -m experiment=tool_use`: sums of two products of "
            "3-digit numbers, 256 held-out problems x 16 temperature-1 episodes per checkpoint; the same 1.06M-parameter "
            "model pretrained 240 steps on tool traces or on direct answers, then 40 RL steps in the environment.",
            "",
            *rows,
            "",
            "RL stage, held-out pass@1 gain (4 samples per problem): "
            + "; ".join(f"{name} {r['rl_gain']:+.3f}" for name, r in results.items())
            + ".",
            "",
            f"Whole sweep: {(wall or span) / 60:.1f} min wall, first pipeline start to last end {span / 60:.1f} min "
            f"({walls}).",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="report on a finished sweep under this paths.root instead")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="tool-use-"))
    wall = None if args.root else run_sweep(root)
    body = report(job_results(root), wall)
    print(body)
    write_section("tool_use", "## Tool use: with and without a calculator (`python -m benchmarks.tool_use`)\n\n" + body)


if __name__ == "__main__":
    main()
