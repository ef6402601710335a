"""Generate once, score many: N samples per problem, stored with everything a strategy needs."""

from __future__ import annotations

import time

import pandas as pd

from thinkflow.envs import sample_verdict, with_env
from thinkflow.inference import Sample, SamplingParams
from thinkflow.tasks import Problem, Task
from thinkflow.tasks.answers import split_thinking


def sample_table(
    engine, task: Task, problems: list[Problem], n: int, temperature: float, max_new_tokens: int, seed: int = 0
) -> tuple[pd.DataFrame, float]:
    """One row per (problem, sample): text, tokens, extracted answer, correctness, log-probs.

    Returns the table and the wall seconds generation took."""
    if not problems:
        raise ValueError("ttc: the problem set is empty")
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    t0 = time.perf_counter()
    groups = with_env(engine, task, problems).generate([p.prompt for p in problems], params)
    return sample_rows(task, problems, groups), time.perf_counter() - t0


def sample_rows(task: Task, problems: list[Problem], groups: list[list[Sample]]) -> pd.DataFrame:
    """The table of ``groups[i]`` (the samples of ``problems[i]``), answers extracted and verified;
    episodes add their reward, tool calls, environment seconds, turns and tokens processed."""
    rows = []
    for problem, group in zip(problems, groups, strict=True):
        for j, s in enumerate(group):
            answer = task.extract_answer(s.text)
            lp = sum(lp for lp, m in zip(s.logprobs, s.mask or [1] * len(s.logprobs), strict=True) if m)
            correct, reward = sample_verdict(task, problem, s)
            rows.append(
                {
                    "problem_id": problem.id,
                    "sample": j,
                    "text": s.text,
                    "prompt_tokens": s.prompt_tokens,
                    "gen_tokens": s.gen_tokens,
                    "answer": answer,
                    "has_answer": answer is not None,
                    "correct": bool(answer is not None and correct),
                    "reward": reward,
                    "logprob_sum": lp,
                    "logprob_mean": lp / max(1, s.gen_tokens),
                    "logprob_min": min(s.logprobs, default=0.0),
                }
                | (_episode_columns(s) if s.env is not None else {})
                | _answer_columns(task, problem, s)
            )
    return pd.DataFrame(rows)


def _answer_columns(task: Task, problem: Problem, s: Sample) -> dict:
    """Benchmarks with thinking delimiters: thinking and answer tokens apart (the thinking share of the
    generated tokens by characters: exact for a character-level tokenizer, an estimate otherwise); GSM8K's
    lenient verdict (boxed or last number when ``####`` is missing) beside the strict one."""
    out = {}
    if getattr(task, "thinking", None):
        thinking, answer = split_thinking(s.text, *task.thinking)
        share = len(thinking) / max(1, len(s.text))
        out["thinking_tokens"] = s.gen_tokens * share
        out["answer_tokens"] = s.gen_tokens - out["thinking_tokens"]
    if hasattr(task, "verify_lenient"):
        out["correct_lenient"] = bool(task.verify_lenient(s.text, problem))
    return out


def _episode_columns(s: Sample) -> dict:
    e = s.env
    return {
        "episode_tokens": len(s.token_ids) or s.gen_tokens,
        "turns": e["turns"],
        "tool_calls": e["tool_calls"],
        "grounded_calls": e["grounded_calls"],
        "invalid_actions": e["invalid_actions"],
        "sandbox_violations": e["sandbox_violations"],
        "env_s": e["step_seconds"],
    }
