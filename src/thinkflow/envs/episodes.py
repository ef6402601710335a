"""Episodes through any generation engine: every sample is a whole multi-turn episode.

``EnvEngine`` wraps an engine (``hf``, ``vllm``, an API client) and keeps its interface
(``generate(prompts, params) -> list[list[Sample]]``), so every stage that samples (RL rollouts,
held-out evaluation, ``ttc``'s sample table and verifier, ``compare``) runs episodes just by
wrapping its engine with ``with_env``. Per turn, every live episode is advanced in one batched
``generate`` call: the first turn with ``n`` samples per prompt (one prefill, KV shared), later
turns on the prompt + transcript so far (the hf backend prefills it again; vLLM's prefix cache
reuses it). The episode's token budget is ``params.max_new_tokens`` of model-written tokens.

An episode comes back as one ``Sample``: ``text`` is the transcript after the prompt (model turns
and observations), ``token_ids`` / ``logprobs`` cover all of it with ``mask`` = 1 on the
model's tokens and 0 on observation tokens (log-prob 0, never trained on), ``gen_tokens`` counts
the model's tokens, and ``env`` holds the reward and the episode's counts.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from thinkflow.envs.base import Environment, EnvTask, StepResult
from thinkflow.inference.types import GenerationError, Sample, SamplingParams
from thinkflow.tasks.base import Problem, Task


@dataclass
class _Episode:
    prompt_index: int
    prompt: str | tuple
    env: Environment
    prompt_tokens: int = 0
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    model_tokens: int = 0
    turns_chat: tuple = ()  # (("assistant", action), ("user", observation), ...) for chat prompts
    last_action: str = ""
    reward: float = 0.0
    done: bool = False
    end: str = ""

    def context(self):
        if isinstance(self.prompt, tuple):
            return (*self.prompt, *self.turns_chat)
        return self.prompt + self.env.transcript


class EnvEngine:
    """An engine whose samples are episodes of ``task``'s environment on registered problems."""

    def __init__(self, engine, task: EnvTask, problems: list[Problem]) -> None:
        self.engine, self.task = engine, task
        self._by_prompt = {p.prompt.strip(): p for p in problems}

    def __getattr__(self, name: str):  # tokenizer, model, max_len, ... of the wrapped engine
        return getattr(self.engine, name)

    def problem_for(self, prompt) -> Problem:
        """The problem a prompt asks: the task's own prompt, or one rendered for another model (few-shot
        text ending with it, or a chat whose last turn is it)."""
        key = (prompt[-1][1] if isinstance(prompt, tuple) else prompt).strip()
        if key in self._by_prompt:
            return self._by_prompt[key]
        if isinstance(prompt, str):
            for own, problem in self._by_prompt.items():
                if key.endswith(own):
                    return problem
        raise GenerationError(f"{self.task.name}: no problem registered for the prompt {key[-60:]!r}")

    def generate(self, prompts: list, params: SamplingParams) -> list[list[Sample]]:
        params.validate()
        if not prompts:
            raise GenerationError("generate needs at least one prompt, got an empty list")
        episodes = []
        for i, prompt in enumerate(prompts):
            problem = self.problem_for(prompt)
            for _ in range(params.n):
                env = self.task.make_env()
                env.reset(problem)
                episodes.append(_Episode(i, prompt, env))
        try:
            self._run(list(prompts), episodes, params)
        except Exception as err:  # e.g. an API spend cap: what it carries becomes the finished episodes
            if hasattr(err, "results"):
                err.results = self._groups(episodes, len(prompts), params.n, finished_only=True)
            raise
        return self._groups(episodes, len(prompts), params.n)

    def _run(self, prompts: list, episodes: list[_Episode], params: SamplingParams) -> None:
        stop = tuple(dict.fromkeys((*params.stop, *episodes[0].env.stop)))
        first = self.engine.generate(prompts, replace(params, stop=stop))
        pairs = list(zip(episodes, [s for g in first for s in g], strict=True))
        for ep, s in pairs:
            ep.prompt_tokens = s.prompt_tokens
        self._advance_all(pairs, params)
        turn = 1
        while live := [e for e in episodes if not e.done]:
            for budget, group in self._by_budget(live, params).items():
                out = self.engine.generate(
                    [e.context() for e in group],
                    replace(params, n=1, stop=stop, max_new_tokens=budget, seed=params.seed + 7919 * turn),
                )
                self._advance_all([(ep, s) for ep, (s,) in zip(group, out, strict=True)], params)
            turn += 1

    def _groups(self, episodes: list[_Episode], n_prompts: int, n: int, finished_only: bool = False) -> list:
        groups = [episodes[i * n : (i + 1) * n] for i in range(n_prompts)]
        return [[self._sample(e) for e in g] if not finished_only or all(e.done for e in g) else [] for g in groups]

    def _by_budget(self, live: list[_Episode], params: SamplingParams) -> dict[int, list[_Episode]]:
        """Live episodes grouped by how many tokens their next turn may take (token budget left, and room in
        the model's context); episodes with none left end here."""
        groups: dict[int, list[_Episode]] = {}
        max_len = getattr(self.engine, "max_len", None)
        for ep in live:
            budget = params.max_new_tokens - ep.model_tokens
            if max_len and isinstance(ep.prompt, str):
                budget = min(budget, max_len - ep.prompt_tokens - len(ep.ids))
            if budget < 1:
                self._end(ep, "budget")
            else:
                groups.setdefault(budget, []).append(ep)
        return groups

    def _advance_all(self, pairs: list[tuple[_Episode, Sample]], params: SamplingParams) -> None:
        """One model turn into each episode, then every environment's step (in threads when the task's steps
        wait on other processes, e.g. the code sandbox), then the observations back into the episodes."""
        actions = [self._take_turn(ep, s) for ep, s in pairs]
        work = [(ep, a) for (ep, _), a in zip(pairs, actions, strict=True)]
        if self.task.parallel_steps and len(work) > 1:
            with ThreadPoolExecutor(max_workers=min(len(work), os.cpu_count() or 1)) as pool:
                results = list(pool.map(lambda pair: self._env_step(*pair), work))
        else:
            results = [self._env_step(ep, a) for ep, a in work]
        for (ep, s), result in zip(pairs, results, strict=True):
            self._observe(ep, result, bool(s.token_ids), params)

    def _take_turn(self, ep: _Episode, s: Sample) -> str:
        if s.token_ids:
            action = self.tokenizer.decode(s.token_ids, skip_special_tokens=True)  # the stop string included
        else:
            action = ep.env.completed(s.text, s.finish_reason == "stop")
        ep.ids += s.token_ids
        ep.logprobs += s.logprobs
        ep.mask += [1] * len(s.token_ids)
        ep.model_tokens += s.gen_tokens
        ep.last_action = action
        return action

    @staticmethod
    def _env_step(ep: _Episode, action: str) -> StepResult:
        t0 = time.perf_counter()
        result = ep.env.step(action)
        ep.env.stats.step_seconds += time.perf_counter() - t0
        return result

    def _observe(self, ep: _Episode, result: StepResult, tokens: bool, params: SamplingParams) -> None:
        obs, reward, done, _ = result
        ep.reward = reward
        if done:
            self._end(ep, "done")
            return
        if obs and tokens:
            obs_ids = self.tokenizer(obs, add_special_tokens=False).input_ids
            ep.ids += obs_ids
            ep.logprobs += [0.0] * len(obs_ids)
            ep.mask += [0] * len(obs_ids)
        ep.turns_chat += (("assistant", ep.last_action), ("user", obs))
        if ep.model_tokens >= params.max_new_tokens:
            self._end(ep, "budget")

    def _end(self, ep: _Episode, why: str) -> None:
        if why != "done":
            ep.reward = ep.env.final_reward()
        ep.done, ep.end = True, why

    def _sample(self, ep: _Episode) -> Sample:
        st = ep.env.stats
        info = {
            "reward": ep.reward,
            "end": ep.end,
            "turns": st.turns,
            "tool_calls": st.tool_calls,
            "grounded_calls": st.grounded_calls,
            "invalid_actions": st.invalid_actions,
            "sandbox_violations": st.sandbox_violations,
            "violations": list(st.violations),
            "step_seconds": st.step_seconds,
        }
        return Sample(
            ep.prompt_index,
            ep.env.transcript,
            ep.ids,
            ep.logprobs,
            "stop" if ep.end == "done" else "length",
            ep.prompt_tokens,
            ep.model_tokens,
            mask=ep.mask or None,
            env=info,
        )


