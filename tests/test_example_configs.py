"""Every shipped YAML config loads, validates, and names data files that exist and parse.

Their data paths are relative to the config's own folder, so they load the same from any current
folder (checked from an empty one); run directories (output_dir) stay relative to the current folder.
The Task API scenario is named explicitly (probes, task check, system prompt), never a default.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.config import METHODS, load_config
from alignkit.data import formats

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "examples").rglob("*.yaml"))


def _id(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_there_are_configs():
    assert len(CONFIGS) >= len(METHODS)


def test_one_example_per_method():
    have = {p.stem for p in (ROOT / "examples/task_api").glob("*.yaml")}
    assert set(METHODS) <= have, f"missing: {sorted(set(METHODS) - have)}"
    for m in METHODS:
        assert load_config(ROOT / f"examples/task_api/{m}.yaml").method == m


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_config_loads_and_names_existing_files(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not the repository: the paths come from the config's folder
    cfg = load_config(path)
    files = {"data.train": cfg.data.train, "data.eval": cfg.data.eval,
             "data.system_prompt_file": cfg.data.system_prompt_file, "eval.probes": cfg.eval.probes}
    for field, value in files.items():
        if value is not None:
            assert Path(value).is_file(), f"{_id(path)}: {field} = {value} does not exist"
    assert not Path(cfg.output_dir).is_absolute()
    assert cfg.data.train and Path(cfg.data.train).parent == path.parent / "data"
    if cfg.eval.enabled:  # the Task API example says so itself
        assert cfg.eval.task == "task_api" and cfg.eval.probes == str(path.parent / "data" / "probes.jsonl")
        assert cfg.data.system_prompt_file == str(path.parent / "system_prompt.txt")


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_data_files_parse_for_the_method(path, monkeypatch, tmp_path):
    """The training and eval files load with the loader `alignkit train` uses for the method."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path)
    load = {"sft": formats.load_sft, "kto": formats.load_kto}.get(cfg.method, formats.load_preferences)
    for f in (cfg.data.train, cfg.data.eval):
        if f:
            rows, report = load(f)
            assert rows and report.skipped == 0
    if cfg.method == "kto":
        from alignkit.data.kto_convert import kto_balance_warning

        rows, _ = formats.load_kto(cfg.data.train)
        n_d = sum(r.label for r in rows)
        assert kto_balance_warning(n_d, len(rows) - n_d, cfg.train.kto_desirable_weight,
                                   cfg.train.kto_undesirable_weight) is None
        assert cfg.train.micro_batch_size >= 2
