"""Package-level checks: every module imports, the README's config table is current, the CLI reports
user errors without a traceback."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import alignkit
from alignkit.cli import main
from alignkit.config import fields_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(alignkit.__path__, "alignkit.")]
    assert len(names) > 20
    for name in names:
        importlib.import_module(name)


def test_readme_config_table_is_generated_from_the_config():
    assert fields_markdown() in (ROOT / "README.md").read_text(), \
        "README's 'Config fields' table is stale: paste the output of `python -m alignkit.config`"


def test_readme_opens_with_the_two_setup_commands():
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.strip()]
    assert lines[1] == "```bash" and lines[2].startswith("make demo") and lines[3].startswith("make test")
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_train_help_lists_every_config_field(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for row in fields_markdown().splitlines()[2:]:
        field = row.split("`")[1]
        assert field in out, field


@pytest.mark.parametrize("override, message", [
    ("train.betta=0.3", "did you mean 'beta'"),
    ("train.beta=-1", "train.beta"),
    ("train.micro_batch_size=0", "train.micro_batch_size"),
    ("train.learning_rate=0", "train.learning_rate"),
    ("method=dpoo", "allowed: sft, dpo"),
])
def test_config_mistakes_exit_2_with_the_field(override, message, capsys, tmp_path):
    code = main(["train", str(ROOT / "examples/task_api/dpo.yaml"), override, f"output_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
