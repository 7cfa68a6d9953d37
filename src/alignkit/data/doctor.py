"""Check a preference data file before training on it: `alignkit doctor`.

Finds what makes DPO-family training fail quietly, with line numbers: schema errors (the loader's own
validation, collected per row instead of stopping at the first), empty answers, chosen identical to
rejected, exact and near-duplicate pairs, length bias (DPO learns "longer is better" when chosen is
usually the longer answer), refusal-heavy chosen answers (the first cause of over-refusal), prompts
shared with the eval file, and rows longer than the configured maximum.

Near-duplicates use MinHash over character 3-grams with banded LSH (Broder 1997; Leskovec et al.,
*Mining of Massive Datasets*, ch. 3), then verify each candidate pair by exact Jaccard similarity, so
10k rows take seconds and no reported pair is a hashing accident.
"""

from __future__ import annotations

import math
import unicodedata
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from alignkit.data import formats
from alignkit.data.formats import PreferenceRow, describe_formats
from alignkit.errors import UserError
from alignkit.judges.refusal import is_refusal

LENGTH_BIAS_HIGH = 0.75
"""Warn when chosen is the longer answer in more than this share of pairs ..."""
LENGTH_BIAS_LOW = 0.25
"""... or in less than this share (the model then learns "shorter is better")."""
REFUSAL_SHARE_MAX = 0.5
"""Warn when more than this share of chosen answers are refusals."""
MIN_ROWS_FOR_SHARES = 10
"""Length-bias and refusal shares of fewer rows than this are noise; they are reported, not warned."""
CHARS_PER_TOKEN = 4
"""Token estimate without a tokenizer: characters / 4 (English text on BPE vocabularies)."""
MINHASH_PERM = 64
"""Hash functions per MinHash signature."""
MAX_LISTED = 20
"""Line numbers shown per issue in the table (`to_dict` keeps them all)."""
_ESTIMATE_SLACK = 0.25  # > 3 standard deviations of the 64-hash estimate

_A, _B = (np.random.default_rng(20240607).integers(1, 2**63, size=(2, MINHASH_PERM), dtype=np.uint64))
_A |= np.uint64(1)  # odd multipliers: multiply-add modulo 2**64 is then a bijection


