"""Accuracy-at-k estimators over one stored table of N samples per problem.

Every curve comes from the same samples for all k <= N (never re-sampled per k):

- ``pass_at_k``: unbiased 1 - C(n-c, k) / C(n, k) (coverage: an oracle picks).
- ``best_of_k``: exact expectation, over uniformly random size-k subsets, of the correctness of
  the highest-scored sample; tied scores split fairly (the tie group's mean correctness).
- ``vote_at_k``: majority vote (weights 1) or weighted majority (weights = scores) over random
  size-k subsets, ties split fairly; exact by enumeration when C(n, k) is small, otherwise a
  fixed-seed estimate over ``draws`` random subsets (nested prefixes of random permutations,
  so one draw serves every k; ``vote_at_k_batch`` does this for many problems at once). Samples without an answer never vote; a subset with no votes
  is wrong.

Shapes: one problem at a time, ``n`` samples; the vectorised forms take (P, n) arrays.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np


class EstimatorError(ValueError):
    """Impossible estimator input (k above the samples drawn, empty tables, unknown names)."""


def _check_k(k: int, n: int) -> None:
    if n < 1:
        raise EstimatorError("no samples for this problem (n = 0)")
    if not 1 <= k <= n:
        raise EstimatorError(f"k={k} needs 1 <= k <= n, but only n={n} samples were drawn per problem")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement is correct."""
    _check_k(k, n)
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) as a product: stable for large n
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@functools.lru_cache(maxsize=64)
def _top_weights(n: int, k: int) -> np.ndarray:
    """P(the sample at sorted position i is the max of a random size-k subset) = C(n-1-i, k-1) / C(n, k)."""
    return np.array([math.comb(n - 1 - i, k - 1) for i in range(n)], dtype=float) / math.comb(n, k)


def best_of_k(correct: np.ndarray, scores: np.ndarray, k: int | list[int]) -> float | list[float]:
    """Expected correctness of the top-scored sample of a random size-k subset (exact); a list of
    ks gives a list (the sort is shared)."""
    ks = k if isinstance(k, list) else [k]
    n = len(correct)
    for kk in ks:
        _check_k(kk, n)
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order].astype(float)
    # ties: every member of a tied group carries the group's mean correctness
    _, start, counts = np.unique(-s, return_index=True, return_counts=True)
    if len(start) < n:
        for a, m in zip(start, counts, strict=True):
            c[a : a + m] = c[a : a + m].mean()
    out = [float(_top_weights(n, kk) @ c) for kk in ks]
    return out if isinstance(k, list) else out[0]


def _winner_correct(answer_ids: np.ndarray, weights: np.ndarray, correct_ids: set[int]) -> float:
    """Expected correctness of the (weighted) vote of one subset, ties split fairly."""
    totals: dict[int, float] = {}
    for a, w in zip(answer_ids.tolist(), weights.tolist(), strict=True):
        if a >= 0:
            totals[a] = totals.get(a, 0.0) + w
    if not totals:
        return 0.0
    best = max(totals.values())
    top = [a for a, t in totals.items() if math.isclose(t, best, rel_tol=1e-9, abs_tol=1e-12)]
    return sum(a in correct_ids for a in top) / len(top)


def vote_at_k(
    answer_ids: np.ndarray,  # (n,) int answer class per sample, -1 = no answer
    correct_ids: set[int],  # the answer classes that are correct
    ks: list[int],
    weights: np.ndarray | None = None,  # (n,) vote weight per sample; None = plain majority
    draws: int = 256,
    exact_limit: int = 2000,
    seed: int = 0,
) -> dict[int, float]:
    n = len(answer_ids)
    for k in ks:
        _check_k(k, n)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    out: dict[int, float] = {}
    sampled = [k for k in ks if math.comb(n, k) > exact_limit]
    for k in ks:
        if k == 1:  # one vote: the sample's own answer
            out[k] = float(np.mean([a >= 0 and int(a) in correct_ids for a in answer_ids]))
        elif k not in sampled:  # enumerate every subset
            subsets = itertools.combinations(range(n), k)
            vals = [_winner_correct(answer_ids[list(s)], w[list(s)], correct_ids) for s in subsets]
            out[k] = float(np.mean(vals))
    if sampled:  # the batched estimator on a batch of one problem, classes renumbered 0..A-1
        classes = sorted({int(a) for a in answer_ids if a >= 0})
        col = {a: i for i, a in enumerate(classes)}
        ids = np.array([[col[int(a)] if a >= 0 else -1 for a in answer_ids]])
        good = np.array([[a in correct_ids for a in classes] or [False]])
        values = vote_at_k_batch(ids, good, sampled, w[None], draws, seed)[0]
        out |= dict(zip(sampled, values.tolist(), strict=True))
    return {k: out[k] for k in ks}  # in the order asked