def with_env(engine, task: Task, problems: list[Problem]):
    """``engine`` itself for plain tasks; for environment tasks, an ``EnvEngine`` over ``problems``."""
    return EnvEngine(engine, task, problems) if isinstance(task, EnvTask) else engine


def sample_verdict(task: Task, problem: Problem, sample: Sample) -> tuple[bool, float]:
    """(correct, reward) of one sample: an episode's own reward (1 = solved), else the task's verifier."""
    if sample.env is not None:
        reward = float(sample.env["reward"])
        return reward >= 1.0, reward
    ok = bool(task.verify(sample.text, problem))
    return ok, float(ok)


def env_metrics(samples: list[Sample], prefix: str = "env/") -> dict[str, float]:
    """The ``env/*`` means over a batch of episodes (empty for plain samples)."""
    infos = [s.env for s in samples if s.env is not None]
    if not infos:
        return {}
    n = len(infos)
    calls = sum(i["tool_calls"] for i in infos)
    invalid = sum(i["invalid_actions"] for i in infos)
    return {
        f"{prefix}turns": sum(i["turns"] for i in infos) / n,
        f"{prefix}tool_calls_per_episode": calls / n,
        f"{prefix}invalid_action_rate": invalid / max(1, sum(i["turns"] for i in infos)),
        f"{prefix}well_formed_call_frac": calls / (calls + invalid) if calls + invalid else 1.0,
        f"{prefix}grounded_call_frac": sum(i["grounded_calls"] for i in infos) / calls if calls else 1.0,
        f"{prefix}sandbox_violations": float(sum(i["sandbox_violations"] for i in infos)),
        f"{prefix}step_seconds": sum(i["step_seconds"] for i in infos) / n,
        f"{prefix}reward_mean": sum(i["reward"] for i in infos) / n,
    }


def transcripts_markdown(title: str, rows: list[dict], limit: int = 32) -> str:
    """Sample episodes as markdown (an MLflow artifact): each row's ``prompt`` + ``completion`` (the
    transcript) in a block, its other fields (reward, counts) above it."""
    lines = [f"# {title}", ""]
    for row in rows[:limit]:
        facts = ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in row.items()
            if k not in ("prompt", "completion")
        )
        lines += [f"- {facts}", "", "```", f"{row['prompt']}{row['completion']}", "```", ""]
    return "\n".join(lines)