@dataclass
class Issue:
    """One problem (or group of problems of one kind) found in the data."""

    code: str  # schema, empty_response, identical_pair, duplicate, near_duplicate, eval_leak, ...
    message: str
    lines: list[int] = field(default_factory=list)  # 1-based lines (rows) in the checked file
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class DoctorReport:
    """What `doctor` found: errors (fix before training), warnings, and statistics."""

    path: str
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """1 if there is any error, else 0 (warnings alone pass)."""
        return 1 if self.errors else 0

    def issues(self, code: str) -> list[Issue]:
        return [i for i in self.errors + self.warnings if i.code == code]

    def to_dict(self) -> dict:
        return {"path": self.path, "errors": [asdict(i) for i in self.errors],
                "warnings": [asdict(i) for i in self.warnings], "stats": self.stats, "exit_code": self.exit_code}

    def format_table(self) -> str:
        """A rich table of the issues, then the key statistics, as plain text."""
        from io import StringIO

        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"doctor: {self.path}", show_lines=False)
        for col in ("severity", "check", "lines", "what"):
            table.add_column(col, overflow="fold")
        for sev, issues in (("error", self.errors), ("warning", self.warnings)):
            for i in issues:
                shown = ", ".join(map(str, i.lines[:MAX_LISTED])) + (" ..." if len(i.lines) > MAX_LISTED else "")
                table.add_row(sev, i.code, shown, i.message)
        out = StringIO()
        console = Console(file=out, width=120, color_system=None, force_terminal=False)
        if self.errors or self.warnings:
            console.print(table)
        else:
            console.print(f"doctor: {self.path}: no problems found")
        s = self.stats
        if s.get("format"):
            console.print(s["format"])
        filtered = f", {s['rows_filtered']} below min_score_margin" if s.get("rows_filtered") else ""
        console.print(f"rows: {s.get('rows_valid', 0)} valid, {s.get('rows_invalid', 0)} invalid{filtered}")
        for key in ("length", "refusals", "tokens"):
            if s.get(key):
                console.print(f"{key}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in s[key].items()))
        return out.getvalue().rstrip()


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _line(source: str) -> int:
    return int(source.rsplit(":", 1)[1])


def normalize_text(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: the text compared for duplicates and leaks."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def prompt_text(row: PreferenceRow) -> str:
    """The normalised prompt without system messages (one shared system prompt is not a duplicate)."""
    return normalize_text("\n".join(f"{m['role']}: {m['content']}" for m in row.prompt if m["role"] != "system"))


def _is_refusal(text: str) -> bool:
    return is_refusal(text)  # one indirection, so tests (and `diagnose`) can swap the classifier


def refusal_stats(rows: list[PreferenceRow]) -> dict[str, Any]:
    """Share of chosen (and rejected) answers that are refusals, by `alignkit.judges.refusal.is_refusal`."""
    chosen = sum(_is_refusal(r.chosen) for r in rows)
    rejected = sum(_is_refusal(r.rejected) for r in rows)
    n = max(len(rows), 1)
    return {"rows": len(rows), "chosen_refusals": chosen, "chosen_refusal_share": chosen / n,
            "rejected_refusals": rejected, "rejected_refusal_share": rejected / n}


def _code_for(reason: str) -> str:
    if reason.startswith("empty field") and ("chosen" in reason or "rejected" in reason):
        return "empty_response"
    return "identical_pair" if reason == "chosen identical to rejected" else "schema"


def _scan(path: Path, system: str | None, options: dict) -> tuple[list[PreferenceRow], list[Issue], str, dict]:
    """Every valid row, every invalid one grouped by reason with its lines, what was read, and the
    detected formats (with the rows a score filter dropped under "filtered").

    Uses the loader's own pass (`formats.scan`) so doctor and training agree on what is valid. A row's
    line is the file's line (for a folder, its row number counted through the files).
    """
    rows: list[PreferenceRow] = []
    bad: dict[str, Issue] = {}
    found: dict[str, int] = {}
    source, scanned = formats.scan(path, kind="preference", system=system, **options)
    for item in scanned:
        line = item.line
        if item.error is None:
            if item.dropped:
                found["filtered"] = found.get("filtered", 0) + 1
                continue
            found[item.format] = found.get(item.format, 0) + 1
            rows.extend(replace(r, source=f"{path}:{line}") for r in item.rows)
            continue
        e = item.error  # RowError: from the reader (bad JSON, not UTF-8) or the row check
        reason, detail = getattr(e, "reason", None) or e.message, str(e).splitlines()[0]
        # Shown as train shows it, less the file and line (the lines column has them):
        # "field 'prompt[0].role': unknown role 'human'".
        where, prefix = e.where or "", f"{path}:{line}"  # a folder's row keeps its own file and line
        place = where[len(prefix):].strip() if where.startswith(prefix) else where
        shown = f"{place}: {e.message}" if place else e.message
        issue = bad.setdefault(reason, Issue(_code_for(reason), shown, details={"first": detail}))
        issue.lines.append(line)
    return rows, list(bad.values()), source, found


def _shingles(text: str) -> np.ndarray:
    """Sorted unique character 3-grams, each packed into one uint64 (21 bits per code point)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(codes) < 3:
        return np.unique(codes)
    return np.unique((codes[:-2] << np.uint64(42)) | (codes[1:-1] << np.uint64(21)) | codes[2:])


def _signature(shingles: np.ndarray) -> np.ndarray:
    """MinHash signature ``(MINHASH_PERM,)``: the minimum of each hash ``a * x + b`` (mod 2**64)."""
    if not len(shingles):
        return np.full(MINHASH_PERM, np.iinfo(np.uint64).max, dtype=np.uint64)
    return (shingles[:, None] * _A + _B).min(axis=0)


def _bands(threshold: float) -> int:
    """Rows per LSH band: the largest that still flags pairs at `threshold` with probability >= 0.98."""
    for r in (16, 8, 4, 2, 1):
        if 1 - (1 - threshold**r) ** (MINHASH_PERM // r) >= 0.98:
            return r
    return 1


def near_duplicates(texts: list[str], threshold: float) -> list[tuple[int, int, float]]:
    """Pairs (i, j, jaccard) with i < j whose 3-gram Jaccard similarity is >= threshold.

    Each bucket member is verified against the bucket's first few members only, which keeps a large
    cluster linear instead of quadratic; a pair missed in one band is usually caught in another.
    """
    shingles = [_shingles(t) for t in texts]
    sigs = np.stack([_signature(s) for s in shingles]) if texts else np.zeros((0, MINHASH_PERM), np.uint64)
    r = _bands(threshold)
    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    for i, sig in enumerate(sigs):
        for b in range(MINHASH_PERM // r):
            buckets[(b, sig[b * r:(b + 1) * r].tobytes())].append(i)
    seen, pairs = set(), []
    for members in buckets.values():
        for i in members[:8]:
            for j in members:
                if j <= i or (i, j) in seen:
                    continue
                seen.add((i, j))
                # The share of equal hashes estimates Jaccard (std <= 0.07 at 64 hashes): skip pairs far
                # below the threshold before the exact, costlier set intersection.
                if np.count_nonzero(sigs[i] == sigs[j]) < (threshold - _ESTIMATE_SLACK) * MINHASH_PERM:
                    continue
                a, b = shingles[i], shingles[j]
                inter = np.intersect1d(a, b, assume_unique=True).size
                sim = inter / max(len(a) + len(b) - inter, 1)
                if sim >= threshold:
                    pairs.append((i, j, round(sim, 3)))
    return sorted(pairs)


def _token_lengths(rows: list[PreferenceRow], tokenizer: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """(prompt tokens, longest completion tokens) per row, and how they were counted."""
    if tokenizer is None:
        def est(s: str) -> int:
            return math.ceil(len(s) / CHARS_PER_TOKEN)
        prompt = [est("\n".join(m["content"] for m in r.prompt)) for r in rows]
        answer = [max(est(r.chosen), est(r.rejected)) for r in rows]
        return np.array(prompt), np.array(answer), "estimate: characters / 4"
    if getattr(tokenizer, "chat_template", None):
        texts = [tokenizer.apply_chat_template(list(r.prompt), tokenize=False, add_generation_prompt=True)
                 for r in rows]
    else:
        texts = ["\n".join(m["content"] for m in r.prompt) for r in rows]

    def count(strings: list[str]) -> np.ndarray:
        return np.array([len(ids) for ids in tokenizer(strings, add_special_tokens=False)["input_ids"]])

    # +1: each completion ends with one end-of-turn token (docs/ARCHITECTURE.md, tokenization).
    answer = np.maximum(count([r.chosen for r in rows]), count([r.rejected for r in rows])) + 1
    return count(texts), answer, "tokenizer"


def _check_lengths(rows, tokenizer, max_length, max_prompt_length, report: DoctorReport) -> None:
    prompt, answer, how = _token_lengths(rows, tokenizer)
    total = prompt + answer
    stats = {"counted_by": how, **{f"p{q}": round(float(np.percentile(total, q)), 1) for q in (50, 90, 99)},
             "max": int(total.max()), "max_length": max_length, "max_prompt_length": max_prompt_length}
    over = np.zeros(len(rows), bool)
    if max_length is not None:
        over |= total > max_length
    if max_prompt_length is not None:
        over |= prompt > max_prompt_length
    lines = [_line(r.source) for r, o in zip(rows, over, strict=True) if o]
    stats["truncated"] = len(lines)
    report.stats["tokens"] = stats
    if lines:
        report.warnings.append(Issue("truncation", f"{len(lines)} rows ({len(lines) / len(rows):.1%}) exceed "
                                     f"max_length={max_length} / max_prompt_length={max_prompt_length} "
                                     f"({how}) and would be truncated", lines))


def _check_duplicates(rows, threshold: float, report: DoctorReport) -> None:
    keys = [(prompt_text(r), normalize_text(r.chosen), normalize_text(r.rejected)) for r in rows]
    first: dict[tuple, int] = {}
    dups, unique = [], []
    for i, k in enumerate(keys):
        if k in first:
            dups.append((_line(rows[first[k]].source), _line(rows[i].source)))
        else:
            first[k] = i
            unique.append(i)
        if k[1] == k[2]:  # the loader compares stripped text; case or spacing alone is no preference either
            report.errors.append(Issue("identical_pair", "chosen and rejected differ only in case or whitespace",
                                       [_line(rows[i].source)]))
    if dups:
        report.warnings.append(Issue("duplicate", f"{len(dups)} exact duplicate pairs (after normalising)",
                                     [b for _, b in dups], {"pairs": dups}))
    near = [(_line(rows[unique[i]].source), _line(rows[unique[j]].source), s)
            for i, j, s in near_duplicates(["\0".join(keys[u]) for u in unique], threshold)]
    if near:
        report.warnings.append(Issue("near_duplicate", f"{len(near)} near-duplicate pairs (3-gram Jaccard >= "
                                     f"{threshold})", sorted({b for _, b, _ in near}), {"pairs": near[:1000]}))
    report.stats.update(duplicates=len(dups), near_duplicates=len(near))


def _check_shares(rows, report: DoctorReport) -> None:
    n = len(rows)
    longer = sum(len(r.chosen) > len(r.rejected) for r in rows)
    ratio = sum(len(r.chosen) / max(len(r.rejected), 1) for r in rows) / n
    report.stats["length"] = {"chosen_longer_share": longer / n, "mean_length_ratio": ratio}
    if n >= MIN_ROWS_FOR_SHARES and not LENGTH_BIAS_LOW <= longer / n <= LENGTH_BIAS_HIGH:
        report.warnings.append(Issue("length_bias", f"chosen is longer than rejected in {longer / n:.0%} of pairs "
                                     f"(mean length ratio {ratio:.2f}); DPO will learn length, not quality",
                                     details={"chosen_longer_share": longer / n, "mean_length_ratio": ratio}))
    ref = refusal_stats(rows)
    report.stats["refusals"] = ref
    if n >= MIN_ROWS_FOR_SHARES and ref["chosen_refusal_share"] > REFUSAL_SHARE_MAX:
        report.warnings.append(Issue("refusal_balance", f"{ref['chosen_refusal_share']:.0%} of chosen answers are "
                                     "refusals: training will teach over-refusal; add pairs where a helpful answer "
                                     "beats a refusal", [_line(r.source) for r in rows if _is_refusal(r.chosen)],
                                     details=ref))


def _check_leaks(rows, eval_path: Path, report: DoctorReport, options: dict) -> None:
    eval_rows, _ = formats.load_preferences(eval_path, skip_invalid=True, **options)
    eval_lines: dict[str, list[int]] = defaultdict(list)
    for r in eval_rows:
        eval_lines[prompt_text(r)].append(_line(r.source))
    leaked = [(r, eval_lines[p]) for r in rows if (p := prompt_text(r)) in eval_lines]
    report.stats["leaked_prompts"] = len({prompt_text(r) for r, _ in leaked})
    if leaked:
        report.errors.append(Issue("eval_leak", f"{len(leaked)} training rows share their prompt with {eval_path}: "
                                   "eval metrics would be inflated", [_line(r.source) for r, _ in leaked],
                                   {"eval_lines": sorted({n for _, ls in leaked for n in ls})}))


def doctor(path: str | Path, *, eval_path: str | Path | None = None, tokenizer: Any = None,
           max_length: int | None = None, max_prompt_length: int | None = None,
           near_dup_threshold: float = 0.9, system: str | None = None,
           columns: dict[str, str] | None = None, split: str = "train",
           min_score_margin: float | None = None, eval_split: str | None = None) -> DoctorReport:
    """Check a preference file (and its eval file for leaks); see the module docstring.

    Args:
        path: the training file or folder (any format `formats.load_preferences` reads).
        eval_path: the held-out file; prompts found in both are errors.
        tokenizer: a transformers tokenizer to count tokens; None estimates characters / 4.
        max_length, max_prompt_length: the config's limits; rows above them are counted as truncated.
        near_dup_threshold: 3-gram Jaccard similarity from which two pairs are near-duplicates.
        system: the config's system prompt (data.system_prompt_file's text), counted in prompt lengths
            for rows without their own; duplicates and leaks ignore system messages.
        columns, split, min_score_margin, eval_split: as the config's data.columns, data.split,
            data.min_score_margin and data.eval_split (the eval folder's split; None: `split`).
    """
    path = Path(path)
    if not path.exists():
        raise UserError("data file not found", where=str(path), hint="check the path (config field data.train)")
    if not 0 < near_dup_threshold <= 1:
        raise UserError(f"near_dup_threshold must be in (0, 1], got {near_dup_threshold}")
    options = dict(columns=columns, split=split, min_score_margin=min_score_margin)
    rows, schema, source, found = _scan(path, system, options)
    report = DoctorReport(str(path))
    report.errors.extend(schema)
    invalid, filtered = sum(len(i.lines) for i in schema), found.pop("filtered", 0)
    report.stats.update(rows_total=len(rows) + invalid + filtered, rows_valid=len(rows), rows_invalid=invalid,
                        formats=found, read_as=source, format=describe_formats(found, source))
    if filtered:
        report.stats["rows_filtered"] = filtered
    if not rows:
        report.errors.append(Issue("no_rows", "no valid preference rows in the file"))
        return report
    _check_duplicates(rows, near_dup_threshold, report)
    _check_shares(rows, report)
    if eval_path is not None:
        _check_leaks(rows, Path(eval_path), report, {**options, "split": eval_split or split})
    _check_lengths(rows, tokenizer, max_length, max_prompt_length, report)
    return report
