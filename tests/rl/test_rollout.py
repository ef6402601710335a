import pytest
import torch

from thinkflow.inference import HFEngine, SamplingParams
from thinkflow.models import build_model_and_tokenizer
from thinkflow.rl.objectives import ObjectiveConfig, policy_loss
from thinkflow.rl.rollout import build_batch, collect, token_logprobs

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


def test_collect_rewards_groups_and_dynamic_sampling():
    from thinkflow.catalog import build_task
    from thinkflow.rl.rewards import RewardConfig

    model, tok = build_model_and_tokenizer(TINY, seed=5)
    engine = HFEngine(model, tok)
    task = build_task("multiplication", 2)
    problems = task.splits(0, 4, seed=1)[1]
    params = SamplingParams(temperature=1.0, max_new_tokens=10, seed=3)

    def reward_first_row(problem, text):
        """1 for the first completion scored for problem 0 (samples are scored in group order)."""
        if problem.id != problems[0].id:
            return 0.0
        first_text.setdefault("text", text)
        return 1.0 if text == first_text["text"] else 0.0

    cfg = RewardConfig(correct_weight=0.0)
    first_text: dict = {}
    grpo = collect(engine, task, problems, 3, params, cfg, ObjectiveConfig("grpo"), reward_first_row)
    assert grpo.rewards.shape == (4, 3) and grpo.batch.input_ids.shape[0] == 12
    assert grpo.rewards[0].tolist() == [1.0, 0.0, 0.0] and grpo.rewards[1:].sum() == 0
    assert grpo.metrics["rl/frac_zero_std"] == 0.75
    assert grpo.advantages[0] > 0 and (grpo.advantages[3:] == 0).all()
    first_text.clear()
    dapo = collect(engine, task, problems, 3, params, cfg, ObjectiveConfig("dapo"), reward_first_row)
    assert dapo.rewards.shape == (1, 3) and dapo.batch.input_ids.shape[0] == 3  # only the informative group
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        collect(engine, task, problems, 1, params, cfg, ObjectiveConfig("grpo"))
