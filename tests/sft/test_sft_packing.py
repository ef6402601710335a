"""Packing: a batch packed into rows (block-diagonal causal mask, positions restarting per example) gives
the padded batch's loss and logits; rows never exceed the capacity."""

import pytest
import torch

from thinkflow.models import build_model_and_tokenizer
from thinkflow.sft.data import collate_packed, collate_padded, encode, model_inputs, pack_rows

MODEL = {
    "name": "t",
    "n_layers": 2,
    "d_model": 32,
    "n_heads": 4,
    "n_kv_heads": 2,
    "d_ff": 64,
    "max_seq_len": 64,
    "rope_theta": 10000.0,
    "tie_embeddings": True,
}
PROMPTS = ["12+7=", "3*4=", "100-1=", "5+5=", "987*6=", "1="]
COMPLETIONS = ["91 0>19", "12>12", "99>99", "01>10", "2 54 85>5922", "1>1"]


def _model(impl: str):
    model, tokenizer = build_model_and_tokenizer(MODEL, seed=0)
    model.set_attn_implementation(impl)
    return model.eval(), tokenizer


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_batch_gives_the_padded_loss(impl):
    model, tokenizer = _model(impl)
    examples = encode(tokenizer, PROMPTS, [[(c, True)] for c in COMPLETIONS])
    padded = collate_padded(examples, tokenizer.pad_token_id)
    packed = collate_packed(examples, tokenizer.pad_token_id, capacity=32)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # fewer rows: it packed something
    with torch.no_grad():
        loss_padded = model(**model_inputs(padded, model)).loss
        loss_packed = model(**model_inputs(packed, model)).loss
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-6)


def test_packed_examples_do_not_see_their_neighbours():
    """Changing one example's tokens changes no other example's logits in the same row."""
    model, tokenizer = _model("sdpa")
    examples = encode(tokenizer, PROMPTS[:2], [[(c, True)] for c in COMPLETIONS[:2]])
    batch = collate_packed(examples, tokenizer.pad_token_id, capacity=64)
    assert batch["input_ids"].shape[0] == 1  # both in one row
    first = (batch["segment_ids"][0] == batch["segment_ids"][0, 0]).nonzero().squeeze(-1)
    other = batch["segment_ids"][0] != batch["segment_ids"][0, 0]
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][0, other] = 3  # another example entirely
    with torch.no_grad():
        a = model(**{k: v for k, v in model_inputs(batch, model).items() if k != "labels"}).logits[0, first]
        b = model(**{k: v for k, v in model_inputs(changed, model).items() if k != "labels"}).logits[0, first]
    torch.testing.assert_close(a, b)


def test_rows_respect_the_capacity_and_hold_every_example_once():
    lengths = [30, 5, 17, 40, 8, 8, 1, 25]
    rows = pack_rows(lengths, capacity=40)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 40 for row in rows)
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([41], capacity=40)


def test_packing_refuses_an_attention_that_ignores_the_mask():
    from thinkflow.sft.data import packed_attention_mask

    with pytest.raises(ValueError, match="sft.packing=false"):
        packed_attention_mask(torch.zeros(1, 4, dtype=torch.long), "flash_attention_2", torch.float32)
