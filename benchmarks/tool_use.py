"""The tool-use experiment: the same model with and without a calculator, pretrained and RL-tuned.

    python -m benchmarks.tool_use                                # from the repo root, ~11 min on 2 cores

Runs ``python flows/pipeline.py -m experiment=tool_use`` (a 2-job Hydra sweep over
``task.env.tools=true,false``) in a fresh root, timing it, then reads both jobs' MLflow runs:
held-out pass@1 with its 95% bootstrap CI and maj@16 for the pretrained and the RL checkpoint, the
share of well-formed tool calls and calls per episode (temperature-1 episodes of ``ttc_eval``), the
RL stage's gain and each stage's wall time. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

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
    out = {}
    for parent in parents:
        tools = "task.env.tools=true" in parent.data.tags.get("sweep.overrides", "")
        stages = {
            r.data.tags.get("stage"): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        }
        ttc = client.get_run(stages["ttc_eval"].info.run_id).data.metrics
        rl = stages["rl"].data.metrics
        points = _points(client, stages["ttc_eval"].info.run_id)
        row = {"wall_s": {s: (r.info.end_time - r.info.start_time) / 1000 for s, r in stages.items() if s},
               "rl_gain": rl.get("rl/gain_pass@1")}  # fmt: skip
        for ckpt in ("pretrain", "rl"):
            p1 = points[(points.checkpoint == ckpt) & (points.strategy == "pass") & (points.k == 1)].iloc[0]
            maj = points[(points.checkpoint == ckpt) & (points.strategy == "maj") & (points.k == 16)].iloc[0]
            row[ckpt] = {"pass1": p1.accuracy, "ci": (p1.ci_low, p1.ci_high), "maj16": maj.accuracy,
                         "maj_ci": (maj.ci_low, maj.ci_high),
                         "well_formed": ttc.get(f"ttc/{ckpt}/env/well_formed_call_frac"),
                         "calls": ttc.get(f"ttc/{ckpt}/env/tool_calls_per_episode"),
                         "invalid": ttc.get(f"ttc/{ckpt}/env/invalid_action_rate")}  # fmt: skip
        out["with calculator" if tools else "without calculator"] = row
    return out


def _points(client, run_id: str):
    import pandas as pd

    return pd.read_csv(client.download_artifacts(run_id, "ttc/points.csv"))


def report(results: dict, wall: float) -> str:
    rows = ["| model | checkpoint | pass@1 [95% CI] | maj@16 [95% CI] | tool calls / episode | well-formed calls | "
            "invalid actions / turn |", "|---|---|---|---|---:|---:|---:|"]  # fmt: skip
    for name, r in results.items():
        for ckpt in ("pretrain", "rl"):
            c = r[ckpt]
            rows.append(f"| {name} | {ckpt} | {c['pass1']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}] | {c['maj16']:.3f} "
                        f"[{c['maj_ci'][0]:.3f}, {c['maj_ci'][1]:.3f}] | {c['calls']:.2f} | {c['well_formed']:.3f} | "
                        f"{c['invalid']:.3f} |")  # fmt: skip
    walls = "; ".join(f"{name}: " + ", ".join(f"{s} {w:.0f} s" for s, w in r["wall_s"].items() if s != "sweep")
                      for name, r in results.items())  # fmt: skip
    return "\n".join([
        f"Machine: {machine_line()}. `python flows/pipeline.py -m experiment=tool_use`: sums of two products of "
        "3-digit numbers, 256 held-out problems x 16 temperature-1 episodes per checkpoint; the same 1.06M-parameter "
        "model pretrained 240 steps on tool traces or on direct answers, then 40 RL steps in the environment.", "",
        *rows, "", "RL stage, held-out pass@1 gain (4 samples per problem): " + "; ".join(
            f"{name} {r['rl_gain']:+.3f}" for name, r in results.items()) + ".",
        "", f"Whole sweep: {wall / 60:.1f} min wall ({walls}).",
    ])  # fmt: skip


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="tool-use-"))
    wall = run_sweep(root)
    body = report(job_results(root), wall)
    print(body)
    write_section("tool_use", "## Tool use: with and without a calculator (`python -m benchmarks.tool_use`)\n\n" + body)


if __name__ == "__main__":
    main()
