"""The machine's ceilings, measured once and cached: dense matmul FLOP/s and memory bandwidth.

The roofline of a pipeline run puts each phase against these two numbers. They are measured with
the torch threads this process uses (a stage on 2 processes x 1 thread sees a lower per-process
ceiling than this probe: the profile says which threads it measured). Cached per host, device,
torch version and thread count in ``~/.cache/thinkflow/machine-*.json`` (or ``profile.probe_cache``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import time
from pathlib import Path

import torch


def _device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    return names[0] if names else platform.processor() or "cpu"


def _timed(fn, min_seconds: float) -> float:
    """Seconds per call of ``fn`` (best of repeated batches after a warm-up)."""
    fn()
    best, reps = float("inf"), 1
    deadline = time.perf_counter() + min_seconds
    while time.perf_counter() < deadline:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / reps)
        reps = min(reps * 2, 64)
    return best


def measure(min_seconds: float = 0.5) -> dict:
    """Peak dense matmul FLOP/s (fp32 on CPU, bf16 on GPU) and copy bandwidth (bytes read + written / s)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    n = 4096 if dev == "cuda" else 1024
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    mm = _timed(lambda: torch.mm(a, b), min_seconds)
    elems = (256 if dev == "cuda" else 64) * 2**20 // 4  # 64 MiB (CPU) / 256 MiB (GPU) of fp32: past the caches
    src, dst = torch.randn(elems, device=dev), torch.empty(elems, device=dev)
    cp = _timed(lambda: dst.copy_(src), min_seconds)
    return {
        "peak_flops": 2 * n**3 / mm,
        "peak_bytes_per_s": 2 * elems * 4 / cp,
        "device": _device(),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "measured_at": time.time(),
    }


def machine_peaks(cache_dir: str | Path | None = None) -> dict:
    """The probe's figures for this machine and thread count, measured on first use and cached."""
    if cache_dir is None:
        cache_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "thinkflow"
    ident = "|".join([socket.gethostname(), _device(), torch.__version__, str(torch.get_num_threads())])
    path = Path(cache_dir) / f"machine-{hashlib.sha256(ident.encode()).hexdigest()[:12]}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass  # a torn file from a killed run: measure again
    peaks = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(peaks, indent=2))
    os.replace(tmp, path)
    return peaks
