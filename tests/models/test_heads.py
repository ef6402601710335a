"""Chunked log-probs through the LM head (models.heads): the same values, entropies and gradients as the model's
own forward at the completion positions, for a plain head and for Gemma's soft-capped one; the RL learner takes
that path for large vocabularies, including through a LoRA policy's adapters-off view."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig

from thinkflow.models import heads
from thinkflow.models.heads import LARGE_VOCAB, chosen_logprobs, full_logprobs
from thinkflow.models.lora import AdaptersOff, apply_lora
from thinkflow.rl.rollout import RolloutBatch, token_logprobs

VOCAB = 40_000  # above the learner's LARGE_VOCAB: the chunked path


def _model(kind: str):
    common = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    }
    if kind == "gemma":  # soft-capped logits (Gemma 2 style), sliding and global layers
        config = Gemma3TextConfig(**common, head_dim=8, sliding_window=8, final_logit_softcapping=3.0)
    else:
        config = LlamaConfig(**common)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, 12))
    attn = torch.ones_like(ids)
    attn[2, 9:] = 0  # a right-padded row
    mask = torch.zeros(3, 11)
    mask[0, 4:11], mask[1, 6:9], mask[2, 3:8] = 1, 1, 1  # completion positions
    return ids, attn, mask


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_chunked_logprobs_equal_the_forward_at_completion_positions(kind, monkeypatch):
    monkeypatch.setattr(heads, "CHUNK_ELEMENTS", 5 * VOCAB)  # several chunks of 5 rows
    model = _model(kind)
    ids, attn, mask = _batch()
    got, got_h = chosen_logprobs(model, ids, attn, mask, with_entropy=True)
    assert heads._CHECKED[id(model.config)] is True  # the chunked path itself, not the fallback
    want, want_h = full_logprobs(model, ids, attn, with_entropy=True)
    assert torch.allclose(got * mask, want * mask, atol=1e-5) and torch.allclose(got_h * mask, want_h * mask, atol=1e-4)
    assert not got[mask == 0].any()
    # the same gradient, through the checkpointed chunks
    (got * mask).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (want * mask).sum().backward()
    for g, p in zip(grads, model.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-5)


def test_the_learner_uses_it_for_large_vocabularies_and_through_adapters_off():
    assert VOCAB >= LARGE_VOCAB
    model = apply_lora(_model("llama"), r=2, alpha=4, dropout=0.0, target_modules=["q_proj"], where="t")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids, attn, mask = _batch()
    batch = RolloutBatch(ids, attn, mask, torch.zeros_like(mask), torch.arange(3))
    on = token_logprobs(model, batch)
    off = token_logprobs(AdaptersOff(model), batch)
    with model.disable_adapter():
        want_off, _ = full_logprobs(model, ids, attn, with_entropy=False)
    want_on, _ = full_logprobs(model, ids, attn, with_entropy=False)
    assert torch.allclose(off * mask, want_off * mask, atol=1e-5) and torch.allclose(
        on * mask, want_on * mask, atol=1e-5
    )
    assert not torch.allclose(on * mask, off * mask, atol=1e-3)
