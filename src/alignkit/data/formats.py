"""Load preference, SFT and KTO data files and normalise every row to one shape.

Files: ``.jsonl`` (one object per line; blank lines ignored), ``.json`` (a list of objects, or
``{"data": [...]}``), ``.csv`` (a header row, then one row per line), ``.parquet``.

Row conventions accepted (see docs/ARCHITECTURE.md, "data rows"):

- strings: ``{prompt, chosen, rejected, system?}``;
- chat messages: ``prompt`` a list of ``{role, content}``; ``chosen``/``rejected`` a string, one
  assistant message, or a list holding one assistant message (the TRL/UltraFeedback convention);
- full conversations: ``chosen``/``rejected`` are whole message lists sharing the prompt prefix
  (``prompt`` absent, or equal to that prefix); they split at the final assistant turn;
- SFT: ``{prompt, completion}``, ``{messages}`` (the final assistant turn is the completion; earlier
  assistant turns are context), or a preference row (its chosen side);
- KTO: ``{prompt, completion, label}`` with ``label`` true/false, 1/0 or "desirable"/"undesirable"
  (``{messages, label}`` too); a preference row unpairs into a desirable and an undesirable row.

A row's ``system`` field (blank or null means absent), else the ``system`` argument, becomes a leading
system message unless the prompt already starts with one. Every invalid row raises a `UserError`
naming ``path:line field 'x'``, or with ``skip_invalid=True`` is counted in `LoadReport.reasons`.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from alignkit.errors import UserError

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}
ROLES = ("system", "user", "assistant")
_SURROGATE = re.compile("[\ud800-\udfff]")

__all__ = [
    "KTORow",
    "LoadReport",
    "Message",
    "PreferenceRow",
    "RowError",
    "SFTRow",
    "iter_rows_raw",
    "load_kto",
    "load_preferences",
    "load_sft",
    "normalize_row",
    "split_train_eval",
]


@dataclass(frozen=True)
class PreferenceRow:
    """A prompt with a preferred and a dispreferred answer."""

    prompt: tuple[Message, ...]  # conversation before the answer; ends with a user turn
    chosen: str
    rejected: str
    source: str  # "path:line"


@dataclass(frozen=True)
class SFTRow:
    """A demonstration: a prompt and one assistant answer."""

    prompt: tuple[Message, ...]
    completion: str
    source: str


@dataclass(frozen=True)
class KTORow:
    """An unpaired answer labelled desirable (True) or undesirable (False)."""

    prompt: tuple[Message, ...]
    completion: str
    label: bool
    source: str


@dataclass(frozen=True)
class PromptRow:
    """A prompt to answer (online RL, pair sampling), with its raw row for judges (category, reference)."""

    prompt: tuple[Message, ...]
    meta: dict = field(default_factory=dict, hash=False, compare=False)
    source: str = ""


@dataclass
class LoadReport:
    """What a loader kept and what it skipped, and why."""

    path: str
    rows: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"{self.path}: {self.rows} rows"
        if self.skipped:
            why = ", ".join(f"{r}: {n}" for r, n in sorted(self.reasons.items(), key=lambda x: -x[1]))
            text += f", skipped {self.skipped} ({why})"
        return text


# ---------------------------------------------------------------------------------------------------
# Reading files: one raw object per row, with its line number.


class RowError(UserError):
    """A problem with one row, skippable with ``skip_invalid=True``; ``reason`` is its counting key."""

    def __init__(self, reason: str, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(message, where=where, hint=hint)
        self.reason = reason


def iter_rows_raw(path: str | Path, *, errors: str = "raise") -> Iterator[tuple[int, dict | RowError]]:
    """Yield ``(line, raw object)`` for each row of a data file, before any normalisation.

    ``line`` is 1-based: the line for JSONL, the line where the record starts for CSV (the header is
    line 1), the row index + 1 for JSON and Parquet. File-level problems (missing, unreadable, unknown
    extension, a .json/.csv/.parquet file that does not parse) raise `UserError`. A bad row (a JSONL
    line that is not UTF-8 or not JSON, a value that is not an object) raises `RowError`, or with
    ``errors="yield"`` is yielded in place of the object, so a caller (the data doctor) can go on.
    """
    file = Path(path)
    if not file.exists():
        raise UserError(
            "file not found",
            where=str(path),
            hint="check the path; relative paths start from the current directory",
        )
    if file.is_dir():
        raise UserError("this is a directory, not a data file", where=str(path),
                        hint="point data.train at a .jsonl, .json, .csv or .parquet file")
    readers = {
        ".jsonl": _read_jsonl,
        ".ndjson": _read_jsonl,
        ".json": _read_json,
        ".csv": _read_csv,
        ".parquet": _read_parquet,
    }
    suffix = file.suffix.lower()
    if suffix not in readers:
        raise UserError(
            f"unknown file extension {suffix!r}", where=str(path), hint="use .jsonl, .json, .csv or .parquet"
        )
    try:
        data = file.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read the file: {e.strerror or e}", where=str(path)) from None
    for line, obj in readers[suffix](data, str(path)):
        if not isinstance(obj, dict | RowError):
            obj = RowError(
                "not a JSON object",
                f"a row must be an object with fields, got {_kind(obj)}",
                where=f"{path}:{line}",
            )
        if isinstance(obj, RowError) and errors == "raise":
            raise obj
        yield line, obj


def _read_jsonl(data: bytes, path: str) -> Iterator[tuple[int, Any]]:
    lines = data.split(b"\n")
    offset = 0
    for number, raw in enumerate(lines, 1):
        start, offset = offset, offset + len(raw) + 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield (
                number,
                RowError(
                    "not UTF-8",
                    f"not valid UTF-8 (byte offset {start + e.start} in the file)",
                    where=f"{path}:{number}",
                    hint="save the file as UTF-8",
                ),
            )
            continue
        text = text.removeprefix("\ufeff") if number == 1 else text
        if not text.strip():
            continue  # blank lines separate nothing in JSONL; ignoring them is the common reading
        try:
            yield number, json.loads(text)
        except (ValueError, RecursionError) as e:
            truncated = number == len(lines)  # the last line, and the file does not end with a newline
            yield (
                number,
                RowError(
                    "invalid JSON",
                    f"not valid JSON: {getattr(e, 'msg', e)} (column {getattr(e, 'colno', '?')})",
                    where=f"{path}:{number}",
                    hint="the last line is incomplete: the file looks truncated"
                    if truncated
                    else "each line must hold one complete JSON object",
                ),
            )


def _decode(data: bytes, path: str) -> str:
    bom = data.startswith(b"\xef\xbb\xbf")
    try:
        return data[3 if bom else 0 :].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = e.start + (3 if bom else 0)
        line = data[:offset].count(b"\n") + 1
        raise UserError(
            f"not valid UTF-8 (byte offset {offset})", where=f"{path}:{line}", hint="save the file as UTF-8"
        ) from None


def _read_json(data: bytes, path: str) -> Iterator[tuple[int, Any]]:
    text = _decode(data, path)
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        truncated = getattr(e, "pos", 0) >= len(text.rstrip())
        raise UserError(
            f"not valid JSON: {getattr(e, 'msg', e)} (line {getattr(e, 'lineno', '?')} column {getattr(e, 'colno', '?')})",
            where=f"{path}:{getattr(e, 'lineno', 1)}",
            hint="the file ends too early: it looks truncated"
            if truncated
            else "a .json file holds one list of rows; for one object per line, name it .jsonl",
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise UserError(
            'expected a list of rows, or {"data": [...]}',
            where=str(path),
            hint=f"the file holds one {_kind(obj)}",
        )
    yield from enumerate(obj, 1)


def _read_csv(data: bytes, path: str) -> Iterator[tuple[int, Any]]:
    reader = csv.reader(io.StringIO(_decode(data, path), newline=""))
    try:
        header = [name.strip() for name in next(reader, [])]
        previous = reader.line_num
        for cells in reader:
            start, previous = previous + 1, reader.line_num  # a quoted cell may span several lines
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > len(header):
                yield (
                    start,
                    RowError(
                        "too many cells",
                        f"{len(cells)} cells but the header has {len(header)} columns",
                        where=f"{path}:{start}",
                        hint="quote cells that contain commas",
                    ),
                )
                continue
            yield (
                start,
                dict(zip(header, cells, strict=False)),
            )  # short rows: the missing fields are reported by name
    except csv.Error as e:
        raise UserError(f"not a readable CSV file: {e}", where=f"{path}:{reader.line_num}") from None


def _read_parquet(data: bytes, path: str) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(pa.BufferReader(data)).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as e:
        raise UserError(f"not a readable Parquet file: {e}", where=path) from None
    yield from enumerate(records, 1)


class _Invalid(Exception):
    """A row problem found while normalising; the loader adds path and line."""

    def __init__(self, reason: str, message: str, field: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.reason, self.message, self.field, self.hint = reason, message, field, hint


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def _generic(field_name: str) -> str:
    # Reasons are counted, so "prompt[3].role" and "prompt[0].role" must be one key.
    return re.sub(r"\[\d+\]", "[]", field_name)


# Field names the normalisers read; a row key close to a missing one (`choosen`) is named as a likely typo.
_FIELDS = ("prompt", "chosen", "rejected", "completion", "messages", "label", "system", "role", "content")


def _missing(field_name: str, hint: str | None = None, row: dict | None = None) -> _Invalid:
    """A missing field; with the `row` (or message) it was looked up in, a near-miss key is named."""
    message = f"missing field '{field_name}'"
    wanted = field_name.rsplit(".", 1)[-1]
    others = [k for k in (row or {}) if isinstance(k, str) and k not in _FIELDS]
    close = difflib.get_close_matches(wanted, others, n=1, cutoff=0.75)
    if close:
        message += f"; the row has '{close[0]}': did you mean '{wanted}'?"
        hint = f"rename '{close[0]}' to '{wanted}'"
    return _Invalid(
        f"missing field '{_generic(field_name)}'", message, field_name,
        hint or "add the field, or set data.skip_invalid: true to skip such rows",
    )


def _wrong_type(field_name: str, value: Any, expected: str) -> _Invalid:
    return _Invalid(
        f"wrong type in field '{_generic(field_name)}'",
        f"expected {expected}, got {_kind(value)}",
        field_name,
        "fix the value in the file, or pass skip_invalid=True to skip such rows",
    )


def _text(value: Any, name: str) -> str:
    """A non-blank string; the text is kept as written (templates decide about whitespace)."""
    if not isinstance(value, str):
        raise _wrong_type(name, value, "a string")
    if _SURROGATE.search(value):  # a JSON "\\ud800" escape; no tokenizer takes it
        raise _Invalid("not UTF-8", "text holds an unpaired surrogate escape", name)
    if not value.strip():
        raise _Invalid(f"empty field '{_generic(name)}'", "empty or whitespace-only text", name,
                       "write the answer text, or set data.skip_invalid: true to skip such rows")
    return value


def _message(item: Any, name: str) -> Message:
    if not isinstance(item, dict):
        raise _wrong_type(name, item, 'a message {"role": ..., "content": ...}')
    if "role" not in item:
        raise _missing(f"{name}.role", row=item)
    role = item["role"]
    if not isinstance(role, str):
        raise _wrong_type(f"{name}.role", role, "a string")
    if role not in ROLES:
        raise _Invalid(
            "unknown role", f"unknown role {role!r}", f"{name}.role", "roles are system, user and assistant"
        )
    if "content" not in item:
        raise _missing(f"{name}.content", row=item)
    return {"role": role, "content": _text(item["content"], f"{name}.content")}


def _messages(value: Any, name: str) -> list[Message]:
    """A string (one user turn) or a non-empty list of messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": _text(value, name)}]
    if not isinstance(value, list):
        raise _wrong_type(name, value, "a string or a list of messages")
    if not value:
        raise _Invalid(f"empty field '{name}'", "empty list of messages", name)
    return [_message(item, f"{name}[{i}]") for i, item in enumerate(value)]


