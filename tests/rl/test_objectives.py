"""Each objective's loss and gradients against a loop-by-loop reference written here."""

import math

import pytest
import torch

from thinkflow.rl.objectives import ObjectiveConfig, aggregate, group_advantages, informative_groups, policy_loss


def reference_loss(logp_new, logp_old, logp_ref, rewards, lengths, cfg: ObjectiveConfig):
    """Straight from the papers' formulas, one group, sample and token at a time (plain floats
    for everything but logp_new, which keeps its graph for the gradient check)."""
    groups, g = len(rewards), len(rewards[0])
    total, seq_terms, all_tokens = 0.0, [], 0
    for gi in range(groups):
        r = rewards[gi]
        mean = sum(r) / g
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / g)
        for si in range(g):
            b = gi * g + si
            adv = r[si] - mean if cfg.name == "dr_grpo" else (r[si] - mean) / (std + cfg.std_eps)
            seq = 0.0
            for t in range(lengths[b]):
                ratio = torch.exp(logp_new[b, t] - logp_old[b][t])
                unclipped = ratio * adv
                clipped = torch.clamp(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high) * adv
                term = -torch.minimum(unclipped, clipped)
                if cfg.beta:
                    d = logp_ref[b][t] - logp_new[b, t]
                    term = term + cfg.beta * (torch.exp(d) - d - 1)
                seq = seq + term
                all_tokens += 1
            seq_terms.append((seq, lengths[b]))
    if cfg.name == "grpo":
        total = sum(s / n for s, n in seq_terms) / len(seq_terms)
    elif cfg.name == "dr_grpo":
        total = sum(s / cfg.length_norm for s, _ in seq_terms) / len(seq_terms)
    else:
        total = sum(s for s, _ in seq_terms) / all_tokens
    return total


