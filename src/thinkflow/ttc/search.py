"""Step-level beam search guided by a process scorer.

A step is one space-delimited group of the trace (the answer after the delimiter is the last
step). Each of the ``width`` beams is extended by ``expand`` sampled next steps; candidates are
ranked by the process scorer, then by their log-probability, and the best ``width`` survive.
The scorer here is the task's exact step checker (``task.step_correct``): an *oracle* PRM, so
these points are an upper bound on what a learned PRM would reach with the same compute.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from thinkflow.inference import SamplingParams
from thinkflow.models.flops import FlopModel
from thinkflow.scaling.estimators import bootstrap_ci
from thinkflow.tasks import Problem, Task


def supports_search(task: Task) -> bool:
    return hasattr(task, "step_correct")


def _prm(task: Task, text: str, problem: Problem) -> float:
    """Share of the steps so far that are right, 0 after the first wrong one (oracle)."""
    steps = task.step_correct(text, problem)
    return float(all(steps)) if steps else 1.0


def beam_search(
    engine,
    task: Task,
    problems: list[Problem],
    width: int,
    expand: int,
    max_steps: int,
    step_tokens: int,
    seed: int = 0,
) -> tuple[list[str], list[int], list[float]]:
    """Per problem: the final completion, tokens generated, and each engine call's (prefix, samples' tokens)."""
    beams = [[("", 0.0)] for _ in problems]  # (partial completion, log-prob) per beam
    done: list[list[tuple[str, float]]] = [[] for _ in problems]
    gen_tokens = [0] * len(problems)
    calls: list[list[tuple[int, list[int]]]] = [[] for _ in problems]  # (prefix tokens, tokens per sample)
    for depth in range(max_steps):
        live = [(i, text, lp) for i, bs in enumerate(beams) for text, lp in bs]
        if not live:
            break
        params = SamplingParams(n=expand, temperature=1.0, max_new_tokens=step_tokens, stop=(" ",), seed=seed + depth)
        groups = engine.generate([problems[i].prompt + text for i, text, _ in live], params)
        candidates: list[list[tuple[float, float, str, bool]]] = [[] for _ in problems]
        for (i, text, lp), group in zip(live, groups, strict=True):
            calls[i].append((group[0].prompt_tokens, [s.gen_tokens for s in group]))
            for s in group:
                gen_tokens[i] += s.gen_tokens
                final = task.answer_delim in s.text or s.finish_reason == "length"
                new = text + s.text + ("" if final else " ")
                candidates[i].append((_prm(task, new, problems[i]), lp + sum(s.logprobs), new, final))
        for i, cands in enumerate(candidates):
            unique = {c[2]: c for c in cands}.values()  # identical partials are one beam
            best = sorted(unique, key=lambda c: (c[0], c[1]), reverse=True)[:width]
            done[i] += [(c[2], c[0] * 1e6 + c[1]) for c in best if c[3]]
            beams[i] = [(c[2], c[1]) for c in best if not c[3]]
    finals = [max(d, key=lambda x: x[1])[0] if d else (b[0][0] if b else "") for d, b in zip(done, beams, strict=True)]
    return finals, gen_tokens, calls


def search_points(
    engine,
    task: Task,
    problems: list[Problem],
    checkpoint: str,
    flop_model: FlopModel,
    widths: list[int],
    expand: int,
    max_steps: int,
    step_tokens: int,
    resamples: int = 1000,
) -> pd.DataFrame:
    rows = []
    for width in widths:
        finals, tokens, calls = beam_search(engine, task, problems, width, expand, max_steps, step_tokens)
        correct = np.array([task.verify(t, p) for t, p in zip(finals, problems, strict=True)], dtype=float)
        lo, hi = bootstrap_ci(correct, resamples)
        # each call prefills its prefix once (shared by its samples), then decodes every sample
        flops = [
            sum(flop_model.tokens(1, pt) + sum(flop_model.tokens(pt + 1, g) for g in gs) for pt, gs in c) for c in calls
        ]
        rows.append(
            {
                "checkpoint": checkpoint,
                "strategy": "beam_oracle_prm",
                "knob": width,
                "accuracy": float(correct.mean()),
                "ci_low": lo,
                "ci_high": hi,
                "n_problems": len(problems),
                "n_samples": width * expand,
                "gen_tokens": float(np.mean(tokens)),
                "thinking_tokens": float(np.mean(tokens)),
                "flops": float(np.mean(flops)),
            }
        )
    return pd.DataFrame(rows)
