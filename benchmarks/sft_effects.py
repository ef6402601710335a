"""What each kind of trace is worth: four experiments from the default pretraining (the default task and model).

    python -m benchmarks.sft_effects                      # all four, ~40 min on 2 CPU cores; results to docs/benchmarks.md
    python -m benchmarks.sft_effects --only distill data  # some of them (distill, ei_vs_rl, sft_then_rl, data)

- **distill**: the default model fine-tuned on verified traces sampled from the 4x larger model (the model of
  ``experiment=matched_compute``, pretrained with the default recipe) against the pretrain-only default.
- **ei_vs_rl**: expert iteration (``experiment=expert_iteration``'s sft) against DAPO at matched training compute
  (the FLOPs the profile ledger books under train + rollout + learn).
- **sft_then_rl**: expert iteration, then RL with the rest of the compute of a 200-step RL run, against that run.
- **data**: held-out greedy accuracy against the number of unique training problems for SFT on gold traces and
  for RL from the verifier alone, from the same checkpoint; the plot goes to an MLflow run and docs/.

Every arm is evaluated by the ttc stage on the task's 256 held-out problems x 16 samples (pass@1 with its 95%
bootstrap interval, maj@16, pass@16) and by its stage's held-out greedy accuracy (95% Wilson interval). Stages run
through ``runner.run_stage`` in one MLflow store under ``--root`` (fresh by default: the FLOPs of a stage resumed
from its checkpoint would count only the resumed part); the summary run ``sft effects`` in experiment
``thinkflow-sft-effects`` holds the tables and the plot.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from benchmarks.common import ROOT, machine_line, write_section
from thinkflow.composition import compose
from thinkflow.registry import StageResult
from thinkflow.runner import run_stage, start_pipeline_run

EXPERIMENTS = ("distill", "ei_vs_rl", "sft_then_rl", "data")
MODEL_4X = ["model.name=tiny4x", "model.d_model=256", "model.n_heads=4", "model.n_kv_heads=4", "model.d_ff=1024"]
EI = [  # experiment=expert_iteration's sft section
    "sft=default",
    "sft.sources.gold=null",
    "sft.sources.self={kind: self, weight: 1.0, k: 4, max_per_problem: 1, teacher: null}",
    "sft.rounds=3",
    "sft.n_problems=1024",
    "sft.max_steps=40",
    "sft.lr=3.0e-4",
    "sft.warmup_steps=5",
    "sft.eval_every=40",
]
EVAL = [  # ttc: 16 samples per held-out problem, pass and maj only
    "ttc.n_max=16",
    "ttc.ks=[1,2,4,8,16]",
    "ttc.strategies=[pass,maj]",
    "ttc.verifier.train_problems=16",
    "ttc.verifier.samples=2",
    "ttc.budgets=[]",
    "ttc.search.widths=[]",
]
TRAINING_PHASES = ("train", "rollout", "learn")
SMOKE = ["experiment=tiny", "task=addition", "task.difficulty=1", "pretrain.max_steps=200", "pretrain.batch_size=16"]


class Bench:
    def __init__(self, root: Path, smoke: bool = False) -> None:
        self.root, self.smoke = root, smoke
        base = self.config([])
        self.parent = start_pipeline_run(base, None, {"benchmark": "sft_effects"})

    def config(self, overrides: list[str], drop: tuple[str, ...] = ()) -> dict:
        common = [
            *(SMOKE if self.smoke else []),  # the plumbing in a minute
            f"paths.root={self.root}",
            "trainer.progress_bar=false",
            "tracking.log_checkpoint=false",
            "tracking.register_models=false",
            "tracking.experiment=thinkflow-sft-effects",
            "profile.enabled=false",
            *EVAL,
        ]
        config = compose([*common, *overrides])
        for stage in ("compare", *drop):
            config[stage] = None
        return config

    def stage(self, name: str, overrides: list[str], upstream: dict, drop: tuple[str, ...] = ()) -> StageResult:
        t0 = time.perf_counter()
        result = run_stage(name, self.config(overrides, drop), self.parent, upstream, None)
        print(f"[sft_effects] {name} {' '.join(overrides)}: {time.perf_counter() - t0:.0f} s", flush=True)
        return result

    def evaluate(self, label: str, stage: str, overrides: list[str], upstream: dict, n_test: int = 256) -> dict:
        """ttc on one checkpoint (the ``stage`` result in ``upstream``), plus that stage's greedy accuracy."""
        drop = tuple(s for s in ("pretrain", "sft", "rl") if s not in upstream)
        ttc = self.stage("ttc", [*overrides, f"ttc.checkpoints=[{stage}]"], upstream, drop)
        summary = ttc.details["summaries"][stage]
        greedy = greedy_accuracy(upstream[stage])
        lo, hi = wilson(greedy, n_test)
        return {
            "arm": label,
            "greedy": greedy,
            "greedy_ci": [lo, hi],
            "pass@1": summary["pass_at_1"],
            "pass@1_ci": list(summary["pass_at_1_ci"]),
            "maj@16": summary["maj_at_16"],
            "pass@16": summary["pass_at_16"],
            "train_flops": training_flops(upstream, stage),
        }


