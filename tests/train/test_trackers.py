"""`train.trackers`: metrics and the run's config reach accelerate's trackers (TensorBoard tested; it
is skipped when neither tensorboard nor tensorboardX is installed), and a tracker whose package is
missing is refused up front instead of being dropped by accelerate without a word."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from tinymodels import save_tiny_checkpoint

from alignkit.config import RunConfig
from alignkit.errors import UserError
from alignkit.train.preflight import check_trackers
from alignkit.train.run import tracker_config, train

ROOT = Path(__file__).resolve().parents[2]


def make_cfg(out: Path, ckpt: Path, data: Path, trackers: list[str]) -> RunConfig:
    return RunConfig.model_validate({
        "method": "dpo", "output_dir": str(out),
        "model": {"name_or_path": str(ckpt), "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "data": {"train": str(data), "eval_fraction": 0.0, "max_length": 128, "max_prompt_length": 96},
        "train": {"learning_rate": 1e-2, "micro_batch_size": 4, "gradient_accumulation_steps": 1, "max_steps": 2,
                  "warmup_ratio": 0.0, "lr_scheduler": "constant", "trackers": trackers},
        "eval": {"enabled": False}})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("trk")
    data = tmp / "pairs.jsonl"
    data.write_text("\n".join((ROOT / "examples/task_api/data/train.jsonl").read_text().splitlines()[:8]) + "\n")
    return save_tiny_checkpoint(tmp / "tiny"), data


def test_tracker_config_is_flat_and_scalar(inputs, tmp_path):
    cfg = make_cfg(tmp_path / "r", *inputs, [])
    flat = tracker_config(cfg)
    assert flat["train.beta"] == 0.1 and flat["method"] == "dpo" and flat["model.lora.r"] == 4
    assert flat["model.lora.target_modules"] == "q_proj,v_proj" and flat["train.trackers"] == ""
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in flat.values())  # what TensorBoard takes


def test_a_tracker_without_its_package_is_refused_naming_the_field(inputs, tmp_path):
    with pytest.raises(UserError) as e:
        check_trackers(["tensorboard", "mlflow"], find_spec=lambda name: None)
    assert e.value.message == "train.trackers: tensorboard, mlflow are not installed"
    assert e.value.where == "config field train.trackers" and "pip install tensorboard mlflow" in e.value.hint
    check_trackers(["tensorboard"], find_spec=lambda name: object() if name == "tensorboardX" else None)  # either
    if importlib.util.find_spec("mlflow") is None:  # a real run: stopped before anything is written
        with pytest.raises(UserError, match="mlflow is not installed"):
            train(make_cfg(tmp_path / "m", *inputs, ["mlflow"]), console=lambda *_: None)
        assert not (tmp_path / "m").exists()


def _read_events(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(logdir.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {logdir}"
    scalars, plugins = {}, set()
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
        try:
            plugins |= set(acc.PluginTagToContent("hparams"))
        except KeyError:  # no hparams in this file
            pass
    return scalars, plugins, files


def test_tensorboard_gets_the_logged_scalars_and_the_config(inputs, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    run = train(make_cfg(tmp_path / "tb", *inputs, ["tensorboard"]), console=lambda *_: None)
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    scalars, hparams, files = _read_events(run)
    assert all(f.is_relative_to(run / "tb") for f in files)  # RUN/<run name>/: `tensorboard --logdir RUN`
    assert [s for s, _ in scalars["loss"]] == [1, 2]
    assert [v for _, v in scalars["loss"]] == pytest.approx([r["loss"] for r in log if "loss" in r], rel=1e-6)
    assert "rewards/accuracies" in scalars and "lr" in scalars
    assert hparams, "the run's config was not logged as hparams"
    stored = list((run / "tb").rglob("hparams.yml"))
    assert stored and "train.beta: 0.1" in stored[0].read_text()
