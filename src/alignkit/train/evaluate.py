"""Preference metrics on held-out items during training (`eval/*` rows of log.jsonl)."""

from __future__ import annotations

import torch

from alignkit.train.objectives import PolicyForward


@torch.no_grad()
def pair_metrics(model, objective, items, batch_size: int, device) -> dict[str, float]:
    """Mean of the objective's metrics over `items`, keys prefixed `eval/`."""
    was_training = model.training
    model.eval()
    forward = getattr(objective, "make_forward", PolicyForward)(model)
    sums: dict[str, float] = {}
    total = 0.0
    offset = getattr(objective, "eval_offset", 0)
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        batch = objective.collate(chunk).to(device)
        ids = list(range(offset + i, offset + i + len(chunk)))
        _, metrics = objective.loss(forward, model, batch, ids)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        total += objective.weight(chunk)
    model.train(was_training)
    means = {k: v / max(total, 1) for k, v in sums.items()}
    if hasattr(objective, "finalize_metrics"):
        means = objective.finalize_metrics(means)
    return {f"eval/{k}": v for k, v in means.items()}
