"""Load preference, SFT and KTO data files and normalise every row to one shape.

Files: ``.jsonl`` (one object per line; blank lines ignored), ``.json`` (a list of objects, or
``{"data": [...]}``), ``.csv`` (a header row, then one row per line), ``.parquet``, ``.arrow``; each
also gzip (``.jsonl.gz``) or zstandard (``.jsonl.zst``, needs the ``zstandard`` package) compressed.
Folders: a ``datasets.save_to_disk`` folder (a DatasetDict gives its ``split``), a folder with a
``split`` subfolder, or a folder of data files (of those named ``<split>-*`` when the names carry
splits; the hub's ``data/`` subfolder is looked into). A hub dataset id is never fetched.

Row conventions accepted (see docs/ARCHITECTURE.md, "data rows"), each detected per row and counted
in `LoadReport.formats`:

- strings: ``{prompt, chosen, rejected, system?}``;
- chat messages: ``prompt`` a list of ``{role, content}``; ``chosen``/``rejected`` a string, one
  assistant message, or a list holding one assistant message (the TRL/UltraFeedback convention);
- full conversations: ``chosen``/``rejected`` are whole message lists sharing the prompt prefix
  (``prompt`` absent, or equal to that prefix); they split at the final assistant turn;
- SFT: ``{prompt, completion}``, ``{messages}`` (the final assistant turn is the completion; earlier
  assistant turns are context), or a preference row (its chosen side);
- HH-RLHF transcripts: only ``chosen``/``rejected``, each ``"\n\nHuman: ...\n\nAssistant: ..."``; the
  turns before the last ``\n\nAssistant:`` (which must be the same in both) are the prompt;
- UltraFeedback-binarized: ``prompt`` a string, ``chosen``/``rejected`` full conversations, optional
  ``score_chosen``/``score_rejected`` (kept in `PreferenceRow.meta`; ``min_score_margin`` filters);
- SHP: ``history`` (the prompt), ``human_ref_A``, ``human_ref_B``, ``labels`` (1: A preferred) and/or
  ``score_A``/``score_B`` (the higher score wins without labels; the scores become score_chosen/_rejected);
- KTO: ``{prompt, completion, label}`` with ``label`` true/false, 1/0 or "desirable"/"undesirable"
  (``{messages, label}`` too; the column may be spelled ``label``, ``labels``, ``desirable``,
  ``is_desirable`` or ``kto_label``); a preference row unpairs into a desirable and an undesirable row.

``columns`` (``data.columns``) renames a file's columns to these fields before anything else.

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
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
    meta: dict = field(default_factory=dict, hash=False, compare=False)  # e.g. score_chosen, score_rejected


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
    formats: dict[str, int] = field(default_factory=dict, compare=False)  # detected row format -> rows
    source: str = field(default="", compare=False)  # what was read: ".jsonl (gzip-compressed)", a folder ...
    filtered: int = field(default=0, compare=False)  # pairs dropped by data.min_score_margin (in `reasons`)

    def summary(self) -> str:
        text = f"{self.path}: {self.rows} rows"
        if self.skipped:
            why = ", ".join(f"{r}: {n}" for r, n in sorted(self.reasons.items(), key=lambda x: -x[1]))
            text += f", skipped {self.skipped} ({why})"
        return text

    def format_line(self) -> str:
        """What the loader detected: ``format: hh-rlhf transcripts (1,024 rows); read from .jsonl (gzip-compressed)``."""
        return describe_formats(self.formats, self.source)


def describe_formats(formats: dict[str, int], source: str = "") -> str:
    """``format: NAME (N rows)[, NAME (N rows)]; read from SOURCE`` (most rows first)."""
    found = ", ".join(f"{name} ({n:,} row{'s' if n != 1 else ''})"
                      for name, n in sorted(formats.items(), key=lambda x: -x[1])) or "no valid rows"
    return f"format: {found}" + (f"; read from {source}" if source else "")


# ---------------------------------------------------------------------------------------------------
# Reading files: one raw object per row, with its line number.


class RowError(UserError):
    """A problem with one row, skippable with ``skip_invalid=True``; ``reason`` is its counting key."""

    def __init__(self, reason: str, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(message, where=where, hint=hint)
        self.reason = reason


EXTENSIONS = ".jsonl, .json, .csv, .parquet or .arrow (optionally .gz or .zst compressed), or a folder"
_KNOWN_SPLITS = ("train", "test", "validation", "valid", "dev", "eval")


@dataclass
class _Opened:
    """An opened data source: what it is (for the report) and its rows ``(line, obj, where)``."""

    description: str
    rows: Iterator[tuple[int, Any, str]]


def iter_rows_raw(
    path: str | Path, *, errors: str = "raise", split: str = "train"
) -> Iterator[tuple[int, dict | RowError]]:
    """Yield ``(line, raw object)`` for each row of a data file or folder, before any normalisation.

    ``line`` is 1-based: the line for JSONL, the line where the record starts for CSV (the header is
    line 1), the row index + 1 for JSON, Parquet, Arrow and `datasets` folders; for a folder of files,
    the row's number counted through the files in name order. File-level problems (missing,
    unreadable, unknown extension, a file that does not parse) raise `UserError`. A bad row (a JSONL
    line that is not UTF-8 or not JSON, a value that is not an object) raises `RowError`, or with
    ``errors="yield"`` is yielded in place of the object, so a caller (the data doctor) can go on.
    ``split`` picks the split of a `datasets` DatasetDict folder or of a folder with split files.
    """
    for line, obj, _ in _open(path, split, errors).rows:
        yield line, obj


def _open(path: str | Path, split: str, errors: str = "raise") -> _Opened:
    file = Path(path)
    if not file.exists():
        hint = "check the path; relative paths start from the current directory"
        if not file.suffix and re.fullmatch(r"[\w.-]+/[\w.-]+", str(path).strip()):
            hint = HUB_HINT
        elif not file.suffix and file.parent.name and not file.parent.exists():
            hint += "; " + HUB_HINT
        raise UserError("file not found", where=str(path), hint=hint)
    if file.is_dir():
        description, rows = _open_folder(file, split)
    else:
        packed = _suffixes(file)[1] is not None  # a plain file needs no "read from" note
        description, rows = (_suffix_name(file) if packed else ""), _read_file(file, str(path))
    return _Opened(description, _checked(rows, errors))


HUB_HINT = ("a hub dataset id is not read from the network: download the files (e.g. `huggingface-cli download "
             "--repo-type dataset Anthropic/hh-rlhf --local-dir hh-rlhf`, or in Python "
             "`datasets.load_dataset(NAME).save_to_disk(DIR)`) and point data.train at a file or that folder")


def _checked(rows: Iterable[tuple[int, Any, str]], errors: str) -> Iterator[tuple[int, Any, str]]:
    for line, obj, where in rows:
        if not isinstance(obj, dict | RowError):
            obj = RowError("not a JSON object", f"a row must be an object with fields, got {_kind(obj)}", where=where)
        if isinstance(obj, RowError) and errors == "raise":
            raise obj
        yield line, obj, where


def _suffixes(file: Path) -> tuple[str, str | None]:
    """(data suffix, compression suffix or None): ``train.jsonl.gz`` -> (".jsonl", ".gz")."""
    parts = [s.lower() for s in file.suffixes]
    if parts and parts[-1] in _DECOMPRESSORS:
        return (parts[-2] if len(parts) > 1 else ""), parts[-1]
    return (parts[-1] if parts else ""), None


def _suffix_name(file: Path) -> str:
    suffix, packed = _suffixes(file)
    return f"{suffix} ({'gzip' if packed == '.gz' else 'zstandard'}-compressed)" if packed else suffix


def _read_file(file: Path, where: str) -> Iterator[tuple[int, Any, str]]:
    suffix, packed = _suffixes(file)
    if suffix not in _READERS:
        shown = "".join(file.suffixes[-2:]) if packed else file.suffix
        raise UserError(f"unknown file extension {shown!r}", where=where, hint=f"use {EXTENSIONS}")
    try:
        data = file.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read the file: {e.strerror or e}", where=where) from None
    if packed:
        data = _DECOMPRESSORS[packed](data, where)
    for line, obj in _READERS[suffix](data, where):
        yield line, obj, f"{where}:{line}"


def _gunzip(data: bytes, where: str) -> bytes:
    import gzip
    import zlib

    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"not a readable gzip file: {e}", where=where,
                        hint="the file looks truncated or is not gzip-compressed: download it again") from None


def _unzstd(data: bytes, where: str) -> bytes:
    try:
        import zstandard
    except ImportError:
        raise UserError("reading .zst files needs the 'zstandard' package, which is not installed", where=where,
                        hint="pip install zstandard (or pip install 'alignkit[zstd]'), or decompress the file "
                             "first: zstd -d FILE") from None
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            return reader.read()
    except zstandard.ZstdError as e:
        raise UserError(f"not a readable zstandard file: {e}", where=where,
                        hint="the file looks truncated or is not zstd-compressed: download it again") from None


def _split_of(file: Path) -> str:
    """The split a file's name starts with: ``train-00000-of-00002.parquet`` -> "train"."""
    return re.split(r"[-_.]", file.name.lower(), maxsplit=1)[0]