def greedy_accuracy(result: StageResult) -> float:
    m = result.metrics
    return float(m.get("val_acc", m.get("final_val_acc", float("nan"))))


def training_flops(upstream: dict, stage: str) -> float:
    """Training compute after pretraining: what the ledger booked for the stages after pretrain up to ``stage``
    (a stage resumed from its checkpoint books only what the resumed process did: run in a fresh ``--root``)."""
    total = 0.0
    for name, r in upstream.items():
        if name != "pretrain":
            phases = r.profile.get("phases", {})
            total += sum(phases.get(p, {}).get("flops", 0.0) for p in TRAINING_PHASES)
    return total


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def rl_steps_for(flops: float, per_step: float) -> int:
    return max(1, round(flops / per_step))


def run(only: tuple[str, ...], root: Path, sizes: list[int], data_rl_steps: int, smoke: bool = False) -> dict:
    b = Bench(root, smoke)
    out: dict[str, list[dict]] = {}
    pre = b.stage("pretrain", [], {})
    baseline = b.evaluate("pretrain only", "pretrain", [], {"pretrain": pre})
    if "distill" in only:
        big = b.stage("pretrain", MODEL_4X, {})
        teacher = f"{{kind: teacher, weight: 1.0, k: 4, max_per_problem: 1, teacher: {big.checkpoint}}}"
        distill = [*EI[:2], "sft.sources.self=null", f"+sft.sources.distill={teacher}", *EI[4:]]
        distill = [o for o in distill if not o.startswith("sft.max_steps")] + ["sft.max_steps=120"]
        sft = b.stage("sft", distill, {"pretrain": pre})
        big_eval = b.evaluate("4x model (teacher), pretrain only", "pretrain", MODEL_4X, {"pretrain": big})
        out["distill"] = [
            baseline,
            big_eval,
            b.evaluate("distilled from the 4x model", "sft", distill, {"pretrain": pre, "sft": sft}),
        ]
    needs_rl = {"ei_vs_rl", "sft_then_rl"} & set(only)
    if needs_rl:
        ei = b.stage("sft", EI, {"pretrain": pre})
        rl200 = b.stage("rl", [], {"pretrain": pre})
        per_step = training_flops({"rl": rl200}, "rl") / rl200.metrics["steps"]
        ei_flops = training_flops({"sft": ei}, "sft")
        ei_eval = b.evaluate("expert iteration (3 rounds)", "sft", EI, {"pretrain": pre, "sft": ei})
        full = int(rl200.metrics["steps"])  # the default RL run (200 steps)
        rl200_eval = b.evaluate(f"RL (DAPO), {full} steps", "rl", [], {"pretrain": pre, "rl": rl200})
        if "ei_vs_rl" in only:
            steps = rl_steps_for(ei_flops, per_step)
            matched = [f"rl.max_steps={steps}", f"rl.eval_every={steps}", f"rl.ckpt_every={steps}"]
            rl_m = b.stage("rl", matched, {"pretrain": pre})
            label = f"RL (DAPO), {steps} steps (matched to expert iteration)"
            out["ei_vs_rl"] = [baseline, ei_eval, b.evaluate(label, "rl", matched, {"pretrain": pre, "rl": rl_m})]
        if "sft_then_rl" in only:
            steps = rl_steps_for(max(per_step, full * per_step - ei_flops), per_step)
            rest = [f"rl.max_steps={steps}", f"rl.eval_every={steps}", f"rl.ckpt_every={steps}"]
            up = {"pretrain": pre, "sft": ei}
            up["rl"] = b.stage("rl", [*EI, *rest], up)
            label = f"expert iteration, then RL {steps} steps"
            out["sft_then_rl"] = [baseline, rl200_eval, b.evaluate(label, "rl", [*EI, *rest], up)]
    if "data" in only:
        rows = []
        for n in sizes:
            gold = ["sft=default", "sft.sources.self=null", f"sft.n_problems={n}", "sft.max_steps=120", "sft.lr=3.0e-4"]
            gold += ["sft.warmup_steps=5", "sft.eval_every=120"]
            sft = b.stage("sft", gold, {"pretrain": pre})
            steps = [
                f"rl.max_steps={data_rl_steps}",
                f"rl.eval_every={data_rl_steps}",
                f"rl.ckpt_every={data_rl_steps}",
            ]
            rl = b.stage("rl", [f"rl.n_problems={n}", *steps], {"pretrain": pre})
            for method, r in (("SFT on gold traces", sft), ("RL from the verifier", rl)):
                acc = greedy_accuracy(r)
                rows.append({"method": method, "problems": n, "greedy": acc, "greedy_ci": list(wilson(acc, 256))})
        out["data"] = rows
    (root / "results.json").write_text(json.dumps(out, indent=1))
    return out


