"""Checks before a run spends time: every input it names exists, enough disk for its checkpoints,
enough memory for its plan; and what to say when a step runs out of memory anyway.

- `check_inputs(cfg, train=..., evaluate=...)`: every file and directory the config names exists
  (data files, system prompt, probes, model, reward run), all reported at once, each with its field.

- `checkpoint_bytes(model, keep)` and `check_disk(run_dir, needed)`: a checkpoint holds the trainable
  weights and AdamW's two moments (~3x the trainable weights); `keep` complete checkpoints stay on
  disk while the next one is written, so `keep + 1` of them must fit.
- `check_memory(plan)`: refuses a run the memory planner (`alignkit.plan.memory.estimate`) predicts
  will not fit, listing the changes `alignkit.plan.advisor.fixes` finds, as config overrides.
- `oom_message(plan, fixes)`: the text to print when a step raises `torch.OutOfMemoryError` (or a
  RuntimeError "out of memory"); `is_oom(exc)` tells which exceptions those are.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from alignkit.errors import UserError

GiB = 1024**3

# PlanInput fields (what the advisor changes) -> config overrides a user can type.
_CONFIG_FIELDS: dict[str, Callable[[object], list[str]]] = {
    "micro_batch": lambda v: [f"train.micro_batch_size={v}"],
    "grad_accum": lambda v: [f"train.gradient_accumulation_steps={v}"],
    "grad_ckpt": lambda v: [f"model.gradient_checkpointing={str(v).lower()}"],
    "seq_len": lambda v: [f"data.max_length={v}"],
    "prompt_len": lambda v: [f"data.max_prompt_length={v}"],
    "lora_r": lambda v: ["model.lora.enabled=false"] if v == 0 else ["model.lora.enabled=true", f"model.lora.r={v}"],
    "quant": lambda v: [f"model.quantization={v}"],
    "reference": lambda v: [f"train.reference={v}"],
    "prefix_sharing": lambda v: [f"train.prefix_sharing={str(v).lower()}"],
}


def _size(nbytes: float) -> str:
    if nbytes >= GiB:
        return f"{nbytes / GiB:.2f} GiB"
    return f"{nbytes / 2**20:.1f} MiB"


def _missing_model(name: str) -> bool:
    """A model.name_or_path that can be nothing but a local path, and is not there (as models._resolve_path)."""
    from alignkit.models import DEFAULT_MODEL

    if name == DEFAULT_MODEL or Path(name).exists():
        return False
    return not ("/" in name and not name.startswith((".", "/")))  # else a hub id, looked up in the cache


def _missing_judge(spec: str) -> bool:
    """A reward/gold judge spec that is neither a judge name nor a function, and no directory either."""
    from alignkit.judges import registered_judges
    from alignkit.judges.function import looks_like_function_spec

    spec = spec.strip()
    return not (spec in registered_judges() or Path(spec).expanduser().is_dir() or looks_like_function_spec(spec))


def check_inputs(cfg, *, train: bool = True, evaluate: bool = False) -> None:
    """Raise one `UserError` listing every input of `cfg` that is missing, each with its config field.

    `train`: what training reads (data files, system prompt, model, reward judge); `evaluate`: what
    the before/after evaluation reads (probes, held-out file, system prompt, model). Called before
    anything is loaded or written, so a missing file costs seconds, not a training run.
    """
    from alignkit.config import ONLINE_METHODS

    if train:
        check_trackers(cfg.train.trackers)
    d, problems = cfg.data, []
    if train and not d.train:
        problems.append("data.train: not set (the training file is required)")
    files = [("data.system_prompt_file", d.system_prompt_file)]
    if train or (evaluate and not d.eval):  # without data.eval the evaluation re-splits the training file
        files.insert(0, ("data.train", d.train))
    if train or evaluate:
        files.insert(1, ("data.eval", d.eval))
    if evaluate:
        files.append(("eval.probes", cfg.eval.probes))
    problems += [f"{field}: file not found: {path}" for field, path in files if path and not Path(path).exists()]
    if _missing_model(cfg.model.name_or_path):
        problems.append(f"model.name_or_path: directory not found: {cfg.model.name_or_path}")
    if train and (cfg.method in ONLINE_METHODS or cfg.train.rounds > 1):  # rounds judge with reward_model
        for field in ("reward_model", "gold_judge"):
            spec = getattr(cfg.train, field)
            if isinstance(spec, str) and spec.strip() and _missing_judge(spec):
                from alignkit.judges import registered_judges

                problems.append(f"train.{field}: run directory not found: {spec}" if "/" in spec or "." in spec else
                                f"train.{field}: unknown judge {spec!r} (judges: {', '.join(registered_judges())}; "
                                "or a reward run's directory, or package.module:function)")
    if not problems:
        return
    head = problems[0] if len(problems) == 1 else f"{len(problems)} inputs not found:\n  " + "\n  ".join(problems)
    hint = ("fix the paths, or set optional fields to null (relative paths in a config file are read from that "
            "file's folder; in field=value overrides, from the current folder)")
    if train and not d.train:
        hint = "set data.train to your training file or folder (.jsonl, .json, .csv, .parquet, .gz ...); " + hint
    elif d.train and not Path(d.train).exists() and not Path(d.train).suffix:
        from alignkit.data.formats import HUB_HINT

        hint = f"{hint}; {HUB_HINT}"
    raise UserError(head, where=cfg.source, hint=hint)


# The package each `train.trackers` entry needs (accelerate drops a tracker whose package is missing
# without a word, so the run would train and log nowhere).
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def check_trackers(trackers, find_spec=None) -> None:
    """Refuse a `train.trackers` entry whose package is not installed, naming the field."""
    import importlib.util

    find_spec = find_spec or importlib.util.find_spec
    missing = [t for t in trackers if not any(find_spec(m) for m in TRACKER_PACKAGES.get(t, (t,)))]
    if missing:
        raise UserError(f"train.trackers: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed",
                        where="config field train.trackers",
                        hint=f"pip install {' '.join(TRACKER_PACKAGES.get(t, (t,))[0] for t in missing)}, or remove "
                             f"{'it' if len(missing) == 1 else 'them'} from train.trackers")


def checkpoint_bytes(model, keep: int) -> int:
    """Disk a run's checkpoints need: trainable weights x 3 (weights + AdamW's m and v) x (keep + 1).

    The moments are counted at the weights' own width; AdamW keeps them in the parameter dtype, and
    trainable LoRA weights are fp32 anyway.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return int(weights * 3 * (keep + 1))


