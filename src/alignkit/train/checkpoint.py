"""Checkpoints that survive being killed at any moment.

A checkpoint is written into `checkpoints/.tmp-step-N/`, every file is fsynced, a manifest with the
SHA-256 of each file is written last, and only then is the directory renamed to `step-N` (a rename
within one filesystem is atomic). A kill before the rename leaves a `.tmp-*` directory that resume
ignores and removes; a checkpoint whose files do not match its manifest is skipped with a warning.

Weights are safetensors. Optimizer, scheduler and RNG states are tensors and plain Python values
saved with `torch.save` and read back with `torch.load(weights_only=True)`, which refuses to
unpickle anything but tensors and primitive containers.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The weights a checkpoint must hold: adapter weights with LoRA, all weights without (a model
    that knows better, like the PPO policy with its value head, says so with `trainable_state()`)."""
    if hasattr(model, "trainable_state"):
        return model.trainable_state()
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return model.state_dict()


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    if hasattr(model, "load_trainable_state"):
        model.load_trainable_state(state)
        return
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (lm_head = embeddings) are stored once; anything else missing is an error.
    tied = {k for k in missing if "lm_head" in k}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state()[1].tolist(),
            "numpy_pos": int(np.random.get_state()[2]), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, trainer_state: dict,
                    keep: int = 2) -> Path:
    """Write checkpoints/step-<step> atomically; keep the newest `keep` complete ones."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().to("cpu").contiguous() for k, v in trainable_state(model).items()}
    for k, v in weights.items():
        if not torch.isfinite(v).all():
            raise FloatingPointError(f"refusing to save non-finite weights ({k})")
    save_file(_untie(weights), tmp / "weights.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_state()}, tmp / "state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    files = {}
    for f in sorted(tmp.iterdir()):
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
        files[f.name] = _sha256(f)
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
    with open(tmp / MANIFEST, "rb+") as fh:
        os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_dir(root)
    for old in sorted(complete_checkpoints(run_dir), key=_step_of)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _untie(weights: dict) -> dict:
    """safetensors refuses tensors sharing memory; clone the second name of each shared pair."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in weights.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.setdefault(ptr, k)
    return out


def _step_of(path: Path) -> int:
    return int(path.name.split("-")[-1])


def verify(ckpt: Path) -> bool:
    """True when the manifest exists and every file matches its checksum."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        return all(_sha256(ckpt / name) == digest for name, digest in manifest["files"].items())
    except (OSError, ValueError, KeyError):
        return False


def complete_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.name.startswith("step-") and (p / MANIFEST).is_file()]


def latest_checkpoint(run_dir: Path) -> tuple[Path | None, list[str]]:
    """Newest checkpoint that verifies, and notes about the ones skipped."""
    notes = []
    for tmp in (run_dir / "checkpoints").glob(".tmp-*") if (run_dir / "checkpoints").is_dir() else []:
        notes.append(f"removed incomplete checkpoint {tmp.name} (interrupted while saving)")
        shutil.rmtree(tmp, ignore_errors=True)
    for ckpt in sorted(complete_checkpoints(run_dir), key=_step_of, reverse=True):
        if verify(ckpt):
            return ckpt, notes
        notes.append(f"skipped {ckpt.name}: files do not match its manifest")
    return None, notes


def load_checkpoint(ckpt: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG; return the trainer state."""
    load_trainable_state(model, load_file(ckpt / "weights.safetensors"))
    state = torch.load(ckpt / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((ckpt / "trainer_state.json").read_text())
