"""Sampling from a policy: the one decode loop that evaluation, PPO rollouts and on-policy pairs share.

Our own loop rather than `model.generate`, so that what is sampled is exactly what the docstring says:
plain ancestral sampling from `softmax(logits / temperature)` (greedy: argmax), with nothing from
the checkpoint's `generation_config.json` (top-k, top-p, repetition penalty, min-length...) leaking
in. A sample's distribution must be the policy's own, or the KL estimate (`alignkit.eval.kl`) and a
PPO update (which treats the samples as drawn from the policy) silently describe a different one.

The loop: rows are sorted by prompt length (longest first: batches then carry little padding, and
a batch too big for memory fails at once rather than at the end), left-padded so every prompt ends
in the last column, prefilled once into a KV cache, then decoded one token per step. Positions
count real tokens only (`cumsum(mask) - 1`), as `model.generate` does, so a padded row computes the
same thing as the same prompt alone. Each row stops at its own first stop token; a finished row is
fed the pad id until the whole batch has stopped, and its outputs are discarded (compacting the
batch would save that compute, at the price of copying the whole cache each time a row stops).

The padding is built here rather than with `tokenizer.pad`: the tokenizer is shared with the trainer
(right padding) and other threads, so we never flip its `padding_side`, not even temporarily.

Imports run one way: `alignkit.eval` uses this module, never the reverse.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from alignkit.errors import UserError

Conversation = Sequence[Mapping[str, str]]


@dataclass
class Samples:
    """What `sample` drew, one entry per output row, rows in input order (prompt 0's samples first)."""

    prompt_ids: list[list[int]]      # the prompt as given, repeated for each of its samples
    completion_ids: list[list[int]]  # cut after the first stop token (kept), else max_new_tokens long
    ended: list[bool]                # True when the completion ends with a stop token
    prompt_index: list[int]          # which input prompt the row came from


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


def decode_copy(model, dtype: torch.dtype):
    """A copy of `model` with its floating-point weights in `dtype` and its LoRA adapter merged
    (dropped instead while the adapter is disabled), computing what `model` computes.

    The weights are cast while copying (a deepcopy memo maps each parameter to its cast twin), so
    the full-precision copy never exists. The adapter is merged in `dtype`, which rounds the sum
    `W + BA` once more than merging in fp32 would: about one ulp of `dtype`, well below the
    rounding that decoding in `dtype` introduces anyway. The caller's model is not touched.
    """
    # copy=True: in the model's own dtype `.to` would return the same storage, and merging the adapter
    # into the twin would then write W + BA into the caller's weights.
    memo = {id(p): torch.nn.Parameter(p.detach().to(dtype, copy=True), requires_grad=False)
            for p in model.parameters() if p.is_floating_point()}
    twin = copy.deepcopy(model, memo)
    if hasattr(twin, "merge_and_unload"):  # a peft model: one plain matmul per layer, no adapter
        # Inside `model.disable_adapter()` (the reference, in training) the model computes the base.
        off = any(getattr(m, "disable_adapters", False) for m in twin.modules() if hasattr(m, "lora_A"))
        twin = twin.unload() if off else twin.merge_and_unload()
    return twin.eval()


def _forward_options(model) -> tuple[str, dict]:
    """The KV-cache keyword (`cache` in recent transformers 5 releases, `past_key_values` before) and
    `logits_to_keep=1` where the model takes it (the LM head then runs on the last position only)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return ("cache" if "cache" in params else "past_key_values",
            {"logits_to_keep": 1} if "logits_to_keep" in params else {})


def _next_tokens(logits: torch.Tensor, do_sample: bool, temperature: float, gen) -> torch.Tensor:
    """One token per row from logits (b, v) -> (b,): argmax, or a draw from softmax(logits / T)."""
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def _decode_batch(model, prompts, stops: torch.Tensor, pad: int, max_new_tokens: int, do_sample: bool,
                  temperature: float, gen, cache_kw: str, extra: dict) -> list[list[int]]:
    """Completions of one batch of b prompts, each cut after its first stop token.

    The left-padded prompts (b, s) go through the decoder without its LM head except for their last
    column (`_prefill`); then each step feeds one token per live row (n, 1), with the mask
    (n, s + t) and positions (n, 1) extended by one. Rows that have stopped leave the batch (their
    KV-cache rows too) once a quarter of the rows are done, so a long answer does not keep the
    finished ones computing. `out` (b, max_new_tokens) holds the picks.
    """
    ids, mask = left_pad(prompts, pad, stops.device)
    # Pad columns get position 0: they are masked, so any value works; clamping keeps RoPE in range.
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = _prefill(model, ids[:, :-1], mask[:, :-1], pos[:, :-1], cache_kw)
    ids, pos = ids[:, -1:], pos[:, -1:]
    live = torch.arange(len(prompts), device=stops.device)  # row of `out` for each row of the batch
    done = torch.zeros(len(prompts), dtype=torch.bool, device=stops.device)
    out = torch.full((len(prompts), max_new_tokens), pad, dtype=torch.long, device=stops.device)
    steps = 0
    for steps in range(1, max_new_tokens + 1):
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                    **{cache_kw: cache}, **extra)
        cache = res.get("cache") if res.get("cache") is not None else res.get("past_key_values")
        nxt = _next_tokens(res.logits[:, -1].float(), do_sample, temperature, gen)
        nxt = nxt.masked_fill(done, pad)
        out[live, steps - 1] = nxt
        done |= torch.isin(nxt, stops)
        n_done = int(done.sum())
        if n_done == len(live):
            break
        if n_done * 4 >= len(live):  # drop the finished rows from the batch and the cache
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            live, nxt, pos, mask, done = live[keep], nxt[keep], pos[keep], mask[keep], done[keep]
        ids, pos = nxt[:, None], pos[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
    stop_list = stops.tolist()
    return [cut_at_stop(row, stop_list) for row in out[:, :steps].tolist()]


def _prefill(model, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache_kw: str):
    """The KV cache of the prompt columns `ids` (b, s - 1), None when there are none.

    The decoder runs alone where the model exposes one (`get_decoder()`): no logits are needed for
    these columns, and the LM head on a sliced hidden state (b, 1, d) falls into a batched matmul
    that copies the (d, vocab) head once per row in bf16 on CPU (6 of a 7 s prefill, profiled). The
    last prompt column then goes through the whole model as the first decoding step.
    """
    if ids.shape[1] == 0:
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    if decoder is None or decoder is base:
        decoder, kw = model, {cache_kw: None}
    else:
        kw = {}
    res = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **kw)
    return res.get("cache") if res.get("cache") is not None else res.get("past_key_values")


def sample(model, prompt_ids: Sequence[Sequence[int]], *, stop_ids: Sequence[int], pad_id: int,
           max_new_tokens: int, do_sample: bool = True, temperature: float = 1.0,
           num_samples: int = 1, batch_size: int = 32, seed: int = 0,
           decode_dtype: torch.dtype | None = None,
           progress: Callable[[int, int], None] | None = None) -> Samples:
    """Draw `num_samples` completions for each prompt (greedy with `do_sample=False`).

    Args:
        model: a causal LM, plain or peft-wrapped (its active adapter is used). Switched to eval()
            for the call and restored after.
        prompt_ids: token ids per prompt (non-empty), e.g. from `encode_prompts`.
        stop_ids: a row ends at the first of these it produces (the token is kept).
        pad_id: fills the padding; masked, so any id works.
        max_new_tokens: a row that never stops has exactly this many tokens.
        do_sample, temperature: ancestral sampling from softmax(logits / temperature), T > 0;
            no top-k/top-p/penalties, whatever the model's generation_config says.
        num_samples: rows per prompt; row order is prompt 0's samples, then prompt 1's, ...
        batch_size: rows per forward pass.
        seed: seeds a private `torch.Generator`: the caller's RNG state is untouched, and the same
            seed, inputs and batch_size give the same samples (greedy output does not depend on it).
        decode_dtype: decode with a copy of the weights in this dtype (e.g. torch.bfloat16), LoRA
            merged (`decode_copy`). Half the bytes per weight, so faster where decoding is bound by
            reading weights and the hardware has native half-precision matmul (GPUs, CPUs with
            AVX512-BF16/AMX); on CPUs without it, half-precision matmul is emulated and slower
            (bench/generation.py on an AVX2-only CPU: 0.23x fp32's tokens/s). The price: logits differ from the model's by bf16 rounding,
            so greedy answers can diverge where the top two tokens are close, and samples come from
            a slightly different distribution; score log-probs with the model itself, not the copy.
            The copy costs time and memory (half the model) on every call. None: the model as is.
        progress: called as ``progress(0, rows_total)`` before the first batch and
            ``progress(rows_done, rows_total)`` after each one (e.g. to print an ETA); None: silent.

    Returns:
        Samples, len(prompt_ids) * num_samples rows in input order.
    """
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    rows = [i for i in range(len(prompt_ids)) for _ in range(num_samples)]
    completions: list[list[int]] = [[] for _ in rows]
    if rows and max_new_tokens > 0:
        # A stable sort keeps a prompt's samples adjacent, so they share a batch when they fit.
        order = sorted(range(len(rows)), key=lambda r: -len(prompt_ids[rows[r]]))
        was_training = model.training
        decoder = model
        try:
            model.eval()
            if decode_dtype is not None and (hasattr(model, "merge_and_unload")
                                             or next(model.parameters()).dtype != decode_dtype):
                decoder = decode_copy(model, decode_dtype)
            device = next(decoder.parameters()).device
            gen = torch.Generator(device=device).manual_seed(seed)
            stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
            cache_kw, extra = _forward_options(decoder)
            if progress is not None:
                progress(0, len(order))
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    idx = order[start:start + batch_size]
                    got = _decode_batch(decoder, [prompt_ids[rows[r]] for r in idx], stops, pad_id,
                                        max_new_tokens, do_sample, temperature, gen, cache_kw, extra)
                    for r, c in zip(idx, got, strict=True):
                        completions[r] = c
                    if progress is not None:
                        progress(min(start + batch_size, len(order)), len(order))
        finally:
            del decoder
            model.train(was_training)
    stop_set = set(int(s) for s in stop_ids)
    return Samples(prompt_ids=[list(prompt_ids[i]) for i in rows], completion_ids=completions,
                   ended=[bool(c) and c[-1] in stop_set for c in completions], prompt_index=rows)


def sample_texts(model, tokenizer, conversations: Sequence[Conversation], **kw) -> tuple[Samples, list[str]]:
    """`sample` on chat conversations: the chat template in, decoded answers (specials dropped) out.

    `stop_ids` default to `stop_ids(model, tokenizer)` and `pad_id` to the tokenizer's pad (else
    the first stop id); every other keyword goes to `sample` (`max_new_tokens` is required).
    """
    prompts = encode_prompts(tokenizer, conversations)
    stops = kw.pop("stop_ids", None) or stop_ids(model, tokenizer)
    pad = kw.pop("pad_id", None)
    samples = sample(model, prompts, stop_ids=stops, pad_id=pad_id(tokenizer, stops) if pad is None else pad,
                     **kw)
    return samples, [tokenizer.decode(c, skip_special_tokens=True).strip() for c in samples.completion_ids]
