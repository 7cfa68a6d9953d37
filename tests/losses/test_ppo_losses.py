"""Online RL pieces (alignkit.losses.ppo): masked statistics, KL estimators, the KL-penalised reward,
GAE (against its loop twin and torchtune's worked example), the PPO policy and value losses, RLOO and
GRPO advantages, the KL controllers. Hand-computed cases carry their arithmetic in the docstring."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from alignkit.errors import UserError
from alignkit.losses.ppo import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    gae_loop,
    grpo_advantages,
    kl_per_token,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_policy_loss,
    ppo_token_rewards,
    ppo_value_loss,
    rloo_advantages,
)

DT = torch.float64


def t(*rows):
    return torch.tensor(rows, dtype=DT)


def right_mask(lengths, width):
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).to(DT)


def rand_batch(seed, b=5, width=7, lengths=None):
    """Random float64 (b, t) tensors and a right-padded mask; lengths include 0 and the full width."""
    g = torch.Generator().manual_seed(seed)
    if lengths is None:
        lengths = [0, width] + torch.randint(1, width + 1, (b - 2,), generator=g).tolist()
    mask = right_mask(lengths, width)

    def r(scale=1.0):
        return scale * torch.randn(len(lengths), width, generator=g, dtype=DT)

    return g, mask, r


def garbage_in_padding(x, mask, seed):
    """`x` with its padding replaced by large finite noise (exp of it overflows to inf if unmasked)."""
    g = torch.Generator().manual_seed(seed)
    noise = 1e3 * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return torch.where(mask.bool(), x, noise)


def exact(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- masked statistics


def test_masked_mean_and_var_hand_computed():
    """x = [1, 2, 3, 4, 5], mask [1, 1, 1, 0, 0]: mean (1+2+3)/3 = 2; squared deviations 1, 0, 1 ->
    biased var 2/3, unbiased 2/2 = 1. Per row (dim=1): [1,2,3 | 4,5,6] with masks [1,1,0 | 0,1,1]
    -> [1.5, 5.5]. An empty mask gives 0."""
    x, m = t(1, 2, 3, 4, 5), t(1, 1, 1, 0, 0)
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    assert masked_var(x, m).item() == pytest.approx(1.0)
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(2 / 3)
    exact(masked_mean(t([1, 2, 3], [4, 5, 6]), t([1, 1, 0], [0, 1, 1]), dim=1), t(1.5, 5.5))
    assert masked_mean(x, torch.zeros(5)).item() == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, t(0, 1, 0, 0, 0))


def test_masked_whiten_mean_zero_var_one_and_shift_mean_false_keeps_mean():
    _, mask, r = rand_batch(0, b=6, width=9)
    x = 3.0 + 2.0 * r()
    real = x[mask.bool()]
    out = masked_whiten(x, mask)
    assert masked_mean(out, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_var(out, mask).item() == pytest.approx(1.0, abs=1e-7)  # 1e-8 in the denominator
    expected = (real - real.mean()) / torch.sqrt(real.var() + 1e-8)  # torch var: unbiased
    torch.testing.assert_close(out[mask.bool()], expected, rtol=1e-12, atol=1e-12)
    assert out[~mask.bool()].abs().max() == 0
    kept = masked_whiten(x, mask, shift_mean=False)
    assert masked_mean(kept, mask).item() == pytest.approx(real.mean().item(), abs=1e-12)
    assert masked_var(kept, mask).item() == pytest.approx(1.0, abs=1e-7)
    torch.testing.assert_close(kept[mask.bool()], expected + real.mean(), rtol=1e-12, atol=1e-12)
    assert kept[~mask.bool()].abs().max() == 0


def test_explained_variance_hand_computed():
    """R = [1, 2, 3, 4], V = [1, 2, 3, 3] (+ one padded slot): R - V = [0, 0, 0, 1], biased variance
    0.25 - 0.0625 = 0.1875; Var(R) = 1.25; EV = 1 - 0.1875 / 1.25 = 0.85. V = R -> 1; V = 0 -> 0."""
    mask = t([1, 1, 1, 1, 0])
    ret, val = t([1, 2, 3, 4, 99]), t([1, 2, 3, 3, -99])
    assert explained_variance(val, ret, mask) == pytest.approx(0.85)
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros_like(ret), ret, mask) == pytest.approx(0.0)
    assert math.isnan(explained_variance(val, torch.ones_like(ret), mask))


# ---------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_computed():
    """d = ref - logp. logp=-1, ref=-1.5: d=-0.5 -> k1 = 0.5, k2 = 0.125, k3 = e^-0.5 + 0.5 - 1
    = 0.1065306597. logp=-2, ref=-1: d=1 -> k1 = -1, k2 = 0.5, k3 = e - 1 - 1 = 0.7182818285."""
    logp, ref = t(-1.0, -2.0), t(-1.5, -1.0)
    torch.testing.assert_close(kl_per_token(logp, ref, "k1"), t(0.5, -1.0))
    torch.testing.assert_close(kl_per_token(logp, ref, "k2"), t(0.125, 0.5))
    torch.testing.assert_close(kl_per_token(logp, ref, "k3"), t(0.1065306597, 0.7182818285), atol=1e-10, rtol=0)
    assert kl_per_token(logp, ref).tolist() == kl_per_token(logp, ref, "k1").tolist()
    with pytest.raises(ValueError, match="k4"):
        kl_per_token(logp, ref, "k4")


def test_kl_estimators_nonnegative_and_zero_at_reference():
    g = torch.Generator().manual_seed(1)
    logp = -3 * torch.rand(4, 50, generator=g, dtype=DT)
    ref = logp + torch.randn(4, 50, generator=g, dtype=DT) * torch.logspace(-9, 0, 50, dtype=DT)
    assert (kl_per_token(logp, ref, "k3") >= 0).all() and (kl_per_token(logp, ref, "k2") >= 0).all()
    for kind in ("k1", "k2", "k3"):
        assert kl_per_token(logp, logp.clone(), kind).abs().max() == 0


def test_k1_and_k3_are_unbiased_for_kl():
    """Exact expectation over a 6-way categorical (no sampling): sum_x p(x) k(x) = KL(p || q) for k1
    and k3; k2 is biased (its expectation differs)."""
    g = torch.Generator().manual_seed(2)
    logp = torch.log_softmax(torch.randn(6, generator=g, dtype=DT), 0)
    logq = torch.log_softmax(torch.randn(6, generator=g, dtype=DT), 0)
    kl = (logp.exp() * (logp - logq)).sum()
    for kind in ("k1", "k3"):
        torch.testing.assert_close((logp.exp() * kl_per_token(logp, logq, kind)).sum(), kl)
    assert abs((logp.exp() * kl_per_token(logp, logq, "k2")).sum() - kl) > 1e-6


# ---------------------------------------------------------------- per-token reward


def test_ppo_token_rewards_hand_computed():
    """torchtune's get_rewards_ppo case, with padding: kl = logp - ref = -0.1 / -0.2 / -0.3 per row,
    kl_coef 0.5 -> non-score 0.05 / 0.1 / 0.15 per real token. Rows have 3, 2, 1 real tokens, so the
    scores 1, 2, 3 land at positions 2, 1, 0: rows [0.05, 0.05, 1.05], [0.1, 2.1, 0], [3.15, 0, 0]."""
    logp = t([0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.6, 0.7, 0.8])
    ref = t([0.2, 0.3, 0.4], [0.6, 0.7, 0.8], [0.9, 1.0, 1.1])
    mask = right_mask([3, 2, 1], 3)
    rewards, non_score = ppo_token_rewards(t(1.0, 2.0, 3.0), kl_per_token(logp, ref), mask, 0.5)
    torch.testing.assert_close(rewards, t([0.05, 0.05, 1.05], [0.1, 2.1, 0], [3.15, 0, 0]))
    torch.testing.assert_close(non_score, t([0.05, 0.05, 0.05], [0.1, 0.1, 0], [0.15, 0, 0]))


def test_ppo_token_rewards_empty_row_and_bad_inputs():
    """A row without real tokens gets neither score nor penalty; shapes and kl_coef are checked."""
    rewards, _ = ppo_token_rewards(t(5.0, 7.0), torch.ones(2, 3, dtype=DT), right_mask([0, 2], 3), 0.1)
    torch.testing.assert_close(rewards, t([0, 0, 0], [-0.1, 6.9, 0]))
    with pytest.raises(ValueError, match="scores"):
        ppo_token_rewards(t(1.0), torch.ones(2, 3, dtype=DT), torch.ones(2, 3), 0.1)
    with pytest.raises(UserError, match="kl_coef"):
        ppo_token_rewards(t(1.0, 2.0), torch.ones(2, 3, dtype=DT), torch.ones(2, 3), -0.1)


# ---------------------------------------------------------------- GAE


def test_gae_torchtune_worked_example():
    """torchtune tests/torchtune/rlhf/test_rewards.py::test_estimate_returns: V = r = [0, 0, 0, 1],
    gamma 0.9, lambda 0.95, returns [g^3 l^2, g^2 l, g, 1]. Exactly right with V = 0 after the end:
      t=3: delta = 1 + g*0 - 1 = 0,            A = 0,                       R = 0 + 1 = 1
      t=2: delta = 0 + g*1 - 0 = 0.9,          A = 0.9 = g,                 R = g
      t=1: delta = 0 + g*0 - 0 = 0,            A = g*l*0.9 = g^2 l = 0.7695, R = 0.7695
      t=0: delta = 0,                          A = g*l*0.7695 = g^3 l^2 = 0.6579225
    so advantages = [g^3 l^2, g^2 l, g, 0], returns = advantages + V as stated.
    With V = 0 instead, every delta is r and A = R = [(gl)^3, (gl)^2, gl, 1]
    = [0.625026375, 0.731025, 0.855, 1]: the statement does not hold there."""
    g, lam = 0.9, 0.95
    r, v, m = t([0, 0, 0, 1]), t([0, 0, 0, 1]), torch.ones(1, 4)
    adv, ret = gae(r, v, m, g, lam)
    torch.testing.assert_close(ret, t([g**3 * lam**2, g**2 * lam, g, 1.0]), rtol=0, atol=1e-15)
    torch.testing.assert_close(ret, t([0.6579225, 0.7695, 0.9, 1.0]), rtol=0, atol=1e-12)
    torch.testing.assert_close(adv, t([0.6579225, 0.7695, 0.9, 0.0]), rtol=0, atol=1e-12)
    adv0, ret0 = gae(r, torch.zeros_like(v), m, g, lam)
    torch.testing.assert_close(ret0, t([0.625026375, 0.731025, 0.855, 1.0]), rtol=0, atol=1e-12)
    torch.testing.assert_close(adv0, ret0)


def test_gae_masked_last_token_is_nonexistent():
    """torchtune's masked variant (mask [1, 1, 1, 0]) keeps the unmasked returns and zeroes only the
    last slot, because its GAE reads r and V at padding. Here the padded r = V = 1 do not exist: the
    episode is three zero rewards with zero values, so every advantage and return is 0."""
    adv, ret = gae(t([0, 0, 0, 1]), t([0, 0, 0, 1]), t([1, 1, 1, 0]), 0.9, 0.95)
    assert adv.abs().max() == 0 and ret.abs().max() == 0


def test_gae_gamma_lambda_one_value_zero_sums_future_rewards():
    """gamma = lambda = 1, V = 0: delta_t = r_t, so A_t = sum_{s>=t} r_s = score - kl_coef * sum_{s>=t} kl_s
    (the score sits at the last real token, so every real t sees it)."""
    gen, mask, r = rand_batch(3, b=6, width=8)
    scores = torch.randn(6, generator=gen, dtype=DT)
    kl = r(0.1)
    rewards, _ = ppo_token_rewards(scores, kl, mask, kl_coef=0.3)
    adv, ret = gae(rewards, torch.zeros_like(rewards), mask, 1.0, 1.0)
    future_kl = torch.flip(torch.cumsum(torch.flip(kl * mask, [1]), 1), [1])
    expected = (scores[:, None] - 0.3 * future_kl) * mask
    torch.testing.assert_close(adv, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ret, adv)


@pytest.mark.parametrize(("seed", "gamma", "lam"), [(4, 1.0, 0.95), (5, 0.9, 0.8), (6, 0.99, 1.0), (7, 0.7, 0.0)])
def test_gae_matches_loop_twin(seed, gamma, lam):
    _, mask, r = rand_batch(seed, b=7, width=11)
    rewards, values = r(), r()
    adv, ret = gae(rewards, values, mask, gamma, lam)
    adv_l, ret_l = gae_loop(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, adv_l, rtol=0, atol=1e-10)
    torch.testing.assert_close(ret, ret_l, rtol=0, atol=1e-10)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()


def test_gae_limit_cases_td_and_monte_carlo():
    """lambda = 0: A_t = delta_t (one-step TD error). lambda = 1: A_t = discounted return - V_t."""
    _, mask, r = rand_batch(8, b=4, width=6, lengths=[6, 4, 1, 3])
    rewards, values, gamma = r(), r(), 0.9
    v_next = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros(4, 1, dtype=DT)], 1)
    delta = (rewards + gamma * v_next - values) * mask
    torch.testing.assert_close(gae(rewards, values, mask, gamma, 0.0)[0], delta, rtol=0, atol=1e-12)
    disc = torch.zeros_like(rewards)
    for j in range(6):
        disc[:, j] = sum(gamma ** (s - j) * rewards[:, s] * mask[:, s] for s in range(j, 6))
    torch.testing.assert_close(gae(rewards, values, mask, gamma, 1.0)[0], (disc - values) * mask,
                               rtol=0, atol=1e-12)


# ---------------------------------------------------------------- PPO policy loss


def _hand_policy_inputs():
    """4 real tokens + 1 padded slot; ratios 1.5, 1.5, 0.5, 0.5 (old_logps = 0)."""
    logps = torch.log(t([1.5, 1.5, 0.5, 0.5, 1.0])).requires_grad_(True)
    return logps, torch.zeros(1, 5, dtype=DT), t([1.0, -1.0, 1.0, -2.0, 0.0]), t([1, 1, 1, 1, 0])


def test_policy_loss_hand_computed():
    """clip 0.2, per token max(-A r, -A clip(r, 0.8, 1.2)):
      r=1.5, A=+1: max(-1.5, -1.2) = -1.2  (clipped term larger)
      r=1.5, A=-1: max( 1.5,  1.2) =  1.5
      r=0.5, A=+1: max(-0.5, -0.8) = -0.5
      r=0.5, A=-2: max( 1.0,  1.6) =  1.6  (clipped term larger)
    loss = (-1.2 + 1.5 - 0.5 + 1.6) / 4 = 0.35; clipfrac 2/4; ratio mean 1.0, max 1.5;
    approxkl = 0.5 * (2 ln(1.5)^2 + 2 ln(0.5)^2) / 4 = 0.25 * (0.1644019539 + 0.4804530139) = 0.1612137420.
    Gradient d/dlogp: 0 where clipped, -A r / 4 elsewhere -> [0, 0.375, -0.125, 0, 0]."""
    logps, old, adv, mask = _hand_policy_inputs()
    loss, metrics = ppo_policy_loss(logps, old, adv, mask, 0.2)
    assert loss.item() == pytest.approx(0.35, abs=1e-12)
    assert metrics["clipfrac"].item() == pytest.approx(0.5)
    assert metrics["ratio"].item() == pytest.approx(1.0)
    assert metrics["ratio_max"].item() == pytest.approx(1.5)
    assert metrics["approxkl"].item() == pytest.approx(0.1612137420, abs=1e-10)
    assert not any(v.requires_grad for v in metrics.values())
    loss.backward()
    torch.testing.assert_close(logps.grad, t([0.0, 0.375, -0.125, 0.0, 0.0]), rtol=0, atol=1e-12)


def test_policy_loss_on_policy_ratio_one_no_clipping():
    """logps == old_logps (first minibatch of epoch 0): ratio exactly 1, clipfrac 0, approxkl 0, and
    the loss is -masked_mean(A) with gradient -A / n (the plain policy gradient)."""
    _, mask, r = rand_batch(9)
    logps, adv = (-r().abs()).requires_grad_(True), r()
    loss, metrics = ppo_policy_loss(logps, logps.detach().clone(), adv, mask, 0.2)
    assert metrics["ratio"].item() == 1.0 and metrics["ratio_max"].item() == 1.0
    assert metrics["clipfrac"].item() == 0.0 and metrics["approxkl"].item() == 0.0
    torch.testing.assert_close(loss, -masked_mean(adv, mask))
    loss.backward()
    torch.testing.assert_close(logps.grad, -adv * mask / mask.sum())


def _policy_ref(logps, old, adv, mask, e):
    """Loop over real tokens, math module only."""
    terms, clipped = [], 0
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            if mask[i, j]:
                ratio = math.exp(float(logps[i, j] - old[i, j]))
                a = float(adv[i, j])
                u, c = -a * ratio, -a * min(max(ratio, 1 - e), 1 + e)
                terms.append(max(u, c))
                clipped += c > u
    return sum(terms) / len(terms), clipped / len(terms)


def test_policy_loss_matches_plain_reference():
    _, mask, r = rand_batch(10, b=6, width=9)
    logps, old, adv = -r().abs(), -r().abs(), r()
    loss, metrics = ppo_policy_loss(logps, old, adv, mask, 0.25)
    ref_loss, ref_clip = _policy_ref(logps, old, adv, mask, 0.25)
    assert loss.item() == pytest.approx(ref_loss, abs=1e-12)
    assert metrics["clipfrac"].item() == pytest.approx(ref_clip, abs=1e-12)
    assert 0 < ref_clip < 1  # the case exercises both branches


def test_policy_loss_gradcheck():
    _, mask, r = rand_batch(11, b=4, width=6)
    old, adv = r(0.3), r()
    logps = (old + r(0.3)).requires_grad_(True)
    assert gradcheck(lambda lp: ppo_policy_loss(lp, old, adv, mask, 0.2)[0], (logps,))


# ---------------------------------------------------------------- PPO value loss


def test_value_loss_hand_computed():
    """clip 0.2, per token max((V-R)^2, (clip(V, V_old +- 0.2) - R)^2):
      V=1.0, V_old=0.5, R=0: clip -> 0.7; max(1.00, 0.49) = 1.00
      V=1.0, V_old=0.5, R=2: clip -> 0.7; max(1.00, 1.69) = 1.69  (clipped term larger)
      V=0.1, V_old=0.0, R=1: inside;      max(0.81, 0.81) = 0.81  (equal: not counted)
    loss = 0.5 * (1 + 1.69 + 0.81) / 3 = 0.5833333333; vf_clipfrac = 1/3.
    Gradient dV: 0.5 * 2 (V - R) / 3 where unclipped wins, 0 where clipped -> [1/3, 0, -0.3]."""
    values = t([1.0, 1.0, 0.1, 5.0]).requires_grad_(True)
    old, ret, mask = t([0.5, 0.5, 0.0, 0.0]), t([0.0, 2.0, 1.0, 0.0]), t([1, 1, 1, 0])
    loss, metrics = ppo_value_loss(values, old, ret, mask, 0.2)
    assert loss.item() == pytest.approx(3.5 / 6, abs=1e-12)
    assert metrics["vf_clipfrac"].item() == pytest.approx(1 / 3)
    loss.backward()
    torch.testing.assert_close(values.grad, t([1 / 3, 0.0, -0.3, 0.0]), rtol=0, atol=1e-12)


def test_value_loss_wide_clip_is_half_mse_and_gradcheck():
    _, mask, r = rand_batch(12, b=4, width=6)
    old, ret = r(), r()
    values = (old + r(0.3)).requires_grad_(True)
    loss, metrics = ppo_value_loss(values, old, ret, mask, 1e6)
    torch.testing.assert_close(loss, 0.5 * masked_mean((values - ret) ** 2, mask))
    assert metrics["vf_clipfrac"].item() == 0.0
    assert gradcheck(lambda v: ppo_value_loss(v, old, ret, mask, 0.2)[0], (values,))
    with pytest.raises(UserError, match="clip_range"):
        ppo_value_loss(values, old, ret, mask, 0.0)


# ---------------------------------------------------------------- padding invariance


def _outputs(fn_name, x, mask):
    """Run one function on the named inputs; return (tensors compared at real positions, scalars)."""
    if fn_name == "masked_mean":
        return [], [masked_mean(x["a"], mask), masked_mean(x["a"], mask, dim=1)]
    if fn_name == "masked_var":
        return [], [masked_var(x["a"], mask), masked_var(x["a"], mask, unbiased=False)]
    if fn_name == "masked_whiten":
        return [masked_whiten(x["a"], mask), masked_whiten(x["a"], mask, shift_mean=False)], []
    if fn_name == "kl_per_token":
        return [kl_per_token(x["lp"], x["ref"], k) for k in ("k1", "k2", "k3")], []
    if fn_name == "ppo_token_rewards":
        kl = kl_per_token(x["lp"], x["ref"], "k3")
        return list(ppo_token_rewards(x["score"], kl, mask, 0.1)), []
    if fn_name in ("gae", "gae_loop"):
        f = gae if fn_name == "gae" else gae_loop
        return list(f(x["a"], x["b"], mask, 0.95, 0.9)), []
    if fn_name == "explained_variance":
        return [], [torch.tensor(explained_variance(x["a"], x["b"], mask))]
    if fn_name == "ppo_policy_loss":
        loss, m = ppo_policy_loss(x["lp"], x["ref"], x["a"], mask, 0.2)
        return [], [loss, *m.values()]
    loss, m = ppo_value_loss(x["a"], x["b"], x["lp"], mask, 0.2)
    return [], [loss, *m.values()]


@pytest.mark.parametrize("fn_name", ["masked_mean", "masked_var", "masked_whiten", "kl_per_token",
                                     "ppo_token_rewards", "gae", "gae_loop", "explained_variance",
                                     "ppo_policy_loss", "ppo_value_loss"])
def test_padding_changes_nothing(fn_name):
    """Garbage (|x| ~ 1e3, so an unmasked exp would overflow) in every padded slot of every input
    changes no real-position output, no scalar, no metric, and no gradient; padding gets zero gradient."""
    g, mask, r = rand_batch(13, b=5, width=7)
    clean = {"a": r(), "b": r(), "lp": -r().abs(), "ref": -r().abs()}
    clean["score"] = torch.randn(5, generator=g, dtype=DT)
    dirty = {k: (v if k == "score" else garbage_in_padding(v, mask, seed=i)) for i, (k, v) in enumerate(clean.items())}
    for d in (clean, dirty):
        for k in ("a", "lp"):
            d[k] = d[k].clone().requires_grad_(True)
    real = mask.bool()
    (t_clean, s_clean), (t_dirty, s_dirty) = _outputs(fn_name, clean, mask), _outputs(fn_name, dirty, mask)
    for a, b in zip(t_clean, t_dirty, strict=True):
        exact(a[real], b[real])
    for a, b in zip(s_clean, s_dirty, strict=True):
        exact(a, b)
    if fn_name in ("ppo_policy_loss", "ppo_value_loss"):
        s_clean[0].backward()
        s_dirty[0].backward()
        for k in ("a", "lp"):
            if clean[k].grad is not None:
                exact(clean[k].grad, dirty[k].grad)
                assert clean[k].grad[~real].abs().max() == 0


# ---------------------------------------------------------------- RLOO and GRPO


def test_rloo_hand_computed():
    """k=3, r = [1, 2, 6]: baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5 -> A = [-3, -1.5, 4.5];
    second prompt r = [0, 0, 3]: baselines 1.5, 1.5, 0 -> [-1.5, -1.5, 3]."""
    adv = rloo_advantages(t(1, 2, 6, 0, 0, 3), 3)
    torch.testing.assert_close(adv, t(1 - 4, 2 - 3.5, 6 - 1.5, -1.5, -1.5, 3.0))


def test_grpo_hand_computed():
    """k=3, r = [1, 2, 6]: mean 3, deviations [-2, -1, 3], unbiased std sqrt((4+1+9)/2) = sqrt(7)
    = 2.6457513111; A = [-2, -1, 3] / (2.6457513111 + 1e-4) = [-0.7559003757, -0.3779501878, 1.1338505635].
    scale=False (Dr. GRPO): [-2, -1, 3]."""
    r = t(1, 2, 6)
    torch.testing.assert_close(grpo_advantages(r, 3), t(-0.7559003757, -0.3779501878, 1.1338505635),
                               rtol=0, atol=1e-9)
    torch.testing.assert_close(grpo_advantages(r, 3), t(-2, -1, 3) / (math.sqrt(7) + 1e-4))
    torch.testing.assert_close(grpo_advantages(r, 3, eps=0.5), t(-2, -1, 3) / (math.sqrt(7) + 0.5))
    torch.testing.assert_close(grpo_advantages(r, 3, scale=False), t(-2, -1, 3))


def test_group_advantages_sum_to_zero_and_rloo_is_scaled_centring():
    """Per group both sum to 0; RLOO = k/(k-1) * (r - group mean) = k/(k-1) * GRPO(scale=False)."""
    g = torch.Generator().manual_seed(14)
    for k in (2, 4, 8):
        r = torch.randn(5 * k, generator=g, dtype=DT)
        for adv in (rloo_advantages(r, k), grpo_advantages(r, k), grpo_advantages(r, k, scale=False)):
            torch.testing.assert_close(adv.view(-1, k).sum(1), torch.zeros(5, dtype=DT), rtol=0, atol=1e-12)
        torch.testing.assert_close(rloo_advantages(r, k), k / (k - 1) * grpo_advantages(r, k, scale=False))
        plain = [float(r[i]) - (sum(r[(i // k) * k:(i // k + 1) * k].tolist()) - float(r[i])) / (k - 1)
                 for i in range(5 * k)]
        torch.testing.assert_close(rloo_advantages(r, k), t(*plain))


def test_group_advantages_reject_bad_k_and_equal_rewards_give_zero():
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(t(1, 2, 3), 1)
    with pytest.raises(ValueError, match=r"\(n\*k,\)"):
        rloo_advantages(t(1, 2, 3), 2)
    with pytest.raises(ValueError, match=r"\(n\*k,\)"):
        grpo_advantages(t(1, 2, 3, 4), 3)
    assert grpo_advantages(t(1, 2, 3), 1).abs().max() == 0  # k = 1: std taken as 0, as TRL
    assert grpo_advantages(t(2, 2, 2, 2), 4).abs().max() == 0  # no signal, no NaN


# ---------------------------------------------------------------- KL controllers


def test_adaptive_kl_controller_hand_computed():
    """init 0.2, target 6, horizon 10000, n_steps 256 (n/h = 0.0256):
      kl 6.6: e = 6.6/6 - 1 = +0.1 -> 0.2 * (1 + 0.00256) = 0.200512
      kl 5.4: e = -0.1             -> 0.2 * (1 - 0.00256) = 0.199488
      kl 12:  e = +1 clipped to +0.2 -> 0.2 * 1.00512 = 0.201024
      kl 0:   e = -1 clipped to -0.2 -> 0.2 * 0.99488 = 0.198976"""
    for kl, expected in ((6.6, 0.200512), (5.4, 0.199488), (12.0, 0.201024), (0.0, 0.198976)):
        ctl = AdaptiveKLController(0.2, 6.0, 10000)
        ctl.update(kl, 256)
        assert ctl.value == pytest.approx(expected, rel=1e-12)


def test_kl_controllers_state_round_trip_and_fixed_does_nothing():
    ctl = AdaptiveKLController(0.2, 6.0, 10000)
    for kl in (9.0, 1.0, 7.0):
        ctl.update(kl, 64)
    other = AdaptiveKLController(1.0, 1.0, 1)
    other.load_state_dict(ctl.state_dict())
    assert other.state_dict() == ctl.state_dict()
    ctl.update(8.0, 64)
    other.update(8.0, 64)
    assert other.value == ctl.value
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.05
    restored = FixedKLController(0.0, 6.0, 10000)
    restored.load_state_dict(fixed.state_dict())
    assert restored.value == 0.05
    with pytest.raises(UserError, match="kl_target"):
        AdaptiveKLController(0.1, 0.0, 100)
