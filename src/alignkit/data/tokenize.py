"""Turn normalised rows into token ids with the tokenizer's own chat template.

Rules (docs/ARCHITECTURE.md, "tokenization"):

- **Prompt**: ``template(prompt, add_generation_prompt=True)``, exactly what generation will see.
- **Completion**: ``template(prompt + [answer])`` minus the prompt tokens. When the token prefix does
  not hold but the text prefix does (a BPE merge across the boundary, e.g. an answer starting with
  "\\n" after "assistant\\n"), the answer's text is tokenised on its own, as generation would emit it.
  When even the text differs (a template that rewrites earlier turns), a `UserError` says so.
- **End of turn**: the completion is cut after its first end-of-turn token: the tokenizer's EOS, or
  the first special token the template writes after an answer (``<|im_end|>``, ``<end_of_turn>``,
  ``<|eot_id|>``). What follows (the template's newline) is formatting, not something to learn. If the
  template writes no such token, EOS is appended. So a completion ends with exactly one end token. An
  answer whose text contains the end token itself is refused rather than silently cut.
- **No chat template**: a single user message without a system prompt falls back to plain text:
  ``prompt_ids = tokenizer.encode(prompt)`` (with the tokenizer's own BOS rule, any trailing EOS
  removed), ``completion_ids = tokenizer.encode(answer, add_special_tokens=False) + [eos]``. The answer
  follows the prompt directly; put any separator in the data. Anything else raises `UserError`.
- **Truncation**: a prompt longer than ``max_prompt_length`` always loses tokens from the left (the
  latest turn and the generation header survive), as in TRL; then completions lose tokens from the
  right so that ``len(prompt) + max(len(chosen), len(rejected)) <= max_length``. A cut completion has no
  end token: it did not end, and the model must not learn to stop there. If the prompt leaves no room
  at all (``max_prompt_length >= max_length``), the row raises, or is skipped by the ``*_rows`` helpers
  with ``skip_invalid=True``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignkit.data.formats import KTORow, Message, PreferenceRow, RowError, SFTRow
from alignkit.errors import UserError


@dataclass
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]  # completion tokens, ending with exactly one end token unless truncated
    rejected_ids: list[int]
    truncated: bool  # anything cut
    source: str


@dataclass
class TokenizedSFT:
    prompt_ids: list[int]
    completion_ids: list[int]
    truncated: bool
    source: str


@dataclass
class TokenizedKTO:
    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    truncated: bool
    source: str


@dataclass
class TruncationStats:
    """Counts over a dataset: rows tokenised, and how many lost prompt or completion tokens."""

    rows: int = 0
    prompt_truncated: int = 0
    completion_truncated: int = 0  # rows where any completion was cut
    skipped: int = 0  # rows dropped with skip_invalid=True
    reasons: dict[str, int] = field(default_factory=dict)


def _as_ids(result: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4.x a list.
    if isinstance(result, Mapping):
        result = result["input_ids"]
    if hasattr(result, "tolist"):
        result = result.tolist()
    if result and isinstance(result[0], list | tuple):
        (result,) = result
    return [int(i) for i in result]


def _has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer: Any, messages: Sequence[Message], source: str, **kwargs: Any) -> Any:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template([dict(m) for m in messages], **kwargs)
    except TemplateError as e:
        raise RowError(
            "template rejected the conversation",
            f"the chat template rejected this conversation: {e}",
            where=source,
            hint="some templates allow no system message, or need user and assistant turns to alternate",
        ) from None


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []))
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return ids | {i for i, tok in decoder.items() if getattr(tok, "special", False)}


def end_token_ids(tokenizer: Any) -> set[int]:
    """EOS plus the template's end-of-turn token, found by rendering a probe answer."""
    ids = {tokenizer.eos_token_id} - {None}
    if _has_template(tokenizer):
        probe: list[Message] = [{"role": "user", "content": "Hi"}]
        try:
            prompt = _as_ids(_render(tokenizer, probe, "probe", tokenize=True, add_generation_prompt=True))
            full = _as_ids(
                _render(tokenizer, [*probe, {"role": "assistant", "content": "Hi"}], "probe", tokenize=True)
            )
        except UserError:
            return ids
        special = _special_ids(tokenizer)
        tail = full[len(prompt) :] if full[: len(prompt)] == prompt else []
        ids |= set([t for t in tail if t in special][:1])
    return ids