def _answer(value: Any, name: str) -> str:
    """An answer: a string, an assistant message, or a list holding one assistant message."""
    if isinstance(value, str):
        return _text(value, name)
    if isinstance(value, list) and len(value) == 1:
        value, name = value[0], f"{name}[0]"
    elif not isinstance(value, dict):
        raise _wrong_type(name, value, "a string or an assistant message")
    msg = _message(value, name)
    if msg["role"] != "assistant":
        raise _Invalid("answer is not an assistant message", f"role is {msg['role']!r}", f"{name}.role")
    return msg["content"]


def _split_conversation(msgs: list[Message], name: str) -> tuple[list[Message], str]:
    """Split a full conversation at its final turn, which must be the assistant's answer."""
    if msgs[-1]["role"] != "assistant":
        raise _Invalid(
            "conversation does not end with an assistant turn",
            f"the last message is from {msgs[-1]['role']!r}, not the assistant",
            f"{name}[{len(msgs) - 1}].role",
        )
    if len(msgs) == 1:
        raise _missing("prompt", "give a 'prompt', or full conversations that start with the user turn")
    return msgs[:-1], msgs[-1]["content"]


def _side(raw: dict, name: str) -> tuple[list[Message], str]:
    """(prompt messages, answer) for one answer field, in any accepted convention."""
    if name not in raw:
        raise _missing(name, row=raw)
    value = raw[name]
    if isinstance(value, list) and len(value) > 1:  # a full conversation
        prefix, answer = _split_conversation(_messages(value, name), name)
        if "prompt" in raw and _messages(raw["prompt"], "prompt") != prefix:
            raise _Invalid(
                "prompt mismatch",
                f"the conversation in '{name}' does not start with the prompt",
                name,
                "drop 'prompt' (the conversation carries it) or make them agree",
            )
        return prefix, answer
    if "prompt" not in raw:
        raise _missing("prompt", f"give a 'prompt', or a full conversation in '{name}'", row=raw)
    return _messages(raw["prompt"], "prompt"), _answer(value, name)


