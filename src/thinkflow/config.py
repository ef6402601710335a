"""The validated shape of the resolved Hydra config.

Hydra composes ``conf/``; the result is resolved to a plain dict and validated here before any
compute. Unknown keys, wrong types and impossible values stop the run with a message that
names the key (``model.n_heads: ...``). Stage code receives these typed sections.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from thinkflow.tasks import TASKS


class ConfigError(ValueError):
    """The config is invalid; the message names every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class TaskConfig(_Strict):
    name: str
    difficulty: int = Field(3, ge=1)
    source: str | None = None  # GSM8K: hub id or local directory/JSONL
    n_test: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _known(self) -> TaskConfig:
        if self.name not in TASKS:
            raise ValueError(f"unknown task {self.name!r}; known tasks: {sorted(TASKS)}")
        return self


class ModelConfig(_Strict):
    name: str = "tiny"
    n_layers: int = Field(ge=1)
    d_model: int = Field(ge=8)
    n_heads: int = Field(ge=1)
    n_kv_heads: int = Field(ge=1)
    d_ff: int = Field(ge=1)
    max_seq_len: int = Field(ge=8)
    rope_theta: float = Field(10000.0, gt=0)
    tie_embeddings: bool = True

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dim d_model/n_heads={self.d_model // self.n_heads} must be even (RoPE)")
        return self


class PretrainConfig(_Strict):
    max_steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = Field(1.0, ge=0)
    eval_every: int = Field(ge=1)
    eval_max_new_tokens: int = Field(ge=1)
    ckpt_every: int = Field(ge=1)
    log_every: int = Field(10, ge=1)
    init_from: str | None = None  # an HF checkpoint directory to start from instead of scratch

    @model_validator(mode="after")
    def _schedule(self) -> PretrainConfig:
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be < max_steps={self.max_steps}")
        return self


class TrainerConfig(_Strict):
    accelerator: Literal["cpu", "gpu", "cuda", "auto"] = "cpu"
    devices: int | Literal["auto"] = 1
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32-true"
    num_threads: int | None = Field(None, ge=1)
    progress_bar: bool = True


class TrackingConfig(_Strict):
    uri: str | None = None
    experiment: str = Field("thinkflow", min_length=1)
    log_checkpoint: bool = True


class PathsConfig(_Strict):
    root: str = "."
    work_dir: str


class PipelineConfig(_Strict):
    seed: int = 0
    run_name: str | None = None
    paths: PathsConfig
    task: TaskConfig
    model: ModelConfig
    trainer: TrainerConfig
    tracking: TrackingConfig
    pretrain: PretrainConfig | None = None


def validate(config: dict) -> PipelineConfig:
    """Validate a resolved config dict; raise ConfigError naming each bad key."""
    try:
        return PipelineConfig.model_validate(config)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "<root>"
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {msg}" + (f" (got {e['input']!r})" if e["type"] != "missing" else ""))
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from None
