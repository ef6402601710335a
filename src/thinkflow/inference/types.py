"""The one generation interface every stage uses: sampling settings in, samples out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class GenerationError(ValueError):
    """Bad generation settings or input, named in the message."""


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k filter
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()  # stop strings (excluded from the text, like vLLM)
    stop_token_ids: tuple[int, ...] = ()  # extra stop ids besides EOS (kept in token_ids)
    seed: int = 0
    ignore_eos: bool = False  # keep generating past EOS (fixed-length benchmarks)

    def validate(self) -> None:
        if self.n < 1:
            raise GenerationError(f"sampling n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise GenerationError(f"sampling temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"sampling top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise GenerationError(f"sampling top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise GenerationError(f"sampling max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if any(not s for s in self.stop):
            raise GenerationError("sampling stop strings must be non-empty")


@dataclass
class Sample:
    """One generated continuation of one prompt."""

    prompt_index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]  # log p(token) under the model's raw distribution (temperature 1)
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    gen_tokens: int = -1  # defaults to len(token_ids); API backends report a count without the ids
    # Environment episodes (envs.episodes): 1 where token_ids[i] was written by the model, 0 for the
    # environment's observations; and the episode's reward and counts.
    mask: list[int] | None = None
    env: dict | None = None

    def __post_init__(self) -> None:
        if self.gen_tokens < 0:
            self.gen_tokens = len(self.token_ids)


class Engine(Protocol):
    """What every backend (``hf``, ``vllm``, the compare stage's API engine) offers: ``n`` samples per prompt."""

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]: ...
