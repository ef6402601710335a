import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from thinkflow.catalog import build_task
from thinkflow.models import (
    CheckpointError,
    build_char_tokenizer,
    build_model_and_tokenizer,
    checkpoint_kind,
    load_checkpoint,
)
from thinkflow.models.tokenizer import ALPHABET, BOS_ID

TINY = dict(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)


def test_tokenizer_round_trips_every_task_alphabet(gsm8k_dir):
    tok = build_char_tokenizer()
    texts = ["".join(ALPHABET), "  two  spaces\n\nnewlines\t"[:-1]]
    for name in ("addition", "countdown"):
        task = build_task(name, 3)
        texts += [p.prompt + task.completion(p) for p in task.splits(50, 10, 0)[1]]
    gsm = build_task("gsm8k", source=str(gsm8k_dir))
    texts += [p.prompt + gsm.completion(p) for p in gsm.splits(0, 20, 0)[1] if p.prompt.isascii() and p.trace.isascii()]
    for text in texts:
        ids = tok(text).input_ids
        assert ids[0] == BOS_ID and len(ids) == len(text) + 1
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_unknown_chars_map_to_unk_and_save_load(tmp_path):
    tok = build_char_tokenizer()
    assert tok("é", add_special_tokens=False).input_ids == [tok.unk_token_id]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("12+3=").input_ids == tok("12+3=").input_ids
    assert again.pad_token_id == tok.pad_token_id and again.eos_token_id == tok.eos_token_id


@pytest.mark.parametrize("kv", [4, 2, 1])  # MHA, GQA, MQA
def test_attention_variants_build_and_run(kv):
    model, tok = build_model_and_tokenizer(TINY | {"n_kv_heads": kv})
    assert model.config.num_key_value_heads == kv
    k_proj = model.model.layers[0].self_attn.k_proj
    assert k_proj.out_features == kv * (32 // 4)
    out = model(**tok(["12+3="], return_tensors="pt"))
    assert out.logits.shape == (1, 6, len(tok))


def test_checkpoint_round_trip_through_plain_transformers(tmp_path):
    model, tok = build_model_and_tokenizer(TINY, seed=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)  # no thinkflow code involved
    plain_tok = AutoTokenizer.from_pretrained(tmp_path)
    batch = plain_tok(["123+456=", "9+9="], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, plain(**batch).logits, atol=1e-6)


def test_load_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory or .gguf file, and not an org/name hub id"):
        load_checkpoint(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json missing"):
        load_checkpoint(tmp_path / "empty")
    model, tok = build_model_and_tokenizer(TINY)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        load_checkpoint(tmp_path)


def test_model_sources_are_a_directory_a_gguf_file_or_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert checkpoint_kind(tmp_path / "m.gguf") == "gguf" and checkpoint_kind("google/gemma-3-270m") == "hub"
    with pytest.raises(CheckpointError, match="is a file but not a .gguf model"):
        checkpoint_kind(tmp_path / "weights.bin")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # no hub: the error says what to do
    with pytest.raises(CheckpointError, match="a hub id needs a reachable hub, or a local copy"):
        load_checkpoint("google/gemma-3-270m")
    with pytest.raises(CheckpointError, match="m.gguf is unreadable"):  # not a real GGUF: named, not a traceback
        load_checkpoint(tmp_path / "m.gguf")


def test_a_gguf_of_an_architecture_transformers_cannot_load_is_named_before_loading(tmp_path):
    gguf = pytest.importorskip("gguf")  # the gemma extra (installed in CI)
    path = tmp_path / "encoder.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")  # a header with its architecture, no weights
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=r"encoder.gguf: a GGUF of architecture 'bert', which .* loads .*gemma3"):
        load_checkpoint(path)
