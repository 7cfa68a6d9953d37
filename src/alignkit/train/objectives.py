"""What one micro-batch contributes to the loss, per method.

An objective turns tokenized items into a `Batch` and a batch into `(loss_sum, metric_sums)`. The
loop divides every micro-batch's `loss_sum` by the *step's* total weight (pairs for preference
losses, completion tokens for SFT), so the micro-batches add up to exactly the full-batch loss and
batch 1 x 8 accumulation equals batch 8 x 1.
"""

from __future__ import annotations

import torch

from alignkit.data.collate import Batch, collate_pairs, collate_single
from alignkit.logprobs import completion_logps
from alignkit.losses import LOSSES, PairLogps
from alignkit.losses.sft import completion_nll


class PolicyForward(torch.nn.Module):
    """The policy's completion log-probs as a module forward, so that accelerate's DDP/FSDP wrapper
    sees every forward (its gradient hooks depend on it)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch):
        return completion_logps(self.model, batch)


class PairBatches:
    """Batching shared by every paired objective: one (prefix-shared) row per pair, weighted by pairs."""

    pad_id: int
    shared: bool

    def collate(self, items) -> Batch:
        return collate_pairs(items, self.pad_id, shared=self.shared)

    def weight(self, items) -> float:
        return float(len(items))


class PreferenceObjective(PairBatches):
    """DPO and its relatives: any paired loss in `alignkit.losses.LOSSES`."""

    kind = "preference"
    eval_offset = 0  # index of the first eval pair in a precomputed reference table

    def __init__(self, method: str, hparams: dict, pad_id: int, reference=None, shared: bool = True):
        self.spec = LOSSES[method]
        self.hparams = {k: hparams[k] for k in self.spec.hparams}
        self.pad_id = pad_id
        self.reference = reference  # alignkit.train.reference.Reference or None (reference-free)
        self.shared = shared

    def loss(self, forward, model, batch: Batch, ids: list[int]):
        logps, n_tokens = forward(batch)
        ref = None
        if self.spec.needs_reference:
            ref = self.reference.logps(model, batch, ids).to(logps.dtype)
        x = PairLogps(policy_chosen=logps[0::2], policy_rejected=logps[1::2],
                      ref_chosen=None if ref is None else ref[0::2],
                      ref_rejected=None if ref is None else ref[1::2],
                      chosen_tokens=n_tokens[0::2], rejected_tokens=n_tokens[1::2])
        out = self.spec.fn(x, **self.hparams)
        c, r = out.chosen_rewards.detach(), out.rejected_rewards.detach()
        metrics = {
            "loss": out.losses.detach().sum(),
            "rewards/chosen": c.sum(), "rewards/rejected": r.sum(), "rewards/margins": (c - r).sum(),
            "rewards/accuracies": (c > r).float().sum(),
            "logps/chosen": x.policy_chosen.detach().sum(), "logps/rejected": x.policy_rejected.detach().sum(),
        }
        for k, v in out.extra.items():
            metrics[k] = v.detach() * len(ids)  # scalar means -> sums, so they average like the rest
        return out.losses.sum(), metrics


class SFTObjective:
    """Completion-only NLL on demonstrations, token-weighted across the whole optimizer step."""

    kind = "sft"

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def collate(self, items) -> Batch:
        return collate_single(items, self.pad_id)

    def weight(self, items) -> float:
        return float(sum(len(it.completion_ids) for it in items))

    def loss(self, forward, model, batch: Batch, ids: list[int]):
        logps, n_tokens = forward(batch)
        nll_sum = completion_nll(logps, n_tokens, num_tokens=1)  # a sum; the loop divides by the step's tokens
        return nll_sum, {"loss": nll_sum.detach()}
