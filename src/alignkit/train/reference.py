"""The reference model of DPO-family losses, in three strategies.

- `adapter`: with LoRA the reference *is* the base model: the same weights with the adapter
  switched off (`model.disable_adapter()`), so it costs no memory at all.
- `copy`: a frozen copy of the starting weights (full fine-tuning).
- `precomputed`: reference log-probs for every pair, computed once before training and cached on
  disk, keyed by everything that determines them (`reference_key_parts`: model weights' identity,
  the exact token ids, dtype, quantization, attention, tokenizer, autocast, library versions), so a second run with another beta or learning rate does no reference forward at all.
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


# Bumped whenever the computation of a table changes, so tables of older code are not reused
# (2: final-logit soft-capping/scaling, sliding windows, dropout off).
TABLE_VERSION = 2

_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "config.json")


def _files(folder: Path) -> list[str]:
    """Resolved path, size and mtime_ns of a checkpoint folder's weight files and config (hub
    snapshots link to blobs: resolving follows the link). No hashing: 540 MB per run is too slow."""
    out = []
    for pattern in _WEIGHT_FILES:
        for f in sorted(folder.glob(pattern)):
            st = f.stat()
            out.append(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return out


def _root_folder(name_or_path: str) -> Path | None:
    """The folder holding a root model's files: the embedded default's import, a local checkpoint,
    a hub id's snapshot in the Hugging Face cache (its path names the commit); None if not found."""
    from alignkit.models import DEFAULT_MODEL, default_model_dir

    if name_or_path == DEFAULT_MODEL:
        return default_model_dir()
    p = Path(name_or_path)
    if p.is_dir():
        return p
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name_or_path, "config.json")
    except ValueError:  # not a repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def model_fingerprint(name_or_path: str) -> str:
    """Identity of the starting weights: the chain of runs and their weight files' resolved paths,
    sizes and mtimes, down to the root model's files (`default` and hub ids resolved to them)."""
    parts = [name_or_path]
    p = Path(name_or_path)
    while is_run_dir(p):
        parts += _files(p / "final")
        p = Path(json.loads((p / "run.json").read_text())["base"])
        parts.append(str(p))
    root = _root_folder(str(p))
    parts += _files(root) if root is not None else ["unresolved"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """The tokenizer's vocabulary, special tokens and chat template."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([str(tokenizer.chat_template), tokenizer.special_tokens_map,
                         tokenizer.pad_token_id, tokenizer.eos_token_id], sort_keys=True, default=str).encode())
    return h.hexdigest()


def reference_key_parts(model, tokenizer, *, name_or_path: str, quantization: str, autocast: str,
                        prefix_sharing: bool) -> dict:
    """Everything a precomputed reference table depends on besides the token ids (`pairs_fingerprint`,
    which also covers max lengths and truncation): the weights' identity, the loaded model's resolved
    dtype, quantization, attention implementation and config, the tokenizer, the autocast precision,
    the layout, and the library versions."""
    import peft
    import transformers

    import alignkit

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    qc = getattr(config, "quantization_config", None)
    return {
        "table_version": TABLE_VERSION,
        "weights": model_fingerprint(name_or_path),
        "dtype": str(base.dtype),
        "quantization": [quantization, qc.to_dict() if hasattr(qc, "to_dict") else qc],
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "config": config.to_json_string(),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "autocast": autocast,
        "prefix_sharing": prefix_sharing,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "alignkit": alignkit.__version__},
    }


def reference_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def pairs_fingerprint(pairs) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return h.hexdigest()


@torch.no_grad()
def compute_reference_table(model, pairs, pad_id: int, batch_size: int, device, shared: bool = True) -> torch.Tensor:
    """(n_pairs, 2) reference log-probs of every pair, under the starting weights."""
    was_training = model.training
    model.eval()
    with _reference_mode(model) as ref:
        table = pair_logps_table(ref, pairs, pad_id, batch_size, shared=shared)
    model.train(was_training)
    return table


def cached_reference_table(model, pairs, *, model_key: str, pad_id: int, batch_size: int, device,
                           log=print, shared: bool = True) -> tuple[torch.Tensor, Path, bool]:
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
    table = compute_reference_table(model, pairs, pad_id, batch_size, device, shared)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"logps": table.contiguous()}, tmp)
    tmp.rename(path)
    return table, path, False
