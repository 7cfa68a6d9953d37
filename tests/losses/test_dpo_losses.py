"""DPO family (dpo/cDPO, ipo, hinge, robust, rpo): hand-computed cases, a plain reference, gradcheck,
limit cases, and equality with TRL 1.16's own loss code."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch.autograd import gradcheck

from alignkit.errors import UserError
from alignkit.losses import PairLogps, dpo_loss, hinge_loss, ipo_loss, robust_loss, rpo_loss

LOG2 = math.log(2.0)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


# pc=-10, pr=-12, rc=-11, rr=-11: rho_c = +1, rho_r = -1, Delta = 2.
HAND = PairLogps(t(-10.0), t(-12.0), t(-11.0), t(-11.0), torch.tensor([5]), torch.tensor([4]))


# ---------------------------------------------------------------- hand-computed


def test_dpo_hand_computed():
    """beta=0.1, Delta=2 -> z=0.2; loss = log(1 + exp(-0.2)) = log(1.8187307531) = 0.5981388694;
    rewards = 0.1 * (+1, -1) = (0.1, -0.1)."""
    out = dpo_loss(HAND, beta=0.1)
    assert out.losses.item() == pytest.approx(0.5981388694, abs=1e-9)
    assert out.chosen_rewards.item() == pytest.approx(0.1)
    assert out.rejected_rewards.item() == pytest.approx(-0.1)


def test_cdpo_hand_computed():
    """eps=0.1, z=0.2: 0.9 * log(1+e^-0.2) + 0.1 * log(1+e^0.2) = 0.9 * 0.5981388694 + 0.1 * 0.7981388694
    = 0.5383249824 + 0.0798138869 = 0.6181388694 (= softplus(-z) + eps * z)."""
    assert dpo_loss(HAND, beta=0.1, label_smoothing=0.1).losses.item() == pytest.approx(0.6181388694, abs=1e-9)


def test_robust_hand_computed():
    """eps=0.1, z=0.2: (0.9 * 0.5981388694 - 0.1 * 0.7981388694) / 0.8 = 0.4585110955 / 0.8
    = 0.5731388694 (= softplus(-z) - eps * z / (1 - 2 eps))."""
    assert robust_loss(HAND, beta=0.1, label_smoothing=0.1).losses.item() == pytest.approx(0.5731388694, abs=1e-9)


def test_hinge_hand_computed():
    """beta=0.1: Delta=2 -> max(0, 1 - 0.2) = 0.8; Delta=12 (pc=0) -> max(0, 1 - 1.2) = 0."""
    assert hinge_loss(HAND, beta=0.1).losses.item() == pytest.approx(0.8)
    assert hinge_loss(replace(HAND, policy_chosen=t(0.0)), beta=0.1).losses.item() == 0.0


def test_ipo_hand_computed():
    """n_c=2, n_r=4: Delta_avg = 1/2 - (-1)/4 = 0.75; beta=0.1 -> target 1/(2*0.1) = 5;
    loss = (0.75 - 5)^2 = 18.0625. Rewards stay unnormalised: (0.1, -0.1)."""
    logps = replace(HAND, chosen_tokens=torch.tensor([2]), rejected_tokens=torch.tensor([4]))
    out = ipo_loss(logps, beta=0.1)
    assert out.losses.item() == pytest.approx(18.0625)
    assert out.chosen_rewards.item() == pytest.approx(0.1)


def test_rpo_hand_computed():
    """alpha=0.5, pc=-10 over 5 tokens -> NLL = 2; loss = 0.5981388694 + 0.5 * 2 = 1.5981388694."""
    out = rpo_loss(HAND, beta=0.1, rpo_alpha=0.5)
    assert out.losses.item() == pytest.approx(1.5981388694, abs=1e-9)
    assert out.extra["nll"].item() == pytest.approx(2.0)


# ---------------------------------------------------------------- plain reference implementation


def _ref_family(lp: PairLogps, kind: str, beta: float, eps: float = 0.0, alpha: float = 0.0) -> list[float]:
    """Loop-and-math-module version written from the papers, independent of the code under test."""
    out = []
    for i in range(lp.policy_chosen.shape[0]):
        pc, pr = float(lp.policy_chosen[i]), float(lp.policy_rejected[i])
        rc, rr = float(lp.ref_chosen[i]), float(lp.ref_rejected[i])
        nc, nr = int(lp.chosen_tokens[i]), int(lp.rejected_tokens[i])
        delta = (pc - rc) - (pr - rr)
        p = 1.0 / (1.0 + math.exp(-beta * delta))  # P(chosen > rejected) under the implied BT model
        if kind == "dpo":
            out.append(-(1 - eps) * math.log(p) - eps * math.log(1 - p))
        elif kind == "robust":
            out.append(((1 - eps) * -math.log(p) - eps * -math.log(1 - p)) / (1 - 2 * eps))
        elif kind == "hinge":
            out.append(max(0.0, 1.0 - beta * delta))
        elif kind == "ipo":
            out.append(((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)) ** 2)
        elif kind == "rpo":
            out.append(-math.log(p) + alpha * (-pc / nc))
    return out


@pytest.mark.parametrize(
    ("fn", "kind", "kw"),
    [
        (dpo_loss, "dpo", {"beta": 0.1}),
        (dpo_loss, "dpo", {"beta": 0.3, "label_smoothing": 0.2}),
        (robust_loss, "robust", {"beta": 0.2, "label_smoothing": 0.15}),
        (hinge_loss, "hinge", {"beta": 0.25}),
        (ipo_loss, "ipo", {"beta": 0.5}),
        (rpo_loss, "rpo", {"beta": 0.1, "rpo_alpha": 0.7}),
    ],
)
def test_matches_plain_reference(random_pair, fn, kind, kw):
    lp = random_pair(16, seed=1)
    beta = kw["beta"]
    expected = _ref_family(lp, kind, beta, kw.get("label_smoothing", 0.0), kw.get("rpo_alpha", 0.0))
    out = fn(lp, **kw)
    torch.testing.assert_close(out.losses, t(*expected), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.chosen_rewards, beta * (lp.policy_chosen - lp.ref_chosen))
    torch.testing.assert_close(out.rejected_rewards, beta * (lp.policy_rejected - lp.ref_rejected))
    assert not out.chosen_rewards.requires_grad


# ---------------------------------------------------------------- gradcheck


@pytest.mark.parametrize(
    ("fn", "kw"),
    [
        (dpo_loss, {"beta": 0.1, "label_smoothing": 0.1}),
        (robust_loss, {"beta": 0.2, "label_smoothing": 0.1}),
        (hinge_loss, {"beta": 0.01}),  # small beta keeps every pair on the sloped side of the hinge
        (ipo_loss, {"beta": 0.1}),
        (rpo_loss, {"beta": 0.1, "rpo_alpha": 0.5}),
    ],
)
def test_gradcheck(random_pair, fn, kw):
    lp = random_pair(6, seed=2)
    inputs = tuple(x.clone().requires_grad_(True)
                   for x in (lp.policy_chosen, lp.policy_rejected, lp.ref_chosen, lp.ref_rejected))

    def f(pc, pr, rc, rr):
        return fn(PairLogps(pc, pr, rc, rr, lp.chosen_tokens, lp.rejected_tokens), **kw).losses

    assert gradcheck(f, inputs)


def test_dpo_gradient_sign():
    """The gradient raises the chosen log-prob and lowers the rejected one."""
    pc, pr = t(-10.0).requires_grad_(), t(-12.0).requires_grad_()
    dpo_loss(replace(HAND, policy_chosen=pc, policy_rejected=pr), beta=0.1).losses.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()


# ---------------------------------------------------------------- limit cases


def test_zero_smoothing_and_flip_rate_and_alpha_are_plain_dpo(random_pair):
    lp = random_pair(8, seed=3)
    plain = dpo_loss(lp, beta=0.2).losses
    torch.testing.assert_close(dpo_loss(lp, beta=0.2, label_smoothing=0.0).losses, plain)
    torch.testing.assert_close(robust_loss(lp, beta=0.2, label_smoothing=0.0).losses, plain)
    torch.testing.assert_close(rpo_loss(lp, beta=0.2, rpo_alpha=0.0).losses, plain)


def test_policy_equal_to_reference_gives_log2_and_zero_rewards(random_pair):
    lp = random_pair(8, seed=4)
    same = replace(lp, ref_chosen=lp.policy_chosen.clone(), ref_rejected=lp.policy_rejected.clone())
    out = dpo_loss(same, beta=0.1)
    torch.testing.assert_close(out.losses, torch.full((8,), LOG2, dtype=torch.float64))
    assert out.chosen_rewards.abs().max() == 0 and out.rejected_rewards.abs().max() == 0
    # cDPO and robust DPO are also log 2 at Delta = 0 (both labels equally likely).
    torch.testing.assert_close(dpo_loss(same, beta=0.1, label_smoothing=0.3).losses, out.losses)
    torch.testing.assert_close(robust_loss(same, beta=0.1, label_smoothing=0.3).losses, out.losses)
    torch.testing.assert_close(hinge_loss(same, beta=0.1).losses, torch.ones(8, dtype=torch.float64))


def test_ipo_minimum_at_margin_one_over_two_beta():
    """IPO is zero, and has zero gradient, exactly at Delta_avg = 1/(2 beta); positive on both sides."""
    beta = 0.25
    target = 1 / (2 * beta)  # = 2

    def loss_at(delta_avg):
        pc = torch.tensor([delta_avg * 4.0], dtype=torch.float64, requires_grad=True)
        lp = PairLogps(pc, t(0.0), t(0.0), t(0.0), torch.tensor([4]), torch.tensor([3]))
        value = ipo_loss(lp, beta=beta).losses.sum()
        value.backward()
        return value.item(), pc.grad.item()

    value, grad = loss_at(target)
    assert value == pytest.approx(0.0, abs=1e-12) and grad == pytest.approx(0.0, abs=1e-12)
    assert loss_at(target - 0.1)[0] > 0 and loss_at(target + 0.1)[0] > 0
    assert loss_at(target - 0.1)[1] < 0 < loss_at(target + 0.1)[1]


def test_robust_is_unbiased_under_flips(random_pair):
    """E over flips (prob eps) of the robust loss equals the clean DPO loss (Chowdhury et al. Lemma)."""
    lp = random_pair(8, seed=5)
    eps = 0.2
    swapped = PairLogps(lp.policy_rejected, lp.policy_chosen, lp.ref_rejected, lp.ref_chosen,
                        lp.rejected_tokens, lp.chosen_tokens)
    expected = (1 - eps) * robust_loss(lp, beta=0.1, label_smoothing=eps).losses \
        + eps * robust_loss(swapped, beta=0.1, label_smoothing=eps).losses
    torch.testing.assert_close(expected, dpo_loss(lp, beta=0.1).losses)


def test_bad_hyperparameters_raise_user_error():
    with pytest.raises(UserError, match="label_smoothing"):
        robust_loss(HAND, beta=0.1, label_smoothing=0.5)
    with pytest.raises(UserError, match="beta"):
        dpo_loss(HAND, beta=0.0)
    with pytest.raises(UserError, match="rpo_alpha"):
        rpo_loss(HAND, beta=0.1, rpo_alpha=-1.0)


def test_missing_reference_or_tokens_is_a_clear_error():
    with pytest.raises(ValueError, match="ref_chosen"):
        dpo_loss(PairLogps(t(-1.0), t(-2.0)), beta=0.1)
    with pytest.raises(ValueError, match="chosen_tokens"):
        ipo_loss(replace(HAND, chosen_tokens=None), beta=0.1)


# ---------------------------------------------------------------- TRL 1.16


@pytest.mark.parametrize(
    ("fn", "kw", "trl_type"),
    [
        (dpo_loss, {"beta": 0.1}, "sigmoid"),
        (ipo_loss, {"beta": 0.1}, "ipo"),
        (hinge_loss, {"beta": 0.2}, "hinge"),
        (robust_loss, {"beta": 0.1, "label_smoothing": 0.2}, "robust"),
    ],
)
def test_matches_trl_dpo_trainer(random_pair, trl_dpo_loss, fn, kw, trl_type):
    lp = random_pair(8, seed=6)
    out = fn(lp, **kw)
    loss, metrics = trl_dpo_loss(lp, [trl_type], **kw)
    # The harness really fed TRL our log-probs (not zeros): its logged mean log-prob is ours.
    assert metrics["logps/chosen"] == pytest.approx(lp.policy_chosen.mean().item(), abs=1e-9)
    assert out.losses.mean().item() == pytest.approx(loss.item(), abs=1e-5)
    assert out.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"], abs=1e-5)
    assert out.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"], abs=1e-5)


def test_cdpo_matches_trl(random_pair, trl_cpo_loss):
    """TRL 1.16's DPO "sigmoid" dropped label smoothing; its CPO "sigmoid" loss keeps the cDPO form,
    so feed it the log-ratios in place of log-probs."""
    lp = random_pair(8, seed=7)
    rho_c, rho_r = lp.policy_chosen - lp.ref_chosen, lp.policy_rejected - lp.ref_rejected
    loss, _ = trl_cpo_loss(rho_c, rho_r, loss_type="sigmoid", beta=0.3, label_smoothing=0.15)
    ours = dpo_loss(lp, beta=0.3, label_smoothing=0.15).losses.mean()
    assert ours.item() == pytest.approx(loss.item(), abs=1e-5)


def test_rpo_matches_trl_sigmoid_plus_sft(random_pair, trl_dpo_loss):
    """TRL 1.16 spells RPO as loss_type ["sigmoid", "sft"] with weights [1, alpha]. Its NLL averages
    over the batch's tokens, ours per sequence: equal when the chosen lengths are equal."""
    lp = random_pair(8, seed=8, equal_chosen_lengths=True)
    loss, _ = trl_dpo_loss(lp, ["sigmoid", "sft"], beta=0.1, loss_weights=[1.0, 0.6])
    assert rpo_loss(lp, beta=0.1, rpo_alpha=0.6).losses.mean().item() == pytest.approx(loss.item(), abs=1e-5)


