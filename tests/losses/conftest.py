"""Fixtures for the loss tests: random log-probs, and TRL 1.16's own loss code run on them.

TRL keeps most of its losses inside trainer methods that also run the model. To call that code on
log-probs we choose, the harnesses below call the methods unbound with a stand-in ``self``
(`types.SimpleNamespace` with the attributes the method reads) and, where the method runs a model,
a fake model whose "fused LM head" output carries per-token log-probs that sum to our sequence
log-probs (each completion's total spread evenly over its tokens).
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignkit.losses import KTOLogps, PairLogps

DTYPE = torch.float64
_CPU = SimpleNamespace(device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t)


def _random_pair(b: int, seed: int, *, equal_chosen_lengths: bool = False, max_tokens: int = 12) -> PairLogps:
    g = torch.Generator().manual_seed(seed)
    n_c = torch.randint(1, max_tokens + 1, (b,), generator=g)
    if equal_chosen_lengths:
        n_c = torch.full((b,), int(n_c[0]))
    n_r = torch.randint(1, max_tokens + 1, (b,), generator=g)
    # Per-token log-probs in [-3, -0.05): realistic, and strictly negative so ORPO's odds are finite.
    def seq(n):
        return -(0.05 + 2.95 * torch.rand(b, generator=g, dtype=DTYPE)) * n
    return PairLogps(seq(n_c), seq(n_r), seq(n_c), seq(n_r), n_c, n_r)


@pytest.fixture
def random_pair():
    """``random_pair(b, seed, equal_chosen_lengths=False) -> PairLogps`` in float64, tokens long."""
    return _random_pair


# ---------------------------------------------------------------- DPOTrainer._compute_loss


def _planted(logps: torch.Tensor, n: torch.Tensor):
    """(n_rows, L) completion mask with the prompt at position 0, and (n_rows, L-1) per-token log-probs
    at the shifted completion positions summing to `logps`."""
    width = int(n.max()) + 2
    pos = torch.arange(width)
    completion_mask = ((pos >= 1) & (pos <= n[:, None])).long()
    per_token = completion_mask[:, 1:].to(logps.dtype) * (logps / n.to(logps.dtype))[:, None]
    return completion_mask, per_token


class _FakeLM:
    """Returns the planted per-token log-probs, like TRL's ``fused_lm_head=True`` forward."""

    def __init__(self, per_token_by_width: dict[int, torch.Tensor]):
        self.per_token_by_width = per_token_by_width
        self.training = True

    def __call__(self, input_ids, **_):
        per_token = self.per_token_by_width[input_ids.shape[1]]
        zeros = torch.zeros_like(per_token)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                               is_top1=zeros.bool(), log_sum_sq_probs=zeros)