def _open_folder(folder: Path, split: str) -> tuple[str, Iterator[tuple[int, Any, str]]]:
    """A `datasets.save_to_disk` folder (Dataset or DatasetDict), a folder with a ``split`` subfolder,
    or a folder of data files (those named after ``split`` when the names carry splits)."""
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return _read_saved_dataset(folder, split)
    if (folder / split).is_dir():
        description, rows = _open_folder(folder / split, split)
        return description, rows
    files = sorted(f for f in folder.iterdir() if f.is_file() and _suffixes(f)[0] in _READERS)
    if not files and (folder / "data").is_dir():  # the hub's layout: data/train-00000-of-00001.parquet
        return _open_folder(folder / "data", split)
    if not files:
        subs = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        raise UserError("no data files in this folder", where=str(folder),
                        hint=(f"it holds the folders {', '.join(subs[:8])}: point at one of them, or "
                              if subs else "") + f"put {EXTENSIONS.rsplit(', or', 1)[0]} files in it")
    named = {_split_of(f) for f in files} & {*_KNOWN_SPLITS, split}
    if named:
        if split not in named:
            raise UserError(f"no files of split {split!r} in this folder (its files are of the splits "
                            f"{', '.join(sorted(named))})", where=str(folder),
                            hint="set data.split to one of them (alignkit doctor: --split)")
        files = [f for f in files if _split_of(f) == split]
    kinds = sorted({_suffix_name(f) for f in files})
    description = f"folder of {len(files)} {'/'.join(kinds)} file{'s' if len(files) > 1 else ''}"
    if named:
        description += f" (split {split!r})"

    def rows() -> Iterator[tuple[int, Any, str]]:
        offset = 0
        for f in files:
            last = 0
            for line, obj, where in _read_file(f, str(f)):
                last = line
                yield offset + line, obj, where
            offset += last
    return description, rows()


