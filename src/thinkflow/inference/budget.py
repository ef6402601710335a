"""Thinking budgets (s1-style budget forcing) on any backend that continues raw text.

- ``max_think``: thinking stops at B tokens; the answer delimiter is forced and the answer
  generated after it.
- ``min_think``: when the model ends its thinking (emits the delimiter or EOS) before B
  tokens, the end is suppressed and a continuation cue ("Wait") appended; thinking goes on.

Thinking tokens count everything in the thinking segment, cues included. Every token the
model generated, and every forced one, is counted in the result.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from thinkflow.inference.types import GenerationError, SamplingParams


@dataclass
class BudgetSample:
    prompt_index: int
    text: str  # thinking + delimiter + answer, forced text included
    thinking_tokens: int
    answer_tokens: int
    forced_tokens: int  # cue and delimiter tokens inserted by the budget controller
    generated_tokens: int  # tokens the model sampled (thinking + answer)
    extensions: int  # how many times the end of thinking was suppressed
    forced_end: bool  # thinking was cut at max_think

    @property
    def total_tokens(self) -> int:
        return self.generated_tokens + self.forced_tokens


@dataclass
class _Seq:
    prompt_index: int
    prompt: str
    thinking: str = ""
    thinking_tokens: int = 0
    forced: int = 0
    generated: int = 0
    extensions: int = 0
    forced_end: bool = False
    model_ended: bool = False  # the model wrote the delimiter itself


def generate_with_budget(
    engine,
    prompts: list[str],
    params: SamplingParams,
    think_end: str,
    max_think: int | None = None,
    min_think: int = 0,
    cue: str = "Wait",
    answer_tokens: int = 16,
    max_rounds: int = 8,
) -> list[list[BudgetSample]]:
    """``params.n`` budget-controlled samples per prompt; ``params.max_new_tokens`` bounds
    thinking when ``max_think`` is None."""
    params.validate()
    if max_think is not None and max_think < 1:
        raise GenerationError(f"max_think must be >= 1 or None, got {max_think}")
    if min_think < 0 or (max_think is not None and min_think > max_think):
        raise GenerationError(f"min_think must be in [0, max_think], got {min_think} (max_think={max_think})")
    if not think_end:
        raise GenerationError("budget forcing needs the task's thinking delimiter (think_end)")
    tok = engine.tokenizer
    count = lambda text: len(tok(text, add_special_tokens=False).input_ids)  # noqa: E731
    limit = max_think if max_think is not None else params.max_new_tokens
    seqs = [_Seq(i, p) for i, p in enumerate(prompts) for _ in range(params.n)]
    active = list(seqs)
    for round_ in range(max_rounds):
        if not active:
            break
        budget = max(limit - s.thinking_tokens for s in active)
        step = replace(params, n=1, max_new_tokens=budget, stop=(think_end,), seed=params.seed + round_)
        outs = engine.generate([s.prompt + s.thinking for s in active], step)
        still = []
        for s, (out,) in zip(active, outs, strict=True):
            room = limit - s.thinking_tokens
            ids = out.token_ids[:room]
            ended = out.finish_reason == "stop" and len(out.token_ids) <= room
            text = out.text if ended else tok.decode(ids, skip_special_tokens=True)
            hit_delim = ended and think_end in tok.decode(ids, skip_special_tokens=True)
            s.thinking += text
            s.generated += len(ids)
            # Tokens the model spent thinking: all it sampled, less its own delimiter or EOS.
            s.thinking_tokens += len(ids) - ((count(think_end) if hit_delim else 1) if ended else 0)
            if (
                ended
                and s.thinking_tokens < min_think
                and s.thinking_tokens + count(cue) <= limit
                and round_ + 1 < max_rounds
            ):
                s.thinking += cue  # suppress the end of thinking: keep going
                n_cue = count(cue)
                s.thinking_tokens += n_cue
                s.forced += n_cue
                s.extensions += 1
                still.append(s)
            else:
                s.forced_end = not ended
                s.model_ended = hit_delim
        active = still
    return _answer(engine, seqs, params, think_end, answer_tokens, count, len(prompts))


def _answer(engine, seqs, params, think_end, answer_tokens, count, n_prompts) -> list[list[BudgetSample]]:
    """Force the delimiter after every thinking segment, then generate the answers."""
    answer_params = replace(params, n=1, max_new_tokens=answer_tokens, stop=("\n",), seed=params.seed + 1000)
    outs = engine.generate([s.prompt + s.thinking + think_end for s in seqs], answer_params)
    grouped: list[list[BudgetSample]] = [[] for _ in range(n_prompts)]
    for s, (out,) in zip(seqs, outs, strict=True):
        grouped[s.prompt_index].append(
            BudgetSample(
                prompt_index=s.prompt_index,
                text=s.thinking + think_end + out.text,
                thinking_tokens=s.thinking_tokens,
                answer_tokens=out.gen_tokens,
                forced_tokens=s.forced + (0 if s.model_ended else count(think_end)),
                generated_tokens=s.generated + out.gen_tokens,
                extensions=s.extensions,
                forced_end=s.forced_end,
            )
        )
    return grouped
