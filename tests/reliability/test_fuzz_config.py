"""Fuzz `alignkit.config.load_config`: random nested mappings written as YAML, random YAML text and
random `a.b=c` overrides never raise anything but `UserError`; what loads is a valid `RunConfig` that
survives a dump/load round trip.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from alignkit.config import RunConfig, dump_config, load_config
from alignkit.errors import UserError


def _paths(cls: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    out = []
    for name, f in cls.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.append(prefix + name)
            out += _paths(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


PATHS = _paths()
NAMES = sorted({p.rsplit(".", 1)[-1] for p in PATHS})
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["dpo", "sft", "kto", "cosine", "auto", "4bit", "float32", "adapter",
                                           "tensorboard", "1e-3", "0.1", "yes", "~", "null", ".inf"]),
)
KEYS = st.one_of(st.sampled_from(NAMES), st.text(max_size=8), st.integers(-3, 3))
TREES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(KEYS, inner, max_size=4)), max_leaves=12)
SECTIONS = st.dictionaries(st.sampled_from(["model", "data", "train", "eval", "lora"]),
                           st.dictionaries(st.sampled_from(NAMES), TREES, max_size=4), max_size=4)
OVERRIDE_VALUES = st.one_of(st.text(max_size=10), st.sampled_from(["1", "0", "-1", "0.5", "true", "null", "[1, 2]",
                                                                    "{a: 1}", "[", "'x", ": :", "!!python/none ''"]))
OVERRIDES = st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(PATHS + ["train.betta", "a.b.c", "", ".", "train."]),
              OVERRIDE_VALUES),
    st.text(max_size=20),
), max_size=4)

_DIR = Path(tempfile.mkdtemp(prefix="fuzz-config-"))


def _check(text: str, overrides: list[str]) -> None:
    path = _DIR / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path, overrides)
    except UserError as e:
        assert str(e)  # a message to print
        return
    assert isinstance(cfg, RunConfig)
    RunConfig.model_validate(cfg.model_dump())  # every field still valid
    path.write_text(dump_config(cfg), encoding="utf-8")
    assert load_config(path) == cfg  # what a run directory's config.yaml holds loads back the same


_FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                 database=None)


@_FUZZ
@given(data=st.one_of(SECTIONS, st.dictionaries(KEYS, TREES, max_size=5), TREES), overrides=OVERRIDES)
@example(data={"train": {"beta": 0.3}}, overrides=["train.micro_batch_size=2"])
@example(data={"train": 3}, overrides=["train.beta=0.1"])
@example(data={1: {2: 3}}, overrides=[])
@example(data={"model": {"lora": [1]}}, overrides=["model.lora.r=4"])
def test_random_mappings_load_or_raise_user_error(data, overrides):
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        assume(False)
    _check(text, overrides)


@settings(max_examples=80, deadline=None, database=None)
@given(text=st.text(max_size=60), overrides=OVERRIDES)
@example(text="&a [*a]", overrides=[])
@example(text="model: &a {lora: *a}", overrides=[])
@example(text="train: {trackers: &a [*a]}", overrides=[])
@example(text="[" * 2000, overrides=[])
@example(text="train:\n  beta: 0.3\n  beta: 0.4\n", overrides=[])
@example(text="\ufeffmethod: dpo", overrides=[])
@example(text="method: !!python/name:os.system ''", overrides=[])
def test_random_yaml_text_loads_or_raises_user_error(text, overrides):
    _check(text, overrides)


@pytest.mark.parametrize("override", ["train.learning_rate=.inf", "train.beta=.inf", "train.max_grad_norm=.inf"])
def test_non_finite_numbers_are_refused(override):
    """A .nan fails the `gt=0` bounds already; .inf passes them and would train with an infinite step."""
    with pytest.raises(UserError):
        load_config(None, [override])
