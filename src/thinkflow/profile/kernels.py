"""Measured roofline points of one model on this machine: prefill, decode and a training step.

Each point is timed for real (best of a few repeats after a warm-up) and paired with its analytic
FLOPs and bytes (``ledger``): prefill of a batch of prompts, decode at batch 1 and 64 with a short
and a long context (the KV cache read per token is what separates MHA, GQA and MQA), and one AdamW
training step. Decode is timed as the difference of generating ``G`` and 1 tokens with the engine the
pipeline uses (EOS ignored), so prefill does not count in its tokens/s.
"""

from __future__ import annotations

import copy
import time

import torch

from thinkflow.inference import SamplingParams
from thinkflow.inference.hf import HFEngine
from thinkflow.models.flops import FlopModel
from thinkflow.models.kv import kv_bytes_per_token
from thinkflow.profile.ledger import generation_totals, training_totals, weight_bytes

DECODE_TOKENS = 32


def _best(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _prompt(tokenizer, length: int) -> str:
    """A prompt of exactly ``length`` tokens (any tokenizer: grown from a repeated character)."""
    text = "1" * length
    while len(tokenizer(text).input_ids) > length and text:
        text = text[:-1]
    return text


def _point(kind: str, totals, seconds: float, **extra) -> dict:
    return {
        "kind": kind,
        "flops": totals.flops,
        "bytes": totals.bytes,
        "seconds": seconds,
        "flops_per_s": totals.flops / seconds,
        "bytes_per_s": totals.bytes / seconds,
        "intensity": totals.flops / max(totals.bytes, 1.0),
        **extra,
    }


def decode_point(engine: HFEngine, batch: int, context: int, label: str) -> dict:
    config = engine.model.config
    prompts = [_prompt(engine.tokenizer, context)] * batch
    plen = len(engine.tokenizer(prompts[0]).input_ids)

    def gen(n_tokens: int):
        params = SamplingParams(n=1, temperature=1.0, max_new_tokens=n_tokens, ignore_eos=True, seed=0)
        return lambda: engine.generate(prompts, params)

    seconds = max(_best(gen(DECODE_TOKENS)) - _best(gen(1)), 1e-9)
    steps = DECODE_TOKENS - 1
    totals = generation_totals(config, [plen + 1] * batch, [[steps]] * batch, seconds)
    totals.flops -= batch * FlopModel.from_config(config).tokens(1, plen + 1)  # decode only, no prefill
    totals.bytes -= batch * kv_bytes_per_token(config) * (plen + 1) + weight_bytes(FlopModel.from_config(config))
    return _point(label, totals, seconds, batch=batch, context=plen, tokens_per_s=batch * steps / seconds)


def prefill_point(model, tokenizer, batch: int, length: int) -> dict:
    ids = torch.tensor([tokenizer(_prompt(tokenizer, length)).input_ids] * batch)

    @torch.inference_mode()
    def run():
        model(input_ids=ids, logits_to_keep=1)

    seconds = _best(run)
    totals = generation_totals(model.config, [ids.shape[1]] * batch, [[0]] * batch, seconds)
    return _point(
        "prefill", totals, seconds, batch=batch, context=ids.shape[1], tokens_per_s=batch * ids.shape[1] / seconds
    )


def train_point(model, tokenizer, batch: int, length: int) -> dict:
    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.tensor([tokenizer(_prompt(tokenizer, length)).input_ids] * batch)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    seconds = _best(step)
    totals = training_totals(model.config, [ids.shape[1]] * batch, seconds)
    return _point(
        "train step", totals, seconds, batch=batch, context=ids.shape[1], tokens_per_s=batch * ids.shape[1] / seconds
    )


LONG_CONTEXT = 1024


def measure_model(model, tokenizer) -> list[dict]:
    """The model's roofline points: prefill, decode (batch 1 and 64; short and long context), train step."""
    model = model.eval()
    max_len = model.config.max_position_embeddings
    # the longest context that leaves room for the decoded tokens, at most LONG_CONTEXT (a 32k-context model's
    # batch-64 decode at full length would take hours on a CPU and its KV cache tens of GB)
    long = min(max_len, LONG_CONTEXT) - DECODE_TOKENS - 1
    short = min(32, long // 2)
    engine = HFEngine(model, tokenizer)
    points = [prefill_point(model, tokenizer, 8, short)]
    for batch in (1, 64):
        points.append(decode_point(engine, batch, short, f"decode b{batch}"))
        points.append(decode_point(engine, batch, long, f"decode b{batch} long"))
    points.append(train_point(model, tokenizer, 8, short))
    for p in points:
        p["kv_bytes_per_token"] = kv_bytes_per_token(model.config)
    return points