def _existing_parent(path: Path) -> Path:
    """The run dir usually does not exist yet: measure the filesystem it will be created on."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(run_dir: str | Path, needed_bytes: int, *, disk_usage=shutil.disk_usage) -> int:
    """Raise `UserError` (free vs needed) when the run dir's filesystem is short; return free bytes."""
    free = int(disk_usage(_existing_parent(Path(run_dir))).free)
    if free < needed_bytes:
        raise UserError(
            f"not enough disk space for the checkpoints: {_size(free)} free, {_size(needed_bytes)} needed",
            where=f"config field output_dir ({run_dir})",
            hint="free some space, lower train.keep_checkpoints, or put output_dir on a larger disk",
        )
    return free


def fix_overrides(changes: dict) -> list[str]:
    """`Fix.changes` (PlanInput fields) as `a.b=c` overrides; changes with no config field are skipped."""
    out: list[str] = []
    for name, value in changes.items():
        if name in _CONFIG_FIELDS:
            out += [o for o in _CONFIG_FIELDS[name](value) if o not in out]
    return out


def _fix_lines(fixes) -> list[str]:
    lines = []
    for i, f in enumerate(fixes, 1):
        overrides = " ".join(fix_overrides(f.changes)) or "(no config field for this yet)"
        verdict = "fits" if f.fits else "still too big"
        lines.append(f"  {i}. {f.description} -> {_size(f.total)} ({verdict}): {overrides}")
    return lines


def check_memory(plan, *, force: bool = False, fixes=None, console=print) -> None:
    """Refuse a run the planner predicts will not fit (`not plan.fits`), listing fixes; `force` warns
    instead. `fixes` defaults to `alignkit.plan.advisor.fixes(plan.input, plan.hardware)`."""
    if plan.fits:
        return
    if fixes is None:
        from alignkit.plan.advisor import fixes as find_fixes

        fixes = find_fixes(plan.input, plan.hardware)
    hw = plan.hardware
    what = (f"predicted peak memory {_size(plan.total)} is more than the {_size(hw.memory)} "
            f"of {hw.name}")
    if force:
        console(f"warning: {what}; starting anyway (forced)")
        return
    lines = _fix_lines(fixes) or ["  (the planner found no change that fits)"]
    raise UserError(what, where="memory plan (alignkit plan CONFIG shows the breakdown)",
                    hint="change one of these, or force the run if the planner is wrong:\n" + "\n".join(lines))


def is_oom(exc: BaseException) -> bool:
    """True for torch.OutOfMemoryError (CUDA, MPS) and the plain RuntimeError CPU allocators raise."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def oom_message(plan, fixes) -> str:
    """What to print when a step ran out of memory: the prediction, the largest parts, what to change.

    `plan` may be None (an architecture the planner does not know); `fixes` may be empty (the planner
    predicted a fit: fragmentation, other processes on the device, or an unusually long batch).
    """
    lines = ["out of memory during a training step."]
    if plan is not None:
        hw = plan.hardware
        lines.append(f"the planner predicted {_size(plan.total)} on {hw.name} ({_size(hw.memory)}): "
                     f"{plan.verdict}.")
        top = sorted(plan.components.items(), key=lambda kv: -kv[1])[:3]
        lines.append("largest parts: " + ", ".join(f"{n} {_size(b)}" for n, b in top) + ".")
    if fixes:
        lines.append("changes that fit, least disruptive first:")
        lines += _fix_lines(fixes)
    else:
        lines.append("try: train.micro_batch_size=1 (raise train.gradient_accumulation_steps to keep the "
                     "batch), model.gradient_checkpointing=true, or a smaller data.max_length; check that "
                     "no other process holds device memory.")
    lines.append("then resume with `alignkit train --resume RUN` (overrides after it change the run).")
    return "\n".join(lines)