def vote_at_k_batch(
    answer_ids: np.ndarray,  # (P, n) answer class per sample, -1 = no answer; classes 0..A-1 per problem
    good: np.ndarray,  # (P, A) bool: class a of problem p is a correct answer
    ks: list[int],
    weights: np.ndarray | None = None,  # (P, n)
    draws: int = 256,
    seed: int = 0,
    chunk: int = 32,
) -> np.ndarray:
    """(P, len(ks)) ``vote_at_k`` for many problems at once (same estimator: exact for k = 1 and
    k = n, fixed-seed random subsets otherwise), vectorised over problems."""
    p, n = answer_ids.shape
    for k in ks:
        _check_k(k, n)
    w = np.ones((p, n), dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
    out = np.zeros((p, len(ks)))
    rng = np.random.default_rng(seed)
    sampled = sorted({k for k in ks if 1 < k < n})
    # problems in chunks of similar answer diversity: each chunk's one-hot is only as wide as it needs
    order = np.argsort(answer_ids.max(axis=1), kind="stable")
    for s in range(0, p, chunk):
        rows = order[s : s + chunk]
        a = max(1, int(answer_ids[rows].max()) + 1)
        oh = (answer_ids[rows, :, None] == np.arange(a)) * w[rows, :, None]  # (C, n, A)
        gd = good[rows, :a].astype(np.float32)
        perms = np.argsort(rng.random((len(oh), draws, n)), axis=2)[:, :, : max(sampled, default=0)]  # (C, R, m)
        # running vote totals only at the prefix lengths asked for: sums over the segments between them
        totals, running, prev = {}, 0.0, 0
        for k in sampled:
            seg = np.take_along_axis(oh[:, None], perms[:, :, prev:k, None], axis=2)  # (C, R, k-prev, A)
            running = running + seg.sum(axis=2)
            totals[k], prev = running, k
        for j, k in enumerate(ks):
            if k == 1:  # exact: one vote, the sample's own answer
                out[rows, j] = ((oh > 0) * gd[:, None, :]).sum(axis=2).mean(axis=1)
                continue
            t = oh.sum(axis=1)[:, None] if k == n else totals[k]  # (C, R|1, A)
            best = t.max(axis=2, keepdims=True)
            top = (t >= best - 1e-6 * np.maximum(best, 1)) & (best > 0)
            n_top = top.sum(axis=2)
            share = np.where(n_top > 0, (top * gd[:, None]).sum(axis=2) / np.maximum(n_top, 1), 0.0)
            out[rows, j] = share.mean(axis=1)
    return out


def bootstrap_cis(per_problem: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap CIs of the column means of a (P, M) matrix: (low (M,), high (M,)),
    every column resampled with the same problem draws."""
    x = np.asarray(per_problem, dtype=float)
    if x.shape[0] == 0:
        raise EstimatorError("bootstrap over an empty problem set")
    idx = np.random.default_rng(seed).integers(0, x.shape[0], size=(resamples, x.shape[0]))
    means = np.stack([x[i].mean(axis=0) for i in idx])  # (R, M)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2], axis=0)
    return lo, hi


def bootstrap_ci(per_problem: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap CI of the mean over problems: (low, high)."""
    x = np.asarray(per_problem, dtype=float)
    if x.size == 0:
        raise EstimatorError("bootstrap over an empty problem set")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)
