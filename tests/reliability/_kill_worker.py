"""Helpers for tests/reliability: a tiny model and data, and a fork server for kill-and-resume runs.

As a module: `build_tiny_ckpt`, `write_pairs` and `run_config` build the tiny end-to-end setup that
tests/train/test_train.py uses (a 2-layer Llama with SmolLM2's tokenizer and chat template).

As a script: ``python _kill_worker.py JOBS.json`` imports torch/transformers/alignkit once (~4 s of
CPU, far more on a loaded machine) and then runs every job in a forked child, one after the other, so
that two dozen kill points do not pay that start-up two dozen times. A job is

    {"name": ..., "argv": [alignkit CLI args], "kill": {"hook": H, "n": N} | null,
     "signal": {"sig": "SIGTERM", "step": K} | null, "stdout": path, "run_dir": path}

or ``{"name": ..., "corrupt": path}`` (flip one byte of a file, in the parent: bit rot between jobs).
The child installs the kill hook (a deterministic point: the N-th call of something, never a timer),
runs `alignkit.cli.main(argv)` and exits with its code; the hook ends it with SIGKILL (or sends itself
SIGTERM/SIGINT through the real signal handler). The parent records how each child ended in
``JOBS.json.results``: ``{"name": {"exit": code | null, "signal": number | null, "run_json": {...},
"checkpoints": [names]}}``.

Kill hooks (N counts calls from the start of the child):
  step       after optimizer step N was logged, before its checkpoint
  save_file  before the weights file of the N-th checkpoint is written
  torch_save before the N-th optimizer/scheduler/RNG state file is written (weights already there)
  fsync      before the N-th os.fsync (5 per checkpoint: 3 files, the manifest, the directory)
  rename     before the N-th Path.rename (checkpoint N; the 6th in a 6-step run is final/)
  rmtree     halfway through deleting the N-th old checkpoint (its weights gone, its manifest left)
  done       after final/ is in place, before run.json says "done"
  torn_log   halfway through writing log line N (half a JSON line on disk)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _after_step(cli, step: int, action) -> None:
    """Run `action` right after optimizer step `step`, through the CLI's progress callback."""
    make = cli._progress

    def progress():
        show = make()

        def wrapped(s, total, row):
            show(s, total, row)
            if s == step:
                action()
        return wrapped
    cli._progress = progress


def build_tiny_ckpt(out: Path) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer (its chat template), saved as a plain checkpoint."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tinymodels import save_tiny_checkpoint

    return save_tiny_checkpoint(out)


def write_pairs(path: Path, n: int = 16) -> Path:
    lines = (ROOT / "examples/task_api/data/train.jsonl").read_text().splitlines()[:n]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_config(output_dir: Path, ckpt: Path, data: Path, **train) -> dict:
    """A tiny DPO run as a config dict (dump it as YAML for the CLI)."""
    t = dict(learning_rate=1e-2, micro_batch_size=2, gradient_accumulation_steps=1, max_steps=6,
             warmup_ratio=0.25, lr_scheduler="cosine", save_every=1, keep_checkpoints=2)
    t.update(train)
    return {"method": "dpo", "output_dir": str(output_dir),
            "model": {"name_or_path": str(ckpt), "lora": {"r": 4, "alpha": 8, "dropout": 0.1}},
            "data": {"train": str(data), "eval": None, "eval_fraction": 0.0, "max_length": 128,
                     "max_prompt_length": 96, "system_prompt_file": str(ROOT / "examples/task_api/system_prompt.txt")},
            "train": t, "eval": {"enabled": False}}


# ----------------------------------------------------------------------------------- kill hooks --

def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _nth(n: int, original, before=None):
    """Wrap `original` so that its n-th call dies (after `before(*args)` when given)."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            if before is not None:
                before(*args, **kwargs)
            _die()
        return original(*args, **kwargs)

    return wrapper


def install_kill(hook: str, n: int) -> None:
    import shutil

    import torch

    import alignkit.cli as cli
    import alignkit.train.checkpoint as ck
    import alignkit.train.loop as loop
    import alignkit.train.run as run

    if hook == "step":
        _after_step(cli, n, _die)
    elif hook == "save_file":
        ck.save_file = _nth(n, ck.save_file)
    elif hook == "torch_save":
        torch.save = _nth(n, torch.save)
    elif hook == "fsync":
        os.fsync = _nth(n, os.fsync)
    elif hook == "rename":
        Path.rename = _nth(n, Path.rename)
    elif hook == "rmtree":
        original = shutil.rmtree
        seen = {"n": 0}

        def rmtree(path, *args, **kwargs):
            p = Path(path)
            if p.name.startswith("step-") and p.parent.name == "checkpoints":
                seen["n"] += 1
                if seen["n"] == n:
                    (p / "weights.safetensors").unlink()
                    _die()
            return original(path, *args, **kwargs)
        shutil.rmtree = rmtree
    elif hook == "done":
        write = run._write_run_json

        def write_run_json(path, cfg, **fields):
            if fields.get("status") == "done":
                _die()
            return write(path, cfg, **fields)
        run._write_run_json = write_run_json
    elif hook == "torn_log":
        append = loop._append
        seen = {"n": 0}

        def torn(path, row, accelerator):
            seen["n"] += 1
            if seen["n"] == n:
                with open(path, "a", encoding="utf-8") as f:
                    text = json.dumps(row) + "\n"
                    f.write(text[:len(text) // 2])
                _die()
            return append(path, row, accelerator)
        loop._append = torn
    else:
        raise ValueError(f"unknown kill hook {hook!r}")


def install_signal(sig: str, step: int) -> None:
    """Send ourselves `sig` (through the real handler) right after optimizer step `step`."""
    import alignkit.cli as cli

    _after_step(cli, step, lambda: os.kill(os.getpid(), getattr(signal, sig)))


# ---------------------------------------------------------------------------------- fork server --

def _child(job: dict) -> int:
    out = open(job["stdout"], "a", buffering=1)
    os.dup2(out.fileno(), 1)
    os.dup2(out.fileno(), 2)
    sys.stdout = sys.stderr = out
    from alignkit.cli import main

    if job.get("kill"):
        install_kill(job["kill"]["hook"], job["kill"]["n"])
    if job.get("signal"):
        install_signal(job["signal"]["sig"], job["signal"]["step"])
    return main(job["argv"])


def serve(jobs_file: Path) -> None:
    import torch

    import alignkit.cli  # noqa: F401  (the expensive imports, paid once)
    import alignkit.train.run  # noqa: F401

    torch.set_num_threads(1)  # one thread: no OpenMP pool to inherit across fork, and the CPUs are shared
    jobs = json.loads(jobs_file.read_text())
    results = {}
    for job in jobs:
        if job.get("corrupt"):  # bit rot between a kill and the resume: flip one byte mid-file
            path = Path(job["corrupt"])
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(job)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 3
            finally:
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        results[job["name"]] = {"exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}
        run = Path(job["run_dir"]) if job.get("run_dir") else None
        if run is not None:  # what the job left on disk, for the test to check
            info = run / "run.json"
            results[job["name"]]["run_json"] = json.loads(info.read_text()) if info.is_file() else None
            ckpts = run / "checkpoints"
            results[job["name"]]["checkpoints"] = sorted(p.name for p in ckpts.iterdir()) if ckpts.is_dir() else []
            results[job["name"]]["final"] = (run / "final").is_dir()
        Path(str(jobs_file) + ".results").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    serve(Path(sys.argv[1]))