def _finish_prompt(prompt: list[Message], raw: dict, system: str | None) -> tuple[Message, ...]:
    """Add the system message and check the prompt ends with a user turn."""
    own = raw.get("system")
    if own is not None and not isinstance(own, str):
        raise _wrong_type("system", own, "a string")
    own = own if own and own.strip() else None  # an empty CSV cell means "no system prompt"
    if prompt[0]["role"] == "system":
        if own is not None:
            raise _Invalid(
                "two system prompts",
                "the row has a 'system' field and its prompt starts with a system message",
                "system",
                "keep one of them",
            )
    elif own or (system and system.strip()):
        prompt = [{"role": "system", "content": own or system}, *prompt]
    last = prompt[-1]["role"]
    if last != "user":
        raise _Invalid(
            f"prompt ends with {'an assistant' if last == 'assistant' else 'a system'} turn",
            f"the prompt's last message is from {last!r}; it must be a user turn",
            "prompt",
            "the prompt is the conversation before the answer: move a final assistant message to the answer",
        )
    return tuple(prompt)


def _preference(raw: dict, source: str, system: str | None) -> list[PreferenceRow]:
    prompt, chosen = _side(raw, "chosen")
    rejected_prompt, rejected = _side(raw, "rejected")
    if rejected_prompt != prompt:
        raise _Invalid(
            "prompt mismatch", "chosen and rejected conversations have different prompts", "rejected"
        )
    if chosen.strip() == rejected.strip():
        raise _Invalid(
            "chosen identical to rejected",
            "chosen and rejected are the same text",
            "rejected",
            "a pair without a preference teaches nothing: drop it or fix the answers",
        )
    return [PreferenceRow(_finish_prompt(prompt, raw, system), chosen, rejected, source)]


