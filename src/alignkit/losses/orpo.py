"""ORPO: odds-ratio preference optimisation (Hong et al. 2024, arXiv:2403.07691).

Reference-free and one-stage: SFT on the chosen answer plus a penalty on the log odds ratio

    odds(y|x)   = P(y|x) / (1 - P(y|x)),   P(y|x) = exp(mean token log-prob)    (eq. 4)
    L_OR        = -log sigmoid(log odds(y_c|x) - log odds(y_r|x))              (eq. 7)
    L_ORPO      = L_SFT + lambda * L_OR                                         (eq. 6)

Matches ``trl.experimental.orpo.ORPOTrainer.odds_ratio_loss`` (TRL's ``beta`` is lambda).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.losses.dpo import LossOutput, PairLogps, check_hparam, require
from alignkit.losses.sft import average_logps, sequence_nll

_LOG_HALF = -math.log(2.0)


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, stable on both sides (Maechler 2012): ``expm1`` near 0,
    ``log1p`` far from it. ``x = 0`` gives ``-inf`` (an answer of probability one has infinite odds)."""
    return torch.where(x < _LOG_HALF, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def log_odds(avg_logps: Tensor) -> Tensor:
    """``log(P / (1 - P))`` from ``log P``, shape preserved."""
    return avg_logps - log1mexp(avg_logps)


def orpo_loss(logps: PairLogps, *, orpo_lambda: float = 0.1) -> LossOutput:
    """ORPO loss per example.

        avg    = log pi(y|x) / |y|          (mean token log-prob of the completion)
        lor    = (avg_c - avg_r) - (log(1 - exp(avg_c)) - log(1 - exp(avg_r)))
        loss   = -avg_c + lambda * (-log sigmoid(lor))

    Deliberate deviations from TRL 1.16 (equal when noted): TRL's L_SFT is the token mean of the NLL
    over the chosen **prompt and completion** of the whole batch; ours is over the completion only
    (the paper's L_SFT, eq. 2, is the NLL of y_w given x) and per example. TRL casts the log-probs to
    float32 first; we compute in the input dtype but promote half precisions to float32 for the odds.

    Shapes: ``(b,)`` -> ``(b,)``; needs `chosen_tokens` and `rejected_tokens`.
    Rewards: ``lambda * avg``, detached (as TRL). Metrics (detached batch means, TRL's names):
    ``nll``; ``log_odds_ratio`` = mean of ``log sigmoid(lor)``; ``log_odds_chosen`` = mean of ``lor``.
    """
    check_hparam("orpo", "orpo_lambda", orpo_lambda, low=0.0)
    pc, pr, n_c, n_r = require(logps, "orpo", "policy_chosen", "policy_rejected", "chosen_tokens",
                               "rejected_tokens")
    dtype = pc.dtype
    if dtype in (torch.float16, torch.bfloat16):  # exp/log1p of log-probs near 0 lose all precision in half
        pc, pr = pc.float(), pr.float()
    avg_c, avg_r = average_logps(pc, n_c), average_logps(pr, n_r)
    lor = log_odds(avg_c) - log_odds(avg_r)
    ratio = F.logsigmoid(lor)
    nll = sequence_nll(pc, n_c)
    losses = (nll - orpo_lambda * ratio).to(dtype)
    extra = {"nll": nll.detach().mean(), "log_odds_ratio": ratio.detach().mean(),
             "log_odds_chosen": lor.detach().mean()}
    return LossOutput(losses, orpo_lambda * avg_c.detach(), orpo_lambda * avg_r.detach(), extra)