def encode_prompt(tokenizer: Any, prompt: Sequence[Message], source: str = "prompt") -> list[int]:
    """Prompt token ids, ending with the template's generation header (what `generate` is given)."""
    if _has_template(tokenizer):
        return _as_ids(_render(tokenizer, prompt, source, tokenize=True, add_generation_prompt=True))
    if len(prompt) != 1 or prompt[0]["role"] != "user":
        raise RowError(
            "tokenizer has no chat template",
            "tokenizer has no chat template",
            where=source,
            hint="use an instruct model's tokenizer or set tokenizer.chat_template; without one only "
            "single-turn prompts with no system prompt can be tokenised (as plain text)",
        )
    ids = list(tokenizer.encode(prompt[0]["content"]))  # the tokenizer's own BOS rule
    return ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids


def _close(tokenizer: Any, ids: list[int], end_ids: set[int], source: str) -> list[int]:
    """Cut after the first end token; append EOS when the template wrote none."""
    for i, token in enumerate(ids):
        if token in end_ids:
            if tokenizer.decode(ids[i + 1 :], skip_special_tokens=True).strip():
                raise RowError(
                    "answer contains the end-of-turn token",
                    f"the answer contains the end-of-turn token {tokenizer.decode([token])!r}",
                    where=source,
                    hint="remove special-token text from the answer: the model would learn to stop there",
                )
            return ids[: i + 1]
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token", hint="set tokenizer.eos_token")
    return [*ids, tokenizer.eos_token_id]


