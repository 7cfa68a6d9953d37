"""Reference-free losses (simpo, cpo, orpo): hand-computed cases, plain reference, gradcheck, limits,
and equality with TRL 1.16's experimental CPO and ORPO trainers."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch.autograd import gradcheck

from alignkit.errors import UserError
from alignkit.losses import PairLogps, cpo_loss, orpo_loss, simpo_loss
from alignkit.losses.orpo import log1mexp


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def _free(pc, pr, nc, nr):
    return PairLogps(t(pc), t(pr), chosen_tokens=torch.tensor([nc]), rejected_tokens=torch.tensor([nr]))


# ---------------------------------------------------------------- hand-computed


def test_simpo_hand_computed():
    """beta=2, gamma=1; pc=-6 over 3 tokens (avg -2), pr=-12 over 4 (avg -3):
    z = 2 * (-2 - -3) - 1 = 1; loss = log(1 + e^-1) = 0.3132616875; rewards 2*avg = (-4, -6)."""
    out = simpo_loss(_free(-6.0, -12.0, 3, 4), beta=2.0, simpo_gamma=1.0)
    assert out.losses.item() == pytest.approx(0.3132616875, abs=1e-9)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == pytest.approx((-4.0, -6.0))


def test_cpo_hand_computed():
    """beta=0.1, alpha=1; pc=-10 (5 tokens), pr=-12: z = 0.1 * 2 = 0.2, log(1+e^-0.2) = 0.5981388694;
    NLL = 10/5 = 2; loss = 2.5981388694. Token sums, not averages, in the preference term."""
    out = cpo_loss(_free(-10.0, -12.0, 5, 4), beta=0.1, cpo_alpha=1.0)
    assert out.losses.item() == pytest.approx(2.5981388694, abs=1e-9)
    assert out.extra["nll"].item() == pytest.approx(2.0)
    assert out.chosen_rewards.item() == pytest.approx(-1.0)


def test_orpo_hand_computed():
    """lambda=0.1; pc=-2 over 4 tokens (avg -0.5), pr=-6 over 3 (avg -2).
    log odds(-0.5) = -0.5 - log(1 - e^-0.5) = -0.5 - log(0.3934693403) = -0.5 + 0.9327521295 = 0.4327521295
    log odds(-2)   = -2 - log(1 - e^-2) = -2 - log(0.8646647168) = -2 + 0.1454134578 = -1.8545865422
    lor = 2.2873386717; -log sigmoid(lor) = log(1 + e^-2.2873386717) = 0.0967058636
    loss = NLL 0.5 + 0.1 * 0.0967058636 = 0.5096705864."""
    out = orpo_loss(_free(-2.0, -6.0, 4, 3), orpo_lambda=0.1)
    assert out.losses.item() == pytest.approx(0.5096705864, abs=1e-9)
    assert out.extra["log_odds_chosen"].item() == pytest.approx(2.2873386717, abs=1e-9)
    assert out.extra["log_odds_ratio"].item() == pytest.approx(-0.0967058636, abs=1e-9)
    assert out.extra["nll"].item() == pytest.approx(0.5)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == pytest.approx((-0.05, -0.2))


# ---------------------------------------------------------------- plain reference


def _ref(lp: PairLogps, kind: str, beta: float, gamma: float = 0.0, alpha: float = 0.0) -> list[float]:
    out = []
    for i in range(lp.policy_chosen.shape[0]):
        pc, pr = float(lp.policy_chosen[i]), float(lp.policy_rejected[i])
        nc, nr = int(lp.chosen_tokens[i]), int(lp.rejected_tokens[i])
        if kind == "simpo":
            out.append(math.log1p(math.exp(-(beta * pc / nc - beta * pr / nr - gamma))))
        elif kind == "cpo":
            out.append(math.log1p(math.exp(-beta * (pc - pr))) - alpha * pc / nc)
        elif kind == "orpo":
            p_c, p_r = math.exp(pc / nc), math.exp(pr / nr)  # geometric-mean token probabilities
            odds_ratio = (p_c / (1 - p_c)) / (p_r / (1 - p_r))
            out.append(-pc / nc - beta * math.log(odds_ratio / (1 + odds_ratio)))
    return out


@pytest.mark.parametrize(
    ("fn", "kind", "kw", "ref_kw"),
    [
        (simpo_loss, "simpo", {"beta": 2.5, "simpo_gamma": 0.8}, {"beta": 2.5, "gamma": 0.8}),
        (cpo_loss, "cpo", {"beta": 0.1, "cpo_alpha": 0.4}, {"beta": 0.1, "alpha": 0.4}),
        (orpo_loss, "orpo", {"orpo_lambda": 0.2}, {"beta": 0.2}),
    ],
)
def test_matches_plain_reference(random_pair, fn, kind, kw, ref_kw):
    lp = replace(random_pair(16, seed=11), ref_chosen=None, ref_rejected=None)
    torch.testing.assert_close(fn(lp, **kw).losses, t(*_ref(lp, kind, **ref_kw)), rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------- gradcheck


@pytest.mark.parametrize(
    ("fn", "kw"),
    [
        (simpo_loss, {"beta": 2.0, "simpo_gamma": 1.0, "label_smoothing": 0.1}),
        (cpo_loss, {"beta": 0.1, "cpo_alpha": 1.0, "label_smoothing": 0.1}),
        (orpo_loss, {"orpo_lambda": 0.1}),
    ],
)
def test_gradcheck(random_pair, fn, kw):
    lp = random_pair(6, seed=12)
    inputs = (lp.policy_chosen.clone().requires_grad_(True), lp.policy_rejected.clone().requires_grad_(True))

    def f(pc, pr):
        return fn(PairLogps(pc, pr, chosen_tokens=lp.chosen_tokens, rejected_tokens=lp.rejected_tokens),
                  **kw).losses

    assert gradcheck(f, inputs)


# ---------------------------------------------------------------- limits and numerics


def test_simpo_gamma_zero_and_equal_averages_gives_log2():
    out = simpo_loss(_free(-6.0, -8.0, 3, 4), beta=2.0, simpo_gamma=0.0)  # avg -2 both
    assert out.losses.item() == pytest.approx(math.log(2))


def test_simpo_is_length_normalised():
    """Repeating every token twice (sum doubles, count doubles) leaves SimPO unchanged; CPO changes."""
    a, b = _free(-6.0, -12.0, 3, 4), _free(-12.0, -24.0, 6, 8)
    assert simpo_loss(a).losses.item() == pytest.approx(simpo_loss(b).losses.item())
    assert cpo_loss(a, cpo_alpha=0.0).losses.item() != pytest.approx(cpo_loss(b, cpo_alpha=0.0).losses.item())


def test_cpo_alpha_zero_is_pure_preference_term(random_pair):
    lp = random_pair(8, seed=13)
    expected = -torch.nn.functional.logsigmoid(0.1 * (lp.policy_chosen - lp.policy_rejected))
    torch.testing.assert_close(cpo_loss(lp, beta=0.1, cpo_alpha=0.0).losses, expected)


def test_orpo_lambda_zero_is_sft_and_equal_answers_cost_log2_lambda():
    same = _free(-3.0, -3.0, 3, 3)
    assert orpo_loss(same, orpo_lambda=0.0).losses.item() == pytest.approx(1.0)
    assert orpo_loss(same, orpo_lambda=0.5).losses.item() == pytest.approx(1.0 + 0.5 * math.log(2))


def _log1mexp_reference(x: float) -> float:
    # Near 0, expm1 is exact enough; away from it, the series log(1 - y) = -sum y^k / k with y = e^x.
    if x > -0.5:
        return math.log(-math.expm1(x))
    y = math.exp(x)
    return -math.fsum(y**k / k for k in range(1, 200))


def test_log1mexp_is_accurate_on_both_branches():
    x = t(-1e-10, -1e-3, -0.3, -0.5, -0.7, -5.0, -50.0)
    expected = t(*[_log1mexp_reference(v) for v in x.tolist()])
    torch.testing.assert_close(log1mexp(x), expected, rtol=1e-12, atol=0)


def test_orpo_bf16_is_computed_in_float32():
    lp = _free(-1e-3, -6.0, 4, 3)
    lp = replace(lp, policy_chosen=lp.policy_chosen.bfloat16(), policy_rejected=lp.policy_rejected.bfloat16())
    out = orpo_loss(lp, orpo_lambda=0.1)
    assert out.losses.dtype == torch.bfloat16 and torch.isfinite(out.losses).all()


def test_bad_hyperparameters_raise_user_error():
    with pytest.raises(UserError, match="simpo_gamma"):
        simpo_loss(_free(-1.0, -2.0, 1, 1), simpo_gamma=-1.0)
    with pytest.raises(UserError, match="orpo_lambda"):
        orpo_loss(_free(-1.0, -2.0, 1, 1), orpo_lambda=float("nan"))


# ---------------------------------------------------------------- TRL 1.16


def test_simpo_matches_trl_cpo_simpo(random_pair, trl_cpo_loss):
    """TRL's CPO loss_type="simpo" averages log-probs per token and subtracts simpo_gamma / beta inside
    beta * (...): the same gamma as ours. cpo_alpha=0 makes it pure SimPO."""
    lp = random_pair(8, seed=14)
    avg_c, avg_r = lp.policy_chosen / lp.chosen_tokens, lp.policy_rejected / lp.rejected_tokens
    for ls in (0.0, 0.1):
        loss, metrics = trl_cpo_loss(avg_c, avg_r, loss_type="simpo", beta=2.0, simpo_gamma=1.2,
                                     label_smoothing=ls)
        out = simpo_loss(lp, beta=2.0, simpo_gamma=1.2, label_smoothing=ls)
        assert out.losses.mean().item() == pytest.approx(loss.item(), abs=1e-5)
        assert out.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"], abs=1e-5)


def test_cpo_matches_trl_cpo(random_pair, trl_cpo_loss):
    """TRL's NLL is the token mean over the batch's chosen tokens; with equal chosen lengths it is the
    mean of our per-sequence NLL. The preference term is also checked with unequal lengths."""
    lp = random_pair(8, seed=15, equal_chosen_lengths=True)
    trl_nll = -lp.policy_chosen.sum() / lp.chosen_tokens.sum()
    loss, metrics = trl_cpo_loss(lp.policy_chosen, lp.policy_rejected, loss_type="sigmoid", beta=0.1,
                                 cpo_alpha=0.7, label_smoothing=0.05, nll=trl_nll)
    out = cpo_loss(lp, beta=0.1, cpo_alpha=0.7, label_smoothing=0.05)
    assert out.losses.mean().item() == pytest.approx(loss.item(), abs=1e-5)
    assert out.extra["nll"].item() == pytest.approx(metrics["nll_loss"], abs=1e-5)
    assert out.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"], abs=1e-5)

    lp = random_pair(8, seed=16)
    loss, _ = trl_cpo_loss(lp.policy_chosen, lp.policy_rejected, loss_type="sigmoid", beta=0.1, cpo_alpha=0.0)
    assert cpo_loss(lp, beta=0.1, cpo_alpha=0.0).losses.mean().item() == pytest.approx(loss.item(), abs=1e-5)


def test_orpo_matches_trl_orpo(random_pair, trl_orpo_loss):
    """Same caveat as CPO for the NLL (TRL: token mean over prompt + completion of the batch; fed here
    as the completion-token mean with equal chosen lengths). Metrics use TRL's names and meaning."""
    lp = random_pair(8, seed=17, equal_chosen_lengths=True)
    avg_c, avg_r = lp.policy_chosen / lp.chosen_tokens, lp.policy_rejected / lp.rejected_tokens
    trl_nll = -lp.policy_chosen.sum() / lp.chosen_tokens.sum()
    loss, metrics = trl_orpo_loss(avg_c, avg_r, beta=0.25, nll=trl_nll)
    out = orpo_loss(lp, orpo_lambda=0.25)
    assert out.losses.mean().item() == pytest.approx(loss.item(), abs=1e-5)
    for name in ("log_odds_ratio", "log_odds_chosen"):
        assert out.extra[name].item() == pytest.approx(metrics[name], abs=1e-5)
    assert out.extra["nll"].item() == pytest.approx(metrics["nll_loss"], abs=1e-5)
    assert out.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"], abs=1e-5)
