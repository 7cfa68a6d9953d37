"""Batched generation for evaluation probes, on the shared decode loop in `alignkit.sample`.

Prompts go through the tokenizer's chat template (`add_generation_prompt=True`), are decoded by
`alignkit.sample.sample` (sorted by length, left-padded, KV cache, each row cut after its first
end-of-sequence token) and returned in the caller's order.

Sampling uses the model's distribution as it is: `top_k`, `top_p`, repetition penalties and the like
from the checkpoint's `generation_config.json` never apply, because the loop is ours and does not read
them, so that before/after comparisons and the KL estimate (`alignkit.eval.kl`) see the same, unshaped
distribution.

`encode_prompts`, `stop_ids`, `pad_id`, `left_pad` and `cut_at_stop` live in `alignkit.sample`; they are
re-exported here for the code that imports them from this module.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from alignkit.sample import (
    Conversation,
    cut_at_stop,
    encode_prompts,
    left_pad,
    pad_id,
    sample,
    stop_ids,
)

__all__ = ["Conversation", "cut_at_stop", "encode_prompts", "generate", "generate_ids", "left_pad", "pad_id",
           "progress_printer", "stop_ids"]

Progress = Callable[[int, int], None]  # (rows done, rows in all), called after each batch


def generate_ids(model, tokenizer, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int = 64,
                 batch_size: int = 16, do_sample: bool = False, temperature: float = 1.0,
                 seed: int = 0, progress: Progress | None = None, decode_dtype=None) -> list[list[int]]:
    """Completion token ids per prompt, cut after the first stop token (kept), in the input order.

    Stops on `stop_ids(model, tokenizer)`; pads with the tokenizer's pad id (else the first stop id).
    `decode_dtype` (e.g. torch.bfloat16): decode from a copy in that precision (`alignkit.sample`).
    """
    if not prompt_ids:
        return []
    eos = stop_ids(model, tokenizer)
    out = sample(model, prompt_ids, stop_ids=eos, pad_id=pad_id(tokenizer, eos), max_new_tokens=max_new_tokens,
                 do_sample=do_sample, temperature=temperature, batch_size=batch_size, seed=seed,
                 progress=progress, decode_dtype=decode_dtype)
    return out.completion_ids


def generate(model, tokenizer, conversations: Sequence[Conversation], *, max_new_tokens: int = 64,
             batch_size: int = 16, do_sample: bool = False, temperature: float = 1.0,
             seed: int = 0, progress: Progress | None = None, decode_dtype=None) -> list[str]:
    """Answer each conversation; greedy unless `do_sample`. Returns decoded text, one per input.

    Args:
        conversations: lists of message dicts (`{"role", "content"}`), ending with a user turn.
        max_new_tokens: answers are cut here when the model has not stopped.
        batch_size: prompts per forward pass.
        do_sample, temperature: plain ancestral sampling at this temperature (no top-k/top-p).
        seed: the sampling seed; greedy output does not depend on it.
        progress: ``progress(done, total)`` after each batch (`progress_printer` prints an ETA).
        decode_dtype: None decodes the model as it is; torch.bfloat16 a bf16 copy (faster where the
            hardware has bf16; greedy answers can differ where the top two tokens are close).
    """
    prompts = encode_prompts(tokenizer, conversations)
    completions = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, do_sample=do_sample, temperature=temperature,
                               seed=seed, progress=progress, decode_dtype=decode_dtype)
    return [tokenizer.decode(c, skip_special_tokens=True).strip() for c in completions]


def progress_printer(write: Callable[[str], None] | None = None,
                     clock: Callable[[], float] = time.perf_counter) -> Callable[[str, int, int], None]:
    """A ``progress(label, done, total)`` that prints ``"label: 32/90 answers, ETA 40s"`` after each
    batch (to stderr unless `write` is given) and ``"label: 90/90 answers in 55s"`` at the end.

    ``done == 0`` (what `alignkit.sample.sample` reports before its first batch) starts the label's
    clock and prints nothing. The ETA assumes the remaining rows go at the rate so far; batches run
    the longest prompts first, so it errs high.
    """
    write = write or (lambda line: print(line, file=sys.stderr, flush=True))
    started: dict[str, float] = {}

    def progress(label: str, done: int, total: int) -> None:
        now = clock()
        if done <= 0:
            started[label] = now
            return
        elapsed = now - started.setdefault(label, now)
        if done >= total:
            write(f"{label}: {done}/{total} answers in {elapsed:.0f}s")
            return
        write(f"{label}: {done}/{total} answers, ETA {elapsed / done * (total - done):.0f}s")

    return progress
