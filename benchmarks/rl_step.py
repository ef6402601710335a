"""Time per RL step on the default config, split into rollout / learner / weight sync, and the
same config through Hugging Face TRL's GRPOTrainer as the baseline ratio.

    python -m benchmarks.rl_step [--steps 20]                    # from the repo root
    THINKFLOW_TRL_PYTHON=/path/to/trl-venv/bin/python python -m benchmarks.rl_step

The pretrained default checkpoint comes from the pretrain stage (reused from mlruns/work when
it is there). Ours runs the real ``rl`` stage (fresh work dir) twice: the default (DAPO with
dynamic sampling: zero-variance groups dropped and refilled) and ``rl.objective=grpo``, which
like TRL trains on every group of the batch, signal or not (the like-for-like ratio). TRL runs in its own venv (``benchmarks/trl_grpo.py``); its
two optimizer steps per rollout batch are summed into one RL step. The first two RL steps of
every run are warm-up and excluded. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, machine_line, rl_stage_run, write_section
from thinkflow.composition import compose
from thinkflow.runner import run_stage, start_pipeline_run

TRL_VENV = Path("/work/trl-venv/bin/python")
WARMUP = 2
LIKE_TRL = "thinkflow, grpo (every group trained, as TRL does)"


def pretrained_checkpoint() -> str:
    config = compose(["trainer.progress_bar=false"])
    config.pop("hydra", None)
    return run_stage("pretrain", config, start_pipeline_run(config, None), {}, None).checkpoint


def ours(init: str, steps: int, extra: list[str]) -> dict:
    overrides = [f"rl.max_steps={steps}", f"rl.eval_every={steps}", f"rl.ckpt_every={steps}", *extra]
    _, series = rl_stage_run(init, overrides)
    keys = ("step_s", "rollout_s", "learner_s", "weight_sync_s", "rollout_tokens_per_s", "learner_tokens_per_s")
    out = {k: statistics.median(series(f"perf/{k}")[WARMUP:]) for k in keys}
    out["groups_trained"] = statistics.mean(series("rl/groups_trained")[WARMUP:])
    out["frac_zero_std"] = statistics.mean(series("rl/frac_zero_std")[WARMUP:])
    return out


def trl(init: str, steps: int) -> dict | None:
    python = Path(os.environ.get("THINKFLOW_TRL_PYTHON", TRL_VENV))
    if not python.exists():
        print(f"TRL baseline skipped: no TRL venv at {python} (set THINKFLOW_TRL_PYTHON)")
        return None
    out = Path(tempfile.mkdtemp(prefix="trl-bench-")) / "trl.json"
    cmd = [str(python), "benchmarks/trl_grpo.py", "--model", init, "--steps", str(2 * steps), "--out", str(out)]
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    result = json.loads(out.read_text())
    result["median_rl_step_s"] = statistics.median(result["rl_step_s"][WARMUP:])
    return result


def report(runs: dict, baseline: dict | None, steps: int) -> str:
    rows = [
        "| run | s / RL step | rollout s | learner s | weight sync s | rollout tok/s | learner tok/s | groups trained |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in runs.items():
        rows.append(
            f"| {name} | {r['step_s']:.3f} | {r['rollout_s']:.3f} | {r['learner_s']:.3f} | {r['weight_sync_s']:.4f} "
            f"| {r['rollout_tokens_per_s']:,.0f} | {r['learner_tokens_per_s']:,.0f} | {r['groups_trained']:.1f} |"
        )
    lines = [
        f"Machine: {machine_line()}. Default config (16 prompts x 8 samples, 2 passes, DAPO), {steps} RL "
        f"steps per run, medians over steps {WARMUP + 1}..{steps}.",
        "",
        *rows,
        "",
    ]
    if baseline:
        like = runs[LIKE_TRL]["step_s"]
        lines += [
            f"TRL {baseline['trl_version']} GRPOTrainer, same model, task and settings (no dynamic sampling; "
            f"`num_iterations=2`): **{baseline['median_rl_step_s']:.3f} s per RL step** (two optimizer steps on one "
            f"rollout batch). Like for like (both train every group of the batch): TRL / thinkflow = "
            f"**{baseline['median_rl_step_s'] / like:.2f}x**.",
        ]
    else:
        lines.append("TRL baseline not run (no TRL venv).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    init = pretrained_checkpoint()
    runs = {LIKE_TRL: ours(init, args.steps, ["rl.objective=grpo"])}
    baseline = trl(init, args.steps)
    runs["thinkflow, default (dapo, max_refill=3)"] = ours(init, args.steps, [])
    body = report(runs, baseline, args.steps)
    print(body)
    write_section("rl_step", "## RL step time (`python -m benchmarks.rl_step`)\n\n" + body)


if __name__ == "__main__":
    main()
