"""The ``sft`` section's schema (``conf/sft/default.yaml`` holds every value; no field has a default).

``sft.sources`` maps a name to a trace source; ``null`` drops one (``sft.sources.gold=null``). Every key of
a source is written out (``k: null`` where it does not apply), so a source's YAML is its whole definition.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from thinkflow.config import APIConfig, ContestantConfig, LoRAConfig, _Strict

SAMPLED = ("teacher", "self")  # kinds whose traces are sampled and filtered by the task's verifier


class SourceConfig(_Strict):
    """One trace source of ``sft.sources``."""

    kind: Literal["gold", "teacher", "self"]  # the task's own traces / a teacher's samples / the policy's own
    weight: float = Field(gt=0)  # share of training examples drawn from this source: weight / sum of weights
    k: int | None = Field(ge=1)  # teacher, self: samples per problem
    max_per_problem: int | None = Field(ge=1)  # verified, distinct traces kept per problem (null: all for gold)
    # teacher: an HF checkpoint directory, models:/NAME@ALIAS, "pretrain" (this pipeline's pretrain result), or any
    # compare contestant: {kind: openai | hf | gguf | thinkflow, ...} (an API through the client: cache, spend cap)
    teacher: str | ContestantConfig | None

    @model_validator(mode="after")
    def _kind(self) -> SourceConfig:
        if self.kind in SAMPLED and (self.k is None or self.max_per_problem is None):
            raise ValueError(f"kind={self.kind} samples traces: set k (samples per problem) and max_per_problem")
        if self.kind in SAMPLED and self.max_per_problem > self.k:
            raise ValueError(f"max_per_problem={self.max_per_problem} exceeds k={self.k} samples per problem")
        if self.kind == "gold" and self.k is not None:
            raise ValueError("kind=gold uses the task's own traces: k must be null")
        if (self.kind == "teacher") != (self.teacher is not None):
            raise ValueError(
                "teacher is set for kind=teacher (an HF checkpoint dir, models:/..., 'pretrain' or a contestant "
                "{kind: openai | hf | gguf | thinkflow, ...}) and only then"
            )
        return self


class SFTConfig(_Strict):
    init_from: str | None  # an HF checkpoint to start from; null: this pipeline's pretrain result
    sources: dict[str, SourceConfig | None]  # trace sources by name, mixed by weight; null drops one
    rounds: int = Field(ge=1)  # expert iteration: sample (self) -> filter -> train, this many times
    n_problems: int = Field(ge=1)  # training problems the sources draw from (after decontamination)
    max_steps: int = Field(ge=1)  # optimizer steps per round
    batch_size: int = Field(ge=1)  # examples per optimizer step
    lora: LoRAConfig | None  # null: full fine-tuning; else adapters only, merged into each round's export
    packing: bool  # pack a batch's examples into rows of up to the model context (no attention across them)
    lr: float = Field(gt=0)
    min_lr_ratio: float = Field(ge=0, le=1)
    warmup_steps: int = Field(ge=0)
    weight_decay: float = Field(ge=0)
    betas: tuple[float, float]
    grad_clip: float = Field(ge=0)
    temperature: float = Field(gt=0)  # teacher and self sampling
    top_p: float = Field(gt=0, le=1)
    max_new_tokens: int = Field(ge=1)  # per sampled trace; a trace cut off there is rejected
    backend: Literal["hf", "vllm"]  # engine for teacher and self sampling
    api: APIConfig  # API teachers: limits, retries, spend cap (per teacher and run), response cache
    eval_every: int = Field(ge=1)  # held-out val loss and greedy accuracy every N steps (and at each round's end)
    eval_max_new_tokens: int = Field(ge=1)
    ckpt_every: int = Field(ge=1)  # Lightning checkpoint (resume point) every N steps
    log_every: int = Field(ge=1)

    @property
    def active_sources(self) -> dict[str, SourceConfig]:
        return {name: s for name, s in self.sources.items() if s is not None}

    @model_validator(mode="after")
    def _check(self) -> SFTConfig:
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be < max_steps={self.max_steps}")
        if not self.active_sources:
            raise ValueError("sources is empty; declare at least one (see conf/sft/default.yaml)")
        has_self = any(s.kind == "self" for s in self.active_sources.values())
        if self.rounds > 1 and not has_self:
            raise ValueError(f"rounds={self.rounds} re-samples a kind=self source each round; with none, set rounds: 1")
        return self