def _batch(seed: int, groups=3, g=4, t=6):
    gen = torch.Generator().manual_seed(seed)
    b = groups * g
    logp_old = -torch.rand(b, t, generator=gen) * 2
    # ratios well outside [0.8, 1.28] on both sides, so both clip branches are exercised
    logp_new = (logp_old + (torch.rand(b, t, generator=gen) - 0.5) * 1.5).requires_grad_(True)
    logp_ref = logp_old + (torch.rand(b, t, generator=gen) - 0.5) * 0.4
    lengths = torch.randint(1, t + 1, (b,), generator=gen).tolist()
    mask = torch.zeros(b, t)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    rewards = torch.randint(0, 2, (groups, g), generator=gen).float()
    rewards[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    rewards[1] = 1.0  # a zero-variance group
    return logp_new, logp_old, logp_ref, mask, lengths, rewards


@pytest.mark.parametrize(
    "cfg",
    [
        ObjectiveConfig("grpo"),
        ObjectiveConfig("grpo", beta=0.1),
        ObjectiveConfig("dr_grpo", length_norm=6),
        ObjectiveConfig("dr_grpo", beta=0.05, length_norm=6),
        ObjectiveConfig("dapo", clip_low=0.2, clip_high=0.28),
        ObjectiveConfig("dapo", clip_low=0.1, clip_high=0.3, beta=0.02),
    ],
    ids=lambda c: f"{c.name}-beta{c.beta}-clip{c.clip_low}/{c.clip_high}",
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_and_gradients_match_the_reference(cfg, seed):
    logp_new, logp_old, logp_ref, mask, lengths, rewards = _batch(seed)
    adv = group_advantages(rewards, cfg).reshape(-1)
    out = policy_loss(logp_new, logp_old, adv, mask, cfg, logp_ref=logp_ref if cfg.beta else None)
    (grad,) = torch.autograd.grad(out.loss, logp_new)
    want = reference_loss(logp_new, logp_old.tolist(), logp_ref.tolist(), rewards.tolist(), lengths, cfg)
    (want_grad,) = torch.autograd.grad(want, logp_new)
    assert torch.allclose(out.loss, want, atol=1e-5)
    assert torch.allclose(grad, want_grad, atol=1e-6)
    assert (grad[mask == 0] == 0).all()  # padding never gets gradient
    assert 0 < out.clip_frac < 1


def test_zero_variance_groups_give_no_signal():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    for name in ("grpo", "dr_grpo", "dapo"):
        adv = group_advantages(rewards, ObjectiveConfig(name))
        assert (adv[:2] == 0).all() and adv[2].abs().sum() > 0
    assert informative_groups(rewards).tolist() == [False, False, True]


def test_length_normalisation_differs_between_grpo_and_dr_grpo():
    # Two correct answers with identical per-token terms, one short and one long.
    logp_old = torch.zeros(2, 8)
    logp_new = torch.full((2, 8), 0.01, requires_grad=True)
    mask = torch.zeros(2, 8)
    mask[0, :2], mask[1, :8] = 1, 1
    adv = torch.tensor([1.0, 1.0])
    g = torch.autograd.grad(policy_loss(logp_new, logp_old, adv, mask, ObjectiveConfig("grpo")).loss, logp_new)[0]
    d = torch.autograd.grad(
        policy_loss(logp_new, logp_old, adv, mask, ObjectiveConfig("dr_grpo", length_norm=8)).loss, logp_new
    )[0]
    # GRPO: a token of the short answer weighs 4x a token of the long one; Dr. GRPO: equal.
    assert torch.isclose(g[0, 0] / g[1, 0], torch.tensor(4.0))
    assert torch.isclose(d[0, 0] / d[1, 0], torch.tensor(1.0))


def test_clip_higher_is_asymmetric():
    logp_old = torch.zeros(1, 2)
    logp_new = torch.log(torch.tensor([[1.25, 0.75]])).requires_grad_(True)  # ratios 1.25, 0.75
    mask = torch.ones(1, 2)
    pos = torch.tensor([1.0])
    sym = policy_loss(logp_new, logp_old, pos, mask, ObjectiveConfig("dapo", clip_low=0.2, clip_high=0.2))
    high = policy_loss(logp_new, logp_old, pos, mask, ObjectiveConfig("dapo", clip_low=0.2, clip_high=0.28))
    g_sym = torch.autograd.grad(sym.loss, logp_new)[0]
    g_high = torch.autograd.grad(high.loss, logp_new)[0]
    assert g_sym[0, 0] == 0 and g_high[0, 0] != 0  # 1.25 is clipped at 1.2, not at 1.28
    assert sym.clip_frac == 0.5 and high.clip_frac == 0.0


def test_kl_needs_a_reference_and_is_never_negative():
    logp_new, logp_old, logp_ref, mask, _, rewards = _batch(3)
    adv = group_advantages(rewards, ObjectiveConfig()).reshape(-1)
    with pytest.raises(ValueError, match="beta > 0 needs reference log-probs"):
        policy_loss(logp_new, logp_old, adv, mask, ObjectiveConfig(beta=0.1))
    out = policy_loss(logp_new, logp_old, adv, mask, ObjectiveConfig(beta=0.1), logp_ref=logp_ref)
    assert out.kl > 0
    same = policy_loss(logp_new, logp_old, adv, mask, ObjectiveConfig(beta=0.1), logp_ref=logp_new.detach())
    assert same.kl == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(name="ppo"), "rl.objective"), (dict(beta=-1), "rl.beta"), (dict(clip_low=-0.1), "clip ranges")],
)
def test_bad_objective_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ObjectiveConfig(**kwargs)


def test_dapo_token_mean_is_the_same_split_over_ranks():
    """Data-parallel ranks average their losses' gradients: with tokens_per_rank, the mean of two ranks' dapo
    losses is the token mean of the whole batch, however the tokens fall between them."""
    torch.manual_seed(0)
    per_token = torch.randn(6, 5)
    mask = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    )
    cfg = ObjectiveConfig(name="dapo")
    whole = aggregate(per_token, mask, cfg)
    per_rank = float(mask.sum()) / 2
    split = [aggregate(per_token[rows], mask[rows], cfg, per_rank) for rows in (slice(0, 3), slice(3, 6))]
    assert (split[0] + split[1]) / 2 == pytest.approx(float(whole), rel=1e-6)
    naive = [aggregate(per_token[rows], mask[rows], cfg) for rows in (slice(0, 3), slice(3, 6))]
    assert (naive[0] + naive[1]) / 2 != pytest.approx(float(whole), rel=1e-3)  # each rank's own count: biased
