"""The reference model of DPO-family losses, in three strategies.

- `adapter`: with LoRA the reference *is* the base model: the same weights with the adapter
  switched off (`model.disable_adapter()`), so it costs no memory at all.
- `copy`: a frozen copy of the starting weights (full fine-tuning).
- `precomputed`: reference log-probs for every pair, computed once before training and cached on
  disk, keyed by everything that determines them (model weights' identity, the exact token ids,
  dtype), so a second run with another beta or learning rate does no reference forward at all.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from alignkit.logprobs import completion_logps, pair_logps_table
from alignkit.models import cache_dir, is_run_dir


class Reference:
    """Gives reference log-probs (chosen and rejected interleaved, (2b,)) for a micro-batch."""

    kind = "none"

    def logps(self, model, batch, pair_ids: list[int]) -> torch.Tensor:
        raise NotImplementedError


class AdapterReference(Reference):
    kind = "adapter"

    @torch.no_grad()
    def logps(self, model, batch, pair_ids):
        with model.disable_adapter():
            return completion_logps(model, batch)[0]


class CopyReference(Reference):
    kind = "copy"

    def __init__(self, model):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def logps(self, model, batch, pair_ids):
        return completion_logps(self.model, batch)[0]


class PrecomputedReference(Reference):
    """Looks pairs up by their index in the tokenized dataset."""

    kind = "precomputed"

    def __init__(self, table: torch.Tensor):
        self.table = table  # (n_pairs, 2): chosen, rejected

    def logps(self, model, batch, pair_ids):
        return self.table[torch.tensor(pair_ids)].reshape(-1).to(batch.input_ids.device)


@contextlib.contextmanager
def _reference_mode(model):
    """The starting weights: adapter off with LoRA; the model itself otherwise (before training)."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


def model_fingerprint(name_or_path: str, dtype: str) -> str:
    """Identity of the starting weights: the chain of runs and the size/mtime of their weight files."""
    parts = [name_or_path, dtype]
    p = Path(name_or_path)
    while is_run_dir(p):
        final = p / "final"
        parts += [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(final.glob("*.safetensors"))]
        p = Path(json.loads((p / "run.json").read_text())["base"])
        parts.append(str(p))
    if p.is_dir():
        parts += [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(p.glob("*.safetensors"))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def pairs_fingerprint(pairs) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return h.hexdigest()


@torch.no_grad()
def compute_reference_table(model, pairs, pad_id: int, batch_size: int, device) -> torch.Tensor:
    """(n_pairs, 2) reference log-probs of every pair, under the starting weights."""
    was_training = model.training
    model.eval()
    with _reference_mode(model) as ref:
        table = pair_logps_table(ref, pairs, pad_id, batch_size)
    model.train(was_training)
    return table


def cached_reference_table(model, pairs, *, model_key: str, pad_id: int, batch_size: int, device,
                           log=print) -> tuple[torch.Tensor, Path, bool]:
    """The reference table from the disk cache, computing and storing it on a miss.

    Returns (table, cache path, hit).
    """
    key = hashlib.sha256(f"{model_key}|{pairs_fingerprint(pairs)}".encode()).hexdigest()[:32]
    path = cache_dir() / "reference_logps" / f"{key}.safetensors"
    if path.is_file():
        table = load_file(path)["logps"]
        if table.shape == (len(pairs), 2):
            log(f"reference log-probs: cache hit {path}")
            return table, path, True
    log(f"reference log-probs: computing {len(pairs)} pairs once (cache {path})")
    table = compute_reference_table(model, pairs, pad_id, batch_size, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"logps": table.contiguous()}, tmp)
    tmp.rename(path)
    return table, path, False
