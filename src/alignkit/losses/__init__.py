"""alignkit.losses: every training objective as a pure function of per-sequence log-probs.

A preference loss takes a `PairLogps` (``(b,)`` tensors) and its hyperparameters as keyword arguments
and returns a `LossOutput` (per-example losses, detached implied rewards, scalar metrics). The trainer
looks a method up by name in `LOSSES` and passes the config fields named in `LossSpec.hparams`:

    spec = LOSSES[cfg.method]
    out = spec.fn(logps, **{name: getattr(cfg, name) for name in spec.hparams})
    loss = out.losses.mean()

Papers, equations and deliberate deviations from them and from TRL: docs/PAPERS.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from alignkit.losses.dpo import (
    LossOutput,
    PairLogps,
    dpo_loss,
    dpop_loss,
    hinge_loss,
    ipo_loss,
    robust_loss,
    rpo_loss,
)
from alignkit.losses.kto import KTOLogps, kl_reference_point, kto_loss
from alignkit.losses.orpo import orpo_loss
from alignkit.losses.reward import bradley_terry_loss
from alignkit.losses.sft import average_logps, completion_nll, sequence_nll
from alignkit.losses.simpo import cpo_loss, simpo_loss


@dataclass(frozen=True)
class LossSpec:
    """How the trainer calls one loss.

    Attributes:
        fn: the loss function, ``fn(logps, **hparams) -> LossOutput``.
        needs_reference: whether `logps` must carry reference log-probs.
        hparams: names of the keyword arguments the trainer passes from its config.
        paired: False for KTO, whose input is `KTOLogps` (unpaired rows) and whose rewards are not
            paired (compare their means only).
    """

    fn: Callable[..., LossOutput]
    needs_reference: bool
    hparams: tuple[str, ...]
    paired: bool = True


LOSSES: dict[str, LossSpec] = {
    "dpo": LossSpec(dpo_loss, True, ("beta", "label_smoothing")),
    "ipo": LossSpec(ipo_loss, True, ("beta",)),
    "hinge": LossSpec(hinge_loss, True, ("beta",)),
    "robust": LossSpec(robust_loss, True, ("beta", "label_smoothing")),
    "rpo": LossSpec(rpo_loss, True, ("beta", "rpo_alpha")),
    "dpop": LossSpec(dpop_loss, True, ("beta", "dpop_lambda")),
    "simpo": LossSpec(simpo_loss, False, ("beta", "simpo_gamma", "label_smoothing")),
    "cpo": LossSpec(cpo_loss, False, ("beta", "cpo_alpha", "label_smoothing")),
    "orpo": LossSpec(orpo_loss, False, ("orpo_lambda",)),
    "kto": LossSpec(kto_loss, True, ("beta", "kto_desirable_weight", "kto_undesirable_weight"), paired=False),
}

__all__ = [
    "LOSSES",
    "KTOLogps",
    "LossOutput",
    "LossSpec",
    "PairLogps",
    "average_logps",
    "bradley_terry_loss",
    "completion_nll",
    "dpop_loss",
    "cpo_loss",
    "dpo_loss",
    "hinge_loss",
    "ipo_loss",
    "kl_reference_point",
    "kto_loss",
    "orpo_loss",
    "robust_loss",
    "rpo_loss",
    "sequence_nll",
    "simpo_loss",
]
