"""bf16 where the hardware does it natively, fp32 elsewhere: ``trainer.precision=auto``.

CUDA GPUs that report bf16 support, and CPUs with AVX512-BF16 or AMX (``/proc/cpuinfo`` flags), run bf16
mixed precision (Lightning's ``bf16-mixed`` for training, ``torch.autocast`` for sampling); anything else
falls back to ``32-true``. The choice and its reason are recorded on the run.
"""

from __future__ import annotations

from pathlib import Path

import torch

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags known, so no bf16 claimed
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def bf16_support(accelerator: str) -> str | None:
    """Why bf16 is native here (``"cuda"``, ``"cpu: avx512_bf16"``), or None."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "cuda" if torch.cuda.is_bf16_supported() else None
    if accelerator in ("cpu", "auto"):
        found = [f for f in CPU_BF16_FLAGS if f in cpu_flags()]
        return f"cpu: {found[0]}" if found else None
    return None


def resolve_precision(requested: str, accelerator: str) -> tuple[str, str]:
    """(Lightning precision, why): ``auto`` becomes ``bf16-mixed`` where bf16 is native, else ``32-true``."""
    if requested != "auto":
        return requested, "set in trainer.precision"
    support = bf16_support(accelerator)
    if support:
        return "bf16-mixed", f"auto: native bf16 ({support})"
    return "32-true", f"auto: no native bf16 on this {accelerator} (fp32)"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype sampling should use alongside a Lightning precision (None: plain fp32)."""
    return torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None


def sampling_precision(requested: str, accelerator: str) -> tuple[str, torch.dtype | None]:
    """(precision, autocast dtype) for a stage that only samples (ttc, compare): the training precision's."""
    precision = resolve_precision(requested, accelerator)[0]
    return precision, autocast_dtype(precision)
