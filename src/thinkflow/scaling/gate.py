"""Champion / challenger: should a new checkpoint replace the one in use?

Both are sampled on the same held-out problems with the same number of samples (ttc's sample tables). For each
operating point (pass@1, maj@k and pass@k at the largest k) the difference challenger - champion is averaged over
problems, with a **paired** percentile bootstrap over problems (one resample of problem indices serves both
models and every metric, so per-problem difficulty cancels). The rule:

- promote only if the primary metric's difference has its whole interval above zero, and
- no guarded metric drops beyond ``tolerance`` with confidence (its interval entirely below ``-tolerance``);
- a **coverage crossover** (the primary metric rises while pass@k at the largest k falls: RL sharpening the
  answers it already finds and losing ones it used to find) is flagged in the decision, whatever it is.

A challenger evaluated on other problems, or with another number of samples, is refused: the comparison would
not be paired.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from thinkflow.scaling.curves import per_problem
from thinkflow.scaling.estimators import EstimatorError


class GateError(ValueError):
    """The two sample tables cannot be compared (different problems or sample counts)."""


@dataclass(frozen=True)
class GateRule:
    primary: str = "pass@1"
    guarded: tuple[str, ...] = ("maj@max", "pass@max")  # ``max``: the largest k both tables allow
    tolerance: float = 0.02  # a guarded metric may drop this much before a confident drop blocks promotion
    level: float = 0.95
    resamples: int = 2000
    seed: int = 0


@dataclass
class GateDecision:
    promote: bool
    reason: str
    crossover: bool
    table: pd.DataFrame  # metric, champion, challenger, diff, ci_low, ci_high, role, verdict

    def markdown(self) -> str:
        verdict = "**promote**" if self.promote else "**keep the champion**"
        lines = [f"Gate: {verdict}: {self.reason}", ""]
        if self.crossover:
            lines += ["Coverage crossover: pass@1 rises while pass@k at the largest k falls.", ""]
        lines += ["| metric | role | champion | challenger | diff | CI | verdict |", "|---|---|---:|---:|---:|---|---|"]
        for r in self.table.itertuples():
            lines.append(
                f"| {r.metric} | {r.role} | {r.champion:.3f} | {r.challenger:.3f} | {r.diff:+.3f} | "
                f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}] | {r.verdict} |"
            )
        return "\n".join(lines)


def _metrics(table: pd.DataFrame, k_max: int) -> dict[str, np.ndarray]:
    """Per-problem values (problems sorted by id) of pass@1, pass@k_max and maj@k_max."""
    table = table.sort_values(["problem_id", "sample"], kind="stable")
    ks = sorted({1, k_max})
    try:
        curves = per_problem(table, ks)
    except EstimatorError as err:
        raise GateError(str(err)) from None
    col = {k: i for i, k in enumerate(ks)}
    return {
        "pass@1": curves["pass"][:, col[1]],
        f"pass@{k_max}": curves["pass"][:, col[k_max]],
        f"maj@{k_max}": curves["maj"][:, col[k_max]],
    }


def _paired(champion: pd.DataFrame, challenger: pd.DataFrame) -> int:
    """The common sample count, after checking both tables cover the same problems equally."""
    a, b = set(champion.problem_id), set(challenger.problem_id)
    if a != b:
        only = sorted(a - b)[:3], sorted(b - a)[:3]
        raise GateError(
            f"champion and challenger were evaluated on different problems ({len(a - b)} only in the champion's "
            f"table, e.g. {only[0]}; {len(b - a)} only in the challenger's, e.g. {only[1]}): evaluate both on the "
            "same held-out problems"
        )
    counts = {champion.groupby("problem_id").size().min(), challenger.groupby("problem_id").size().min()}
    counts |= {champion.groupby("problem_id").size().max(), challenger.groupby("problem_id").size().max()}
    if len(counts) != 1:
        raise GateError(f"champion and challenger need the same number of samples per problem (got {sorted(counts)})")
    return counts.pop()


def decide(champion: pd.DataFrame, challenger: pd.DataFrame, rule: GateRule = GateRule()) -> GateDecision:
    """The gate's decision on two ttc sample tables (``problem_id``, ``sample``, ``answer``, ``correct``, ...)."""
    k_max = _paired(champion, challenger)
    ours, theirs = _metrics(challenger, k_max), _metrics(champion, k_max)
    names = list(ours)
    resolve = {"pass@max": f"pass@{k_max}", "maj@max": f"maj@{k_max}"}
    primary = resolve.get(rule.primary, rule.primary)
    guarded = [resolve.get(g, g) for g in rule.guarded if resolve.get(g, g) != primary]
    unknown = [m for m in (primary, *guarded) if m not in names]
    if unknown:
        raise GateError(f"unknown gate metric(s) {unknown}; known: {names} (pass@max, maj@max: the largest k)")
    diffs = np.stack([ours[m] - theirs[m] for m in names], axis=1)  # (P, M), paired by problem
    idx = np.random.default_rng(rule.seed).integers(0, len(diffs), size=(rule.resamples, len(diffs)))
    means = diffs[idx].mean(axis=1)  # (R, M): one resample of problems for every metric
    low, high = np.quantile(means, [(1 - rule.level) / 2, 1 - (1 - rule.level) / 2], axis=0)
    rows = []
    for j, m in enumerate(names):
        role = "primary" if m == primary else "guarded" if m in guarded else "reported"
        if role == "primary":
            verdict = "better" if low[j] > 0 else "not shown better"
        elif role == "guarded":
            verdict = "drops beyond tolerance" if high[j] < -rule.tolerance else "holds"
        else:
            verdict = ""
        rows.append(
            {
                "metric": m,
                "role": role,
                "champion": float(theirs[m].mean()),
                "challenger": float(ours[m].mean()),
                "diff": float(diffs[:, j].mean()),
                "ci_low": float(low[j]),
                "ci_high": float(high[j]),
                "verdict": verdict,
            }
        )
    table = pd.DataFrame(rows)
    by = table.set_index("metric")
    better = by.loc[primary, "verdict"] == "better"
    blocked = [m for m in guarded if by.loc[m, "verdict"] == "drops beyond tolerance"]
    coverage = f"pass@{k_max}"
    crossover = k_max > 1 and by.loc["pass@1", "diff"] > 0 and by.loc[coverage, "diff"] < 0
    if not better:
        j = names.index(primary)
        reason = f"{primary} not shown better at {rule.level:.0%} confidence (diff CI [{low[j]:+.3f}, {high[j]:+.3f}])"
    elif blocked:
        reason = f"{primary} better, but {', '.join(blocked)} drop beyond {rule.tolerance} with confidence"
    else:
        reason = f"{primary} better ({by.loc[primary, 'diff']:+.3f}, CI above zero) and no guarded metric drops"
    return GateDecision(better and not blocked, reason, bool(crossover), table)
