"""Interrupt and resume through `alignkit train` (alignkit.cli.main), on a tiny random model.

Checked: Ctrl-C (a real SIGINT through the loop's handler) exits 130, SIGTERM 143, with a checkpoint;
`--resume` of a finished run says so and touches nothing; `--resume RUN train.max_steps=N` continues to
N (and equals a run started with N); overrides the checkpoint depends on are refused by name; a Ctrl-C
during the evaluation, or in the held-out metrics after training, prints one message (training is
saved in RUN/final, `alignkit eval RUN`) and exits 130.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tinymodels import save_tiny_checkpoint

import alignkit.cli as cli
from alignkit.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    pairs = d / "pairs.jsonl"
    pairs.write_text("\n".join((ROOT / "examples/task_api/data/train.jsonl").read_text().splitlines()[:16]) + "\n")
    return save_tiny_checkpoint(d / "ckpt"), pairs


def _config(tmp: Path, tiny, name: str, eval_enabled: bool = False, **train) -> Path:
    ckpt, pairs = tiny
    t = dict(learning_rate=1e-2, micro_batch_size=2, gradient_accumulation_steps=1, max_steps=3,
             warmup_ratio=0.0, lr_scheduler="constant", save_every=None)
    t.update(train)
    cfg = {"method": "dpo", "output_dir": str(tmp / name),
           "model": {"name_or_path": str(ckpt), "lora": {"r": 4, "alpha": 8}},
           "data": {"train": str(pairs), "eval": None, "eval_fraction": 0.0, "max_length": 128,
                    "max_prompt_length": 96, "system_prompt_file": str(ROOT / "examples/task_api/system_prompt.txt")},
           "train": t, "eval": {"enabled": eval_enabled}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _signal_at(monkeypatch, step: int, sig=signal.SIGINT):
    """Send `sig` to this process right after optimizer step `step` (through the CLI's progress hook)."""
    make = cli._progress

    def progress():
        show = make()

        def wrapped(s, total, row):
            show(s, total, row)
            if s == step:
                os.kill(os.getpid(), sig)
        return wrapped
    monkeypatch.setattr(cli, "_progress", progress)


def _info(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def _steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_sigint_exits_130_and_resume_of_a_finished_run_does_nothing(tmp_path, tiny, monkeypatch, capsys):
    cfg = _config(tmp_path, tiny, "run")
    run = tmp_path / "run"
    _signal_at(monkeypatch, 2)
    assert main(["train", str(cfg), "--no-eval"]) == 130
    assert "interrupted: checkpoint saved at step 2" in capsys.readouterr().out
    info = _info(run)
    assert (info["status"], info["done"], info["signal"]) == ("interrupted", 2, "SIGINT")
    assert (run / "checkpoints" / "step-2").is_dir() and not (run / "final").exists()

    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-eval"]) == 0
    assert _info(run)["status"] == "done" and _steps(run) == [1, 2, 3]
    capsys.readouterr()

    before = _snapshot(run)
    assert main(["train", "--resume", str(run)]) == 0  # eval enabled or not: a finished run does nothing
    out = capsys.readouterr().out
    assert "already finished (3 steps): nothing to do" in out and f"alignkit eval {run}" in out
    assert "resuming" not in out and "step 3/3" not in out
    assert _snapshot(run) == before


def test_sigterm_exits_143(tmp_path, tiny, monkeypatch, capsys):
    _signal_at(monkeypatch, 1, signal.SIGTERM)
    assert main(["train", str(_config(tmp_path, tiny, "run")), "--no-eval"]) == 143
    assert _info(tmp_path / "run")["signal"] == "SIGTERM"


def test_resume_honours_a_larger_max_steps(tmp_path, tiny, monkeypatch, capsys):
    straight = tmp_path / "straight"
    assert main(["train", str(_config(tmp_path, tiny, "straight", max_steps=5)), "--no-eval"]) == 0
    run = tmp_path / "run"
    _signal_at(monkeypatch, 2)
    assert main(["train", str(_config(tmp_path, tiny, "run", max_steps=3)), "--no-eval"]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    # argparse reads the first override as the config positional: it must still count as an override
    assert main(["train", "--resume", str(run), "train.max_steps=5", "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "step 5/5" in out
    assert _steps(run) == [1, 2, 3, 4, 5]
    info = _info(run)
    assert (info["status"], info["steps"], info["done"]) == ("done", 5, 5)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 5
    # constant learning rate: continuing to 5 equals a run started with 5
    a = load_file(straight / "final/adapter_model.safetensors")
    b = load_file(run / "final/adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-7, rtol=0, msg=k)


def test_resume_refuses_what_cannot_change(tmp_path, tiny, monkeypatch, capsys):
    run = tmp_path / "run"
    _signal_at(monkeypatch, 2)
    assert main(["train", str(_config(tmp_path, tiny, "run", save_every=1)), "--no-eval"]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    before = _snapshot(run)
    assert main(["train", "--resume", str(run), "train.beta=0.5", "model.lora.r=8", "data.max_rows=4"]) == 2
    err = capsys.readouterr().err
    assert "cannot change on resume: data.max_rows, model.lora.r, train.beta" in err, err
    assert main(["train", "--resume", str(run), "train.max_steps=1"]) == 2
    assert "train.max_steps=1 is below the newest checkpoint's step 2" in capsys.readouterr().err
    assert _snapshot(run) == before  # nothing written
    # a finished run cannot be extended (no optimizer state at its last step): said, not redone
    assert main(["train", "--resume", str(run), "--no-eval"]) == 0
    capsys.readouterr()
    before = _snapshot(run)
    assert main(["train", "--resume", str(run), "train.max_steps=7"]) == 2
    err = capsys.readouterr().err
    assert "the run is finished (3 steps)" in err and "train.max_steps=7 is not supported" in err
    assert f"model.name_or_path={run}" in err
    assert _snapshot(run) == before


def test_ctrl_c_during_evaluation_says_training_is_saved(tmp_path, tiny, monkeypatch, capsys):
    import alignkit.eval.runner as runner

    def interrupted(run, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "evaluate_run", interrupted)
    run = tmp_path / "run"
    assert main(["train", str(_config(tmp_path, tiny, "run", eval_enabled=True))]) == 130
    err = capsys.readouterr().err
    assert f"training is saved in {run / 'final'}; run `alignkit eval {run}` to evaluate it" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _info(run)["status"] == "trained" and (run / "final" / "adapter_model.safetensors").is_file()


def test_ctrl_c_in_held_out_metrics_keeps_the_trained_model(tmp_path, tiny, monkeypatch, capsys):
    import alignkit.train.evaluate as ev

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "pair_metrics", interrupted)
    cfg = _config(tmp_path, tiny, "run")
    run = tmp_path / "run"
    assert main(["train", str(cfg), "data.eval_fraction=0.25", "--no-eval"]) == 130
    err = capsys.readouterr().err
    assert f"training is saved in {run / 'final'}; run `alignkit eval {run}`" in err
    assert _info(run)["status"] == "done" and (run / "final" / "adapter_model.safetensors").is_file()