def encode_completion(
    tokenizer: Any,
    prompt: Sequence[Message],
    prompt_ids: list[int],
    answer: str,
    end_ids: set[int],
    source: str = "answer",
) -> list[int]:
    """Completion token ids for ``answer`` after ``prompt`` (whose ids are ``prompt_ids``)."""
    if not _has_template(tokenizer):
        ids = list(tokenizer.encode(answer, add_special_tokens=False))
        return _close(tokenizer, ids, {tokenizer.eos_token_id} - {None}, source)
    conversation = [*prompt, {"role": "assistant", "content": answer}]
    full = _as_ids(_render(tokenizer, conversation, source, tokenize=True))
    if full[: len(prompt_ids)] == prompt_ids:
        return _close(tokenizer, full[len(prompt_ids) :], end_ids, source)
    prompt_text = _render(tokenizer, prompt, source, tokenize=False, add_generation_prompt=True)
    full_text = _render(tokenizer, conversation, source, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise RowError(
            "template rewrites the prompt",
            "the chat template renders the prompt differently once an answer follows",
            where=source,
            hint="completion-only training needs a template that leaves earlier turns unchanged; "
            "set tokenizer.chat_template to one that does",
        )
    # A token merged across the boundary: tokenise the answer's text alone, as generation emits it.
    rest = tokenizer.encode(full_text[len(prompt_text) :], add_special_tokens=False)
    return _close(tokenizer, list(rest), end_ids, source)


def _truncate(
    prompt: list[int], completions: list[list[int]], max_length: int, max_prompt_length: int, source: str
) -> tuple[list[int], list[list[int]], bool, bool]:
    if max_length < 1 or max_prompt_length < 1:
        raise UserError(
            f"max_length ({max_length}) and max_prompt_length ({max_prompt_length}) must be positive",
            where="max_length",
        )
    prompt_cut = len(prompt) > max_prompt_length
    prompt = prompt[len(prompt) - max_prompt_length :] if prompt_cut else prompt
    room = max_length - len(prompt)
    if room < 1:
        raise RowError(
            "no room for the answer",
            f"the prompt ({len(prompt)} tokens) leaves no room for the answer within max_length {max_length}",
            where=source,
            hint="set max_prompt_length below max_length",
        )
    return prompt, [c[:room] for c in completions], prompt_cut, any(len(c) > room for c in completions)


def _pair(tokenizer, row, max_length, max_prompt_length, end_ids) -> tuple[TokenizedPair, bool, bool]:
    prompt = encode_prompt(tokenizer, row.prompt, row.source)
    chosen = encode_completion(tokenizer, row.prompt, prompt, row.chosen, end_ids, row.source)
    rejected = encode_completion(tokenizer, row.prompt, prompt, row.rejected, end_ids, row.source)
    prompt, (chosen, rejected), p_cut, c_cut = _truncate(
        prompt, [chosen, rejected], max_length, max_prompt_length, row.source
    )
    return TokenizedPair(prompt, chosen, rejected, p_cut or c_cut, row.source), p_cut, c_cut


def _single(tokenizer, row, max_length, max_prompt_length, end_ids) -> tuple[Any, bool, bool]:
    prompt = encode_prompt(tokenizer, row.prompt, row.source)
    completion = encode_completion(tokenizer, row.prompt, prompt, row.completion, end_ids, row.source)
    prompt, (completion,), p_cut, c_cut = _truncate(
        prompt, [completion], max_length, max_prompt_length, row.source
    )
    if isinstance(row, KTORow):
        return TokenizedKTO(prompt, completion, row.label, p_cut or c_cut, row.source), p_cut, c_cut
    return TokenizedSFT(prompt, completion, p_cut or c_cut, row.source), p_cut, c_cut


def tokenize_pair(
    tokenizer: Any, row: PreferenceRow, *, max_length: int, max_prompt_length: int
) -> TokenizedPair:
    """Token ids of one preference pair; the prompt is shared by both answers."""
    return _pair(tokenizer, row, max_length, max_prompt_length, end_token_ids(tokenizer))[0]


def tokenize_sft(tokenizer: Any, row: SFTRow, *, max_length: int, max_prompt_length: int) -> TokenizedSFT:
    """Token ids of one demonstration."""
    return _single(tokenizer, row, max_length, max_prompt_length, end_token_ids(tokenizer))[0]


def tokenize_kto(tokenizer: Any, row: KTORow, *, max_length: int, max_prompt_length: int) -> TokenizedKTO:
    """Token ids of one labelled answer."""
    return _single(tokenizer, row, max_length, max_prompt_length, end_token_ids(tokenizer))[0]


def _many(
    fn: Callable, tokenizer, rows, max_length, max_prompt_length, skip_invalid
) -> tuple[list, TruncationStats]:
    end_ids = end_token_ids(tokenizer)  # one probe render for the whole dataset
    out, stats, reasons = [], TruncationStats(), Counter()
    for row in rows:
        try:
            item, p_cut, c_cut = fn(tokenizer, row, max_length, max_prompt_length, end_ids)
        except RowError as e:
            if not skip_invalid:
                raise
            reasons[e.reason] += 1
            continue
        out.append(item)
        stats.rows += 1
        stats.prompt_truncated += p_cut
        stats.completion_truncated += c_cut
    stats.skipped, stats.reasons = sum(reasons.values()), dict(reasons)
    return out, stats


def tokenize_pairs(
    tokenizer: Any,
    rows: Iterable[PreferenceRow],
    *,
    max_length: int,
    max_prompt_length: int,
    skip_invalid: bool = False,
) -> tuple[list[TokenizedPair], TruncationStats]:
    """`tokenize_pair` over a dataset, with truncation counts; row problems raise or are skipped."""
    return _many(_pair, tokenizer, rows, max_length, max_prompt_length, skip_invalid)


def tokenize_sft_rows(
    tokenizer: Any,
    rows: Iterable[SFTRow],
    *,
    max_length: int,
    max_prompt_length: int,
    skip_invalid: bool = False,
) -> tuple[list[TokenizedSFT], TruncationStats]:
    """`tokenize_sft` over a dataset, with truncation counts."""
    return _many(_single, tokenizer, rows, max_length, max_prompt_length, skip_invalid)


def tokenize_kto_rows(
    tokenizer: Any,
    rows: Iterable[KTORow],
    *,
    max_length: int,
    max_prompt_length: int,
    skip_invalid: bool = False,
) -> tuple[list[TokenizedKTO], TruncationStats]:
    """`tokenize_kto` over a dataset, with truncation counts."""
    return _many(_single, tokenizer, rows, max_length, max_prompt_length, skip_invalid)
