"""The champion/challenger gate on constructed sample tables: a clearly better challenger is promoted, an equal or
worse one is not, a guarded metric's confident drop blocks, a coverage crossover is flagged, and tables of
different problems are refused."""

import numpy as np
import pandas as pd
import pytest

from thinkflow.scaling.gate import GateError, GateRule, decide

N = 8  # samples per problem


def table(correct_per_problem: list[int], ids: list[str] | None = None, wrong_answers: int = 1) -> pd.DataFrame:
    """Problem i has ``correct_per_problem[i]`` correct samples (answer "ok") out of N; the wrong ones spread
    over ``wrong_answers`` distinct wrong answers."""
    rows = []
    for i, c in enumerate(correct_per_problem):
        pid = ids[i] if ids else f"p{i:03d}"
        for j in range(N):
            good = j < c
            rows.append(
                {
                    "problem_id": pid,
                    "sample": j,
                    "answer": "ok" if good else f"w{j % wrong_answers}",
                    "correct": good,
                    "logprob_sum": -1.0,
                    "logprob_mean": -0.1,
                }
            )
    return pd.DataFrame(rows)


rng = np.random.default_rng(0)
BASE = rng.integers(1, 5, size=80).tolist()  # 1-4 of 8 correct: pass@1 ~0.31


def test_a_clearly_better_challenger_is_promoted():
    better = [
        min(N, c + int(d)) for c, d in zip(BASE, np.random.default_rng(1).integers(1, 5, size=len(BASE)), strict=True)
    ]
    decision = decide(table(BASE), table(better))
    assert decision.promote and not decision.crossover
    row = decision.table.set_index("metric").loc["pass@1"]
    assert row["diff"] == pytest.approx(np.mean([b - c for b, c in zip(better, BASE, strict=True)]) / N)
    assert row.ci_low > 0 and row.verdict == "better"
    assert "promote" in decision.markdown() and "| pass@1 | primary |" in decision.markdown()


def test_an_equal_or_worse_challenger_is_not_promoted():
    same = decide(table(BASE), table(BASE))
    assert not same.promote and "not shown better" in same.reason
    worse = decide(table(BASE), table([c - 1 for c in BASE]))
    assert not worse.promote and worse.table.set_index("metric").loc["pass@1"].ci_high < 0


def test_a_guarded_drop_blocks_and_a_coverage_crossover_is_flagged():
    """The RL pattern: problems it solved sometimes become solved often (pass@1 up), problems it solved
    rarely become never solved (pass@8 down)."""
    champion = [1] * 40 + [4] * 40
    challenger = [0] * 40 + [8] * 40
    decision = decide(table(champion), table(challenger))
    rows = decision.table.set_index("metric")
    assert rows.loc["pass@1"].verdict == "better" and rows.loc["pass@8"].verdict == "drops beyond tolerance"
    assert not decision.promote and decision.crossover and "pass@8 drop" in decision.reason
    lenient = decide(table(champion), table(challenger), GateRule(guarded=("maj@max",)))
    assert lenient.promote and lenient.crossover  # promoted by a rule that guards only maj@8: still flagged


def test_tables_of_different_problems_or_sample_counts_are_refused():
    other = table(BASE, ids=[f"q{i:03d}" for i in range(len(BASE))])
    with pytest.raises(GateError, match="evaluated on different problems \\(80 only in the champion's table"):
        decide(table(BASE), other)
    fewer = table(BASE)
    with pytest.raises(GateError, match="same number of samples per problem"):
        decide(fewer[fewer["sample"] < 4], table(BASE))
    with pytest.raises(GateError, match="unknown gate metric"):
        decide(table(BASE), table(BASE), GateRule(primary="pass@3"))
