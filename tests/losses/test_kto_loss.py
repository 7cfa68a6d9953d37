"""KTO: hand-computed cases, plain reference, gradcheck, the detached/clamped reference point, and
equality with TRL 1.16's KTOTrainer._compute_loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from alignkit.errors import UserError
from alignkit.losses import KTOLogps, kto_loss


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


# Row 0 desirable with r = -8 - (-10) = 2; row 1 undesirable with r = -12 - (-11) = -1.
POLICY, REF, LABELS = t(-8.0, -12.0), t(-10.0, -11.0), torch.tensor([True, False])


def test_hand_computed():
    """beta=0.1, KL rows: policy (-20, -21), ref (-21, -21) -> z0 = mean(1, 0) = 0.5.
    desirable:   1 - sigmoid(0.1 * (2 - 0.5))  = 1 - sigmoid(0.15) = 1 - 0.5374298453 = 0.4625701547
    undesirable: 2 * (1 - sigmoid(0.1 * (0.5 + 1))) = 2 * 0.4625701547 = 0.9251403093  (weight 2)
    rewards: 0.1 * r = (0.2) for the desirable row, (-0.1) for the undesirable one."""
    logps = KTOLogps(POLICY, REF, LABELS, policy_kl=t(-20.0, -21.0), ref_kl=t(-21.0, -21.0))
    out = kto_loss(logps, beta=0.1, kto_desirable_weight=1.0, kto_undesirable_weight=2.0)
    torch.testing.assert_close(out.losses, t(0.4625701547, 0.9251403093), rtol=0, atol=1e-9)
    assert out.extra["kl"].item() == pytest.approx(0.5)
    torch.testing.assert_close(out.chosen_rewards, t(0.2))
    torch.testing.assert_close(out.rejected_rewards, t(-0.1))


def test_negative_kl_estimate_is_clamped_to_zero():
    """KL rows with policy below ref: mean diff -1 -> z0 = 0.
    desirable: 1 - sigmoid(0.2) = 0.4501660027; undesirable: 2 * (1 - sigmoid(0.1)) = 0.9500416250."""
    logps = KTOLogps(POLICY, REF, LABELS, policy_kl=t(-22.0, -22.0), ref_kl=t(-21.0, -21.0))
    out = kto_loss(logps, beta=0.1, kto_undesirable_weight=2.0)
    assert out.extra["kl"].item() == 0.0
    torch.testing.assert_close(out.losses, t(0.4501660027, 0.9500416250), rtol=0, atol=1e-9)


def test_no_kl_rows_means_zero_reference_point_and_override_wins():
    plain = kto_loss(KTOLogps(POLICY, REF, LABELS), beta=0.1)
    assert plain.extra["kl"].item() == 0.0
    given = kto_loss(KTOLogps(POLICY, REF, LABELS, policy_kl=t(-99.0), ref_kl=t(0.0), kl=t(0.5)[0]), beta=0.1)
    assert given.extra["kl"].item() == 0.5


def _reference(policy, ref, labels, pkl, rkl, beta, wd, wu):
    z0 = max(0.0, sum(p - r for p, r in zip(pkl, rkl, strict=True)) / len(pkl))
    out = []
    for p, r, desirable in zip(policy, ref, labels, strict=True):
        reward = p - r
        if desirable:
            out.append(wd * (1 - 1 / (1 + math.exp(-beta * (reward - z0)))))
        else:
            out.append(wu * (1 - 1 / (1 + math.exp(-beta * (z0 - reward)))))
    return out


def _random(b: int, seed: int) -> KTOLogps:
    g = torch.Generator().manual_seed(seed)
    def lp():
        return -torch.rand(b, generator=g, dtype=torch.float64) * 30
    labels = torch.rand(b, generator=g) < 0.6
    labels[0], labels[1] = True, False  # both kinds present
    policy_kl = lp()
    return KTOLogps(lp(), lp(), labels, policy_kl=policy_kl, ref_kl=policy_kl - 2 * torch.rand(b, generator=g))


def test_matches_plain_reference():
    logps = _random(16, seed=21)
    expected = _reference(logps.policy.tolist(), logps.ref.tolist(), logps.labels.tolist(),
                          logps.policy_kl.tolist(), logps.ref_kl.tolist(), 0.3, 1.5, 0.7)
    out = kto_loss(logps, beta=0.3, kto_desirable_weight=1.5, kto_undesirable_weight=0.7)
    torch.testing.assert_close(out.losses, t(*expected), rtol=1e-10, atol=1e-12)
    assert out.chosen_rewards.shape[0] + out.rejected_rewards.shape[0] == 16


def test_gradcheck_and_reference_point_is_detached():
    logps = _random(6, seed=22)
    policy_kl = logps.policy_kl.clone().requires_grad_(True)

    def f(policy, ref):
        return kto_loss(KTOLogps(policy, ref, logps.labels, policy_kl, logps.ref_kl), beta=0.5,
                        kto_undesirable_weight=1.3).losses

    inputs = (logps.policy.clone().requires_grad_(True), logps.ref.clone().requires_grad_(True))
    assert gradcheck(f, inputs)
    f(*inputs).sum().backward()
    assert policy_kl.grad is None  # z0 is a baseline: no gradient flows into the KL rows


def test_bad_inputs():
    with pytest.raises(UserError, match="kto_desirable_weight"):
        kto_loss(KTOLogps(POLICY, REF, LABELS), kto_desirable_weight=-1.0)
    with pytest.raises(ValueError, match="both"):
        kto_loss(KTOLogps(POLICY, REF, LABELS, policy_kl=t(-1.0)))


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 1.33)])
def test_matches_trl_kto_trainer(trl_kto_loss, weights):
    logps = _random(8, seed=23)
    out = kto_loss(logps, beta=0.1, kto_desirable_weight=weights[0], kto_undesirable_weight=weights[1])
    loss, metrics = trl_kto_loss(logps, beta=0.1, desirable_weight=weights[0], undesirable_weight=weights[1])
    assert out.losses.mean().item() == pytest.approx(loss.item(), abs=1e-5)
    assert out.extra["kl"].item() == pytest.approx(metrics["kl"], abs=1e-5)
    assert out.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"], abs=1e-5)
    assert out.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"], abs=1e-5)
    assert metrics["kl"] > 0  # the harness exercised a nonzero reference point
