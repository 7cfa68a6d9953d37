"""KTO in the trainer: unpaired, labelled completions (Ethayarajh et al. 2024, arXiv:2402.01306).

The objective follows the protocol of `alignkit.train.objectives` (`collate`, `weight`, `loss`,
`kind`, `eval_offset`). What is particular to KTO is the reference point z0, an estimate of
KL(policy || reference): the mean log-ratio of *mismatched* (prompt, completion) pairs built inside
the same micro-batch by rotating the completions by one, exactly as TRL 1.16 does
(`KTOTrainer._prepare_dataset`, `add_kl_completion_ids`):

    (x_1, y_1), ..., (x_n, y_n)  ->  (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1})

so the mismatched completions are the same set as the matched ones, each under another prompt.
Deliberate differences from TRL:
- TRL rotates within fixed dataset chunks of `per_device_train_batch_size` (hence its sequential
  sampler); we rotate within the micro-batch actually trained, which is what TRL's comment asks for
  ("the mismatched outputs y' ... should be the same set as the matched outputs y ... in that batch").
- Under data parallelism TRL averages z0 over processes; ours is per process micro-batch (an
  all-reduce here would deadlock the main-process-only evaluation).
- Because z0 depends on which rows share a micro-batch, batch 1 x 8 accumulation is *not* equal to
  8 x 1 for KTO (it is not in TRL either). A micro-batch of one row pairs the completion with its own
  prompt, so z0 = max(0, r): the trainer refuses `micro_batch_size < 2`, like TRL.

Forward passes per micro-batch: the policy on the matched rows (with gradient), the policy on the
mismatched rows (under `no_grad`: z0 is a detached baseline, as in TRL), and one reference forward in
which each row is ``[prompt, completion, mismatched completion]`` with prefix sharing
(`collate_pairs` layout), so the reference computes each prompt once for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data.collate import Batch, collate_pairs, collate_single
from alignkit.errors import UserError
from alignkit.losses import KTOLogps, kto_loss


@dataclass
class _Seq:
    prompt_ids: list[int]
    completion_ids: list[int]


@dataclass
class _MatchedAndKL:
    """One prompt with its own completion ("chosen" slot) and the mismatched one ("rejected" slot)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def mismatched(items) -> list[_Seq]:
    """TRL's KL rows: prompt i with the completion of row i-1 (cyclic). ``(n,)`` items -> ``(n,)``."""
    n = len(items)
    return [_Seq(items[i].prompt_ids, items[(i - 1) % n].completion_ids) for i in range(n)]


@dataclass
class KTOBatch:
    """The tensors of one KTO micro-batch.

    policy:    `single` layout, segment i = (prompt i, completion i).
    kl:        `single` layout, segment i = (prompt i, completion i-1).
    reference: `pairs` layout, segment 2i = matched row i, 2i+1 = mismatched row i.
    labels:    ``(b,)`` bool, True = desirable.
    """

    policy: Batch
    kl: Batch
    reference: Batch
    labels: torch.Tensor

    def to(self, device) -> KTOBatch:
        return KTOBatch(self.policy.to(device), self.kl.to(device), self.reference.to(device),
                        self.labels.to(device))

    # The loop's throughput counters: the tokens being trained on (the matched rows).
    @property
    def n_tokens(self) -> int:
        return self.policy.n_tokens

    @property
    def n_padded(self) -> int:
        return self.policy.n_padded