def _read_saved_dataset(folder: Path, split: str) -> tuple[str, Iterator[tuple[int, Any, str]]]:
    try:
        import datasets
    except ImportError:
        raise UserError("reading a datasets.save_to_disk folder needs the 'datasets' package", where=str(folder),
                        hint="pip install datasets, or write the rows to a .jsonl or .parquet file") from None
    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, pyarrow errors ...
        raise UserError(f"not a readable datasets folder: {e}", where=str(folder)) from None
    where, description = str(folder), "datasets folder (save_to_disk)"
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"no split {split!r} in this DatasetDict (splits: {', '.join(ds)})", where=str(folder),
                            hint="set data.split to one of them (alignkit doctor: --split)")
        ds, where, description = ds[split], str(folder / split), f"datasets folder (save_to_disk), split {split!r}"

    def rows() -> Iterator[tuple[int, Any, str]]:
        for i, obj in enumerate(ds.to_list(), 1):
            yield i, obj, f"{where}:{i}"
    return description, rows()


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


def _read_arrow(data: bytes, path: str) -> Iterator[tuple[int, Any]]:
    """An Arrow IPC file: the stream format `datasets` writes, or the random-access file format."""
    import pyarrow as pa

    try:
        try:
            table = pa.ipc.open_stream(pa.BufferReader(data)).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
    except (pa.ArrowException, OSError, ValueError) as e:
        raise UserError(f"not a readable Arrow file: {e}", where=path) from None
    yield from enumerate(table.to_pylist(), 1)


