import pytest
import torch

from thinkflow.inference import GenerationError, HFEngine, SamplingParams
from thinkflow.inference.budget import generate_with_budget
from thinkflow.inference.llama_fast import FastLlama
from thinkflow.models import build_model_and_tokenizer
from thinkflow.models.kv import kv_bytes_per_token

TINY = dict(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=128)
PROMPTS = ["0347*6=", "1234*5="]


@pytest.fixture
def engine():
    model, tok = build_model_and_tokenizer(TINY, seed=2)
    return HFEngine(model, tok)


def _bias(engine, token_ids: list[int], value: float):
    """Make the model strongly prefer (value > 0) or never emit (value = -inf) some tokens."""

    def hook(module, args, logits):
        logits[..., token_ids] = value if value == float("-inf") else logits[..., token_ids] + value
        return logits

    return engine.model.lm_head.register_forward_hook(hook)


def test_max_budget_cuts_at_exactly_b_and_still_answers(engine):
    tok = engine.tokenizer
    delim, eos = tok.convert_tokens_to_ids(">"), tok.eos_token_id
    specials = [tok.pad_token_id, tok.bos_token_id, tok.unk_token_id]
    handle = _bias(engine, [delim, eos, *specials], float("-inf"))  # a model that would think forever
    try:
        thinking = engine.generate(PROMPTS, SamplingParams(max_new_tokens=30))
        assert all(s.finish_reason == "length" for g in thinking for s in g)
        out = generate_with_budget(
            engine, PROMPTS, SamplingParams(n=3, temperature=1.0, seed=1), think_end=">", max_think=12, answer_tokens=5
        )
    finally:
        handle.remove()
    for group in out:
        assert len(group) == 3
        for s in group:
            assert s.thinking_tokens == 12 and s.forced_end
            think, _, answer = s.text.partition(">")
            assert len(tok(think, add_special_tokens=False).input_ids) == 12
            assert s.answer_tokens >= 1 and s.forced_tokens == 1  # the forced delimiter
            assert s.generated_tokens == 12 + s.answer_tokens


def test_min_budget_never_ends_thinking_early(engine):
    tok = engine.tokenizer
    delim = tok.convert_tokens_to_ids(">")
    handle = _bias(engine, [delim], 1e4)  # a model that wants to stop thinking at once
    try:
        natural = generate_with_budget(engine, PROMPTS, SamplingParams(), think_end=">", max_think=40)
        forced = generate_with_budget(
            engine, PROMPTS, SamplingParams(), think_end=">", min_think=10, max_think=40, cue="Wait"
        )
    finally:
        handle.remove()
    assert all(s.thinking_tokens == 0 and s.extensions == 0 for g in natural for s in g)
    for group in forced:
        for s in group:
            assert s.thinking_tokens >= 10 and s.extensions == 3  # 3 cues of 4 tokens each
            assert s.text.startswith("WaitWaitWait>")
            assert s.forced_tokens == 12  # the cues; the model wrote its own delimiter


def test_budget_bad_settings(engine):
    with pytest.raises(GenerationError, match="max_think"):
        generate_with_budget(engine, PROMPTS, SamplingParams(), think_end=">", max_think=0)
    with pytest.raises(GenerationError, match="min_think"):
        generate_with_budget(engine, PROMPTS, SamplingParams(), think_end=">", min_think=9, max_think=5)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # MHA, GQA, MQA
def test_kv_bytes_per_token_matches_the_cache_tensors(kv_heads):
    model, tok = build_model_and_tokenizer(TINY | {"n_kv_heads": kv_heads})
    analytic = kv_bytes_per_token(model.config, torch.float32)
    assert analytic == 2 * kv_heads * 8 * 2 * 4  # layers x kv heads x head dim x (K, V) x fp32
    # The fast path's preallocated cache
    cache = FastLlama(model).new_cache(batch=3, max_len=10)
    assert cache.nbytes() == analytic * 3 * 10
    # HF's own DynamicCache after a forward over 7 tokens
    out = model(**tok(["123456"], return_tensors="pt"), use_cache=True)
    layers = out.past_key_values.layers
    measured = sum(layer.keys.nelement() * layer.keys.element_size() * 2 for layer in layers)
    assert measured == analytic * 7


@pytest.mark.parametrize("kv_heads", [1, 2, 4])  # MQA, GQA, MHA
def test_fast_path_matches_hf_forward_with_left_padding(kv_heads):
    model, tok = build_model_and_tokenizer(TINY | {"n_kv_heads": kv_heads}, seed=4)
    prompts = ["1+1=", "0347*6=", "9,8,8,4:29="]
    fast = HFEngine(model, tok).generate(prompts, SamplingParams(max_new_tokens=15, ignore_eos=True))
    slow = HFEngine(model, tok, fast=False).generate(prompts, SamplingParams(max_new_tokens=15, ignore_eos=True))
    for f, s in zip(fast, slow, strict=True):
        assert f[0].token_ids == s[0].token_ids
        assert torch.allclose(torch.tensor(f[0].logprobs), torch.tensor(s[0].logprobs), atol=1e-4)
