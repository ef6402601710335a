import pytest
import torch

from thinkflow.inference import GenerationError, HFEngine, SamplingParams
from thinkflow.inference.hf import _pick
from thinkflow.models import build_model_and_tokenizer
from thinkflow.models.heads import LARGE_VOCAB

TINY = dict(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)
PROMPTS = ["123+456=", "9+9=", "77+1=", "5,3,2:10="]


@pytest.fixture(scope="module")
def engine():
    model, tok = build_model_and_tokenizer(TINY, seed=1)
    return HFEngine(model, tok)


def test_greedy_matches_transformers_generate(engine):
    tok, model = engine.tokenizer, engine.model
    ours = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12))
    for i, prompt in enumerate(PROMPTS):  # one at a time: no padding in the reference
        enc = tok(prompt, return_tensors="pt")
        ref = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        want = ref[0, enc.input_ids.shape[1] :].tolist()
        got = ours[i][0].token_ids
        assert got == want[: len(got)]
        assert len(got) == len(want) or got[-1] == tok.eos_token_id


def test_seeded_sampling_is_reproducible_and_seed_sensitive(engine):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=10, seed=5)
    a = engine.generate(PROMPTS[:2], params)
    b = engine.generate(PROMPTS[:2], params)
    c = engine.generate(PROMPTS[:2], SamplingParams(n=4, temperature=1.0, max_new_tokens=10, seed=6))
    texts = lambda out: [s.token_ids for g in out for s in g]  # noqa: E731
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)
    assert [len(g) for g in a] == [4, 4] and [s.prompt_index for s in a[1]] == [1] * 4


def test_logprobs_equal_a_forward_pass(engine):
    out = engine.generate(PROMPTS, SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=2))
    tok, model = engine.tokenizer, engine.model
    for group, prompt in zip(out, PROMPTS, strict=False):
        for s in group:
            ids = torch.tensor([tok(prompt).input_ids + s.token_ids])
            with torch.no_grad():
                lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            p = len(tok(prompt).input_ids)
            want = lp[p - 1 :].gather(-1, ids[0, p:, None]).squeeze(-1)
            assert torch.allclose(torch.tensor(s.logprobs), want, atol=1e-4)
            assert s.prompt_tokens == p and s.gen_tokens == len(s.token_ids)


def test_stop_strings_end_the_text(engine):
    out = engine.generate(PROMPTS, SamplingParams(n=2, temperature=1.5, max_new_tokens=30, seed=0, stop=("1",)))
    for group in out:
        for s in group:
            assert "1" not in s.text
            if s.finish_reason == "stop" and s.token_ids[-1] != engine.tokenizer.eos_token_id:
                assert "1" in engine.tokenizer.decode(s.token_ids)


def test_stop_token_ids_end_the_sample_and_stay_in_the_ids(engine):
    free = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, ignore_eos=True))
    stop_id = free[0][0].token_ids[3]
    out = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, ignore_eos=True, stop_token_ids=(stop_id,)))
    first = out[0][0]
    assert first.token_ids == free[0][0].token_ids[: free[0][0].token_ids.index(stop_id) + 1]
    assert first.finish_reason == "stop"
    for group, ref in zip(out, free, strict=True):
        want = ref[0].token_ids
        cut = want.index(stop_id) + 1 if stop_id in want else len(want)
        assert group[0].token_ids == want[:cut]


def test_never_stopping_model_ends_at_budget_with_length(engine):
    eos = engine.tokenizer.eos_token_id

    def forbid_eos(module, args, logits):  # a model that can never emit EOS
        logits[..., eos] = float("-inf")
        return logits

    handle = engine.model.lm_head.register_forward_hook(forbid_eos)
    try:
        out = engine.generate(PROMPTS, SamplingParams(max_new_tokens=7))
    finally:
        handle.remove()
    assert all(s.finish_reason == "length" and s.gen_tokens == 7 for g in out for s in g)


@pytest.mark.parametrize(
    "params,match",
    [
        (dict(n=0), "n must be >= 1"),
        (dict(temperature=-0.1), "temperature"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=-3), "max_new_tokens"),
        (dict(top_p=0.0), "top_p"),
    ],
)
def test_bad_settings_name_the_setting(engine, params, match):
    with pytest.raises(GenerationError, match=match):
        engine.generate(PROMPTS, SamplingParams(**params))


def test_empty_and_too_long_prompts(engine):
    with pytest.raises(GenerationError, match="empty"):
        engine.generate([], SamplingParams())
    with pytest.raises(GenerationError, match="exceeds the model context of 64"):
        engine.generate(["1" * 60], SamplingParams(max_new_tokens=10))


def test_large_vocabulary_sampling_draws_the_distribution_and_never_a_filtered_token():
    """Vocabularies of LARGE_VOCAB tokens and more are sampled by inverting the CDF (two levels), not by
    torch.multinomial: the draws follow the distribution, a token of probability zero (top-k) never comes."""
    vocab = LARGE_VOCAB + 1000  # not a multiple of the block: the padded tail is never drawn
    gen = torch.Generator().manual_seed(0)
    logits = torch.full((1, vocab), -30.0)
    likely = torch.tensor([3, 1500, 20_000, vocab - 1])
    logits[0, likely] = torch.tensor([0.0, 1.0, 2.0, 0.5])
    draws = torch.cat([_pick(logits.expand(4000, -1), SamplingParams(temperature=1.0), gen)[0] for _ in range(5)])
    counts = torch.bincount(draws, minlength=vocab).double()
    p = logits[0].double().softmax(-1)
    observed = counts[likely] / len(draws)
    assert torch.allclose(observed, p[likely], atol=4 * (0.25 / len(draws)) ** 0.5), (observed, p[likely])
    tok, lp = _pick(logits.expand(2000, -1), SamplingParams(temperature=1.0, top_k=2), gen)
    assert set(tok.tolist()) == {1500, 20_000}  # the two highest only
    assert torch.allclose(lp, logits[0].log_softmax(-1)[tok])  # log-probs under the unfiltered distribution


def test_the_generation_configs_end_tokens_end_a_sample(engine):
    """Instruct models end a turn with a token of their own (listed in their generation config), not EOS."""
    first = engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=6, ignore_eos=True))[0][0].token_ids
    model, tok = build_model_and_tokenizer(TINY, seed=1)
    model.generation_config.eos_token_id = [tok.eos_token_id, first[2]]
    out = HFEngine(model, tok).generate(PROMPTS[:1], SamplingParams(max_new_tokens=6))[0][0]
    stop = first.index(first[2]) + 1
    assert out.token_ids == first[:stop] and out.finish_reason == "stop"