def arm_table(rows: list[dict]) -> str:
    lines = [
        "| arm | training GFLOPs | held-out greedy [95% CI] | pass@1 [95% CI] | maj@16 | pass@16 |",
        "|---|---:|---|---|---:|---:|",
    ]
    for r in rows:
        g, p = r["greedy_ci"], r["pass@1_ci"]
        lines.append(
            f"| {r['arm']} | {r['train_flops'] / 1e9:.0f} | {r['greedy']:.3f} [{g[0]:.3f}, {g[1]:.3f}] | "
            f"{r['pass@1']:.3f} [{p[0]:.3f}, {p[1]:.3f}] | {r['maj@16']:.3f} | {r['pass@16']:.3f} |"
        )
    return "\n".join(lines)


def data_table(rows: list[dict]) -> str:
    sizes = sorted({r["problems"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| unique training problems | " + " | ".join(methods) + " |", "|---:|" + "---|" * len(methods)]
    for n in sizes:
        cells = []
        for m in methods:
            r = next(r for r in rows if r["problems"] == n and r["method"] == m)
            cells.append(f"{r['greedy']:.3f} [{r['greedy_ci'][0]:.3f}, {r['greedy_ci'][1]:.3f}]")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def data_plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["problems"])
        x = [r["problems"] for r in mine]
        ax.errorbar(
            x,
            [r["greedy"] for r in mine],
            yerr=[[r["greedy"] - r["greedy_ci"][0] for r in mine], [r["greedy_ci"][1] - r["greedy"] for r in mine]],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("unique training problems")
    ax.set_ylabel("held-out greedy accuracy (256 problems)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(out: dict, wall: float) -> str:
    parts = [
        "## SFT effects: what each kind of trace is worth (`python -m benchmarks.sft_effects`)",
        "",
        f"{machine_line()}; {wall / 60:.0f} min for the experiments below in one run. Starting point: the default "
        "pretraining (4-digit x 1-digit multiplication, 500 steps). Evaluation: the 256 held-out problems; pass@1, "
        "maj@16 and pass@16 from 16 samples per problem at T=1 (ttc stage, 95% bootstrap interval over problems), "
        "greedy accuracy with a 95% Wilson interval. Training GFLOPs: what the profile ledger booked for the stages "
        "after pretraining (train + rollout + learn). One seed.",
    ]
    titles = {
        "distill": "Distillation from the 4x model (verified teacher traces, 4 per problem on 1,024 problems, 1 kept)",
        "ei_vs_rl": "Expert iteration against RL at matched training compute",
        "sft_then_rl": "SFT (expert iteration) then RL against RL alone, same total compute",
    }
    for key, title in titles.items():
        if key in out:
            parts += ["", f"### {title}", "", arm_table(out[key])]
    if "data" in out:
        parts += [
            "",
            "### Data efficiency: held-out greedy accuracy against unique training problems",
            "",
            "Same starting checkpoint; SFT: 120 steps of 64 gold-trace examples; RL: DAPO with the verifier as the "
            "only signal, the same number of steps at every size. Plot: `docs/figures/sft_data_efficiency.png` "
            "(and on the summary run).",
            "",
            data_table(out["data"]),
        ]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    fresh = ROOT / "mlruns" / "bench" / f"sft_effects-{time.strftime('%Y%m%d-%H%M%S')}"
    parser.add_argument("--root", type=Path, default=fresh, help="a fresh directory (the FLOPs of resumed stages)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[64, 256, 1024, 4096])
    parser.add_argument("--data-rl-steps", type=int, default=100)
    parser.add_argument("--no-doc", action="store_true", help="print the report instead of writing docs/")
    parser.add_argument("--smoke", action="store_true", help="experiment=tiny: the plumbing in a minute (no docs)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    out = run(tuple(args.only), args.root.resolve(), args.sizes, args.data_rl_steps, args.smoke)
    body = report(out, time.perf_counter() - t0)
    if "data" in out:
        figures = args.root.resolve() if args.smoke else ROOT / "docs" / "figures"
        plot = data_plot(out["data"], figures / "sft_data_efficiency.png")
        log_summary(args.root.resolve(), body, plot)
    print(body)
    if not (args.no_doc or args.smoke):
        write_section("sft_effects", body)


def log_summary(root: Path, body: str, plot: Path) -> None:
    from thinkflow.tracking import Tracker, resolve_uri

    tracker = Tracker(resolve_uri(None, root), "thinkflow-sft-effects", root)
    with tracker.run("sft effects", {"benchmark": "sft_effects"}) as run_id:
        tracker.log_text(run_id, body, "sft_effects.md")
        tracker.client.log_artifact(run_id, str(plot))


if __name__ == "__main__":
    main()
