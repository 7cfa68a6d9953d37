"""The LOSSES registry: the contract the trainer relies on."""

from __future__ import annotations

import inspect

import pytest
import torch

from alignkit.losses import LOSSES, KTOLogps, LossOutput, LossSpec, PairLogps

CONFIG_FIELDS = {"beta", "label_smoothing", "rpo_alpha", "dpop_lambda", "simpo_gamma", "cpo_alpha", "orpo_lambda",
                 "kto_desirable_weight", "kto_undesirable_weight"}


def test_registry_names():
    assert set(LOSSES) == {"dpo", "ipo", "hinge", "robust", "rpo", "dpop", "simpo", "cpo", "orpo", "kto"}
    assert all(isinstance(spec, LossSpec) for spec in LOSSES.values())
    assert [name for name, spec in LOSSES.items() if not spec.paired] == ["kto"]
    assert {name for name, spec in LOSSES.items() if not spec.needs_reference} == {"simpo", "cpo", "orpo"}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_hparams_are_config_fields_and_keyword_only_arguments(name):
    spec = LOSSES[name]
    params = inspect.signature(spec.fn).parameters
    assert set(spec.hparams) <= CONFIG_FIELDS
    keyword_only = {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(spec.hparams) == keyword_only, "every keyword the function takes must be listed, and no more"


def _inputs(spec: LossSpec, b: int = 4):
    g = torch.Generator().manual_seed(41)
    def lp():
        return -torch.rand(b, generator=g) * 20 - 1
    n = torch.randint(1, 9, (b,), generator=g)
    if not spec.paired:
        return KTOLogps(lp(), lp(), torch.tensor([True, False] * (b // 2)), lp(), lp())
    refs = (lp(), lp()) if spec.needs_reference else (None, None)
    return PairLogps(lp(), lp(), *refs, n, n.flip(0))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_runs_with_defaults_and_returns_the_contract(name):
    spec = LOSSES[name]
    out = spec.fn(_inputs(spec))
    assert isinstance(out, LossOutput)
    assert out.losses.shape == (4,) and torch.isfinite(out.losses).all()
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    assert all(v.dim() == 0 for v in out.extra.values())
    if spec.paired:
        assert out.chosen_rewards.shape == out.rejected_rewards.shape == (4,)


def test_extra_default_is_read_only_and_not_shared():
    out = LOSSES["dpo"].fn(_inputs(LOSSES["dpo"]))
    with pytest.raises(TypeError):
        out.extra["x"] = torch.tensor(0.0)  # type: ignore[index]


def test_metric_names():
    """The metric keys the trainer logs (documented in docs/PAPERS.md)."""
    expected = {"dpo": set(), "ipo": set(), "hinge": set(), "robust": set(), "rpo": {"nll"}, "simpo": set(),
                "dpop": {"dpop_penalty"}, "cpo": {"nll"}, "orpo": {"nll", "log_odds_ratio", "log_odds_chosen"}, "kto": {"kl"}}
    for name, spec in LOSSES.items():
        assert set(spec.fn(_inputs(spec)).extra) == expected[name], name
