"""Property tests: whatever a data file holds, the loaders raise `UserError` or return valid rows."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from alignkit.data.formats import (
    ROLES,
    KTORow,
    PreferenceRow,
    SFTRow,
    iter_rows_raw,
    load_kto,
    load_preferences,
    load_sft,
    split_train_eval,
)
from alignkit.errors import UserError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.one_of(
    st.sampled_from(
        ["Q", "A", "B", " A", "", " ", "\n\t", "\u00e9t\u00e9", "\u200b", "\ud83d\ude00", "<|im_end|>"]
    ),
    st.text(max_size=8),
)
roles = st.sampled_from([*ROLES, "bot", "", "User"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.floats(allow_nan=False), texts)
messages = st.fixed_dictionaries(
    {}, optional={"role": st.one_of(roles, scalars), "content": st.one_of(texts, scalars)}
)
values = st.one_of(
    scalars,
    messages,
    st.lists(messages, max_size=4),
    st.dictionaries(texts, scalars, max_size=2),
)
FIELDS = ["prompt", "chosen", "rejected", "system", "completion", "messages", "label"]
U, A = {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}
VALID = [  # one valid row per convention; mutations of these reach the deeper checks
    {"prompt": "Q", "chosen": "A", "rejected": "B", "completion": "A", "label": True},
    {"prompt": [U], "chosen": [A], "rejected": {"role": "assistant", "content": "B"}, "system": "S"},
    {"chosen": [U, A], "rejected": [U, {"role": "assistant", "content": "B"}]},
    {"messages": [{"role": "system", "content": "S"}, U, A], "label": "desirable"},
]


def mutate(base: dict, overrides: dict, drop: set) -> dict:
    return {k: v for k, v in {**base, **overrides}.items() if k not in drop}


near_valid = st.builds(
    mutate,
    st.sampled_from(VALID),
    st.dictionaries(st.sampled_from(FIELDS), st.one_of(texts, values), max_size=2),
    st.sets(st.sampled_from(FIELDS), max_size=2),
)
rows = st.one_of(near_valid, st.dictionaries(st.sampled_from(FIELDS), values, max_size=6))
lines = st.one_of(rows.map(json.dumps), st.sampled_from(["", "   ", "{", "[1]", "null", '"x"', "{}"]))


def check_prompt(prompt):
    assert isinstance(prompt, tuple) and prompt and prompt[-1]["role"] == "user"
    for message in prompt:
        assert set(message) == {"role", "content"} and message["role"] in ROLES
        assert isinstance(message["content"], str) and message["content"].strip()


def check(rows, report, path, n_lines):
    assert report.rows == len(rows) and report.skipped == sum(report.reasons.values())
    for row in rows:
        check_prompt(row.prompt)
        file, line = row.source.rsplit(":", 1)
        assert file == str(path) and 1 <= int(line) <= n_lines
        answers = [row.chosen, row.rejected] if isinstance(row, PreferenceRow) else [row.completion]
        assert all(isinstance(a, str) and a.strip() for a in answers)
        if isinstance(row, PreferenceRow):
            assert row.chosen.strip() != row.rejected.strip()
        if isinstance(row, KTORow):
            assert isinstance(row.label, bool)
        assert isinstance(row, PreferenceRow | SFTRow | KTORow)


def load_all(path: Path, n_lines: int, skip: bool, system: str | None):
    for loader in (load_preferences, load_sft, load_kto):
        try:
            rows, report = loader(path, system=system, skip_invalid=skip)
        except UserError as e:
            assert e.where and str(path) in e.where  # every error says where
            continue
        event(f"{loader.__name__} loaded rows")  # shows the invariants below are exercised
        check(rows, report, path, n_lines)
        try:
            train, held = split_train_eval(rows, 0.3, seed=0)
        except UserError:
            continue
        assert len(train) + len(held) == len(rows)


@SETTINGS
@given(st.lists(lines, min_size=0, max_size=6), st.booleans(), st.sampled_from([None, "Be kind.", " "]))
def test_random_jsonl_rows(content, skip, system):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        path.write_text("\n".join(content), encoding="utf-8", errors="surrogatepass")
        load_all(path, max(len(content), 1), skip, system)


@SETTINGS
@given(st.lists(rows, max_size=4), st.booleans())
def test_random_json_rows(objs, skip):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.json"
        path.write_text(json.dumps(objs))
        load_all(path, max(len(objs), 1), skip, None)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=80), st.sampled_from([".jsonl", ".json", ".csv"]), st.booleans())
def test_random_bytes(data, suffix, skip):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(data)
        try:
            for _ in iter_rows_raw(path, errors="yield"):
                pass
        except UserError:
            pass
        load_all(path, data.count(b"\n") + 1, skip, None)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(texts, min_size=1, max_size=5), max_size=4), st.booleans())
def test_random_csv(cells, skip):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.csv"
        import csv

        with path.open("w", newline="", encoding="utf-8", errors="surrogatepass") as f:
            writer = csv.writer(f)
            writer.writerow(["prompt", "chosen", "rejected", "system"])
            writer.writerows(cells)
        n_lines = path.read_bytes().count(b"\n") + 1
        load_all(path, n_lines, skip, None)
