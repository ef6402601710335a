"""Scoring cost of the test-time-compute stage: every curve for N_max=64 samples over 500
problems from the stored table, against the time it took to generate those samples.

    python -m benchmarks.ttc_scoring [--problems 500] [--n 64]          # from the repo root

Uses the default pretrain checkpoint (trained by the pretrain stage, or reused from
mlruns/work), the default ttc config (k = 1..64, 128 vote draws, 1000 bootstrap resamples, the
compute-optimal allocation) and the learned verifier's scores. Target: scoring < 10% of generation.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import machine_line, write_section
from benchmarks.rl_step import pretrained_checkpoint
from thinkflow.catalog import build_task
from thinkflow.composition import compose
from thinkflow.config import validate
from thinkflow.inference import open_engine
from thinkflow.models.flops import FlopModel
from thinkflow.scaling.table import sample_table
from thinkflow.ttc.stage import score_all
from thinkflow.ttc.verifier import LearnedVerifier, sample_stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--n", type=int, default=64)
    args = parser.parse_args()
    config = compose([f"ttc.n_max={args.n}"])
    config.pop("hydra", None)
    cfg = validate(config)
    tc, ckpt = cfg.ttc, pretrained_checkpoint()
    task = build_task(cfg.task.name, cfg.task.difficulty)
    train, problems = task.splits(tc.verifier.train_problems, args.problems, seed=cfg.seed)
    with open_engine("hf", ckpt) as engine:
        table, gen_s = sample_table(engine, task, problems, args.n, tc.temperature, tc.max_new_tokens, tc.seed)
        verifier = LearnedVerifier(engine.model, engine.tokenizer).fit(engine, task, train, 8, tc.max_new_tokens)
        prompts = {p.id: p.prompt for p in problems}
        t0 = time.perf_counter()
        stats = sample_stats(table["logprob_mean"], table["logprob_min"], table["gen_tokens"], table["has_answer"])
        table["verifier"] = verifier.score([prompts[i] for i in table["problem_id"]], list(table["text"]), stats)
        verify_s = time.perf_counter() - t0
        flop_model = FlopModel.from_config(engine.model.config)
    t0 = time.perf_counter()
    points, _ = score_all("pretrain", table, flop_model, gen_s, tc)
    score_s = time.perf_counter() - t0
    body = "\n".join(
        [
            f"Machine: {machine_line()}. {args.problems} problems x {args.n} samples = {len(table):,} samples, "
            f"{int(table.gen_tokens.sum()):,} generated tokens; {len(points)} curve points (6 strategies x "
            f"{len(tc.ks)} k), each with a {tc.bootstrap}-resample bootstrap CI, plus the compute-optimal allocation.",
            "",
            "| step | seconds | share of generation |",
            "|---|---:|---:|",
            f"| generate the table (hf engine) | {gen_s:.1f} | 100% |",
            f"| learned-verifier scores (one forward per sample) | {verify_s:.1f} | {verify_s / gen_s:.1%} |",
            f"| every curve + CIs + allocation from the table | {score_s:.2f} | **{score_s / gen_s:.1%}** |",
        ]
    )
    print(body)
    write_section("ttc_scoring", "## Test-time-compute scoring cost (`python -m benchmarks.ttc_scoring`)\n\n" + body)


if __name__ == "__main__":
    main()
