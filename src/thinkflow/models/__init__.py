"""Model and tokenizer construction, HF-format checkpoints, and the analytic cost of a decoder config:
FLOPs per token (``flops``) and KV-cache bytes per token (``kv``)."""

from thinkflow.models.build import (
    CheckpointError,
    build_model,
    build_model_and_tokenizer,
    checkpoint_kind,
    load_checkpoint,
    n_params,
    resolve_source,
)
from thinkflow.models.tokenizer import build_char_tokenizer

__all__ = [
    "CheckpointError",
    "build_char_tokenizer",
    "build_model",
    "build_model_and_tokenizer",
    "checkpoint_kind",
    "load_checkpoint",
    "n_params",
    "resolve_source",
]