def _demonstration(raw: dict, fields: Sequence[str]) -> tuple[list[Message], str]:
    if "messages" in raw:
        return _split_conversation(_messages(raw["messages"], "messages"), "messages")
    for name in fields:
        if name in raw:
            return _side(raw, name)
    raise _missing("completion", "rows need {prompt, completion}, {messages} or a preference pair", row=raw)


def _sft(raw: dict, source: str, system: str | None) -> list[SFTRow]:
    prompt, completion = _demonstration(raw, ("completion", "chosen"))
    return [SFTRow(_finish_prompt(prompt, raw, system), completion, source)]


_TRUE, _FALSE = {"true", "1", "desirable", "yes"}, {"false", "0", "undesirable", "no"}


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Invalid(
        "invalid label",
        f"label {value!r} is not a yes/no value",
        "label",
        'use true/false, 1/0 or "desirable"/"undesirable"',
    )


def _kto(raw: dict, source: str, system: str | None) -> list[KTORow]:
    if "label" not in raw and "chosen" in raw and "rejected" in raw:
        (pair,) = _preference(raw, source, system)  # unpair: one desirable and one undesirable row
        return [
            KTORow(pair.prompt, pair.chosen, True, source),
            KTORow(pair.prompt, pair.rejected, False, source),
        ]
    prompt, completion = _demonstration(raw, ("completion",))
    if "label" not in raw:
        raise _missing("label", "KTO rows need label: true (desirable) or false (undesirable)", row=raw)
    return [KTORow(_finish_prompt(prompt, raw, system), completion, _label(raw["label"]), source)]


R = TypeVar("R")


def _prompt_only(raw: dict, source: str, system: str | None) -> list[PromptRow]:
    """{prompt} (a string or messages ending with a user turn), {messages} ending with a user turn,
    or any demonstration / preference row (its prompt)."""
    if "prompt" in raw:
        prompt = _messages(raw["prompt"], "prompt")
    elif "messages" in raw:
        msgs = _messages(raw["messages"], "messages")
        prompt = msgs if msgs[-1]["role"] == "user" else _split_conversation(msgs, "messages")[0]
    elif "chosen" in raw:
        prompt = _side(raw, "chosen")[0]
    else:
        raise _missing("prompt", "rows need a 'prompt' (text or messages), or 'messages' ending with a user turn",
                       row=raw)
    return [PromptRow(_finish_prompt(prompt, raw, system), dict(raw), source)]