_READERS: dict[str, Callable[[bytes, str], Iterator[tuple[int, Any]]]] = {
    ".jsonl": _read_jsonl,
    ".ndjson": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
    ".arrow": _read_arrow,
}
_DECOMPRESSORS: dict[str, Callable[[bytes, str], bytes]] = {".gz": _gunzip, ".zst": _unzstd, ".zstd": _unzstd}


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
_FIELDS = ("prompt", "chosen", "rejected", "completion", "messages", "label", "labels", "desirable", "is_desirable",
           "kto_label", "system", "role", "content", "score_chosen", "score_rejected", "history", "human_ref_A",
           "human_ref_B", "score_A", "score_B")


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
LABEL_KEYS = ("label", "labels", "desirable", "is_desirable", "kto_label")
"""Spellings of KTO's desirable/undesirable column, in the order they are looked for."""


def _label(value: Any, key: str = "label") -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Invalid(
        "invalid label",
        f"label {value!r} is not a yes/no value",
        key,
        'use true/false, 1/0 or "desirable"/"undesirable"',
    )


def _kto(raw: dict, source: str, system: str | None) -> list[KTORow]:
    key = next((k for k in LABEL_KEYS if k in raw), None)
    if key is None and "chosen" in raw and "rejected" in raw:
        (pair,) = _preference(raw, source, system)  # unpair: one desirable and one undesirable row
        return [
            KTORow(pair.prompt, pair.chosen, True, source),
            KTORow(pair.prompt, pair.rejected, False, source),
        ]
    prompt, completion = _demonstration(raw, ("completion",))
    if key is None:
        raise _missing("label", "KTO rows need label: true (desirable) or false (undesirable); "
                       f"accepted names: {', '.join(LABEL_KEYS)}", row=raw)
    return [KTORow(_finish_prompt(prompt, raw, system), completion, _label(raw[key], key), source)]


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


# ---------------------------------------------------------------------------------------------------
# Published conventions (HH-RLHF transcripts, SHP), column mapping, scores: raw row -> accepted shape.

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_LAST = "\n\nAssistant:"
_HH_HINT = ('HH-RLHF rows are {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}: both '
            "transcripts repeat the same conversation and differ only after the last '\\n\\nAssistant:'")


def _is_transcript(value: Any) -> bool:
    return isinstance(value, str) and re.match(r"\s*Human:", value) is not None and _HH_LAST in value


def _hh_turns(text: str, name: str) -> list[Message]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c' -> user/assistant messages (text stripped)."""
    parts = _HH_TURN.split("\n\n" + text.lstrip() if not text.startswith("\n\n") else text)
    if parts[0].strip():
        raise _Invalid("not an hh-rlhf transcript", "text before the first 'Human:' turn", name, _HH_HINT)
    turns = []
    for i in range(1, len(parts), 2):
        content = parts[i + 1].strip()
        if not content:
            raise _Invalid("empty turn in transcript", f"turn {i // 2 + 1} ({parts[i]}) of the transcript is empty",
                           name, "fix the transcript, or set data.skip_invalid: true to skip such rows")
        turns.append({"role": "user" if parts[i] == "Human" else "assistant", "content": content})
    return turns


def _hh(raw: dict) -> dict:
    """An HH-RLHF row -> {prompt: messages, chosen, rejected}: split at each transcript's last assistant turn."""
    out = {k: raw[k] for k in ("system",) if k in raw}
    prompts = []
    for name in ("chosen", "rejected"):
        if name not in raw:
            continue  # reported as a missing field by the preference check
        value = raw[name]
        if not isinstance(value, str):
            raise _wrong_type(name, value, "an HH-RLHF transcript string, like the 'chosen' one")
        if _HH_LAST not in value:
            raise _Invalid("not an hh-rlhf transcript", "no '\\n\\nAssistant:' turn in the transcript", name,
                           _HH_HINT)
        cut = value.rindex(_HH_LAST)
        answer = value[cut + len(_HH_LAST):]
        if "\n\nHuman:" in answer:
            raise _Invalid("transcript ends with a Human turn", "the transcript ends with a 'Human:' turn, "
                           "not the assistant's answer", name, _HH_HINT)
        prompts.append(_hh_turns(value[:cut], name))
        out[name] = answer.strip()
    if len(prompts) == 2 and prompts[0] != prompts[1]:
        raise _Invalid("transcripts differ before the last assistant turn",
                       "'chosen' and 'rejected' do not share the conversation up to the last '\\n\\nAssistant:'",
                       "rejected", "a pair compares two answers to one conversation: fix the row, or set "
                       "data.skip_invalid: true to skip such rows")
    out["prompt"] = prompts[0]
    return out


