"""Where a stage's compute goes: FLOPs, tokens, analytic bytes and seconds, by phase.

The runner opens a ``Ledger`` around each stage (``stage_ledger``); whatever generates or trains
inside it records into it: every ``HFEngine`` / ``VLLMEngine`` generation call (``record_generation``,
phase ``eval`` unless a ``phase("rollout")`` block says otherwise) and the training loops
(``record_training``, phase ``train`` / ``learn``). FLOPs are analytic (``models.flops.FlopModel``:
2 x matmul params per token plus attention over the keys each token sees; training = 3 x forward).
Bytes are analytic too: the weights read once per forward step (decode reads them once per step
for the whole batch), the KV cache read by each decoded token, and for training the weights read
forward and backward plus gradient and AdamW state traffic (10 x weight bytes per optimizer step);
activations are left out, so training intensity is an upper bound.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from thinkflow.distributed.ranks import all_sum
from thinkflow.models.flops import FlopModel
from thinkflow.models.kv import kv_bytes_per_token

ELEM_BYTES = 4  # fp32 weights and cache on CPU; the GPU presets halve this (bf16): bytes are an estimate
PHASES = ("train", "rollout", "learn", "eval")  # what compute is booked under
TRAIN_BYTES_PER_WEIGHT_BYTE = 10  # fwd read + bwd read + grad write + AdamW (p, g, m, v read; p, m, v write)


@dataclass
class PhaseTotals:
    flops: float = 0.0
    bytes: float = 0.0
    tokens_processed: int = 0  # prefilled/trained tokens plus generated ones
    tokens_generated: int = 0
    wall_s: float = 0.0
    calls: int = 0

    def add(self, other: PhaseTotals) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


@dataclass
class Ledger:
    phases: dict[str, PhaseTotals] = field(default_factory=dict)
    default_phase: str = "eval"

    def add(self, phase: str, totals: PhaseTotals) -> None:
        self.phases.setdefault(phase, PhaseTotals()).add(totals)

    def as_dict(self) -> dict[str, dict]:
        return {name: asdict(t) for name, t in self.phases.items()}

    def reduce(self) -> Ledger:
        """Summed over ranks (every rank must call it; identity on one process). Wall seconds stay this
        rank's: ranks run side by side."""
        keys = [k for k in asdict(PhaseTotals()) if k != "wall_s"]
        unknown = set(self.phases) - set(PHASES)
        if unknown:
            raise ValueError(f"unknown compute phases {sorted(unknown)}; known: {PHASES}")
        mine = [self.phases.get(n, PhaseTotals()) for n in PHASES]
        flat = all_sum([float(getattr(t, k)) for t in mine for k in keys])
        out = Ledger(default_phase=self.default_phase)
        for i, (name, t) in enumerate(zip(PHASES, mine, strict=True)):
            vals = dict(zip(keys, flat[i * len(keys) : (i + 1) * len(keys)], strict=True))
            if vals["calls"] > 0:
                ints = {k: int(vals[k]) for k in ("tokens_processed", "tokens_generated", "calls")}
                out.phases[name] = PhaseTotals(**(vals | ints), wall_s=t.wall_s)
        return out


_CURRENT: contextvars.ContextVar[Ledger | None] = contextvars.ContextVar("thinkflow_ledger", default=None)
_PHASE: contextvars.ContextVar[str | None] = contextvars.ContextVar("thinkflow_phase", default=None)


def current() -> Ledger | None:
    return _CURRENT.get()


