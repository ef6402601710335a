"""Wall time of one sandboxed program: OS isolation (namespaces, new root, seccomp) against the
hook-only sandbox, interleaved in one run so machine noise hits both alike.

    python -m benchmarks.sandbox_overhead            # from the repo root, as root (OS isolation needs it)
"""

from __future__ import annotations

import statistics
import time

from benchmarks.common import machine_line, write_section
from thinkflow.envs import isolation, sandbox
from thinkflow.envs.sandbox import run_tests

PROGRAM = "def f(x):\n    return x * 3 + 1\n"
TESTS = ["f(0) == 1", "f(3) == 10", "f(-2) == -5"]


def main(rounds: int = 10, per_round: int = 20) -> None:
    if sandbox.os_problem():
        raise SystemExit(f"OS isolation is not available here: {sandbox.os_problem()}")
    times: dict[str, list[float]] = {"os": [], "hook": []}
    for _ in range(rounds):
        for mode in times:  # interleaved: os, hook, os, hook, ...
            t0 = time.perf_counter()
            for _ in range(per_round):
                assert run_tests(PROGRAM, TESTS, isolation=mode).reward == 1.0
            times[mode].append((time.perf_counter() - t0) / per_round * 1e3)
    med = {mode: statistics.median(ms) for mode, ms in times.items()}
    body = (
        f"Machine: {machine_line()}. Median over {rounds} rounds of {per_round} programs (a correct `f`, 3 tests): "
        f"OS isolation {med['os']:.1f} ms per program (rounds {min(times['os']):.1f}-{max(times['os']):.1f}), "
        f"hook only {med['hook']:.1f} ms ({min(times['hook']):.1f}-{max(times['hook']):.1f}); "
        f"ratio {med['os'] / med['hook']:.2f}. Interpreter start-up dominates both; the namespaces, "
        f"{len(isolation.layout().binds)} read-only binds, pivot_root and the seccomp filters cost the difference."
    )
    print(body)
    write_section(
        "sandbox_overhead",
        "## Code sandbox: OS isolation vs hook only (`python -m benchmarks.sandbox_overhead`)\n\n" + body,
    )


if __name__ == "__main__":
    main()
