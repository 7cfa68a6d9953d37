"""Negative log-likelihood of completions: the SFT objective and the NLL terms of RPO, CPO, ORPO.

Two normalisations, for two jobs:

* `completion_nll` is the SFT training loss: the **token-weighted** mean NLL over every completion
  token the optimizer step sees, ``sum_i -logp_i / sum_i n_i``. Long answers weigh by their length,
  as in plain causal-LM training (and TRL's SFTTrainer). Because a mean of per-micro-batch means is not
  the mean over the step, it takes sums and counts: the trainer passes the step's total token count
  (over all accumulation micro-batches and processes) as `num_tokens`, and the per-micro-batch results
  add up to exactly the full-batch loss. So batch 1 x 8 accumulation equals batch 8 x 1.
* `sequence_nll` is the per-example NLL, ``-logp_i / n_i`` (mean over that sequence's tokens), that the
  preference losses add per example (RPO, Pang et al. 2024; ORPO's L_SFT, Hong et al. 2024, eq. 2).
"""

from __future__ import annotations

import torch
from torch import Tensor


def completion_nll(logps_sum: Tensor, n_tokens: Tensor, *, num_tokens: Tensor | int | None = None) -> Tensor:
    """Token-weighted mean negative log-likelihood of completions.

        loss = -sum_i logps_sum_i / N,   N = num_tokens if given, else sum_i n_tokens_i

    Args:
        logps_sum: ``(b,)`` sum of log-probs of each completion's tokens.
        n_tokens: ``(b,)`` number of completion tokens of each row.
        num_tokens: the normaliser N, the total completion tokens of the whole optimizer step (all
            micro-batches, all processes). Give it under gradient accumulation so the micro-batch
            losses sum to the step's token-weighted mean; leave None for a single batch.

    Returns:
        A scalar tensor. Rows with zero tokens contribute nothing; a zero N gives 0, not NaN (an
        empty batch is a no-op step, not a crash).
    """
    if logps_sum.shape != n_tokens.shape:
        raise ValueError(f"logps_sum {tuple(logps_sum.shape)} and n_tokens {tuple(n_tokens.shape)} differ")
    total = n_tokens.sum() if num_tokens is None else torch.as_tensor(num_tokens)
    total = total.to(logps_sum.dtype).clamp(min=1)
    return -logps_sum.sum() / total


def sequence_nll(logps_sum: Tensor, n_tokens: Tensor) -> Tensor:
    """Per-example mean-token NLL, ``-logps_sum / n_tokens`` (``n`` clamped at 1), shape ``(b,)``."""
    return -logps_sum / n_tokens.to(logps_sum.dtype).clamp(min=1)


def average_logps(logps_sum: Tensor, n_tokens: Tensor) -> Tensor:
    """Per-token average log-prob, ``logps_sum / n_tokens`` (``n`` clamped at 1), shape ``(b,)``.

    The length-normalised log-likelihood of SimPO (Meng et al. 2024, eq. 4) and ORPO.
    """
    return logps_sum / n_tokens.to(logps_sum.dtype).clamp(min=1)
