"""Interrupted runs and numerical faults.

Kill points: a real `alignkit train` (6 steps, micro-batch 2, a checkpoint every step, keep 2) is
killed with SIGKILL at deterministic points (the N-th call of a checkpoint write, an fsync, a rename,
a deletion, ...; see tests/reliability/_kill_worker.py), then `alignkit train --resume` must say which
checkpoint it used (the one the kill point implies) and end with the final weights and log.jsonl
losses of one uninterrupted reference run. All runs go through one fork server, so the Python start-up
(~4 s of CPU) is paid once, not 50 times. SIGTERM/SIGINT save a checkpoint and exit 143/130 ("interrupted").

Numerical faults run in-process: a NaN loss is skipped and counted, `max_bad_steps` NaN steps in a
row stop the run with a UserError naming the step and rows, and no checkpoint ever holds NaN weights.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import _kill_worker as kw
import pytest
import torch
import yaml
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent

# (name, hook, n, checkpoint step the resume must use (0: none, start over))
KILLS = [
    *[(f"step{n}", "step", n, n - 1 if n < 6 else 5) for n in range(1, 7)],  # after step n, before ckpt n
    ("save_file1", "save_file", 1, 0), ("save_file3", "save_file", 3, 2),  # before checkpoint weights
    ("torch_save2", "torch_save", 2, 1), ("torch_save4", "torch_save", 4, 3),  # weights written, no state
    # 5 fsyncs per checkpoint: weights, state.pt, trainer_state.json, manifest (all before the rename),
    # then the directory (after the rename: that checkpoint is complete)
    ("fsync2", "fsync", 2, 0), ("fsync4", "fsync", 4, 0), ("fsync5", "fsync", 5, 1),
    ("fsync12", "fsync", 12, 2), ("fsync14", "fsync", 14, 2),
    ("rename2", "rename", 2, 1), ("rename5", "rename", 5, 4),
    ("rename6", "rename", 6, 5),  # final/ half-written (.tmp-final), checkpoints still there
    ("rmtree1", "rmtree", 1, 3), ("rmtree3", "rmtree", 3, 5),  # old checkpoint half deleted
    ("done", "done", 1, 5),  # final/ complete, run.json not yet "done"
]
# A kill, then the resume itself killed, then a resume that finishes: (name, first, second, expected)
CHAINS = [
    ("chain_step3_save2", ("step", 3), ("save_file", 2), 3),  # resume from 2, killed writing ckpt 4
    ("chain_fsync9_rename1", ("fsync", 9), ("rename", 1), 1),  # ckpt 2 lost twice
]
TORN = ("torn_log4", "torn_log", 4, 3)  # half a log line on disk
CORRUPT = [  # after a kill at step 5 (ckpts 3, 4 on disk), one byte of step-4 flips: use step-3
    ("corrupt_weights", "weights.safetensors"), ("corrupt_state", "state.pt"),
]
SIGNALS = [("sigterm", "SIGTERM", 2, 143), ("sigint", "SIGINT", 4, 130)]  # 128 + the signal number


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return kw.build_tiny_ckpt(d / "ckpt"), kw.write_pairs(d / "pairs.jsonl")


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, tiny):
    """Run every kill point and its resume in one fork server; return (results, runs dir, outputs dir)."""
    ckpt, pairs = tiny
    d = tmp_path_factory.mktemp("kills")
    runs, outs = d / "runs", d / "out"
    outs.mkdir()
    jobs = []

    def fresh(name, kill=None, sig=None, **train):
        cfg = kw.run_config(runs / name, ckpt, pairs, **train)
        (d / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        jobs.append({"name": name, "argv": ["train", str(d / f"{name}.yaml"), "--no-eval"], "kill": kill,
                     "signal": sig, "stdout": str(outs / f"{name}.out"), "run_dir": str(runs / name)})

    def resume(name, tag="resume", kill=None):
        jobs.append({"name": f"{name}:{tag}", "argv": ["train", "--resume", str(runs / name), "--no-eval"],
                     "kill": kill, "stdout": str(outs / f"{name}.{tag}.out"), "run_dir": str(runs / name)})

    fresh("reference")
    for name, hook, n, _ in [*KILLS, TORN]:
        fresh(name, kill={"hook": hook, "n": n})
        resume(name)
    for name, (h1, n1), (h2, n2), _ in CHAINS:
        fresh(name, kill={"hook": h1, "n": n1})
        resume(name, "resume1", kill={"hook": h2, "n": n2})
        resume(name)
    for name, file in CORRUPT:
        fresh(name, kill={"hook": "step", "n": 5})
        jobs.append({"name": f"{name}:flip", "corrupt": str(runs / name / "checkpoints" / "step-4" / file)})
        resume(name)
    for name, sig, step, _ in SIGNALS:
        fresh(name, sig={"sig": sig, "step": step}, save_every=None)
        resume(name)
    spec = d / "jobs.json"
    spec.write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, str(HERE / "_kill_worker.py"), str(spec)], capture_output=True,
                          text=True, timeout=600, cwd=str(kw.ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(Path(str(spec) + ".results").read_text())
    assert results["reference"]["exit"] == 0, (outs / "reference.out").read_text()[-3000:]
    return results, runs, outs


def _check_resumed(campaign, name: str, expected_step: int, tag: str = "resume"):
    results, runs, outs = campaign
    res = results[f"{name}:{tag}"]
    text = (outs / f"{name}.{tag}.out").read_text()
    assert res["exit"] == 0, text[-3000:]
    run = runs / name
    if expected_step:
        assert f"resuming from {run / 'checkpoints' / f'step-{expected_step}'} (step {expected_step})" in text, text
    else:
        assert "no complete checkpoint: starting from step 0" in text, text
    assert res["run_json"]["status"] == "done"
    assert not any(c.startswith(".tmp") for c in res["checkpoints"])
    ref = runs / "reference"
    want, got = _weights(ref), _weights(run)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0, msg=k)
    assert any("lora_B" in k and want[k].abs().max() > 1e-4 for k in want)  # B starts at 0: it trained
    lr, lf = _log(ref), _log(run)
    assert [r["step"] for r in lf] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(lr, lf, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-7), (name, b["step"])
        assert b["lr"] == pytest.approx(a["lr"], abs=1e-12)
    return text


@pytest.mark.slow
@pytest.mark.parametrize("name,hook,n,expected", KILLS, ids=[k[0] for k in KILLS])
def test_sigkill_then_resume_equals_uninterrupted(campaign, name, hook, n, expected):
    results = campaign[0]
    killed = results[name]
    assert killed["signal"] == 9, f"kill point {hook}#{n} was never reached: {killed}"
    assert killed["final"] == (hook == "done")
    _check_resumed(campaign, name, expected)


@pytest.mark.slow
def test_sigkill_mid_log_line_then_resume(campaign):
    name, hook, n, expected = TORN
    assert campaign[0][name]["signal"] == 9
    _check_resumed(campaign, name, expected)


@pytest.mark.slow
@pytest.mark.parametrize("name,first,second,expected", CHAINS, ids=[c[0] for c in CHAINS])
def test_resume_killed_again_then_resumed(campaign, name, first, second, expected):
    results = campaign[0]
    assert results[name]["signal"] == 9 and results[f"{name}:resume1"]["signal"] == 9
    _check_resumed(campaign, name, expected)


@pytest.mark.slow
@pytest.mark.parametrize("name,file", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_checkpoint_is_skipped(campaign, name, file):
    text = _check_resumed(campaign, name, 3)
    assert "skipped step-4: files do not match its manifest" in text


@pytest.mark.slow
@pytest.mark.parametrize("name,sig,step,code", SIGNALS, ids=[s[0] for s in SIGNALS])
def test_sigterm_sigint_save_and_exit_cleanly(campaign, name, sig, step, code):
    results, _, outs = campaign
    res = results[name]
    text = (outs / f"{name}.out").read_text()
    assert res["exit"] == code and res["signal"] is None, text[-3000:]  # non-zero: scripts must not carry on
    assert res["run_json"]["status"] == "interrupted" and res["run_json"]["done"] == step
    assert res["run_json"]["signal"] == sig
    assert res["checkpoints"] == [f"step-{step}"] and not res["final"]
    assert f"interrupted: checkpoint saved at step {step}" in text
    _check_resumed(campaign, name, step)


# ------------------------------------------------------------------------------- numerical faults --

def _cfg(tmp: Path, tiny, name: str, **train):
    from alignkit.config import RunConfig

    ckpt, pairs = tiny
    return RunConfig.model_validate(kw.run_config(tmp / name, ckpt, pairs, **train))


def _poison(monkeypatch, bad_calls: set[int]):
    """Make the objective's loss NaN on the given (1-based) micro-batch calls."""
    from alignkit.train.objectives import PreferenceObjective

    original, calls = PreferenceObjective.loss, {"n": 0}

    def loss(self, forward, model, batch, ids):
        calls["n"] += 1
        total, metrics = original(self, forward, model, batch, ids)
        if calls["n"] in bad_calls:
            total = total * float("nan")
            metrics = {**metrics, "loss": torch.tensor(float("nan"))}
        return total, metrics

    monkeypatch.setattr(PreferenceObjective, "loss", loss)