_NORMALIZERS: dict[str, Callable[[dict, str, str | None], list[Any]]] = {
    "prompt": _prompt_only,
    "preference": _preference,
    "sft": _sft,
    "kto": _kto,
}


def normalize_row(
    raw: dict, source: str, *, kind: str = "preference", system: str | None = None
) -> list[Any]:
    """Normalise one raw object (from `iter_rows_raw`) the way the loaders do.

    Returns a list: one row, or two for a preference pair unpaired by ``kind="kto"``. Raises `RowError`
    (``where`` = ``"<source> field 'x'"``, ``reason`` = the counting key) for an invalid row.
    """
    try:
        return _NORMALIZERS[kind](raw, source, system)
    except _Invalid as e:
        where = source + (f" field '{e.field}'" if e.field else "")
        raise RowError(e.reason, e.message, where=where, hint=e.hint) from None


def _load(
    path: str | Path, kind: str, system: str | None, skip_invalid: bool
) -> tuple[list[Any], LoadReport]:
    report, rows, reasons, first_error = LoadReport(str(path)), [], Counter(), None
    for line, raw in iter_rows_raw(path, errors="yield"):
        try:
            if isinstance(raw, RowError):
                raise raw
            rows.extend(normalize_row(raw, f"{path}:{line}", kind=kind, system=system))
        except RowError as e:
            if not skip_invalid:
                raise
            first_error = first_error or e
            reasons[e.reason] += 1
    report.rows, report.skipped, report.reasons = len(rows), sum(reasons.values()), dict(reasons)
    if not rows:
        if reasons and set(reasons) <= {"invalid JSON", "not UTF-8"}:
            raise UserError(
                "no line of the file is valid JSON", where=first_error.where, hint=first_error.message
            )
        raise UserError(
            "no usable rows" + (f" ({report.summary()})" if report.skipped else ": the file is empty"),
            where=str(path),
            hint=f"first problem: {first_error}" if first_error else "check that this is the right file",
        )
    return rows, report


def load_preferences(
    path: str | Path, *, system: str | None = None, skip_invalid: bool = False
) -> tuple[list[PreferenceRow], LoadReport]:
    """Load (prompt, chosen, rejected) rows; see the module docstring for accepted shapes."""
    return _load(path, "preference", system, skip_invalid)


def load_sft(
    path: str | Path, *, system: str | None = None, skip_invalid: bool = False
) -> tuple[list[SFTRow], LoadReport]:
    """Load demonstrations: {prompt, completion}, {messages}, or preference rows (chosen side)."""
    return _load(path, "sft", system, skip_invalid)


def load_kto(
    path: str | Path, *, system: str | None = None, skip_invalid: bool = False
) -> tuple[list[KTORow], LoadReport]:
    """Load labelled rows {prompt, completion, label}; a preference row gives one row per answer."""
    return _load(path, "kto", system, skip_invalid)


def load_prompts(
    path: str | Path, *, system: str | None = None, skip_invalid: bool = False
) -> tuple[list[PromptRow], LoadReport]:
    """Load prompts (with each raw row as `meta`): a prompt file, or the prompts of SFT/preference rows."""
    return _load(path, "prompt", system, skip_invalid)


def split_train_eval(rows: Iterable[R], eval_fraction: float, seed: int) -> tuple[list[R], list[R]]:
    """Split rows into (train, eval) by prompt, so no prompt is on both sides.

    Rows are grouped by their non-system messages (the same question under two system prompts is still
    the same question). Each group gets a rank from a hash of (seed, prompt), so the split depends only
    on the seed and the prompts, not on row order. About ``eval_fraction`` of the prompt groups go to
    eval (at least one, never all); both lists keep the input order.
    """
    rows = list(rows)
    if not 0.0 <= eval_fraction < 1.0:
        raise UserError(f"eval_fraction must be in [0, 1), got {eval_fraction}", where="eval_fraction")
    if eval_fraction == 0.0 or not rows:
        return rows, []

    def key(row: Any) -> str:
        return json.dumps([[m["role"], m["content"]] for m in row.prompt if m["role"] != "system"])

    groups = sorted({key(r) for r in rows}, key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).digest())
    if len(groups) < 2:
        raise UserError(
            "cannot split: every row has the same prompt", hint="use a separate eval file, or eval_fraction=0"
        )
    n_eval = min(len(groups) - 1, max(1, round(eval_fraction * len(groups))))
    eval_keys = set(groups[:n_eval])
    train = [r for r in rows if key(r) not in eval_keys]
    return train, [r for r in rows if key(r) in eval_keys]
