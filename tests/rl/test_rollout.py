import torch

from thinkflow.inference import HFEngine, SamplingParams
from thinkflow.models import build_model_and_tokenizer
from thinkflow.rl.objectives import ObjectiveConfig, policy_loss
from thinkflow.rl.rollout import build_batch, token_logprobs

TINY = dict(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)


def test_learner_logprobs_equal_the_behaviour_logprobs_of_the_same_weights():
    model, tok = build_model_and_tokenizer(TINY, seed=5)
    prompts = ["0347*6=", "12*3=", "9,8,8,4:29="]  # different prompt lengths
    groups = HFEngine(model, tok).generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=9, seed=2))
    samples = [s for g in groups for s in g]
    batch = build_batch(tok, prompts, samples)
    assert batch.input_ids.shape[0] == 12
    assert batch.completion_lengths.tolist() == [s.gen_tokens for s in samples]
    with torch.no_grad():
        logp, entropy = token_logprobs(model, batch, with_entropy=True)
    m = batch.loss_mask.bool()
    assert torch.allclose(logp[m], batch.old_logp[m], atol=1e-4)
    assert (entropy[m] > 0).all()
    # The same weights that sampled: ratio 1 everywhere, nothing clipped.
    out = policy_loss(logp, batch.old_logp, torch.randn(12), batch.loss_mask, ObjectiveConfig("dapo"))
    assert out.clip_frac == 0 and abs(out.ratio_mean - 1) < 1e-4
    # Targets under the mask are exactly the sampled tokens.
    for i, s in enumerate(samples):
        assert batch.input_ids[i, 1:][m[i]].tolist() == s.token_ids
