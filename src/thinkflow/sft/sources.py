"""Where SFT examples come from, and what is kept of them.

Every candidate trace, kept or not, is a ``Candidate`` with its provenance (source, the model that wrote it,
round, sample index, the verifier's verdict, cost) and a ``status``: ``kept`` or why it was dropped
(``wrong``, ``truncated``, ``duplicate``, ``over_max_per_problem``, ``contaminated``, ``too_long``). The
candidates of a run are its provenance table (``frame``).

- gold: the task's own trace of each training problem;
- teacher / self: ``k`` samples per problem from a checkpoint (a teacher, or the current policy) through the
  inference engine, kept when the task's verifier accepts the answer and the trace ended on its own, at most
  ``max_per_problem`` distinct ones per problem (rejection sampling).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import pandas as pd

from thinkflow.contamination import ContaminationError, EvalIndex, Report
from thinkflow.envs import EnvTask
from thinkflow.inference import Engine, Sample, SamplingParams
from thinkflow.tasks import Problem, Task

KEPT = "kept"


class SFTDataError(ValueError):
    """A source gave nothing to train on (every trace rejected, or nothing left after filtering)."""


@dataclass
class Candidate:
    problem_id: str
    source: str  # the name in sft.sources
    kind: str  # gold | teacher | self
    model: str  # who wrote the trace: "task:<name>" for gold, else the checkpoint directory
    round: int  # expert-iteration round that sampled it (0 for gold and teacher)
    sample_index: int  # among the k samples of its problem (0 for gold)
    verdict: bool  # the task's verifier on the trace's answer
    finish_reason: str  # "stop" (ended on its own) or "length" (cut off at max_new_tokens); gold: "gold"
    cost_usd: float  # what the trace cost to buy (0 for local models)
    prompt: str
    completion: str
    question: str  # the problem's text, checked against the held-out problems
    status: str = KEPT


def gold_candidates(task: Task, problems: list[Problem], source: str) -> list[Candidate]:
    """The task's own trace of each problem (verified too: a task whose gold traces fail its verifier is a bug
    the stage reports rather than trains on)."""
    out = []
    for p in problems:
        completion = "".join(text for text, _ in task.completion_segments(p))
        ok = True if isinstance(task, EnvTask) else bool(task.verify(task.completion(p), p))
        out.append(_candidate(p, source, "gold", f"task:{task.name}", 0, 0, ok, "gold", completion))
    return out


def sampled_candidates(
    engine: Engine,
    task: Task,
    problems: list[Problem],
    *,
    source: str,
    kind: str,
    model: str,
    round_: int,
    params: SamplingParams,
) -> list[Candidate]:
    """``params.n`` samples per problem, each judged by the task's verifier."""
    groups = engine.generate([p.prompt for p in problems], params)
    return judged(task, problems, groups, source=source, kind=kind, model=model, round_=round_)


def judged(
    task: Task,
    problems: list[Problem],
    groups: list[list[Sample]],
    *,
    source: str,
    kind: str,
    model: str,
    round_: int,
    cost: Callable[[Sample], float] | None = None,
) -> list[Candidate]:
    """Candidates of each problem's samples (a group may hold fewer than asked: a spend cap stopped buying),
    each judged by the task's verifier; ``cost``: what one sample cost (API teachers)."""
    out = []
    for p, group in zip(problems, groups, strict=True):
        for i, s in enumerate(group):
            ok = bool(task.verify(s.text, p))
            c = _candidate(p, source, kind, model, round_, i, ok, s.finish_reason, s.text)
            c.cost_usd = float(cost(s)) if cost is not None else 0.0
            out.append(c)
    return out


def _candidate(
    p: Problem, source: str, kind: str, model: str, round_: int, index: int, ok: bool, finish: str, completion: str
) -> Candidate:
    return Candidate(
        problem_id=p.id,
        source=source,
        kind=kind,
        model=model,
        round=round_,
        sample_index=index,
        verdict=ok,
        finish_reason=finish,
        cost_usd=0.0,
        prompt=p.prompt,
        completion=completion,
        question=p.meta.get("question", p.prompt),
    )