class KTOObjective:
    """KTO loss over rows with `prompt_ids`, `completion_ids`, `label` (e.g. `TokenizedKTO`).

    Weight = rows, so the logged `loss` is the mean over the step's rows (TRL: `losses.nanmean()`).

    Metrics: the loop divides every metric sum by the step's rows. Means over the desirable (or
    undesirable) rows only cannot be written as such sums, so `loss` returns, as TRL does before its
    `log`, the sums `rewards/chosen_sum`, `logps/chosen_sum` (and `_rejected_`) and the count
    `desirable_fraction` (a per-row count: after the division, the share of desirable rows). Their
    ratio is exact whatever the accumulation; `finalize_metrics` turns them into `rewards/chosen`,
    `rewards/rejected`, `rewards/margins`, `logps/chosen`, `logps/rejected`. `kl` is z0 weighted by the
    micro-batch's rows, i.e. the row-weighted mean of the micro-batches' z0.
    """

    kind = "kto"
    eval_offset = 0  # unused: KTO has no precomputed reference table

    def __init__(self, hparams: dict, pad_id: int, reference, shared: bool = True):
        if reference is None:
            raise UserError("method kto needs a reference model", where="config field train.reference",
                            hint="use adapter (LoRA) or copy")
        if getattr(reference, "kind", None) == "precomputed":
            raise UserError("reference 'precomputed' is not supported for kto yet: its KL reference point "
                            "pairs each completion with another row of the same micro-batch",
                            where="config field train.reference",
                            hint="use adapter (with LoRA) or copy (full fine-tuning)")
        self.hparams = {k: hparams[k] for k in ("beta", "kto_desirable_weight", "kto_undesirable_weight")}
        self.pad_id = pad_id
        self.reference = reference
        self.shared = shared

    def collate(self, items) -> KTOBatch:
        kl = mismatched(items)
        both = [_MatchedAndKL(it.prompt_ids, it.completion_ids, k.completion_ids) for it, k in zip(items, kl, strict=True)]
        return KTOBatch(policy=collate_single(items, self.pad_id), kl=collate_single(kl, self.pad_id),
                        reference=collate_pairs(both, self.pad_id, shared=self.shared),
                        labels=torch.tensor([bool(it.label) for it in items], dtype=torch.bool))

    def weight(self, items) -> float:
        return float(len(items))

    def logps(self, forward, model, batch: KTOBatch, ids: list[int]) -> KTOLogps:
        """The four log-prob vectors of the micro-batch, each ``(b,)``."""
        policy, _ = forward(batch.policy)
        with torch.no_grad():
            policy_kl, _ = forward(batch.kl)  # z0 is a detached baseline: no graph, as in TRL
            ref = self.reference.logps(model, batch.reference, ids).to(policy.dtype)
        return KTOLogps(policy=policy, ref=ref[0::2], labels=batch.labels,
                        policy_kl=policy_kl.to(policy.dtype), ref_kl=ref[1::2])

    def loss(self, forward, model, batch: KTOBatch, ids: list[int]):
        x = self.logps(forward, model, batch, ids)
        out = kto_loss(x, **self.hparams)
        d = batch.labels
        lp = x.policy.detach()
        n = len(ids)
        metrics = {
            "loss": out.losses.detach().sum(),
            "kl": out.extra["kl"] * n,
            "rewards/chosen_sum": out.chosen_rewards.sum(), "rewards/rejected_sum": out.rejected_rewards.sum(),
            "logps/chosen_sum": lp[d].sum(), "logps/rejected_sum": lp[~d].sum(),
            "desirable_fraction": d.sum().float(),
        }
        return out.losses.sum(), metrics

    @staticmethod
    def finalize_metrics(row: dict) -> dict:
        """Per-row means from the loop (``sum / rows``) -> TRL's metric names, exact means.

        ``rewards/chosen = rewards/chosen_sum / desirable_fraction``: both were divided by the same
        row count, so it cancels. A side with no rows in the step gets no mean (as TRL).
        """
        out = {k: v for k, v in row.items() if not k.endswith("_sum")}
        frac = row.get("desirable_fraction")
        if frac is None:
            return row
        for side, share in (("chosen", frac), ("rejected", 1.0 - frac)):
            if share > 1e-12:
                for m in ("rewards", "logps"):
                    out[f"{m}/{side}"] = row[f"{m}/{side}_sum"] / share
        if "rewards/chosen" in out and "rewards/rejected" in out:
            out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
        return out
