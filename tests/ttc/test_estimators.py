"""Estimators against brute-force enumeration of every subset; bootstrap coverage; FLOPs by hand."""

import itertools
import math
import random

import numpy as np
import pandas as pd
import pytest

from thinkflow.scaling.estimators import EstimatorError, best_of_k, bootstrap_ci, pass_at_k, vote_at_k


def brute(n: int, k: int, value) -> float:
    """Mean of ``value(subset)`` over every size-k subset of range(n)."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(value(s) for s in subsets) / len(subsets)


def vote(answers, weights, correct_set, subset) -> float:
    totals = {}
    for i in subset:
        if answers[i] is not None:
            totals[answers[i]] = totals.get(answers[i], 0) + weights[i]
    if not totals:
        return 0.0
    best = max(totals.values())
    top = [a for a, t in totals.items() if abs(t - best) < 1e-12]
    return sum(a in correct_set for a in top) / len(top)  # ties split fairly


@pytest.mark.parametrize("seed", range(5))
def test_pass_and_best_of_k_match_enumeration(seed):
    rng = random.Random(seed)
    n = 8
    correct = np.array([rng.random() < 0.4 for _ in range(n)])
    scores = np.array([rng.choice([0.1, 0.5, 0.5, 0.9, rng.random()]) for _ in range(n)])  # with ties
    for k in range(1, n + 1):
        assert pass_at_k(n, int(correct.sum()), k) == pytest.approx(
            brute(n, k, lambda s: float(correct[list(s)].any()))
        )

        def top(s):
            best = max(scores[i] for i in s)
            tied = [i for i in s if scores[i] == best]
            return sum(correct[i] for i in tied) / len(tied)

        assert best_of_k(correct, scores, k) == pytest.approx(brute(n, k, top))


@pytest.mark.parametrize("seed", range(5))
def test_majority_and_weighted_votes_match_enumeration_with_ties(seed):
    rng = random.Random(seed)
    n = 9
    answers = [rng.choice(["12", "13", "14", None]) for _ in range(n)]
    ids = np.array([-1 if a is None else int(a) for a in answers])
    correct_set = {12}
    weights = [rng.choice([0.2, 0.5, 1.0]) for _ in range(n)]
    ks = list(range(1, n + 1))
    exact = vote_at_k(ids, correct_set, ks)  # C(9, k) <= 126 subsets: enumerated
    weighted = vote_at_k(ids, correct_set, ks, np.array(weights))
    plain = [None if a is None else int(a) for a in answers]
    for k in ks:
        assert exact[k] == pytest.approx(brute(n, k, lambda s: vote(plain, [1] * n, correct_set, s)))
        assert weighted[k] == pytest.approx(brute(n, k, lambda s: vote(plain, weights, correct_set, s)))
    # the fixed-seed estimate (forced here) agrees with enumeration within its sampling error
    sampled = vote_at_k(ids, correct_set, ks, draws=4000, exact_limit=0, seed=1)
    for k in ks:
        assert sampled[k] == pytest.approx(exact[k], abs=0.03)


def test_mixed_exact_and_sampled_ks_come_back_in_the_order_asked():
    ids = np.array([0] * 40 + [1] * 24)
    out = vote_at_k(ids, {0}, [1, 2, 4, 64])  # 1 and 64 are enumerated, 2 and 4 estimated
    assert list(out) == [1, 2, 4, 64]
    assert out[1] < out[4] < out[64] == 1.0


def test_vote_with_no_answers_is_wrong_not_nan():
    ids = np.array([-1, -1, -1])
    assert vote_at_k(ids, set(), [1, 3]) == {1: 0.0, 3: 0.0}
    assert vote_at_k(ids, set(), [2], exact_limit=0) == {2: 0.0}


def test_bad_k_and_empty_sets_are_named():
    with pytest.raises(EstimatorError, match="k=5 needs 1 <= k <= n, but only n=4 samples"):
        pass_at_k(4, 1, 5)
    with pytest.raises(EstimatorError, match="k=0"):
        best_of_k(np.array([True]), np.array([1.0]), 0)
    with pytest.raises(EstimatorError, match="empty problem set"):
        bootstrap_ci(np.array([]))


def test_bootstrap_ci_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(0)
    p, n, trials = 0.3, 200, 300
    hits = 0
    for t in range(trials):
        lo, hi = bootstrap_ci(rng.random(n) < p, resamples=400, seed=t)
        hits += lo <= p <= hi
    assert 0.90 <= hits / trials <= 0.99


def test_flops_match_a_hand_computation():
    from types import SimpleNamespace

    from thinkflow.models.flops import FlopModel

    cfg = SimpleNamespace(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        vocab_size=100,
        head_dim=None,
    )
    fm = FlopModel.from_config(cfg)
    # per layer: q 128x128, o 128x128, k and v 128x64 each, gate/up/down 3 x 128x512; plus the LM head 100x128
    per_layer = 128 * 128 * 2 + 128 * 64 * 2 + 3 * 128 * 512
    assert fm.matmul_params == 4 * per_layer + 100 * 128
    # prompt of 3 tokens (kv 1, 2, 3) then 2 generated (kv 4, 5): attention 4 * layers * 128 * sum(kv)
    expected = 2 * fm.matmul_params * 5 + 4 * 4 * 128 * (1 + 2 + 3 + 4 + 5)
    assert fm.sequence(3, 2) == pytest.approx(expected)
    assert math.isclose(fm.tokens(1, 0), 0.0)


def test_batched_votes_agree_with_the_per_problem_enumeration():
    from thinkflow.scaling.estimators import vote_at_k_batch

    rng = np.random.default_rng(3)
    p, n, ks = 6, 9, [1, 2, 3, 5, 9]
    ids = rng.integers(-1, 3, size=(p, n))
    good = np.zeros((p, 3), dtype=bool)
    good[:, 0] = True
    weights = rng.choice([0.2, 0.5, 1.0], size=(p, n))
    for w in (None, weights):
        batch = vote_at_k_batch(ids, good, ks, w, draws=4000, seed=0)
        for i in range(p):
            exact = vote_at_k(ids[i], {0}, ks, None if w is None else w[i])  # C(9, k) small: enumerated
            assert batch[i] == pytest.approx([exact[k] for k in ks], abs=0.03)


def test_plots_keep_one_colour_per_strategy_across_checkpoints(tmp_path, monkeypatch):
    """`pretrain: pass` and `rl: weighted_maj` were both blue: a strategy now keeps its colour for every
    checkpoint and line style tells checkpoints apart."""
    import matplotlib.pyplot as plt

    from thinkflow.ttc import plots

    rows = [
        {
            "checkpoint": c,
            "strategy": s,
            "k": k,
            "accuracy": 0.5,
            "ci_low": 0.4,
            "ci_high": 0.6,
            "n_problems": 8,
            "n_samples": 4,
        }
        for c in ("pretrain", "rl")
        for s in ("pass", "maj", "weighted_maj")
        for k in (1, 2, 4)
    ]
    points = pd.DataFrame(rows)
    drawn = []
    real_plot = plt.Axes.plot

    def spy(ax, *args, **kwargs):
        lines = real_plot(ax, *args, **kwargs)
        drawn.append((kwargs.get("label"), lines[0].get_color(), lines[0].get_linestyle()))
        return lines

    monkeypatch.setattr(plt.Axes, "plot", spy)
    assert plots.accuracy_vs(points, "k", tmp_path / "a.png", "t").stat().st_size > 0
    by_label = {label: (colour, style) for label, colour, style in drawn}
    assert by_label["pretrain: pass"][0] == by_label["rl: pass"][0]  # same strategy, same colour
    assert by_label["pretrain: pass"][1] != by_label["rl: pass"][1]  # checkpoints: line style
    assert len({by_label[f"rl: {s}"][0] for s in ("pass", "maj", "weighted_maj")}) == 3
    assert by_label["rl: pass"][1] == "-"  # the last checkpoint is solid
