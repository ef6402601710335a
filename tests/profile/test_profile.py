"""The compute ledger, the machine probe and the measured roofline points."""

from __future__ import annotations

import json

import pytest
import torch

from thinkflow.inference import SamplingParams
from thinkflow.inference.hf import HFEngine
from thinkflow.models.build import build_model_and_tokenizer
from thinkflow.profile.ledger import (
    ELEM_BYTES,
    TRAIN_BYTES_PER_WEIGHT_BYTE,
    generation_totals,
    phase,
    stage_ledger,
    training_totals,
)

CONFIGS = {  # two shapes, hand-counted below: MHA with untied dims, and GQA
    "mha": {
        "name": "a",
        "n_layers": 2,
        "d_model": 64,
        "n_heads": 4,
        "n_kv_heads": 4,
        "d_ff": 256,
        "max_seq_len": 64,
        "rope_theta": 10000.0,
        "tie_embeddings": True,
    },
    "gqa": {
        "name": "b",
        "n_layers": 3,
        "d_model": 96,
        "n_heads": 6,
        "n_kv_heads": 2,
        "d_ff": 192,
        "max_seq_len": 64,
        "rope_theta": 10000.0,
        "tie_embeddings": True,
    },
}


def _hand_flops_per_token(mc: dict, vocab: int) -> int:
    """2 x every weight a token multiplies: q, o (d x d), k, v (d x kv x head_dim), MLP 3 x d x ff, LM head."""
    d, hd = mc["d_model"], mc["d_model"] // mc["n_heads"]
    per_layer = 2 * d * d + 2 * d * mc["n_kv_heads"] * hd + 3 * d * mc["d_ff"]
    return 2 * (mc["n_layers"] * per_layer + vocab * d)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_flops_of_generation_and_training_match_a_hand_count(name):
    mc = CONFIGS[name]
    model, _ = build_model_and_tokenizer(mc)
    config, vocab = model.config, model.config.vocab_size
    dense = _hand_flops_per_token(mc, vocab)
    attn = 4 * mc["n_layers"] * mc["d_model"]  # per (token, key) pair: Q.K^T and the weighted sum of V
    # one prompt of 5 tokens shared by two samples of 3 and 1 generated tokens
    g = generation_totals(config, [5], [[3, 1]], seconds=1.0)
    prefill = 5 * dense + attn * (1 + 2 + 3 + 4 + 5)
    decode = 3 * dense + attn * (6 + 7 + 8) + 1 * dense + attn * 6
    assert g.flops == pytest.approx(prefill + decode)
    assert (g.tokens_processed, g.tokens_generated) == (5 + 4, 4)
    # training: 3 x forward (forward + backward) of each sequence
    t = training_totals(config, [4, 2], seconds=1.0)
    assert t.flops == pytest.approx(3 * (6 * dense + attn * (1 + 2 + 3 + 4) + attn * (1 + 2)))
    weights = (dense // 2) * ELEM_BYTES
    assert t.bytes == TRAIN_BYTES_PER_WEIGHT_BYTE * weights
    # the weights the matmuls read are the model's parameters less the norms (embedding tied to the head)
    n_params = sum(p.numel() for p in model.parameters())
    norms = (2 * mc["n_layers"] + 1) * mc["d_model"]
    assert dense // 2 == n_params - norms


def test_engine_generation_is_booked_in_the_current_ledger_under_its_phase():
    model, tokenizer = build_model_and_tokenizer(CONFIGS["mha"])
    engine = HFEngine(model, tokenizer)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=1)
    engine.generate(["12+3="], params)  # outside a ledger: nothing to book into, nothing fails
    with stage_ledger() as ledger:
        evaluated = engine.generate(["12+3=", "7*8="], params)
        with phase("rollout"):
            rolled = engine.generate(["5+5="], params)
    assert set(ledger.phases) == {"eval", "rollout"}
    ev, ro = ledger.phases["eval"], ledger.phases["rollout"]
    assert ev.tokens_generated == sum(s.gen_tokens for group in evaluated for s in group)
    assert ro.tokens_generated == sum(s.gen_tokens for s in rolled[0])
    expected = generation_totals(model.config, [rolled[0][0].prompt_tokens], [[s.gen_tokens for s in rolled[0]]], 0)
    assert ro.flops == pytest.approx(expected.flops) and ro.wall_s > 0


def test_machine_probe_is_measured_once_and_cached(tmp_path):
    from thinkflow.profile.probe import machine_peaks

    first = machine_peaks(tmp_path)
    assert first["peak_flops"] > 1e8 and first["peak_bytes_per_s"] > 1e8  # any machine this runs on
    assert first["threads"] == torch.get_num_threads()
    (cached,) = tmp_path.glob("machine-*.json")
    assert machine_peaks(tmp_path) == first == json.loads(cached.read_text())  # not measured again
    cached.write_text("{torn")  # a half-written file is measured again, not a crash
    assert machine_peaks(tmp_path)["measured_at"] > first["measured_at"]


def test_roofline_points_of_a_model_are_measured_and_consistent():
    from thinkflow.models.kv import kv_bytes_per_token
    from thinkflow.profile.kernels import measure_model

    model, tokenizer = build_model_and_tokenizer(CONFIGS["gqa"])
    points = {p["kind"]: p for p in measure_model(model, tokenizer)}
    assert set(points) == {"prefill", "decode b1", "decode b1 long", "decode b64", "decode b64 long", "train step"}
    for p in points.values():
        assert p["seconds"] > 0 and p["flops"] > 0 and p["intensity"] == pytest.approx(p["flops"] / p["bytes"])
        assert p["kv_bytes_per_token"] == kv_bytes_per_token(model.config)
    assert points["decode b1 long"]["context"] > points["decode b1"]["context"]
    # batching decode shares the weight reads: far higher arithmetic intensity than batch 1
    assert points["decode b64"]["intensity"] > 10 * points["decode b1"]["intensity"]
    assert points["prefill"]["intensity"] > points["decode b1"]["intensity"]
