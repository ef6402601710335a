"""API client throughput: 500 requests against a local OpenAI-compatible server with 200 ms latency,
concurrency 32 against sequential, with a requests-per-minute limit measured at the server.

    python -m benchmarks.api_throughput [--requests 500] [--latency 0.2] [--concurrency 32] [--rpm 6000]

Target: concurrent at least 20x faster than sequential, and the server never sees more requests in
any one-second window than the limit allows (bucket capacity + one second's refill).
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.common import machine_line, write_section
from tests.compare.openai_server import ScriptedOpenAIServer
from thinkflow.api.client import APIClient, Call, Endpoint, Limits

KEY_ENV = "THINKFLOW_BENCH_API_KEY"


def run(requests: int, latency: float, concurrency: int, rpm: float) -> tuple[float, int, int]:
    """(wall seconds, paid calls, max requests the server saw in any 1 s window)."""
    with ScriptedOpenAIServer({}, latency_s=latency, api_key=os.environ[KEY_ENV]) as server:
        client = APIClient(
            Endpoint(server.base_url, "scripted", KEY_ENV, "completions"),
            Limits(concurrency=concurrency, requests_per_minute=rpm, tokens_per_minute=None),
        )
        calls = [
            Call(f"Question: request {i}\nAnswer:", max_tokens=16, temperature=1.0, seed=i) for i in range(requests)
        ]
        t0 = time.perf_counter()
        results = client.run(calls)
        wall = time.perf_counter() - t0
        assert all(r is not None for r in results) and server.duplicates == 0
        return wall, sum(server.paid.values()), server.max_in_window(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rpm", type=float, default=6000)
    args = parser.parse_args()
    os.environ.setdefault(KEY_ENV, "sk-benchmark")
    seq, seq_paid, seq_peak = run(args.requests, args.latency, 1, args.rpm)
    con, con_paid, con_peak = run(args.requests, args.latency, args.concurrency, args.rpm)
    per_s = args.rpm / 60
    allowed = int(max(1, per_s) + per_s)
    body = "\n".join(
        [
            f"Machine: {machine_line()}. {args.requests} requests to the scripted OpenAI-compatible server "
            f"(`tests/compare/openai_server.py`) answering after {args.latency * 1000:.0f} ms; client limit "
            f"{args.rpm:.0f} requests/min (a bucket of {per_s:.0f} refilled at {per_s:.0f}/s).",
            "",
            "| client | wall s | requests/s | paid calls | max requests in any 1 s at the server |",
            "|---|---:|---:|---:|---:|",
            f"| sequential (concurrency 1) | {seq:.1f} | {args.requests / seq:.1f} | {seq_paid} | {seq_peak} |",
            f"| concurrency {args.concurrency} | {con:.1f} | {args.requests / con:.1f} | {con_paid} | {con_peak} |",
            "",
            f"Speed-up **{seq / con:.1f}x** (target >= 20x); the limit allows at most {allowed} requests in any "
            f"second and the server saw at most {con_peak}.",
        ]
    )
    print(body)
    write_section("api_throughput", "## API client throughput (`python -m benchmarks.api_throughput`)\n\n" + body)


if __name__ == "__main__":
    main()
