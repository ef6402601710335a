"""Peak memory of the RL learner's log-probs with a Gemma-sized vocabulary (262,144 tokens): the model's full
logits against the chunked LM head at completion positions only (``thinkflow.models.heads``), forward and
backward of one minibatch, each variant in a fresh process (peak RSS from the kernel), same inputs.

    python -m benchmarks.logprob_memory                          # from the repo root
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time

from benchmarks.common import machine_line, write_section

VOCAB, WIDTH, ROWS, PROMPT, COMPLETION = 262_144, 64, 16, 32, 64


def _run(variant: str, out) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from thinkflow.models.heads import chosen_logprobs, full_logprobs

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = AutoModelForCausalLM.from_config(config)
    ids = torch.randint(3, VOCAB, (ROWS, PROMPT + COMPLETION))
    attn = torch.ones_like(ids)
    mask = torch.zeros(ROWS, PROMPT + COMPLETION - 1)
    mask[:, PROMPT - 1 :] = 1
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if variant == "full":
        logp, _ = full_logprobs(model, ids, attn, with_entropy=True)
    else:
        logp, _ = chosen_logprobs(model, ids, attn, mask, with_entropy=True)
    (logp * mask).sum().backward()
    wall = time.perf_counter() - t0
    out.put((variant, base / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, wall))


def main() -> None:
    ctx = mp.get_context("spawn")
    rows = []
    for variant in ("full", "chunked"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(variant, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
    (_, _, full_peak, full_s), (_, base, chunk_peak, chunk_s) = rows
    logits_gb = ROWS * (PROMPT + COMPLETION - 1) * VOCAB * 4 / 1e9
    body = f"""## Log-probs with a 262k vocabulary: full logits vs chunked LM head

`python -m benchmarks.logprob_memory` ({machine_line()}). A 2-layer, {WIDTH}-wide Llama with Gemma 3's
vocabulary of {VOCAB:,} tokens; one minibatch of {ROWS} rows x ({PROMPT} prompt + {COMPLETION} completion)
tokens, log-probs and entropies of the completion tokens, forward and backward. Each variant in a fresh
process; peak RSS from the kernel (the model and inputs alone: {base:.0f} MB). The batch's fp32 logits alone
are {logits_gb:.2f} GB.

| variant | peak RSS | wall |
|---|---:|---:|
| full logits (`model(...).logits`, log-softmax over all positions) | {full_peak:,.0f} MB | {full_s:.2f} s |
| chunked head at completion positions, checkpointed | {chunk_peak:,.0f} MB | {chunk_s:.2f} s |

Peak RSS ratio full / chunked: {full_peak / chunk_peak:.1f}x. The RL learner takes the chunked path for
vocabularies of 32,768 tokens and more (`models.heads.LARGE_VOCAB`); the default character-level model keeps
the plain forward.
"""
    write_section("logprob_memory", body)
    print(body)


if __name__ == "__main__":
    main()
