"""Cost of the compute ledger on the generation hot path: booking one generate call of the default
model (64 prompts x 16 samples) against generating it.

    python -m benchmarks.ledger_overhead                         # from the repo root
"""

from __future__ import annotations

import time

from benchmarks.common import machine_line, write_section
from thinkflow.inference import SamplingParams
from thinkflow.inference.hf import HFEngine
from thinkflow.models.build import build_model_and_tokenizer
from thinkflow.profile.ledger import generation_totals


def main() -> None:
    model, tokenizer = build_model_and_tokenizer(
        {"name": "tiny", "n_layers": 4, "d_model": 128, "n_heads": 4, "n_kv_heads": 4, "d_ff": 512, "max_seq_len": 64}
    )
    engine = HFEngine(model, tokenizer)
    prompts = [f"{1000 + i}*7=" for i in range(64)]
    params = SamplingParams(n=16, temperature=1.0, max_new_tokens=24, ignore_eos=True, seed=0)
    engine.generate(prompts, params)  # warm-up
    t0 = time.perf_counter()
    samples = engine.generate(prompts, params)
    gen_s = time.perf_counter() - t0
    plens, glens = [g[0].prompt_tokens for g in samples], [[s.gen_tokens for s in g] for g in samples]
    t0 = time.perf_counter()
    for _ in range(100):
        generation_totals(model.config, plens, glens, gen_s)
    book_s = (time.perf_counter() - t0) / 100
    body = (
        f"Machine: {machine_line()}. One generate call, 64 prompts x 16 samples x 24 tokens of the default "
        f"model: {gen_s:.2f} s; booking it in the ledger: {book_s * 1e3:.2f} ms ({book_s / gen_s:.3%} of the call)."
    )
    print(body)
    write_section(
        "ledger_overhead",
        "## Compute ledger on the generation path (`python -m benchmarks.ledger_overhead`)\n\n" + body,
    )


if __name__ == "__main__":
    main()
