"""examples/notebook.ipynb runs top to bottom (its code cells in one namespace, from examples/, as
Jupyter runs it), on the embedded SmolLM2-135M-Instruct: the 7B T4 plan, 2 DPO steps on the CPU,
the before/after evaluation on 4 probes and the diagnosis. nbclient is not a dependency, so the cells
are executed with exec()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "notebook.ipynb"
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def code_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(NOTEBOOK.parent)
    monkeypatch.setenv("ALIGNKIT_NOTEBOOK_OUT", str(tmp_path / "run"))
    ns: dict = {"__name__": "__main__"}
    for i, source in enumerate(code_cells(NOTEBOOK)):
        exec(compile(source, f"{NOTEBOOK.name} cell {i}", "exec"), ns)
    out = capsys.readouterr().out
    # 7B QLoRA DPO, 2 x 1024, on a T4: fits (6.4 GiB with prefix sharing; docs/PLANNER.md: 8.31 without)
    plan = ns["plan"]
    assert plan.fits and 5.0 < plan.total_gib < 8.31 and f"predicted peak {plan.total_gib:.2f} GiB" in out
    assert plan.plan.input.quant == "4bit" and plan.plan.input.arch.n_params > 6e9
    run = ns["run"]
    assert run.path == tmp_path / "run" and run.status == "done"
    assert [r["step"] for r in run.log if "loss" in r] == [1, 2]
    after = run.metrics["after"]
    assert after["n/pairs"] == 4 and sum(after.get(f"n/{c}", 0) for c in ("harmful", "benign", "alarming")) == 4
    assert run.report.is_file() and "reward accuracy on held-out pairs:" in out
    assert isinstance(ns["findings"], list) and f"{len(ns['findings'])} findings" in out