def trl_dpo(logps: PairLogps, loss_types, *, beta, label_smoothing=0.0, loss_weights=None):
    """TRL 1.16 ``DPOTrainer._compute_loss`` on `logps`; returns (scalar loss, metrics dict)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    logps_all = torch.cat([logps.policy_chosen, logps.policy_rejected])
    n_all = torch.cat([logps.chosen_tokens, logps.rejected_tokens])
    completion_mask, per_token = _planted(logps_all, n_all)
    model = _FakeLM({completion_mask.shape[1]: per_token})
    me = SimpleNamespace(
        model=model, accelerator=_CPU, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=list(loss_types),
        loss_weights=loss_weights or [1.0] * len(loss_types), beta=beta, label_smoothing=label_smoothing,
        use_weighting=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1, args=SimpleNamespace(gradient_checkpointing_kwargs=None),
    )
    inputs = {
        "input_ids": torch.zeros_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
        "ref_chosen_logps": logps.ref_chosen, "ref_rejected_logps": logps.ref_rejected,
    }
    loss = DPOTrainer._compute_loss(me, model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in me._metrics["train"].items()}


@pytest.fixture
def trl_dpo_loss():
    return trl_dpo


# ---------------------------------------------------------------- KTOTrainer._compute_loss


def trl_kto(logps: KTOLogps, *, beta, desirable_weight=1.0, undesirable_weight=1.0):
    """TRL 1.16 ``KTOTrainer._compute_loss`` (loss_type "kto"); returns (scalar loss, metrics)."""
    from trl.trainer.kto_trainer import KTOTrainer

    n = torch.full(logps.policy.shape, 3)
    mask, per_token = _planted(logps.policy, n)
    n_kl = torch.full(logps.policy_kl.shape, 6)  # a different width tells the fake model which call it is
    kl_mask, kl_per_token = _planted(logps.policy_kl, n_kl)
    model = _FakeLM({mask.shape[1]: per_token, kl_mask.shape[1]: kl_per_token})
    me = SimpleNamespace(
        model=model, accelerator=_CPU, aux_loss_enabled=False, calculate_KL=True, precompute_ref_logps=True,
        loss_type="kto", beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )
    me._compute_kl_logps = lambda m, batch: KTOTrainer._compute_kl_logps(me, m, batch)
    inputs = {
        "input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
        "KL_input_ids": torch.zeros_like(kl_mask), "KL_attention_mask": torch.ones_like(kl_mask),
        "KL_completion_mask": kl_mask, "label": logps.labels,
        "ref_logps": logps.ref, "ref_KL_logps": logps.ref_kl,
    }
    loss = KTOTrainer._compute_loss(me, model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in me._metrics["train"].items()}


@pytest.fixture
def trl_kto_loss():
    return trl_kto


# ---------------------------------------------------------------- CPO / ORPO (experimental)


def trl_cpo(policy_chosen, policy_rejected, *, loss_type, beta, label_smoothing=0.0, simpo_gamma=0.5,
            cpo_alpha=0.0, nll=None):
    """TRL 1.16 ``CPOTrainer.get_batch_loss_metrics`` with its forward pass stubbed to return the
    given log-probs (already averaged where TRL averages) and `nll`; returns (loss, metrics)."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    me = SimpleNamespace(alpha=0.0, accelerator=_CPU, beta=beta, label_smoothing=label_smoothing,
                         loss_type=loss_type, simpo_gamma=simpo_gamma, cpo_alpha=cpo_alpha,
                         aux_loss_enabled=False)
    me.cpo_loss = lambda c, r: CPOTrainer.cpo_loss(me, c, r)
    logits = torch.zeros(1, 1, 1)
    nll = torch.zeros(()) if nll is None else nll
    me.concatenated_forward = lambda model, batch: (policy_chosen, policy_rejected, logits, logits, nll)
    return CPOTrainer.get_batch_loss_metrics(me, None, {})


def trl_orpo(avg_chosen, avg_rejected, *, beta, nll):
    """TRL 1.16 ``ORPOTrainer.get_batch_loss_metrics`` with the forward stubbed; returns (loss, metrics)."""
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    me = SimpleNamespace(accelerator=_CPU, beta=beta, aux_loss_enabled=False)
    me.odds_ratio_loss = lambda c, r: ORPOTrainer.odds_ratio_loss(me, c, r)
    logits = torch.zeros(1, 2, 1)
    me.concatenated_forward = lambda model, batch: (avg_chosen, avg_rejected, logits, logits, nll)
    return ORPOTrainer.get_batch_loss_metrics(me, None, {})


@pytest.fixture
def trl_cpo_loss():
    return trl_cpo


@pytest.fixture
def trl_orpo_loss():
    return trl_orpo


# ---------------------------------------------------------------- RewardTrainer.compute_loss


def trl_reward(chosen_rewards, rejected_rewards, *, margin=None, center_rewards_coefficient=None):
    """TRL 1.16 ``RewardTrainer.compute_loss`` with a model that outputs the given rewards."""
    from trl.trainer.reward_trainer import RewardTrainer

    rewards = torch.cat([chosen_rewards, rejected_rewards])[:, None]
    model = SimpleNamespace(training=True)
    me = SimpleNamespace(model=model, accelerator=_CPU, _metrics={"train": defaultdict(list)},
                         _total_train_tokens=0, _tp_size=1,
                         args=SimpleNamespace(center_rewards_coefficient=center_rewards_coefficient))

    def forward(**_):
        return SimpleNamespace(logits=rewards)

    inputs = {"input_ids": torch.zeros(rewards.shape[0], 4, dtype=torch.long),
              "attention_mask": torch.ones(rewards.shape[0], 4, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin
    return RewardTrainer.compute_loss(me, forward, inputs)


@pytest.fixture
def trl_reward_loss():
    return trl_reward
