"""`pip install .` into a fresh virtual environment, then `alignkit train` from an empty folder (issue 13).

tests/test_own_data_run.py runs the CLI with PYTHONPATH=src, so it cannot see what only an installed
package gets wrong: a data file left out of the wheel (src/alignkit/resources/*), a module outside the
packages setuptools finds, a broken `alignkit` console script. This test builds a wheel of the
repository, installs it into a new venv and runs the installed `alignkit` script with no PYTHONPATH,
from a temporary folder, on a non-Task-API preference file.

Offline: the wheel is built with --no-build-isolation (setuptools from the running environment) and
installed with --no-deps --no-index. The dependencies (torch, transformers, ...) are not reinstalled:
a .pth line in the new venv adds the running environment's site-packages directory to sys.path. A
directory named by a .pth line is not a site directory, so its own .pth files (among them the
repository's editable install, __editable__.alignkit-*.pth) are not processed; the test checks that
`alignkit` is imported from the new venv.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml
from tinymodels import save_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "alignkit"

pytestmark = pytest.mark.slow

ROWS = [
    ("How long should bread dough rise?", "Until it has doubled, usually one to two hours at room temperature.", "Ten seconds."),
    ("Why is my bread dense?", "Often too little rising time or too much flour; knead less flour in.", "Bread is dense."),
    ("Can I freeze sourdough starter?", "Yes, though it needs a few feedings to wake up after thawing.", "It explodes."),
    ("What does salt do in bread?", "It seasons the loaf and tightens the gluten, slowing the yeast a little.", "Nothing."),
    ("How hot should the oven be for a baguette?", "Around 240 C, with steam for the first ten minutes.", "Barely warm."),
    ("How do I know the loaf is baked?", "It sounds hollow when tapped, or reads about 96 C inside.", "Guess."),
    ("Can I use plain flour instead of bread flour?", "Yes, the crumb is softer because plain flour has less protein.", "Never."),
    ("Why score the dough?", "So it expands where you choose instead of bursting at the side.", "For luck."),
    ("How long does a starter take to make?", "About five to ten days of daily feeding.", "One minute."),
    ("Should I knead rye dough?", "Little: rye has weak gluten, so mix it into a sticky paste instead.", "For an hour."),
    ("How do I keep bread fresh?", "In a paper or cloth bag at room temperature; freeze what you will not eat.", "In water."),
    ("What is autolyse?", "Resting flour and water before adding salt and yeast, so gluten forms on its own.", "A disease."),
]


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 300), **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _package_files() -> set[str]:
    """Every file of src/alignkit that the package ships (code and data), as wheel names."""
    out = set()
    for p in PKG.rglob("*"):
        rel = p.relative_to(PKG)
        if p.is_file() and "__pycache__" not in rel.parts and not p.name.startswith(".") and p.suffix != ".pyc":
            out.add("alignkit/" + rel.as_posix())
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy of what the build reads, so no build/ or *.egg-info lands in the repository.
    if importlib.util.find_spec("setuptools") is None:
        pytest.fail("building the wheel offline needs setuptools in this environment: pip install -e '.[test]'")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
          str(src)], env=env)
    (whl,) = (tmp / "dist").glob("alignkit-*.whl")
    return whl


def test_wheel_ships_every_package_file_and_the_console_script(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "alignkit/resources/refusal_labels.jsonl" in names  # read by judges.refusal.load_labels()
    missing = _package_files() - names
    assert not missing, f"files of src/alignkit left out of the wheel: {sorted(missing)}"
    assert "alignkit = alignkit.cli:main" in entry_points


def test_installed_package_trains_on_own_data_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    py, bin_ = venv / "bin" / "python", venv / "bin"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = sysconfig.get_paths()["purelib"]  # the running environment's packages: torch, transformers, ...
    (site / "_alignkit_test_deps.pth").write_text(deps + "\n")
    _run([str(bin_ / "pip"), "install", "--no-deps", "--no-index", "-q", "--disable-pip-version-check", str(wheel)])

    ckpt = save_tiny_checkpoint(tmp_path / "tiny-model")
    work = tmp_path / "work"  # the user's empty folder, outside the repository
    work.mkdir()
    (work / "bread.jsonl").write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n"
                                              for p, c, r in ROWS))
    (work / "cfg.yaml").write_text(yaml.safe_dump({
        "method": "dpo", "model": {"name_or_path": str(ckpt)},
        "data": {"train": "bread.jsonl", "eval_fraction": 0.25},
        "train": {"max_steps": 2}, "eval": {"enabled": True}}))
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{bin_}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(home),
           "ALIGNKIT_CACHE": str(home / "alignkit-cache"), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "LANG": "C.UTF-8"}

    # The package and its data come from the new venv, not from the repository's editable install.
    proc = _run([str(py), "-c", "import alignkit, alignkit.judges.refusal as r; print(alignkit.__file__); "
                 "print(len(r.load_labels()))"], cwd=work, env=env)
    file, n_labels = proc.stdout.split()
    assert Path(file).is_relative_to(site) and not Path(file).is_relative_to(ROOT), file
    assert int(n_labels) == len((PKG / "resources" / "refusal_labels.jsonl").read_text().strip().splitlines())

    alignkit = str(bin_ / "alignkit")  # the console script
    from alignkit import __version__

    assert _run([alignkit, "--version"], cwd=work, env=env).stdout.strip() == f"alignkit {__version__}"
    doc = json.loads(_run([alignkit, "doctor", "bread.jsonl", "--json"], cwd=work, env=env).stdout)
    assert doc["stats"]["rows_valid"] == len(ROWS) and doc["errors"] == [], doc

    proc = _run([alignkit, "train", "cfg.yaml"], cwd=work, env=env, timeout=300)
    run = work / "runs" / "dpo"  # the default output_dir, relative to the folder it ran in
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and (run / "final" / "adapter_model.safetensors").is_file()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["train"] == str(work / "bread.jsonl") and config["eval"]["probes"] is None
    metrics = json.loads((run / "metrics.json").read_text())
    after = metrics["after"]
    assert after["n/pairs"] == 3 and 0.0 <= after["reward_accuracy"] <= 1.0  # held-out preference metrics
    assert metrics["examples"] == [] and after["refusal_rate/harmful"] is None and after["task_valid/benign"] is None
    saved = "\n".join([(run / "config.yaml").read_text(), (run / "run.json").read_text(), proc.stdout, proc.stderr])

    # `alignkit eval` with data and no probes: the preference metrics alone, on all 12 pairs.
    proc = _run([alignkit, "eval", "--model", str(ckpt), "--adapter", "runs/dpo/final", "--data", "bread.jsonl",
                 "--out", "ev", "--quiet"], cwd=work, env=env)
    ev = json.loads((work / "ev" / "metrics.json").read_text())
    assert ev["after"]["n/pairs"] == len(ROWS) and ev["examples"] == [] and ev["after"]["refusal_rate/harmful"] is None
    saved += "\n".join(["", (work / "ev" / "metrics.json").read_text(), proc.stdout, proc.stderr])
    for needle in (str(ROOT), "examples/", "task_api", "probes.jsonl", "system_prompt.txt"):
        assert needle not in saved, needle
