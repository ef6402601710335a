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

from thinkflow.models.flops import FlopModel
from thinkflow.scaling.estimators import EstimatorError, best_of_k, bootstrap_cis, pass_at_k, vote_at_k_batch

STRATEGIES = ("pass", "maj", "bon", "bon_logprob", "weighted_maj", "weighted_maj_logprob")
VERIFIER_SCORED = ("bon", "weighted_maj")


def per_problem(table: pd.DataFrame, ks: list[int], draws: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """strategy -> (P, len(ks)) expected correctness of each problem at each k."""
    if table.empty:
        raise EstimatorError("the sample table is empty")
    groups = [g for _, g in table.groupby("problem_id", sort=False)]
    n = len(groups[0])
    if any(len(g) != n for g in groups):
        raise EstimatorError("every problem needs the same number of samples in the table")
    ids, good = _answer_classes(groups)
    correct = np.stack([g["correct"].to_numpy(bool) for g in groups])  # (P, n)
    logprob_mean = np.stack([g["logprob_mean"].to_numpy(float) for g in groups])
    seq_prob = np.exp(np.stack([g["logprob_sum"].to_numpy(float) for g in groups]))
    c = correct.sum(axis=1)
    out = {
        "pass": np.array([[pass_at_k(n, int(ci), k) for k in ks] for ci in c]),
        "maj": vote_at_k_batch(ids, good, ks, None, draws, seed),
        "bon_logprob": np.array([best_of_k(cr, lp, list(ks)) for cr, lp in zip(correct, logprob_mean, strict=True)]),
        "weighted_maj_logprob": vote_at_k_batch(ids, good, ks, seq_prob, draws, seed + 1),
    }
    if "verifier" in table.columns:
        score = np.stack([g["verifier"].to_numpy(float) for g in groups])
        out["bon"] = np.array([best_of_k(cr, sc, list(ks)) for cr, sc in zip(correct, score, strict=True)])
        out["weighted_maj"] = vote_at_k_batch(ids, good, ks, score, draws, seed + 2)
    return {name: out[name] for name in STRATEGIES if name in out}


def _answer_classes(groups: list[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
    """(P, n) answer class ids (-1 = no answer; pandas stores None as NaN) and (P, A) correct classes."""
    rows, goods = [], []
    for g in groups:
        answers = [None if pd.isna(a) else str(a) for a in g["answer"]]
        classes = {a: j for j, a in enumerate(dict.fromkeys(a for a in answers if a is not None))}
        ids = np.array([-1 if a is None else classes[a] for a in answers])
        rows.append(ids)
        goods.append({int(i) for i in ids[g["correct"].to_numpy(bool)]})
    width = max(1, max(int(r.max()) + 1 for r in rows))
    good = np.zeros((len(rows), width), dtype=bool)
    for p, gs in enumerate(goods):
        good[p, list(gs)] = True
    return np.stack(rows), good


def problem_compute(table: pd.DataFrame, flop_model: FlopModel, gen_wall_s: float) -> pd.DataFrame:
    """Per problem: prompt tokens, mean generated tokens per sample, FLOPs of the prompt and of
    one sample's decoding, one completion's verifier pass, and generation seconds per sample.

    Episodes (tables with ``episode_tokens``) are charged for every token of the transcript, the
    environment's observations included (each is a forward pass), with the prefix reused across
    turns; their mean tool calls and environment seconds per sample are carried along."""
    episodes = "episode_tokens" in table.columns
    extra = {c: (c, "mean") for c in ("episode_tokens", "tool_calls", "env_s") if episodes}
    g = table.groupby("problem_id", sort=False).agg(
        prompt_tokens=("prompt_tokens", "first"), gen_tokens=("gen_tokens", "mean"), **extra
    )
    total_gen = table["gen_tokens"].sum()
    processed = g["episode_tokens"] if episodes else g["gen_tokens"]
    pairs = list(zip(g["prompt_tokens"].astype(int), processed, strict=True))
    g["prompt_flops"] = [flop_model.tokens(1, t) for t, _ in pairs]
    g["sample_flops"] = [flop_model.tokens(t + 1, int(round(x))) for t, x in pairs]
    g["verify_flops"] = [flop_model.sequence(t, int(round(x))) for t, x in pairs]
    g["sample_wall_s"] = gen_wall_s * g["gen_tokens"] / max(total_gen, 1)  # wall shared out by tokens
    return g


def curve_points(
    checkpoint: str,
    curves: dict[str, np.ndarray],
    compute: pd.DataFrame,
    ks: list[int],
    n_samples: int,
    resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (strategy, k): accuracy, bootstrap 95% CI, and mean compute per problem."""
    names = list(curves)
    lo, hi = bootstrap_cis(np.concatenate([curves[n] for n in names], axis=1), resamples, seed)  # (S*K,)
    rows = []
    for a, name in enumerate(names):
        values = curves[name]
        for j, k in enumerate(ks):
            flops = compute["prompt_flops"] + k * compute["sample_flops"]
            if name in VERIFIER_SCORED:
                flops = flops + k * compute["verify_flops"]
            col = a * len(ks) + j
            rows.append(
                {
                    "checkpoint": checkpoint,
                    "strategy": name,
                    "k": k,
                    "accuracy": float(values[:, j].mean()),
                    "ci_low": float(lo[col]),
                    "ci_high": float(hi[col]),
                    "n_problems": len(values),
                    "n_samples": n_samples,
                    "gen_tokens": float(k * compute["gen_tokens"].mean()),
                    "flops": float(flops.mean()),
                    "wall_s": float(k * compute["sample_wall_s"].mean()),
                }
                | {c: float(k * compute[c].mean()) for c in ("tool_calls", "env_s") if c in compute}
            )
    return pd.DataFrame(rows)
