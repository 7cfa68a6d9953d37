"""Reference-free pairwise losses: SimPO and CPO.

Both score a completion by the policy's own log-likelihood, so they need no reference model.
TRL 1.16 implements both in ``trl.experimental.cpo.CPOTrainer.cpo_loss`` ("simpo" and "sigmoid"
loss types); the formulas here match it. Both keep TRL's optional label smoothing (the cDPO form,
``-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)``), which reduces to the papers' loss at eps = 0.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from alignkit.losses.dpo import LossOutput, PairLogps, check_hparam, require
from alignkit.losses.sft import average_logps, sequence_nll


def _smoothed_logistic(z: Tensor, eps: float) -> Tensor:
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def simpo_loss(
    logps: PairLogps, *, beta: float = 2.0, simpo_gamma: float = 1.0, label_smoothing: float = 0.0
) -> LossOutput:
    """SimPO (Meng et al. 2024, arXiv:2405.14734, eq. 6).

        r(y) = beta * log pi(y|x) / |y|                       (eq. 4, length-normalised reward)
        loss = -log sigmoid(r(y_c) - r(y_r) - gamma)

    ``simpo_gamma`` is the paper's gamma, the target reward margin in reward units, exactly as TRL's
    ``CPOConfig.simpo_gamma`` (TRL computes ``beta * (avg_c - avg_r - gamma / beta)``, the same thing).
    The paper reports its tuned value as the ratio gamma / beta (e.g. 0.5 with beta = 2.0, i.e.
    ``simpo_gamma = 1.0``, our defaults); convert a paper ratio with ``simpo_gamma = ratio * beta``.
    TRL's CPOTrainer adds ``cpo_alpha * NLL`` (default cpo_alpha 1.0) to every loss type; this is pure
    SimPO, so it equals TRL with ``cpo_alpha = 0``.

    Shapes: ``(b,)`` -> ``(b,)``; needs `chosen_tokens` and `rejected_tokens`, not the reference.
    Rewards: ``beta * log pi(y|x) / |y|``, detached.
    """
    check_hparam("simpo", "beta", beta, low=0.0, low_open=True)
    check_hparam("simpo", "simpo_gamma", simpo_gamma, low=0.0)
    check_hparam("simpo", "label_smoothing", label_smoothing, low=0.0, high=0.5)
    pc, pr, n_c, n_r = require(logps, "simpo", "policy_chosen", "policy_rejected", "chosen_tokens",
                               "rejected_tokens")
    avg_c, avg_r = average_logps(pc, n_c), average_logps(pr, n_r)
    losses = _smoothed_logistic(beta * (avg_c - avg_r) - simpo_gamma, label_smoothing)
    return LossOutput(losses, beta * avg_c.detach(), beta * avg_r.detach())


def cpo_loss(
    logps: PairLogps, *, beta: float = 0.1, cpo_alpha: float = 1.0, label_smoothing: float = 0.0
) -> LossOutput:
    """CPO (Xu et al. 2024, arXiv:2401.08417, eq. 3 + the NLL term of its final objective).

        loss = -log sigmoid(beta * (log pi(y_c|x) - log pi(y_r|x))) + alpha * NLL,
        NLL  = -log pi(y_c|x) / |y_c|

    As in TRL's CPO "sigmoid" loss, the log-probs in the preference term are token **sums** (TRL
    length-normalises only for its "ipo" and "simpo" loss types). Deliberate deviation: TRL's NLL is
    the mean over all chosen tokens of the batch; ours is the per-example token mean (as in RPO), so
    the loss stays a per-example quantity. They are equal when a batch's chosen lengths are equal.

    Shapes: ``(b,)`` -> ``(b,)``; needs `chosen_tokens`. Rewards: ``beta * log pi(y|x)``, detached.
    Metric: ``nll`` (batch mean, detached).
    """
    check_hparam("cpo", "beta", beta, low=0.0, low_open=True)
    check_hparam("cpo", "cpo_alpha", cpo_alpha, low=0.0)
    check_hparam("cpo", "label_smoothing", label_smoothing, low=0.0, high=0.5)
    pc, pr, n_c = require(logps, "cpo", "policy_chosen", "policy_rejected", "chosen_tokens")
    nll = sequence_nll(pc, n_c)
    losses = _smoothed_logistic(beta * (pc - pr), label_smoothing) + cpo_alpha * nll
    return LossOutput(losses, beta * pc.detach(), beta * pr.detach(), {"nll": nll.detach().mean()})