# ---------------------------------------------------------------- DPOP (DPO-Positive)


def test_dpop_hand_computed():
    """HAND has rho_c = +1 (the chosen answer is above the reference): no penalty, plain DPO's
    0.5981388694. With pc = -12 instead: rho_c = -1, rho_r = -1, Delta = 0, penalty = 1; lambda = 5,
    beta = 0.1 -> z = 0.1 * (0 - 5) = -0.5; loss = log(1 + e^0.5) = 0.9740769842."""
    from alignkit.losses import dpop_loss

    out = dpop_loss(HAND, beta=0.1, dpop_lambda=5.0)
    assert out.losses.item() == pytest.approx(0.5981388694, abs=1e-9)
    assert out.extra["dpop_penalty"].item() == 0.0
    fallen = replace(HAND, policy_chosen=t(-12.0))
    out = dpop_loss(fallen, beta=0.1, dpop_lambda=5.0)
    assert out.losses.item() == pytest.approx(0.9740769842, abs=1e-9)
    assert out.extra["dpop_penalty"].item() == pytest.approx(1.0)
    assert out.chosen_rewards.item() == pytest.approx(-0.1)  # rewards stay beta * rho, no penalty


def test_dpop_limits_and_gradient(random_pair):
    """lambda = 0 is plain DPO; where the chosen answer fell below the reference the penalty raises the
    loss and pushes the chosen log-prob up harder than DPO does; float64 gradcheck."""
    from alignkit.losses import dpop_loss

    random_pair = random_pair(16, 3)
    torch.testing.assert_close(dpop_loss(random_pair, beta=0.3, dpop_lambda=0.0).losses,
                               dpo_loss(random_pair, beta=0.3).losses)
    pc = torch.tensor([-12.0], dtype=torch.float64, requires_grad=True)
    fallen = replace(HAND, policy_chosen=pc)
    dpop_loss(fallen, beta=0.1, dpop_lambda=5.0).losses.sum().backward()
    g_dpop = pc.grad.clone()
    pc.grad = None
    dpo_loss(fallen, beta=0.1).losses.sum().backward()
    assert g_dpop.item() < pc.grad.item() < 0  # both raise pc; DPOP harder
    lp = PairLogps(*(x.detach().clone().requires_grad_(True) for x in (
        random_pair.policy_chosen, random_pair.policy_rejected)), random_pair.ref_chosen, random_pair.ref_rejected)
    assert gradcheck(lambda a, b: dpop_loss(PairLogps(a, b, lp.ref_chosen, lp.ref_rejected), beta=0.2,
                                            dpop_lambda=3.0).losses, (lp.policy_chosen, lp.policy_rejected))
    with pytest.raises(UserError, match="dpop_lambda"):
        dpop_loss(random_pair, dpop_lambda=-1.0)
