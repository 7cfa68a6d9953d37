"""KTO: Kahneman-Tversky optimisation on unpaired, labelled completions (Ethayarajh et al. 2024,
arXiv:2402.01306, eq. 7 as TRL numbers it).

Each row is one completion with a label: desirable (True) or undesirable (False). With the implied
reward ``r = log pi(y|x) - log pi_ref(y|x)`` and the reference point ``z0``, an estimate of
``KL(pi || pi_ref)``:

    desirable:    loss = lambda_D * (1 - sigmoid(beta * (r - z0)))
    undesirable:  loss = lambda_U * (1 - sigmoid(beta * (z0 - r)))

``z0`` is estimated from mismatched pairs (prompt x_i with the completion of another row), as the
batch mean of ``log pi(y'|x) - log pi_ref(y'|x)``, clamped at 0 and detached: it is a baseline, not
something to optimise (as in the paper and TRL ``KTOTrainer._compute_loss``, loss_type "kto").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignkit.losses.dpo import LossOutput, check_hparam


@dataclass
class KTOLogps:
    """Per-sequence log-probs of a batch of unpaired rows.

    Attributes:
        policy: ``(b,)`` sum of completion log-probs under the policy.
        ref: ``(b,)`` the same under the reference model.
        labels: ``(b,)`` bool, True for a desirable completion.
        policy_kl: ``(m,)`` policy log-probs of mismatched (prompt, completion) pairs, for z0.
        ref_kl: ``(m,)`` the same under the reference. With both None, z0 = 0 (TRL without KL).
        kl: optional precomputed z0 (a scalar, e.g. already averaged over processes, as TRL
            gathers it); overrides policy_kl / ref_kl. Still clamped at 0 and detached.
    """

    policy: Tensor
    ref: Tensor
    labels: Tensor
    policy_kl: Tensor | None = None
    ref_kl: Tensor | None = None
    kl: Tensor | None = None


def kl_reference_point(policy_kl: Tensor, ref_kl: Tensor) -> Tensor:
    """KTO's z0: ``max(0, mean(policy_kl - ref_kl))``, detached. Shapes ``(m,), (m,)`` -> ``()``."""
    return (policy_kl - ref_kl).mean().detach().clamp(min=0)


def kto_loss(
    logps: KTOLogps, *, beta: float = 0.1, kto_desirable_weight: float = 1.0,
    kto_undesirable_weight: float = 1.0,
) -> LossOutput:
    """KTO loss per row, in the rows' own order.

    Returns ``LossOutput(losses (b,), chosen_rewards (n_desirable,), rejected_rewards
    (n_undesirable,), {"kl": z0})``: the rewards ``beta * r`` (detached, without z0, as TRL) of the
    desirable and the undesirable rows. They are not paired, so only their means are meaningful
    (``LossSpec.paired`` is False); TRL's ``rewards/chosen`` is the mean over desirable rows.
    The mean of `losses` equals TRL's loss (TRL concatenates desirable then undesirable rows).
    """
    check_hparam("kto", "beta", beta, low=0.0, low_open=True)
    check_hparam("kto", "kto_desirable_weight", kto_desirable_weight, low=0.0)
    check_hparam("kto", "kto_undesirable_weight", kto_undesirable_weight, low=0.0)
    if logps.policy.shape != logps.ref.shape or logps.policy.shape != logps.labels.shape:
        raise ValueError(
            f"KTOLogps shapes differ: policy {tuple(logps.policy.shape)}, ref {tuple(logps.ref.shape)}, "
            f"labels {tuple(logps.labels.shape)}"
        )
    if logps.kl is not None:
        z0 = logps.kl.detach().clamp(min=0)
    elif logps.policy_kl is not None and logps.ref_kl is not None:
        z0 = kl_reference_point(logps.policy_kl, logps.ref_kl)
    elif logps.policy_kl is None and logps.ref_kl is None:
        z0 = torch.zeros((), dtype=logps.policy.dtype, device=logps.policy.device)
    else:
        raise ValueError("KTOLogps needs both policy_kl and ref_kl, or neither")

    desirable = logps.labels.to(torch.bool)
    r = logps.policy - logps.ref
    # Desirable rows gain by r exceeding z0, undesirable ones by falling below it (eq. 7's value v).
    losses = torch.where(
        desirable,
        kto_desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
        kto_undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))),
    )
    rewards = beta * r.detach()
    return LossOutput(losses, rewards[desirable], rewards[~desirable], {"kl": z0})
