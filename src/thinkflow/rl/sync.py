"""How the learner's weights reach the rollout engine after every update.

``hf``: the engine runs in the learner's process over the learner's own parameters; "sync"
is building the engine's fused weight copies (and, under ZeRO-3, gathering the shards).
``vllm``: a vLLM server in its own venv samples; after an update the weights are saved in HF
format to the directory it serves and reloaded in place (no restart for untied embeddings).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from thinkflow.checkpoints import save_hf
from thinkflow.inference import HFEngine


class InProcessPolicy:
    def __init__(self, autocast: torch.dtype | None = None) -> None:
        self.autocast = autocast  # the training precision's dtype: rollouts sample as the learner computes

    def engine(self, model, tokenizer) -> tuple[HFEngine, float]:
        t0 = time.perf_counter()
        engine = HFEngine(model, tokenizer, autocast=self.autocast)
        return engine, time.perf_counter() - t0

    def mark_updated(self) -> None:
        """Nothing to do: the next engine() reads the live weights."""


class VLLMPolicy:
    """Single-process only (config validation enforces it)."""

    def __init__(self, server, engine, model_dir: Path) -> None:
        self.server, self._engine, self.model_dir = server, engine, Path(model_dir)
        self.stale = False

    def engine(self, model, tokenizer):
        sync_s = 0.0
        if self.stale:
            t0 = time.perf_counter()
            save_hf(model, tokenizer, self.model_dir)
            self.server.refresh_weights()
            sync_s, self.stale = time.perf_counter() - t0, False
        return self._engine, sync_s

    def mark_updated(self) -> None:
        self.stale = True
