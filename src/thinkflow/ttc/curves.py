"""Every parallel strategy's accuracy-vs-k curve from one sample table, with compute and CIs.

Strategies (metric key ``ttc/<checkpoint>/<name>_at_k``, step = k):

- ``pass``: pass@k (oracle coverage, the upper bound of any selector);
- ``maj``: majority vote (self-consistency);
- ``bon``: best-of-k by the learned verifier's score; ``bon_logprob``: by the model's mean token
  log-probability;
- ``weighted_maj``: votes weighted by the verifier's score; ``weighted_maj_logprob``: by the
  sequence probability.

Compute per problem at k: the prompt prefilled once (its KV cache shared by the k samples),
k samples' decoding, and for verifier-scored strategies one forward pass over each of the k
completions. FLOPs come from ``FlopModel``; wall seconds are the generation time shared out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from thinkflow.ttc.estimators import EstimatorError, best_of_k, bootstrap_ci, pass_at_k, vote_at_k
from thinkflow.ttc.flops import FlopModel

STRATEGIES = ("pass", "maj", "bon", "bon_logprob", "weighted_maj", "weighted_maj_logprob")
VERIFIER_SCORED = ("bon", "weighted_maj")


def per_problem(table: pd.DataFrame, ks: list[int], draws: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """strategy -> (P, len(ks)) expected correctness of each problem at each k."""
    if table.empty:
        raise EstimatorError("the sample table is empty")
    has_verifier = "verifier" in table.columns
    out = {s: [] for s in STRATEGIES if has_verifier or s not in VERIFIER_SCORED}
    for i, (_, g) in enumerate(table.groupby("problem_id", sort=False)):
        correct = g["correct"].to_numpy(bool)
        n, c = len(g), int(correct.sum())
        answers = [None if pd.isna(a) else str(a) for a in g["answer"]]  # pandas stores None as NaN
        classes = {a: j for j, a in enumerate(dict.fromkeys(a for a in answers if a is not None))}
        ids = np.array([-1 if a is None else classes[a] for a in answers])
        good = {int(x) for x in ids[correct]}
        logprob = g["logprob_mean"].to_numpy(float)
        rows = {
            "pass": [pass_at_k(n, c, k) for k in ks],
            "maj": list(vote_at_k(ids, good, ks, draws=draws, seed=seed + i).values()),
            "bon_logprob": [best_of_k(correct, logprob, k) for k in ks],
            "weighted_maj_logprob": list(
                vote_at_k(ids, good, ks, np.exp(g["logprob_sum"].to_numpy(float)), draws, seed=seed + i).values()
            ),
        }
        if has_verifier:
            score = g["verifier"].to_numpy(float)
            rows["bon"] = [best_of_k(correct, score, k) for k in ks]
            rows["weighted_maj"] = list(vote_at_k(ids, good, ks, score, draws, seed=seed + i).values())
        for name, values in rows.items():
            out[name].append(values)
    return {name: np.array(v) for name, v in out.items()}


def problem_compute(table: pd.DataFrame, flop_model: FlopModel, gen_wall_s: float) -> pd.DataFrame:
    """Per problem: prompt tokens, mean generated tokens per sample, FLOPs of the prompt and of
    one sample's decoding, one completion's verifier pass, and generation seconds per sample."""
    g = table.groupby("problem_id", sort=False).agg(
        prompt_tokens=("prompt_tokens", "first"), gen_tokens=("gen_tokens", "mean")
    )
    total_gen = table["gen_tokens"].sum()
    pairs = list(zip(g["prompt_tokens"].astype(int), g["gen_tokens"], strict=True))
    g["prompt_flops"] = [flop_model.tokens(1, t) for t, _ in pairs]
    g["sample_flops"] = [flop_model.tokens(t + 1, int(round(x))) for t, x in pairs]
    g["verify_flops"] = [flop_model.sequence(t, int(round(x))) for t, x in pairs]
    g["sample_wall_s"] = gen_wall_s * g["gen_tokens"] / max(total_gen, 1)  # wall shared out by tokens
    return g


def curve_points(
    checkpoint: str, curves: dict[str, np.ndarray], compute: pd.DataFrame, ks: list[int], n_samples: int,
    resamples: int = 1000, seed: int = 0,
) -> pd.DataFrame:  # fmt: skip
    """One row per (strategy, k): accuracy, bootstrap 95% CI, and mean compute per problem."""
    rows = []
    for name, values in curves.items():
        for j, k in enumerate(ks):
            lo, hi = bootstrap_ci(values[:, j], resamples, seed)
            flops = compute["prompt_flops"] + k * compute["sample_flops"]
            if name in VERIFIER_SCORED:
                flops = flops + k * compute["verify_flops"]
            rows.append(
                {
                    "checkpoint": checkpoint, "strategy": name, "k": k, "accuracy": float(values[:, j].mean()),
                    "ci_low": lo, "ci_high": hi, "n_problems": len(values), "n_samples": n_samples,
                    "gen_tokens": float(k * compute["gen_tokens"].mean()), "flops": float(flops.mean()),
                    "wall_s": float(k * compute["sample_wall_s"].mean()),
                }
            )  # fmt: skip
    return pd.DataFrame(rows)