def select(candidates: list[Candidate], max_per_problem: dict[str, int | None]) -> None:
    """Mark (in place) what is not kept: wrong answers, traces cut off at the token limit, duplicates (the same
    completion of the same problem from the same source, earlier in the list), and the verified traces beyond
    a source's ``max_per_problem``. Sources are deduplicated apart: a self sample that equals the gold trace
    (on a task whose traces are deterministic, every correct one does) is still that source's example, and
    the mixing weights say how much each source counts."""
    seen: set = set()
    per_problem: Counter = Counter()
    for c in candidates:
        if c.status != KEPT:
            continue
        key = (c.source, c.problem_id, c.completion)
        cap = max_per_problem.get(c.source)
        if not c.verdict:
            c.status = "wrong"
        elif c.finish_reason == "length":
            c.status = "truncated"
        elif key in seen:
            c.status = "duplicate"
        elif cap is not None and per_problem[c.source, c.problem_id] >= cap:
            c.status = "over_max_per_problem"
        else:
            seen.add(key)
            per_problem[c.source, c.problem_id] += 1


def decontaminate(candidates: list[Candidate], held_out: dict[str, list[str]], n: int, action: str) -> Report:
    """Check each kept candidate's problem and trace against the held-out problems (``n``-grams; exact match
    for problems shorter than ``n`` tokens). ``drop`` marks the overlapping ones ``contaminated``; ``fail``
    raises on any overlap; ``report`` only reports. Dropping every kept example is an error naming the overlap."""
    index = EvalIndex.build(held_out, n=n)
    report = Report(index.n, dict(index.tasks))
    kept = [c for c in candidates if c.status == KEPT]
    flagged = []
    for c in kept:
        overlaps = index.find(c.question) + index.find(c.completion)
        report.add(c.source, overlaps, c.question)
        if overlaps:
            flagged.append(c)
    if flagged and action == "fail":
        raise ContaminationError(
            f"{len(flagged)} of {len(kept)} SFT examples overlap the held-out problems: {report.describe()}"
        )
    if flagged and action == "drop":
        if len(flagged) == len(kept):
            raise ContaminationError(
                f"decontamination dropped all {len(kept)} SFT examples (they overlap the held-out problems): "
                f"{report.describe()}"
            )
        for c in flagged:
            c.status = "contaminated"
    return report


def source_counts(candidates: list[Candidate]) -> dict[str, dict[str, int]]:
    """Per source: ``samples``, ``verified`` and ``kept``, and a count per drop reason."""
    out: dict[str, dict[str, int]] = {}
    for c in candidates:
        counts = out.setdefault(c.source, Counter())
        counts["samples"] += 1
        counts["verified"] += c.verdict
        counts[c.status] += 1
    return {s: dict(c) for s, c in out.items()}


def describe_counts(counts: dict[str, int]) -> str:
    """``200 wrong, 56 truncated`` (the drop reasons, most common first)."""
    reasons = {k: v for k, v in counts.items() if k not in ("samples", "verified", KEPT) and v}
    return ", ".join(f"{v} {k}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])) or "none dropped"


def require_examples(candidates: list[Candidate], sampled: dict[str, str], round_: int) -> None:
    """Fail (with counts and the reason) when a sampled source kept nothing, or nothing at all was kept."""
    counts = source_counts(candidates)
    for name, label in sampled.items():
        got = counts.get(name, {})
        if got.get(KEPT, 0) == 0:
            raise SFTDataError(
                f"sft: source {name!r} ({label}) kept 0 of {got.get('samples', 0)} sampled traces in round {round_} "
                f"({describe_counts(got)}; {got.get('verified', 0)} passed the verifier): nothing from it to train on. "
                "Check the model it samples from, raise k or max_new_tokens, or drop the source"
            )
    if not any(c.status == KEPT for c in candidates):
        raise SFTDataError(f"sft: no training examples left in round {round_}: {_all_counts(counts)}")


def _all_counts(counts: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{s}: {c.get('samples', 0)} traces, {describe_counts(c)}" for s, c in counts.items())


def frame(candidates: list[Candidate]) -> pd.DataFrame:
    """The provenance table: one row per candidate trace, kept or not."""
    columns = [f.name for f in fields(Candidate)]
    return pd.DataFrame([asdict(c) for c in candidates], columns=columns)


def from_frame(table: pd.DataFrame) -> list[Candidate]:
    return [Candidate(**row) for row in table.to_dict("records")]