@contextmanager
def stage_ledger() -> Iterator[Ledger]:
    """A fresh ledger that this thread's generation and training calls record into."""
    ledger = Ledger()
    token = _CURRENT.set(ledger)
    try:
        yield ledger
    finally:
        _CURRENT.reset(token)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Generation inside the block is booked under ``name`` (e.g. ``rollout``) instead of ``eval``."""
    token = _PHASE.set(name)
    try:
        yield
    finally:
        _PHASE.reset(token)


def book(phase_name: str, totals: dict) -> None:
    """Add compute measured elsewhere (another process's ledger, ``as_dict`` form) to the current ledger."""
    ledger = current()
    if ledger is not None:
        ledger.add(phase_name, PhaseTotals(**totals))


def weight_bytes(flop_model: FlopModel) -> float:
    return flop_model.matmul_params * ELEM_BYTES


def generation_totals(config, prompt_lens: list[int], gen_lens: list[list[int]], seconds: float) -> PhaseTotals:
    """One generation call: per prompt its length and its samples' generated lengths (the prompt is
    prefilled once and shared by its samples, as the engines do)."""
    fm, kv = FlopModel.from_config(config), kv_bytes_per_token(config)
    flops = bytes_ = 0.0
    for p, gens in zip(prompt_lens, gen_lens, strict=True):
        flops += fm.tokens(1, p) + sum(fm.tokens(p + 1, g) for g in gens)
        bytes_ += kv * p  # prefill writes the prompt's keys and values
        bytes_ += sum(kv * (g * p + g * (g + 1) / 2) for g in gens)  # each decoded token reads its context
    steps = 1 + max((g for gens in gen_lens for g in gens), default=0)  # batched: weights once per step
    bytes_ += steps * weight_bytes(fm)
    generated = sum(sum(g) for g in gen_lens)
    return PhaseTotals(flops, bytes_, sum(prompt_lens) + generated, generated, seconds, 1)


def record_generation(config, prompt_lens: list[int], gen_lens: list[list[int]], seconds: float) -> None:
    ledger = current()
    if ledger is not None:
        ledger.add(_PHASE.get() or ledger.default_phase, generation_totals(config, prompt_lens, gen_lens, seconds))


def training_totals(config, seq_lens: list[int], seconds: float, optimizer_steps: int = 1) -> PhaseTotals:
    """Forward + backward (3 x forward FLOPs) over sequences of these lengths."""
    fm = FlopModel.from_config(config)
    flops = 3.0 * sum(fm.tokens(1, n) for n in seq_lens)
    bytes_ = optimizer_steps * TRAIN_BYTES_PER_WEIGHT_BYTE * weight_bytes(fm)
    return PhaseTotals(flops, bytes_, sum(seq_lens), 0, seconds, optimizer_steps)


def forward_totals(config, seq_lens: list[int], seconds: float) -> PhaseTotals:
    """A forward pass only (e.g. the reference model's log-probs): weights read once."""
    fm = FlopModel.from_config(config)
    flops = sum(fm.tokens(1, n) for n in seq_lens)
    return PhaseTotals(flops, weight_bytes(fm), sum(seq_lens), 0, seconds, 1)


def record_forward(phase_name: str, config, seq_lens: list[int], seconds: float) -> None:
    ledger = current()
    if ledger is not None:
        ledger.add(phase_name, forward_totals(config, seq_lens, seconds))


def record_training(phase_name: str, config, seq_lens: list[int], seconds: float, optimizer_steps: int = 1) -> None:
    ledger = current()
    if ledger is not None:
        ledger.add(phase_name, training_totals(config, seq_lens, seconds, optimizer_steps))


class PeakMemory:
    """Wall seconds, peak resident memory of this process and its children (sampled every ``interval``
    seconds), and peak GPU memory, between ``start()`` and ``stop()``."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self._proc, self._interval = psutil.Process(), interval
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="thinkflow-peak-rss")
        self._result: dict | None = None

    def _sample(self) -> None:
        import psutil

        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # exited between listing and reading
                total += child.memory_info().rss
        self.peak_rss = max(self.peak_rss, total)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def start(self) -> PeakMemory:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._sample()
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def stop(self) -> dict:
        """``{"wall_s", "peak_rss", "peak_gpu"}`` (bytes); later calls return the same figures."""
        if self._result is None:
            import torch

            wall = time.perf_counter() - self._t0
            self._stop.set()
            self._thread.join()
            self._sample()
            gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
            self._result = {"wall_s": wall, "peak_rss": self.peak_rss, "peak_gpu": gpu}
        return self._result
