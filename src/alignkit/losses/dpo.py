"""DPO and its reference-based relatives: sigmoid (cDPO), IPO, hinge (SLiC), robust DPO, RPO, DPOP.

This module also defines the types every preference loss shares (`PairLogps`, `LossOutput`), because
every paired loss in this package is a member of the DPO family.

All inputs are per-sequence sums of completion-token log-probs, shape ``(b,)``. With the log-ratios

    rho_c = log pi(y_c|x) - log pi_ref(y_c|x),   rho_r = log pi(y_r|x) - log pi_ref(y_r|x),
    Delta = rho_c - rho_r,

each loss is a function of ``beta * Delta`` (IPO: of the per-token averaged Delta), and the implied
rewards are ``beta * rho`` (Rafailov et al. 2023, eq. 5), detached. Formulas follow TRL 1.16's
``DPOTrainer._compute_loss``; deviations are listed in docs/PAPERS.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.errors import UserError
from alignkit.losses.sft import sequence_nll

_NO_METRICS: Mapping[str, Tensor] = MappingProxyType({})


@dataclass
class PairLogps:
    """Per-sequence log-probs of a batch of preference pairs.

    Attributes:
        policy_chosen: ``(b,)`` sum of log-probs of the chosen completion tokens under the policy.
        policy_rejected: ``(b,)`` the same for the rejected completion.
        ref_chosen: ``(b,)`` the same under the reference model; None for reference-free methods.
        ref_rejected: ``(b,)``.
        chosen_tokens: ``(b,)`` number of chosen completion tokens (length normalisation, NLL).
        rejected_tokens: ``(b,)``.
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_tokens: Tensor | None = None
    rejected_tokens: Tensor | None = None


class LossOutput(NamedTuple):
    """What every loss returns.

    Attributes:
        losses: ``(b,)`` per-example loss; the trainer takes the mean.
        chosen_rewards: ``(b,)`` implied reward of the chosen completion, detached.
            (KTO: ``(n_desirable,)``, see `alignkit.losses.kto`.)
        rejected_rewards: ``(b,)`` detached. (KTO: ``(n_undesirable,)``.)
        extra: scalar metrics, detached, e.g. ``{"nll": ...}``; read-only, empty by default.
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    extra: Mapping[str, Tensor] = _NO_METRICS


# ---------------------------------------------------------------- shared checks and helpers


def check_hparam(loss: str, name: str, value: float, *, low: float, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Raise `UserError` unless ``low <= value <= high`` (open ends where asked)."""
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or below or above:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise UserError(
            f"{name}={value!r} is outside {lo}{low}, {high}{hi}",
            where=f"config field {name} (loss '{loss}')",
            hint=f"set {name} to a value in {lo}{low}, {high}{hi}",
        )


def require(logps: PairLogps, loss: str, *fields: str) -> list[Tensor]:
    """Return the named fields of `logps`, all of the policy's shape; a missing one is a caller bug."""
    out = []
    for field in fields:
        value = getattr(logps, field)
        if value is None:
            raise ValueError(f"loss '{loss}' needs PairLogps.{field}, which is None")
        if value.shape != logps.policy_chosen.shape:
            raise ValueError(
                f"PairLogps.{field} has shape {tuple(value.shape)}, "
                f"expected {tuple(logps.policy_chosen.shape)} like policy_chosen"
            )
        out.append(value)
    return out


def _logratios(logps: PairLogps, loss: str) -> tuple[Tensor, Tensor]:
    pc, pr, rc, rr = require(logps, loss, "policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")
    return pc - rc, pr - rr


def _rewards(beta: float, rho_c: Tensor, rho_r: Tensor) -> tuple[Tensor, Tensor]:
    return beta * rho_c.detach(), beta * rho_r.detach()


# ---------------------------------------------------------------- the losses