def _number(raw: dict, name: str) -> float | None:
    value = raw.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None  # a null, or an empty CSV cell
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _wrong_type(name, value, "a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise _wrong_type(name, value, "a number")
    return float(value)


def _shp(raw: dict) -> dict:
    """An SHP row (history, human_ref_A, human_ref_B, labels 1 = A preferred, score_A/score_B) -> a pair."""
    prompt_field = "history" if "history" in raw else "prompt"
    if prompt_field not in raw:
        raise _missing("history", "SHP rows carry the post in 'history'", row=raw)
    for name in ("human_ref_A", "human_ref_B"):
        if name not in raw:
            raise _missing(name, "SHP rows need both human_ref_A and human_ref_B", row=raw)
        _text(raw[name], name)
    score_a, score_b = _number(raw, "score_A"), _number(raw, "score_B")
    key = next((k for k in ("labels", "label") if raw.get(k) is not None), None)
    if key is not None:
        a_wins = _label(raw[key], key)
    elif score_a is not None and score_b is not None:
        if score_a == score_b:
            raise _Invalid("no preference", f"score_A equals score_B ({score_a:g}) and the row has no 'labels'",
                           "score_B", "a pair without a preference teaches nothing: drop it")
        a_wins = score_a > score_b
    else:
        raise _missing("labels", "SHP rows need labels (1: A preferred, 0: B) or score_A and score_B", row=raw)
    first, second = ("A", "B") if a_wins else ("B", "A")
    out = {k: raw[k] for k in ("system",) if k in raw}
    out.update(prompt=_text(raw[prompt_field], prompt_field), chosen=raw[f"human_ref_{first}"],
               rejected=raw[f"human_ref_{second}"])
    if score_a is not None and score_b is not None:
        out["score_chosen"], out["score_rejected"] = (score_a, score_b) if a_wins else (score_b, score_a)
    return out


def _shape(raw: dict) -> str:
    """The name of a row's convention, as the load report prints it."""
    if "chosen" in raw or "rejected" in raw:
        c = raw.get("chosen")
        if "prompt" not in raw:
            name = "implicit prompt (full conversations)"
        elif isinstance(c, list) and len(c) > 1:
            name = "prompt + full conversations (ultrafeedback-binarized)"
        elif isinstance(raw["prompt"], list) or not isinstance(c, str):
            name = "conversational (message lists)"
        else:
            name = "prompt/chosen/rejected strings"
        return name + (" with scores" if "score_chosen" in raw or "score_rejected" in raw else "")
    key = next((k for k in LABEL_KEYS if k in raw), None)
    if "messages" in raw:
        base = "messages"
    elif "completion" in raw:
        base = "prompt/completion"
    else:
        return "prompts"
    return f"unpaired {base} + {key}" if key else base


def _adapt(raw: dict) -> tuple[dict, str]:
    """(the row in an accepted shape, the name of the convention it was written in)."""
    if "human_ref_A" in raw or "human_ref_B" in raw:
        return _shp(raw), "shp (history, human_ref_A/B)"
    if "prompt" not in raw and _is_transcript(raw.get("chosen")):
        return _hh(raw), "hh-rlhf transcripts"
    return raw, _shape(raw)


def check_columns(columns: Mapping[str, str] | None, where: str = "data.columns") -> None:
    """Refuse a column mapping whose keys are not fields alignkit reads, or that maps two onto one column."""
    from alignkit.config import DATA_COLUMNS

    for key, column in (columns or {}).items():
        if key not in DATA_COLUMNS:
            raise UserError(f"unknown field {key!r} in the column mapping: {_close(key, DATA_COLUMNS)}",
                            where=f"{where}.{key}", hint=f"keys are alignkit's fields: {', '.join(DATA_COLUMNS)}")
        if not isinstance(column, str) or not column.strip():
            raise UserError("a column name must be a non-empty string", where=f"{where}.{key}")
    seen = Counter((columns or {}).values())
    twice = [c for c, n in seen.items() if n > 1]
    if twice:
        raise UserError(f"column {twice[0]!r} is mapped to two fields", where=where, hint="map each column once")


def _close(name: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    return f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"


def _map_columns(raw: dict, columns: Mapping[str, str]) -> dict:
    """Rename the file's columns to alignkit's fields (``{prompt: question}``: the row's 'question' is its prompt)."""
    for key, column in columns.items():
        if column not in raw:
            close = difflib.get_close_matches(column, [k for k in raw if isinstance(k, str)], n=1, cutoff=0.75)
            raise _Invalid(f"missing column '{column}'", f"missing field '{column}' (data.columns maps '{key}' "
                           f"to it)" + (f"; the row has '{close[0]}'" if close else ""), column,
                           f"fix data.columns.{key}; the row's fields are: {', '.join(map(str, list(raw)[:12]))}")
    out = {k: v for k, v in raw.items() if k not in columns.values()}
    out.update({key: raw[column] for key, column in columns.items()})
    return out


SCORE_GAP_REASON = "score gap below data.min_score_margin"


def _scores(raw: dict) -> dict[str, float]:
    return {k: v for k in ("score_chosen", "score_rejected") if (v := _number(raw, k)) is not None}


def _normalize(raw: dict, source: str, kind: str, system: str | None, columns: Mapping[str, str] | None,
               min_score_margin: float | None) -> tuple[list[Any], str, str | None]:
    """(rows, detected convention, the filter's reason when a filter dropped the row); raises `_Invalid`."""
    if columns:
        raw = _map_columns(raw, columns)
    raw, name = _adapt(raw)
    scores = _scores(raw) if kind in ("preference", "kto") else {}
    rows = _NORMALIZERS[kind](raw, source, system)
    if kind == "preference" and scores:
        rows = [replace(r, meta=dict(scores)) for r in rows]
    if (min_score_margin is not None and kind in ("preference", "kto") and len(scores) == 2
            and "chosen" in raw and scores["score_chosen"] - scores["score_rejected"] < min_score_margin):
        return [], name, SCORE_GAP_REASON
    return rows, name, None


def normalize_row(
    raw: dict, source: str, *, kind: str = "preference", system: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> list[Any]:
    """Normalise one raw object (from `iter_rows_raw`) the way the loaders do.

    Returns a list: one row, or two for a preference pair unpaired by ``kind="kto"``. Raises `RowError`
    (``where`` = ``"<source> field 'x'"``, ``reason`` = the counting key) for an invalid row.
    """
    try:
        return _normalize(raw, source, kind, system, columns, None)[0]
    except _Invalid as e:
        raise _row_error(e, source) from None


def _row_error(e: _Invalid, source: str) -> RowError:
    return RowError(e.reason, e.message, where=source + (f" field '{e.field}'" if e.field else ""), hint=e.hint)


@dataclass
class Scanned:
    """One raw row after normalisation: its rows, or why it gave none."""

    line: int  # as `iter_rows_raw` counts
    rows: list  # empty when the row is invalid or filtered out
    format: str | None = None  # the detected convention ("hh-rlhf transcripts", ...); None if unreadable
    error: RowError | None = None
    dropped: str | None = None  # the reason a filter (data.min_score_margin) dropped a valid row


def scan(
    path: str | Path, *, kind: str = "preference", system: str | None = None,
    columns: Mapping[str, str] | None = None, split: str = "train", min_score_margin: float | None = None,
) -> tuple[str, Iterator[Scanned]]:
    """(what was read, e.g. ".jsonl (gzip-compressed)"; each row normalised): the loaders' and the doctor's
    common pass. A row's source is ``path:line``; a folder's row names its own file and line."""
    check_columns(columns)
    opened = _open(path, split, errors="yield")

    def rows() -> Iterator[Scanned]:
        for line, raw, where in opened.rows:
            if isinstance(raw, RowError):
                yield Scanned(line, [], error=raw)
                continue
            try:
                out, name, dropped = _normalize(raw, where, kind, system, columns, min_score_margin)
            except _Invalid as e:
                yield Scanned(line, [], error=_row_error(e, where))
                continue
            yield Scanned(line, out, name, dropped=dropped)
    return opened.description, rows()


def _load(
    path: str | Path, kind: str, system: str | None, skip_invalid: bool, columns: Mapping[str, str] | None = None,
    split: str = "train", min_score_margin: float | None = None,
) -> tuple[list[Any], LoadReport]:
    report, rows, reasons, first_error = LoadReport(str(path)), [], Counter(), None
    found: Counter = Counter()
    report.source, scanned = scan(path, kind=kind, system=system, columns=columns, split=split,
                                  min_score_margin=min_score_margin)
    for item in scanned:
        if item.error is not None:
            if not skip_invalid:
                raise item.error
            first_error = first_error or item.error
            reasons[item.error.reason] += 1
        elif item.dropped:
            reasons[item.dropped] += 1
            report.filtered += 1
        else:
            rows.extend(item.rows)
            found[item.format] += 1
    report.rows, report.skipped, report.reasons = len(rows), sum(reasons.values()), dict(reasons)
    report.formats = dict(found)
    if not rows:
        if reasons and set(reasons) <= {"invalid JSON", "not UTF-8"}:
            raise UserError(
                "no line of the file is valid JSON", where=first_error.where, hint=first_error.message
            )
        hint = f"first problem: {first_error}" if first_error else "check that this is the right file"
        if report.filtered and not first_error:
            hint = "lower data.min_score_margin (or set it to null)"
        raise UserError(
            "no usable rows" + (f" ({report.summary()})" if report.skipped else ": the file is empty"),
            where=str(path),
            hint=hint,
        )
    return rows, report


def load_preferences(
    path: str | Path, *, system: str | None = None, skip_invalid: bool = False,
    columns: Mapping[str, str] | None = None, split: str = "train", min_score_margin: float | None = None,
) -> tuple[list[PreferenceRow], LoadReport]:
    """Load (prompt, chosen, rejected) rows; see the module docstring for accepted shapes.

    ``columns`` renames the file's columns (``{"prompt": "question"}``), ``split`` picks a folder's
    split, ``min_score_margin`` drops pairs whose score_chosen - score_rejected is below it (counted
    in the report's reasons; rows without both scores are kept).
    """
    return _load(path, "preference", system, skip_invalid, columns, split, min_score_margin)


def load_sft(
    path: str | Path, *, system: str | None = None, skip_invalid: bool = False,
    columns: Mapping[str, str] | None = None, split: str = "train", min_score_margin: float | None = None,
) -> tuple[list[SFTRow], LoadReport]:
    """Load demonstrations: {prompt, completion}, {messages}, or preference rows (chosen side).

    ``min_score_margin`` is accepted for a common call signature; it does not filter demonstrations.
    """
    return _load(path, "sft", system, skip_invalid, columns, split, None)


def load_kto(
    path: str | Path, *, system: str | None = None, skip_invalid: bool = False,
    columns: Mapping[str, str] | None = None, split: str = "train", min_score_margin: float | None = None,
) -> tuple[list[KTORow], LoadReport]:
    """Load labelled rows {prompt, completion, label}; a preference row gives one row per answer
    (``min_score_margin`` filters those pairs as `load_preferences` does)."""
    return _load(path, "kto", system, skip_invalid, columns, split, min_score_margin)


def load_prompts(
    path: str | Path, *, system: str | None = None, skip_invalid: bool = False,
    columns: Mapping[str, str] | None = None, split: str = "train", min_score_margin: float | None = None,
) -> tuple[list[PromptRow], LoadReport]:
    """Load prompts (with each raw row as `meta`): a prompt file, or the prompts of SFT/preference rows."""
    return _load(path, "prompt", system, skip_invalid, columns, split, None)


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
