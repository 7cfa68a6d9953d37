"""SFT completion NLL (token-weighted, accumulation-safe) and the Bradley-Terry reward-model loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from alignkit.errors import UserError
from alignkit.losses import PairLogps, bradley_terry_loss, completion_nll


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


# ---------------------------------------------------------------- completion_nll


def test_completion_nll_hand_computed():
    """logps (-3, -9) over (1, 2) tokens: token-weighted (3 + 9) / 3 = 4; the mean of per-sequence
    means would be (3 + 4.5) / 2 = 3.75, which weighs the short answer's token three times as much."""
    assert completion_nll(t(-3.0, -9.0), torch.tensor([1, 2])).item() == pytest.approx(4.0)


def test_completion_nll_equals_cross_entropy_on_real_logits():
    """Reference: torch's cross-entropy with ignore_index over the same tokens (what causal-LM SFT uses)."""
    g = torch.Generator().manual_seed(31)
    logits = torch.randn(4, 7, 11, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 11, (4, 7), generator=g)
    mask = torch.rand(4, 7, generator=g) < 0.6
    mask[:, 0] = True
    per_token = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    ours = completion_nll((per_token * mask).sum(1), mask.sum(1))
    expected = F.cross_entropy(logits.reshape(-1, 11), targets.masked_fill(~mask, -100).reshape(-1))
    torch.testing.assert_close(ours, expected)


def test_accumulation_1x8_equals_8x1():
    """Eight micro-batches of one row, each normalised by the step's total tokens, sum to the loss of
    one batch of eight, value and gradient."""
    g = torch.Generator().manual_seed(32)
    n = torch.randint(1, 30, (8,), generator=g)
    logps = (-torch.rand(8, generator=g, dtype=torch.float64) * n).requires_grad_(True)
    full = completion_nll(logps, n)
    (full_grad,) = torch.autograd.grad(full, logps)
    parts = [completion_nll(logps[i : i + 1], n[i : i + 1], num_tokens=n.sum()) for i in range(8)]
    accumulated = torch.stack(parts).sum()
    (acc_grad,) = torch.autograd.grad(accumulated, logps)
    torch.testing.assert_close(accumulated, full)
    torch.testing.assert_close(acc_grad, full_grad)


def test_completion_nll_gradcheck_and_empty_batch():
    n = torch.tensor([3, 1, 4])
    assert gradcheck(lambda x: completion_nll(x, n), (t(-1.0, -2.0, -3.0).requires_grad_(True),))
    assert completion_nll(t(), torch.tensor([], dtype=torch.long)).item() == 0.0


def test_completion_nll_matches_trl_dpo_sft_loss(random_pair, trl_dpo_loss):
    """TRL 1.16's DPO loss_type "sft": the mean NLL over all chosen completion tokens of the batch."""
    lp = random_pair(8, seed=33)
    loss, _ = trl_dpo_loss(lp, ["sft"], beta=0.1)
    assert completion_nll(lp.policy_chosen, lp.chosen_tokens).item() == pytest.approx(loss.item(), abs=1e-5)


def test_pair_types_importable():
    assert PairLogps(t(-1.0), t(-2.0)).ref_chosen is None


# ---------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_hand_computed():
    """r_c=2, r_r=0, margin 0.5: -log sigmoid(1.5) = log(1 + e^-1.5) = 0.2014132780;
    with center coefficient 0.01: + 0.01 * (2 + 0)^2 = 0.2414132780."""
    out = bradley_terry_loss(t(2.0), t(0.0), margin=t(0.5))
    assert out.losses.item() == pytest.approx(0.2014132780, abs=1e-9)
    centred = bradley_terry_loss(t(2.0), t(0.0), margin=0.5, center_rewards_coefficient=0.01)
    assert centred.losses.item() == pytest.approx(0.2414132780, abs=1e-9)


def test_bradley_terry_reference_limits_and_gradcheck():
    g = torch.Generator().manual_seed(34)
    rc, rr, m = (torch.randn(10, generator=g, dtype=torch.float64) for _ in range(3))
    expected = [-math.log(1 / (1 + math.exp(-(a - b - c)))) for a, b, c in zip(rc.tolist(), rr.tolist(), m.tolist(),
                                                                                 strict=True)]
    torch.testing.assert_close(bradley_terry_loss(rc, rr, margin=m).losses, t(*expected))
    torch.testing.assert_close(bradley_terry_loss(rc, rc).losses, torch.full((10,), math.log(2), dtype=torch.float64))
    inputs = (rc.clone().requires_grad_(True), rr.clone().requires_grad_(True))
    assert gradcheck(lambda a, b: bradley_terry_loss(a, b, margin=m, center_rewards_coefficient=0.1).losses, inputs)
    with pytest.raises(UserError, match="center_rewards_coefficient"):
        bradley_terry_loss(rc, rr, center_rewards_coefficient=-1.0)


@pytest.mark.parametrize(("use_margin", "center"), [(False, None), (True, 0.01)])
def test_bradley_terry_matches_trl_reward_trainer(trl_reward_loss, use_margin, center):
    g = torch.Generator().manual_seed(35)
    rc, rr = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    margin = torch.rand(8, generator=g, dtype=torch.float64) if use_margin else None
    loss = trl_reward_loss(rc, rr, margin=margin, center_rewards_coefficient=center)
    ours = bradley_terry_loss(rc, rr, margin=margin, center_rewards_coefficient=center or 0.0)
    assert ours.losses.mean().item() == pytest.approx(loss.item(), abs=1e-5)
