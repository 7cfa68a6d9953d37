"""Method-aware defaults of the run config: they fill only fields the config leaves unset."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alignkit.config import SIMPO_BETA, RunConfig, dump_config, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_simpo_without_beta_gets_the_simpo_beta(tmp_path):
    path = tmp_path / "simpo.yaml"
    path.write_text("method: simpo\ntrain:\n  learning_rate: 5.0e-5\n")
    cfg = load_config(path)
    assert SIMPO_BETA == 2.0 and cfg.train.beta == 2.0
    assert cfg.train.simpo_gamma / cfg.train.beta == pytest.approx(0.5)  # the paper's gamma/beta
    assert load_config(None, ["method=simpo"]).train.beta == 2.0
    # what the run writes (config.yaml) reloads to the same beta, now explicit
    assert RunConfig.model_validate(yaml.safe_load(dump_config(cfg))).train.beta == 2.0


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.5])
def test_an_explicit_beta_is_kept_for_simpo(beta):
    assert load_config(None, ["method=simpo", f"train.beta={beta}"]).train.beta == beta
    assert RunConfig.model_validate({"method": "simpo", "train": {"beta": beta}}).train.beta == beta


@pytest.mark.parametrize("method", ["dpo", "ipo", "rpo", "cpo", "kto"])
def test_other_methods_keep_the_generic_beta(method):
    assert load_config(None, [f"method={method}"]).train.beta == 0.1


def test_the_simpo_example_sets_the_same_beta():
    assert load_config(ROOT / "examples/task_api/simpo.yaml").train.beta == SIMPO_BETA
