"""Sequential test-time compute: thinking budgets (budget forcing) and "Wait"-extension."""

from __future__ import annotations

import numpy as np
import pandas as pd

from thinkflow.inference import SamplingParams
from thinkflow.inference.budget import generate_with_budget
from thinkflow.models.flops import FlopModel
from thinkflow.scaling.estimators import bootstrap_ci
from thinkflow.tasks import Problem, Task

BUDGET_COLUMNS = (
    "checkpoint",
    "strategy",
    "knob",
    "accuracy",
    "ci_low",
    "ci_high",
    "n_problems",
    "n_samples",
    "thinking_tokens",
    "gen_tokens",
    "flops",
    "extensions",
)


def budget_points(
    engine,
    task: Task,
    problems: list[Problem],
    checkpoint: str,
    flop_model: FlopModel,
    max_new_tokens: int,
    budgets: list[int],
    wait_min_think: list[int],
    resamples: int = 1000,
    answer_tokens: int = 8,
) -> pd.DataFrame:
    """Greedy accuracy at each thinking budget (cut at B tokens, answer forced) and each minimum
    thinking length (end of thinking suppressed, "Wait" appended), with tokens and FLOPs."""
    prompts = [p.prompt for p in problems]
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    prompt_tokens = [len(ids) for ids in engine.tokenizer(prompts).input_ids]
    rows = []
    settings = [("budget", b, {"max_think": b}) for b in budgets]
    settings += [("wait", m, {"min_think": m, "max_think": m + answer_tokens}) for m in wait_min_think]
    for strategy, knob, kwargs in settings:
        out = generate_with_budget(
            engine, prompts, greedy, think_end=task.answer_delim, answer_tokens=answer_tokens, **kwargs
        )
        samples = [g[0] for g in out]
        correct = np.array([task.verify(s.text, p) for s, p in zip(samples, problems, strict=True)], dtype=float)
        lo, hi = bootstrap_ci(correct, resamples)
        flops = [flop_model.sequence(t, s.total_tokens) for t, s in zip(prompt_tokens, samples, strict=True)]
        rows.append(
            {
                "checkpoint": checkpoint,
                "strategy": strategy,
                "knob": knob,
                "accuracy": float(correct.mean()),
                "ci_low": lo,
                "ci_high": hi,
                "n_problems": len(problems),
                "n_samples": 1,
                "thinking_tokens": float(np.mean([s.thinking_tokens for s in samples])),
                "gen_tokens": float(np.mean([s.total_tokens for s in samples])),
                "flops": float(np.mean(flops)),
                "extensions": float(np.mean([s.extensions for s in samples])),
            }
        )
    return pd.DataFrame(rows, columns=list(BUDGET_COLUMNS))
