"""Compute-optimal test-time allocation (Snell et al. 2024), measured on the stored table.

Problems are binned by difficulty, estimated from the model's own pass rate over its N samples
(the paper's "oracle difficulty": it uses the answers' correctness, so it is an upper bound on
what a learned difficulty predictor would achieve). At each compute budget, each bin gets the
strategy and k with the best accuracy *in that bin* among those whose mean FLOPs fit the budget;
the policy's accuracy is the problem-weighted mean over bins. It is compared with best-of-N
(verifier-scored) at matched compute.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SELECTABLE = ("maj", "bon", "bon_logprob", "weighted_maj", "weighted_maj_logprob")  # pass@k needs an oracle


def difficulty_bins(pass_rate: np.ndarray, bins: int) -> np.ndarray:
    """(P,) bin index 0 (easiest) .. bins-1 (hardest), by quantiles of the pass rate."""
    order = np.argsort(-pass_rate, kind="stable")
    out = np.empty(len(pass_rate), dtype=int)
    out[order] = np.arange(len(pass_rate)) * bins // len(pass_rate)
    return out


def compute_optimal(
    curves: dict[str, np.ndarray],  # strategy -> (P, len(ks)) per-problem correctness
    flops: dict[str, np.ndarray],  # strategy -> (P, len(ks)) per-problem FLOPs
    ks: list[int],
    bins: np.ndarray,  # (P,) difficulty bin per problem
    budgets: list[float],
    baseline: str = "bon",
) -> pd.DataFrame:
    """Per budget: compute-optimal accuracy, the choice per bin, and the baseline's accuracy."""
    candidates = [(s, j) for s in SELECTABLE if s in curves for j in range(len(ks))]
    rows = []
    for budget in budgets:
        acc, choice = 0.0, []
        for b in np.unique(bins):
            m = bins == b
            fits = [(curves[s][m, j].mean(), s, ks[j]) for s, j in candidates if flops[s][m, j].mean() <= budget]
            best = max(fits) if fits else (0.0, "none", 0)
            acc += best[0] * m.sum() / len(bins)
            choice.append(f"{best[1]}@{best[2]}")
        base = [curves[baseline][:, j].mean() for j in range(len(ks)) if flops[baseline][:, j].mean() <= budget]
        rows.append(
            {
                "budget_flops": budget,
                "optimal_accuracy": acc,
                "baseline_accuracy": max(base) if base else 0.0,
                "choice_by_bin": " ".join(choice),
            }
        )
    return pd.DataFrame(rows)


def compute_saving(table: pd.DataFrame, baseline_best: float, baseline_flops: float) -> float | None:
    """baseline FLOPs / the least budget at which the compute-optimal policy matches the
    baseline's best accuracy (None if it never does)."""
    reached = table[table["optimal_accuracy"] >= baseline_best - 1e-12]
    if reached.empty or baseline_best <= 0:
        return None
    return float(baseline_flops / reached["budget_flops"].min())