def dpo_loss(logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOutput:
    """DPO, sigmoid form (Rafailov et al. 2023, arXiv:2305.18290, eq. 7), with conservative DPO.

        loss = -(1 - eps) * log sigmoid(beta * Delta) - eps * log sigmoid(-beta * Delta)

    ``eps = label_smoothing`` is cDPO (Mitchell 2023, "A note on DPO with noisy preferences"): the
    cross-entropy against labels that are flipped with probability eps. ``eps = 0`` is plain DPO.
    TRL 1.16's DPO "sigmoid" loss has no label smoothing any more; its CPO "sigmoid" loss keeps this
    exact form, which is what the tests compare against.

    Shapes: every tensor in `logps` ``(b,)`` -> losses ``(b,)``.
    """
    check_hparam("dpo", "beta", beta, low=0.0, low_open=True)
    check_hparam("dpo", "label_smoothing", label_smoothing, low=0.0, high=0.5)
    rho_c, rho_r = _logratios(logps, "dpo")
    z = beta * (rho_c - rho_r)
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return LossOutput(losses, *_rewards(beta, rho_c, rho_r))


def ipo_loss(logps: PairLogps, *, beta: float = 0.1) -> LossOutput:
    """IPO (Azar et al. 2023, arXiv:2310.12036, eq. 17; ``beta`` is the paper's tau).

        loss = (Delta_avg - 1 / (2 * beta))^2,   Delta_avg = rho_c / n_c - rho_r / n_r

    Like TRL 1.16, the log-ratios are divided by the number of completion tokens (clamped at 1): the
    squared loss of token-summed log-ratios would scale with length. TRL reports the IPO authors
    confirmed this normalised form is what the paper's results used. Rewards stay ``beta * rho``
    (unnormalised), as in TRL. The loss is minimal (zero) at ``Delta_avg = 1 / (2 beta)``.

    Shapes: ``(b,)`` -> ``(b,)``; needs `chosen_tokens` and `rejected_tokens`.
    """
    check_hparam("ipo", "beta", beta, low=0.0, low_open=True)
    rho_c, rho_r = _logratios(logps, "ipo")
    n_c, n_r = require(logps, "ipo", "chosen_tokens", "rejected_tokens")
    delta_avg = rho_c / n_c.clamp(min=1) - rho_r / n_r.clamp(min=1)
    losses = (delta_avg - 1 / (2 * beta)) ** 2
    return LossOutput(losses, *_rewards(beta, rho_c, rho_r))


def hinge_loss(logps: PairLogps, *, beta: float = 0.1) -> LossOutput:
    """SLiC hinge loss (Zhao et al. 2023, arXiv:2305.10425, rank calibration loss) on log-ratios.

        loss = max(0, 1 - beta * Delta)

    As in TRL, ``beta`` is the reciprocal of SLiC's margin delta: the loss is zero once
    ``Delta >= 1 / beta``. Shapes: ``(b,)`` -> ``(b,)``.
    """
    check_hparam("hinge", "beta", beta, low=0.0, low_open=True)
    rho_c, rho_r = _logratios(logps, "hinge")
    losses = torch.relu(1 - beta * (rho_c - rho_r))
    return LossOutput(losses, *_rewards(beta, rho_c, rho_r))


def robust_loss(logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOutput:
    """Robust DPO, rDPO (Chowdhury et al. 2024, arXiv:2403.00409): unbiased under label flips.

        loss = [-(1 - eps) * log sigmoid(beta * Delta) + eps * log sigmoid(-beta * Delta)] / (1 - 2 eps)

    ``eps = label_smoothing`` is the assumed flip rate, in [0, 0.5). Unlike cDPO the flipped term is
    subtracted, so the loss is an unbiased estimate of the clean-label DPO loss (it can be negative).
    ``eps = 0`` is plain DPO. Shapes: ``(b,)`` -> ``(b,)``.
    """
    check_hparam("robust", "beta", beta, low=0.0, low_open=True)
    check_hparam("robust", "label_smoothing", label_smoothing, low=0.0, high=0.5, high_open=True)
    rho_c, rho_r = _logratios(logps, "robust")
    z = beta * (rho_c - rho_r)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return LossOutput(losses, *_rewards(beta, rho_c, rho_r))


def rpo_loss(logps: PairLogps, *, beta: float = 0.1, rpo_alpha: float = 1.0) -> LossOutput:
    """RPO, DPO+NLL (Pang et al. 2024, "Iterative Reasoning Preference Optimization", arXiv:2404.19733).

        loss = -log sigmoid(beta * Delta) + alpha * NLL,   NLL = -log pi(y_c|x) / n_c

    The NLL is the per-token mean over each chosen completion, as in the paper. TRL 1.16 (loss_type
    ["sigmoid", "sft"], loss_weights [1, alpha]) averages over all chosen tokens of the batch instead;
    the two agree when the chosen completions of a batch have equal length. Ours keeps every term a
    per-example quantity, so accumulation over micro-batches changes nothing.

    Shapes: ``(b,)`` -> ``(b,)``; needs `chosen_tokens`. Metric: ``nll`` (batch mean, detached).
    """
    check_hparam("rpo", "rpo_alpha", rpo_alpha, low=0.0)
    out = dpo_loss(logps, beta=beta)
    (n_c,) = require(logps, "rpo", "chosen_tokens")
    nll = sequence_nll(logps.policy_chosen, n_c)
    losses = out.losses + rpo_alpha * nll
    return LossOutput(losses, out.chosen_rewards, out.rejected_rewards, {"nll": nll.detach().mean()})


def dpop_loss(logps: PairLogps, *, beta: float = 0.1, dpop_lambda: float = 50.0) -> LossOutput:
    """DPO-Positive (Pal et al. 2024, "Smaug", arXiv:2402.13228, eq. 3): DPO with a penalty, inside the
    sigmoid, on the chosen answer's log-prob falling below the reference's.

        loss = -log sigmoid(beta * (Delta - lambda * max(0, -rho_c)))

    Plain DPO can lower the likelihood of the chosen answers as long as the rejected ones fall faster
    ("likelihood displacement"); the penalty is zero while ``rho_c >= 0`` (the policy gives the chosen
    answer at least the reference's log-prob), so the loss is plain DPO there. The paper uses lambda
    50 (5 to 500 in its ablation). Rewards stay ``beta * rho`` (without the penalty). ``lambda = 0`` is
    plain DPO. Shapes: ``(b,)`` -> ``(b,)``. Metric: ``dpop_penalty`` (batch mean of max(0, -rho_c)).
    """
    check_hparam("dpop", "beta", beta, low=0.0, low_open=True)
    check_hparam("dpop", "dpop_lambda", dpop_lambda, low=0.0)
    rho_c, rho_r = _logratios(logps, "dpop")
    penalty = torch.relu(-rho_c)
    losses = -F.logsigmoid(beta * (rho_c - rho_r - dpop_lambda * penalty))
    return LossOutput(losses, *_rewards(beta, rho_c, rho_r), {"dpop_penalty": penalty.detach().mean()})
