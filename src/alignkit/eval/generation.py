"""Batched generation for evaluation probes.

Prompts go through the tokenizer's chat template (`add_generation_prompt=True`), are sorted by length
so each batch carries little padding, left-padded (a decoder continues from the last column, so the
prompt must end there), generated, cut at the first end-of-sequence token and returned in the caller's
order.

The padding is built here rather than with `tokenizer.pad`: the tokenizer is shared with the trainer
(right padding) and other threads, so we never flip its `padding_side`, not even temporarily.

Sampling uses the model's distribution as it is: `top_k`, `top_p`, repetition penalties and the like
from the checkpoint's `generation_config.json` are switched off, so that before/after comparisons and
the KL estimate (`alignkit.eval.kl`) see the same, unshaped distribution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from alignkit.errors import UserError

Conversation = Sequence[Mapping[str, str]]

# Generation-config fields that reshape the model's distribution, each set to its neutral value so a
# checkpoint's defaults (e.g. top_p=0.9, repetition_penalty=1.1) cannot leak into evaluation.
_PLAIN = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": 0}
_SAMPLE = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}


def encode_prompts(tokenizer, conversations: Sequence[Conversation]) -> list[list[int]]:
    """Token ids of each conversation through the chat template, ready for the assistant's answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            "the tokenizer has no chat template, so probe prompts cannot be formatted",
            where="eval.probes",
            hint="evaluate an instruct/chat model, or set tokenizer.chat_template",
        )
    out = []
    for conv in conversations:
        enc = tokenizer.apply_chat_template(list(conv), add_generation_prompt=True, tokenize=True)
        # transformers 5 returns a BatchEncoding (return_dict=True by default); 4.x a list of ids.
        ids = enc["input_ids"] if isinstance(enc, Mapping) else enc
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        out.append([int(i) for i in ids])
    return out


def stop_ids(model, tokenizer) -> list[int]:
    """End-of-sequence ids: the tokenizer's EOS plus any the model's generation config names.

    Chat checkpoints often stop on an end-of-turn token that only one of the two lists knows about.
    """
    ids: list[int] = []
    for src in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                tokenizer.eos_token_id):
        if src is None:
            continue
        for i in src if isinstance(src, (list, tuple)) else [src]:
            if int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise UserError("the tokenizer has no end-of-sequence token, so generation cannot stop",
                        hint="set tokenizer.eos_token")
    return ids


def pad_id(tokenizer, eos: list[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]


def left_pad(seqs: Sequence[Sequence[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids (b, s), attention_mask (b, s))` with every row aligned to the right edge."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            ids[row, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[row, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def cut_at_stop(ids: Sequence[int], stops: Sequence[int]) -> list[int]:
    """Tokens up to and including the first stop token (everything after it is padding)."""
    out = []
    for t in ids:
        out.append(int(t))
        if t in stops:
            break
    return out


def _device(model) -> torch.device:
    return next(model.parameters()).device


def generate_ids(model, tokenizer, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int = 64,
                 batch_size: int = 16, do_sample: bool = False, temperature: float = 1.0,
                 seed: int = 0) -> list[list[int]]:
    """Completion token ids per prompt, cut after the first stop token (kept), in the input order.

    Longest prompts go first: batches then hold similar lengths (less padding), and a batch that
    does not fit in memory fails at once rather than at the end.
    """
    if not prompt_ids:
        return []
    eos = stop_ids(model, tokenizer)
    pad = pad_id(tokenizer, eos)
    device = _device(model)
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    results: list[list[int]] = [[] for _ in prompt_ids]
    was_training = model.training
    model.eval()
    # A private RNG stream: sampling is reproducible from `seed` and the caller's RNG is untouched.
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed)
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                input_ids, mask = left_pad([prompt_ids[i] for i in idx], pad, device)
                kwargs = {**_PLAIN, **_SAMPLE, "temperature": temperature} if do_sample else _PLAIN
                out = model.generate(
                    input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                    do_sample=do_sample, eos_token_id=eos, pad_token_id=pad, **kwargs,
                )
                for row, i in enumerate(idx):
                    results[i] = cut_at_stop(out[row, input_ids.shape[1]:].tolist(), eos)
    finally:
        model.train(was_training)
    return results


def generate(model, tokenizer, conversations: Sequence[Conversation], *, max_new_tokens: int = 64,
             batch_size: int = 16, do_sample: bool = False, temperature: float = 1.0,
             seed: int = 0) -> list[str]:
    """Answer each conversation; greedy unless `do_sample`. Returns decoded text, one per input.

    Args:
        conversations: lists of message dicts (`{"role", "content"}`), ending with a user turn.
        max_new_tokens: answers are cut here when the model has not stopped.
        batch_size: prompts per `model.generate` call.
        do_sample, temperature: plain ancestral sampling at this temperature (no top-k/top-p).
        seed: the sampling seed; greedy output does not depend on it.
    """
    prompts = encode_prompts(tokenizer, conversations)
    completions = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, do_sample=do_sample, temperature=temperature,
                               seed=seed)
    return [tokenizer.decode(c, skip_special_tokens=True).strip() for c in completions]