def _ckpt_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step-{step}" / "weights.safetensors")


def test_nan_loss_step_is_skipped_and_counted(tmp_path, tiny, monkeypatch):
    from alignkit.train.run import train

    _poison(monkeypatch, {2})
    run = train(_cfg(tmp_path, tiny, "nan", max_steps=4, keep_checkpoints=4, max_bad_steps=2),
                console=lambda *_: None)
    log = _log(run)
    assert [r["skipped"] for r in log] == [False, True, False, False]
    assert math.isnan(log[1]["loss"]) and all(math.isfinite(r["loss"]) for r in (log[0], *log[2:]))
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["skipped_steps"] == 1
    one, two, three = (_ckpt_weights(run, s) for s in (1, 2, 3))
    for k in one:  # the skipped step changed nothing; the next one trained again
        assert torch.equal(one[k], two[k]), k
    assert any(not torch.equal(two[k], three[k]) for k in two)
    assert all(torch.isfinite(v).all() for v in _weights(run).values())


def test_max_bad_steps_in_a_row_stop_the_run(tmp_path, tiny, monkeypatch):
    from alignkit.errors import UserError
    from alignkit.train.run import train

    _poison(monkeypatch, set(range(3, 100)))  # every step from 3 on is NaN
    with pytest.raises(UserError) as err:
        train(_cfg(tmp_path, tiny, "bad", max_steps=6, keep_checkpoints=6, max_bad_steps=2),
              console=lambda *_: None)
    text = str(err.value)
    assert "2 optimizer steps in a row" in text and "step 4, rows [" in text and "hint:" in text
    run = tmp_path / "bad"
    assert not (run / "final").exists()
    steps = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    assert steps == [1, 2, 3]  # nothing written for the step that stopped the run
    for s in steps:
        assert all(torch.isfinite(v).all() for v in _ckpt_weights(run, s).values())
    assert [r["skipped"] for r in _log(run)] == [False, False, True, True]


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    from alignkit.train.checkpoint import latest_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_checkpoint(tmp_path, 1, model, opt, sched, {"step": 1})
    with torch.no_grad():
        model.weight[0, 1] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite weights"):
        save_checkpoint(tmp_path, 2, model, opt, sched, {"step": 2})
    assert not (tmp_path / "checkpoints" / "step-2").exists()
    ckpt, _ = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "step-1"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # resume clears the aborted attempt
