"""The training loop: one explicit loop on `accelerate`, readable top to bottom.

Every optimizer step consumes `gradient_accumulation_steps x processes` micro-batches from a
schedule fixed by the seed before training starts, so the data position is just the step number
and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignkit.errors import UserError
from alignkit.train.checkpoint import save_checkpoint


def make_schedule(lengths: list[int], micro_batch: int, per_step: int, epochs: float, seed: int,
                  window_steps: int = 16) -> list[list[int]]:
    """Micro-batches of item indices for the whole run; each run of `per_step` of them is one step.

    Each epoch shuffles the items, sorts them by length inside windows of `window_steps` optimizer
    steps, cuts each window into steps (which are then shuffled) and each step into micro-batches.
    So a micro-batch holds rows of similar length (little padding), and *which* items a step sees
    depends only on `micro_batch x per_step`, not on how it is split: batch 1 x 8 accumulation sees
    the same rows as 8 x 1. Fractional epochs cut the last epoch short.
    """
    n = len(lengths)
    step_items = micro_batch * per_step
    per_epoch = math.ceil(n / micro_batch)
    total = max(1, math.ceil(per_epoch * epochs))
    schedule: list[list[int]] = []
    epoch = 0
    while len(schedule) < total:
        rng = random.Random(seed * 1_000_003 + epoch)
        order = list(range(n))
        rng.shuffle(order)
        steps: list[list[int]] = []
        for w in range(0, n, step_items * window_steps):
            window = sorted(order[w:w + step_items * window_steps], key=lambda i: (lengths[i], i))
            steps += [window[i:i + step_items] for i in range(0, len(window), step_items)]
        rng.shuffle(steps)
        for step in steps:
            schedule += [step[i:i + micro_batch] for i in range(0, len(step), micro_batch)]
        epoch += 1
    return schedule[:total]



def make_accelerator(mixed_precision: str, *, trackers, project_dir: str):
    """An `accelerate.Accelerator` for one run at `mixed_precision` ("no", "bf16", "fp16").

    accelerate keeps one state per process and refuses a second Accelerator at another precision, so
    a second run in the same process (the Python API, the tests) at another precision would fail. In
    a single process nothing else holds that state, and it is cleared first; under `accelerate
    launch` (several processes) it is left as the launcher set it.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != mixed_precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, log_with=trackers or None, project_dir=project_dir)

@dataclass
class LoopState:
    step: int = 0
    bad_steps: int = 0  # consecutive non-finite steps
    skipped_steps: int = 0
    tokens_seen: int = 0
    history: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # a method's own resumable state (e.g. PPO's KL coefficient)
    interrupted_by: str | None = None  # "SIGINT" / "SIGTERM" when the run stopped on a signal


class Interrupt:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (then saves and exits)."""

    def __init__(self):
        self.requested = False
        self.signal: str | None = None  # the name of the signal that asked to stop
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_loop(*, accelerator, model, forward, objective, items, schedule, optimizer, scheduler,
             total_steps: int, steps_per_epoch: float, tcfg, state: LoopState, run_dir: Path, log_file: Path,
             evaluate=None, progress=None, console=print) -> LoopState:
    """Train from `state.step` to `total_steps`. Returns the final state; `state.step < total_steps`
    means the run was interrupted (a checkpoint was written)."""
    A, W, rank = tcfg.gradient_accumulation_steps, accelerator.num_processes, accelerator.process_index
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    with Interrupt() as interrupt:
        while state.step < total_steps:
            t0 = time.perf_counter()
            step_batches = schedule[state.step * A * W:(state.step + 1) * A * W]
            mine = step_batches[rank::W]
            # Normalize by the whole step's weight (all micro-batches, all processes) so that the
            # micro-batch losses add up to the full-batch mean: 1 x 8 accumulation == 8 x 1.
            step_weight = sum(objective.weight([items[i] for i in mb]) for mb in step_batches) / W
            sums: dict[str, float] = {}
            n_tokens = n_padded = 0
            for k, ids in enumerate(mine):
                batch = objective.collate([items[i] for i in ids]).to(accelerator.device)
                n_tokens += batch.n_tokens
                n_padded += batch.n_padded
                sync = accelerator.no_sync(forward) if k < len(mine) - 1 else _null()
                with sync, accelerator.autocast():
                    loss_sum, metrics = objective.loss(forward, model, batch, ids)
                    accelerator.backward(loss_sum / step_weight)
                for key, v in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(v)
            grad_norm = _clip(accelerator, params, tcfg.max_grad_norm)
            finite = math.isfinite(sums.get("loss", 0.0)) and math.isfinite(grad_norm)
            if finite:
                optimizer.step()
                state.bad_steps = 0
            else:
                state.bad_steps += 1
                state.skipped_steps += 1
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens_seen += n_tokens
            dt = time.perf_counter() - t0
            row = {"step": state.step, "epoch": round(state.step / steps_per_epoch, 4)}
            row.update({k: v / step_weight for k, v in sums.items()})
            if hasattr(objective, "finalize_metrics"):  # KTO: exact means over desirable/undesirable rows
                row = objective.finalize_metrics(row)
            row.update({"grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
                        "tokens_per_s": n_tokens * W / dt, "padding": 1 - n_tokens / max(n_padded, 1),
                        "skipped": not finite})
            if not finite and state.bad_steps >= tcfg.max_bad_steps:
                _append(log_file, row, accelerator)
                raise UserError(
                    f"{state.bad_steps} optimizer steps in a row had a non-finite loss or gradient "
                    f"(last: loss={row.get('loss')}, grad_norm={grad_norm}); stopped without saving "
                    f"non-finite weights",
                    where=f"step {state.step}, rows {sorted(i for mb in step_batches for i in mb)[:16]}",
                    hint="lower train.learning_rate, use float32 or bf16 instead of fp16, check those rows")
            if state.step % tcfg.log_every == 0 or state.step == total_steps:
                _append(log_file, row, accelerator)
                accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=state.step)
            if progress is not None:
                progress(state.step, total_steps, row)
            if evaluate is not None and tcfg.eval_every and state.step % tcfg.eval_every == 0 \
                    and state.step < total_steps:
                _append(log_file, {"step": state.step, **evaluate()}, accelerator)
                model.train()
            save_now = tcfg.save_every and state.step % tcfg.save_every == 0
            if (save_now or interrupt.requested) and state.step < total_steps:
                save(accelerator, model, optimizer, scheduler, state, run_dir, tcfg.keep_checkpoints)
            if interrupt.requested and state.step < total_steps:  # at the last step: finish (final/)
                state.interrupted_by = interrupt.signal
                console(f"interrupted: checkpoint saved at step {state.step}; continue with "
                        f"`alignkit train --resume {run_dir}`")
                return state
    return state


def save(accelerator, model, optimizer, scheduler, state: LoopState, run_dir: Path, keep: int) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(run_dir, state.step, accelerator.unwrap_model(model), optimizer, scheduler,
                        {"step": state.step, "skipped_steps": state.skipped_steps,
                         "tokens_seen": state.tokens_seen, "extra": state.extra}, keep=keep)


def _clip(accelerator, params, max_norm) -> float:
    if max_norm is None:
        norms = [p.grad.detach().norm() for p in params if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
    return float(accelerator.clip_grad_norm_(params, max_norm))


def _append(path: Path, row: dict, accelerator) -> None:
    if accelerator.is_main_process:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
