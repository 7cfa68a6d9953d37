"""Loading and normalising data files: every accepted shape, every error, skipping, splitting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.data.formats import (
    LoadReport,
    PreferenceRow,
    RowError,
    iter_rows_raw,
    load_kto,
    load_preferences,
    load_sft,
    normalize_row,
    split_train_eval,
)
from alignkit.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def write(tmp_path: Path, name: str, content: str | bytes | list) -> Path:
    """Write a file; a list is written as JSONL, one object per line."""
    path = tmp_path / name
    if isinstance(content, list):
        content = "".join(json.dumps(obj) + "\n" for obj in content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


EXPECTED_STRINGS = [
    ((user("What is 2+2?"),), "4", "5"),
    ((system("Answer briefly."), user("Name a colour.")), "Blue.", "Seven."),
    ((user("Say hi in French."),), "Bonjour !", "Hola."),
]


# --- the formats agree -----------------------------------------------------------------------------


def test_jsonl_strings_with_blank_line_and_row_system():
    rows, report = load_preferences(FIXTURES / "prefs_strings.jsonl")
    assert [(r.prompt, r.chosen, r.rejected) for r in rows] == EXPECTED_STRINGS
    # the blank line 3 is skipped silently (it is not a row) and does not shift line numbers
    assert [r.source for r in rows] == [f"{FIXTURES / 'prefs_strings.jsonl'}:{n}" for n in (1, 2, 4)]
    assert report == LoadReport(str(FIXTURES / "prefs_strings.jsonl"), rows=3, skipped=0, reasons={})


def test_csv_matches_jsonl_and_empty_system_cell_means_none():
    rows, _ = load_preferences(FIXTURES / "prefs_strings.csv")
    assert [(r.prompt, r.chosen, r.rejected) for r in rows] == EXPECTED_STRINGS
    assert [r.source.rsplit(":", 1)[1] for r in rows] == ["2", "3", "4"]  # header is line 1


def test_json_list_and_data_key_and_parquet_match_jsonl(tmp_path):
    objs = [json.loads(line) for line in (FIXTURES / "prefs_strings.jsonl").read_text().splitlines() if line]
    pd = pytest.importorskip("pandas")
    parquet = tmp_path / "p.parquet"
    pd.DataFrame(objs).to_parquet(parquet)  # the missing system becomes null: absent
    for path in (
        write(tmp_path, "a.json", json.dumps(objs)),
        write(tmp_path, "b.json", json.dumps({"data": objs})),
        parquet,
    ):
        rows, _ = load_preferences(path)
        assert [(r.prompt, r.chosen, r.rejected) for r in rows] == EXPECTED_STRINGS
        assert [r.source for r in rows] == [f"{path}:{n}" for n in (1, 2, 3)]


def test_parquet_with_chat_messages(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "chat.parquet"
    pd.DataFrame(
        [{"prompt": [user("Q")], "chosen": [assistant("A")], "rejected": [assistant("B")]}]
    ).to_parquet(path)
    (row,), _ = load_preferences(path)
    assert (row.prompt, row.chosen, row.rejected) == ((user("Q"),), "A", "B")


# --- row conventions ---------------------------------------------------------------------------------


def test_ultrafeedback_conventions():
    rows, _ = load_preferences(FIXTURES / "prefs_ultrafeedback.jsonl")
    assert [(r.prompt, r.chosen, r.rejected) for r in rows] == [
        ((user("What is 2+2?"),), "4", "5"),  # chosen: a list holding one assistant message
        ((user("Name a colour."),), "Blue.", "Seven."),  # prompt string + full conversations
    ]


def test_full_conversations_split_at_last_assistant_turn():
    (row,), _ = load_preferences(FIXTURES / "prefs_conversations.json", system="ignored: the row has one")
    assert row.prompt == (system("Be terse."), user("Hi"), assistant("Hello."), user("2+2?"))
    assert (row.chosen, row.rejected) == ("4", "Let me think about it at length: 5")


def test_assistant_dict_answers_and_system_argument(tmp_path):
    path = write(
        tmp_path, "d.jsonl", [{"prompt": [user("Q")], "chosen": assistant("A"), "rejected": assistant("B")}]
    )
    (row,), _ = load_preferences(path, system="Be kind.")
    assert row.prompt == (system("Be kind."), user("Q"))
    (row,), _ = load_preferences(path, system="   ")  # blank system argument: none
    assert row.prompt == (user("Q"),)


def test_answer_text_is_kept_verbatim(tmp_path):
    path = write(tmp_path, "w.jsonl", [{"prompt": " Q ", "chosen": "\n\nA  ", "rejected": "B"}])
    (row,), _ = load_preferences(path)
    assert (row.prompt[0]["content"], row.chosen) == (" Q ", "\n\nA  ")


def test_sft_shapes():
    rows, report = load_sft(FIXTURES / "sft_messages.jsonl")
    assert [(r.prompt, r.completion) for r in rows] == [
        ((user("Hi"), assistant("Hello."), user("2+2?")), "4"),
        ((user("Name a colour."),), "Blue."),
        ((user("Say hi in French."),), "Bonjour !"),  # a preference row: its chosen side
    ]
    assert report.rows == 3


def test_kto_labels_and_unpaired_preferences(tmp_path):
    rows, _ = load_kto(FIXTURES / "kto.jsonl")
    assert [(r.completion, r.label) for r in rows] == [
        ("4", True),
        ("5", False),
        ("Blue.", True),
        ("Seven.", False),
    ]
    labels = [True, False, 1, 0, "true", "False", "desirable", "UNDESIRABLE", "1", "0"]
    path = write(tmp_path, "k.jsonl", [{"prompt": "Q", "completion": "A", "label": v} for v in labels])
    assert [r.label for r in load_kto(path)[0]] == [True, False] * 5
    rows, report = load_kto(FIXTURES / "prefs_strings.jsonl")
    assert [(r.completion, r.label) for r in rows[:2]] == [("4", True), ("5", False)]
    assert rows[0].source == rows[1].source and report.rows == 6


def test_iter_rows_raw_lines_and_yielded_errors(tmp_path):
    path = write(tmp_path, "r.jsonl", '{"a": 1}\n\n   \nnot json\n[1, 2]\n{"b": 2}\n')
    items = list(iter_rows_raw(path, errors="yield"))
    assert [line for line, _ in items] == [1, 4, 5, 6]
    assert items[0][1] == {"a": 1} and items[3][1] == {"b": 2}
    assert [obj.reason for _, obj in items[1:3]] == ["invalid JSON", "not a JSON object"]
    with pytest.raises(RowError, match="not valid JSON"):
        list(iter_rows_raw(path))


def test_normalize_row_is_the_loaders_normaliser():
    (row,) = normalize_row({"prompt": "Q", "chosen": "A", "rejected": "B"}, "x:1", system="S")
    assert row == PreferenceRow((system("S"), user("Q")), "A", "B", "x:1")
    assert len(normalize_row({"prompt": "Q", "chosen": "A", "rejected": "B"}, "x:1", kind="kto")) == 2
    with pytest.raises(RowError) as info:
        normalize_row({"prompt": "Q", "chosen": 1, "rejected": "B"}, "x:1")
    assert info.value.where == "x:1 field 'chosen'" and info.value.reason == "wrong type in field 'chosen'"


# --- errors: each names file, line and field ---------------------------------------------------------

GOOD = {"prompt": "Q", "chosen": "A", "rejected": "B"}

ROW_ERRORS = [
    # (row, field named in where, words in the message, reason counted with skip_invalid)
    ({"prompt": "Q", "rejected": "B"}, "chosen", "missing field 'chosen'", "missing field 'chosen'"),
    ({"chosen": "A", "rejected": "B"}, "prompt", "missing field 'prompt'", "missing field 'prompt'"),
    (
        {**GOOD, "chosen": 3},
        "chosen",
        "expected a string or an assistant message, got number",
        "wrong type in field 'chosen'",
    ),
    ({**GOOD, "rejected": None}, "rejected", "got null", "wrong type in field 'rejected'"),
    ({**GOOD, "prompt": {"text": "Q"}}, "prompt", "got object", "wrong type in field 'prompt'"),
    ({**GOOD, "prompt": 1.5}, "prompt", "got number", "wrong type in field 'prompt'"),
    ({**GOOD, "chosen": ""}, "chosen", "empty", "empty field 'chosen'"),
    ({**GOOD, "prompt": " \n\t"}, "prompt", "whitespace-only", "empty field 'prompt'"),
    ({**GOOD, "prompt": []}, "prompt", "empty list", "empty field 'prompt'"),
    ({**GOOD, "rejected": "A "}, "rejected", "same text", "chosen identical to rejected"),
    (
        {**GOOD, "prompt": [{"role": "bot", "content": "Q"}]},
        "prompt[0].role",
        "unknown role 'bot'",
        "unknown role",
    ),
    (
        {**GOOD, "prompt": [{"content": "Q"}]},
        "prompt[0].role",
        "missing field",
        "missing field 'prompt[].role'",
    ),
    (
        {**GOOD, "prompt": [user("Q"), {"role": "user"}]},
        "prompt[1].content",
        "missing",
        "missing field 'prompt[].content'",
    ),
    (
        {**GOOD, "prompt": [user("Q"), {"role": "user", "content": 7}]},
        "prompt[1].content",
        "got number",
        "wrong type in field 'prompt[].content'",
    ),
    (
        {**GOOD, "prompt": [user("Q"), assistant("A")]},
        "prompt",
        "must be a user turn",
        "prompt ends with an assistant turn",
    ),
    ({**GOOD, "prompt": [system("S")]}, "prompt", "must be a user turn", "prompt ends with a system turn"),
    ({**GOOD, "chosen": user("A")}, "chosen.role", "role is 'user'", "answer is not an assistant message"),
    (
        {**GOOD, "chosen": [user("A")]},
        "chosen[0].role",
        "role is 'user'",
        "answer is not an assistant message",
    ),
    ({**GOOD, "system": 5}, "system", "got number", "wrong type in field 'system'"),
    (
        {**GOOD, "prompt": [system("S"), user("Q")], "system": "T"},
        "system",
        "system message",
        "two system prompts",
    ),
    ({**GOOD, "prompt": "\ud800"}, "prompt", "surrogate", "not UTF-8"),
    (
        {"chosen": [user("Q"), assistant("A")], "rejected": [user("other"), assistant("B")]},
        "rejected",
        "different prompts",
        "prompt mismatch",
    ),
    (
        {"chosen": [user("Q"), assistant("A")], "rejected": [user("Q"), user("B")]},
        "rejected[1].role",
        "not the assistant",
        "conversation does not end with an assistant turn",
    ),
    (
        {"prompt": "other", "chosen": [user("Q"), assistant("A")], "rejected": "B"},
        "chosen",
        "does not start with the prompt",
        "prompt mismatch",
    ),
    (
        {"chosen": [assistant("A")], "rejected": [assistant("B")]},
        "prompt",
        "missing field 'prompt'",
        "missing field 'prompt'",
    ),
]


@pytest.mark.parametrize(("row", "field", "words", "reason"), ROW_ERRORS)
def test_row_errors_name_file_line_and_field(tmp_path, row, field, words, reason):
    path = write(tmp_path, "bad.jsonl", [GOOD, row, GOOD])
    with pytest.raises(UserError) as info:
        load_preferences(path)
    assert info.value.where == f"{path}:2 field '{field}'"
    assert words in info.value.message, str(info.value)
    rows, report = load_preferences(path, skip_invalid=True)
    assert len(rows) == 2 and report.skipped == 1 and report.reasons == {reason: 1}


SFT_KTO_ERRORS = [
    (load_sft, {"prompt": "Q"}, "completion", "missing field 'completion'"),
    (load_sft, {"messages": [user("Q"), assistant("A"), user("R")]}, "messages[2].role", "not the assistant"),
    (load_sft, {"messages": [assistant("A")]}, "prompt", "missing field 'prompt'"),
    (load_sft, {"messages": "Q"}, "messages[0].role", "not the assistant"),
    (load_kto, {"prompt": "Q", "completion": "A"}, "label", "missing field 'label'"),
    (load_kto, {"prompt": "Q", "completion": "A", "label": "maybe"}, "label", "not a yes/no value"),
    (load_kto, {"prompt": "Q", "completion": "A", "label": 2}, "label", "not a yes/no value"),
    (load_kto, {"prompt": "Q", "completion": "A", "label": None}, "label", "not a yes/no value"),
]


@pytest.mark.parametrize(("loader", "row", "field", "words"), SFT_KTO_ERRORS)
def test_sft_and_kto_errors(tmp_path, loader, row, field, words):
    path = write(tmp_path, "bad.jsonl", [{"prompt": "Q", "completion": "A", "label": True}, row])
    with pytest.raises(UserError) as info:
        loader(path)
    assert info.value.where == f"{path}:2 field '{field}'" and words in info.value.message


def test_missing_file_directory_and_unknown_extension(tmp_path):
    with pytest.raises(UserError, match="file not found") as info:
        load_preferences(tmp_path / "nope.jsonl")
    assert info.value.where == str(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="no data files in this folder"):
        load_preferences(tmp_path)
    with pytest.raises(UserError, match="unknown file extension '.txt'") as info:
        load_preferences(write(tmp_path, "a.txt", "x"))
    assert ".jsonl" in info.value.hint


def test_invalid_json_line_and_truncated_last_line(tmp_path):
    path = write(
        tmp_path, "t.jsonl", json.dumps(GOOD) + "\n{oops}\n" + json.dumps(GOOD) + '\n{"prompt": "Q", "cho'
    )
    with pytest.raises(UserError) as info:
        load_preferences(path)
    assert info.value.where == f"{path}:2" and "not valid JSON" in info.value.message
    rows, report = load_preferences(path, skip_invalid=True)
    assert len(rows) == 2 and report.reasons == {"invalid JSON": 2}
    path = write(tmp_path, "u.jsonl", json.dumps(GOOD) + '\n{"prompt": "Q", "cho')
    with pytest.raises(UserError) as info:
        load_preferences(path)
    assert info.value.where == f"{path}:2" and "truncated" in info.value.hint


def test_not_json_at_all_raises_even_when_skipping(tmp_path):
    path = write(tmp_path, "n.jsonl", "prompt,chosen,rejected\nQ,A,B\n")
    with pytest.raises(UserError, match="no line of the file is valid JSON") as info:
        load_preferences(path, skip_invalid=True)
    assert info.value.where == f"{path}:1"


def test_not_utf8_names_line_and_byte(tmp_path):
    good = json.dumps(GOOD).encode() + b"\n"
    path = write(tmp_path, "l.jsonl", good + b'{"prompt": "caf\xe9", "chosen": "A", "rejected": "B"}\n')
    with pytest.raises(UserError) as info:
        load_preferences(path)
    assert info.value.where == f"{path}:2"
    assert f"byte offset {len(good) + 15}" in info.value.message
    assert load_preferences(path, skip_invalid=True)[1].reasons == {"not UTF-8": 1}
    for name in ("l.json", "l.csv"):
        path = write(
            tmp_path,
            name,
            b"[\n\n" + b'{"prompt": "caf\xe9"}]' if name.endswith("json") else b"prompt\n\xff\n",
        )
        with pytest.raises(UserError, match="not valid UTF-8 .byte offset") as info:
            load_preferences(path, skip_invalid=True)  # whole-file formats: a file-level error
        assert info.value.where == f"{path}:{3 if name.endswith('json') else 2}"


def test_json_file_errors(tmp_path):
    path = write(tmp_path, "j.json", '[{"prompt": "Q",\n "chosen": "A", "rejected": ')
    with pytest.raises(UserError, match="not valid JSON") as info:
        load_preferences(path, skip_invalid=True)
    assert info.value.where == f"{path}:2" and "truncated" in info.value.hint
    path = write(tmp_path, "k.json", json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(UserError, match="Extra data") as info:
        load_preferences(path)
    assert ".jsonl" in info.value.hint
    with pytest.raises(UserError, match="expected a list of rows"):
        load_preferences(write(tmp_path, "o.json", json.dumps(GOOD)))
    path = write(tmp_path, "s.json", json.dumps([GOOD, "text", GOOD]))
    with pytest.raises(UserError, match="got string") as info:
        load_preferences(path)
    assert info.value.where == f"{path}:2"


def test_csv_errors(tmp_path):
    path = write(tmp_path, "c.csv", 'prompt,chosen,rejected\nQ,A,B\n"multi\nline",A,B\nQ,A,B,extra\nQ,A\n')
    with pytest.raises(UserError, match="4 cells but the header has 3") as info:
        load_preferences(path)
    assert info.value.where == f"{path}:5"  # the multi-line record starts on line 3 and ends on 4
    rows, report = load_preferences(path, skip_invalid=True)
    assert [r.source for r in rows] == [f"{path}:2", f"{path}:3"]
    assert report.reasons == {"too many cells": 1, "missing field 'rejected'": 1}
    with pytest.raises(UserError, match="empty or whitespace-only"):
        load_preferences(write(tmp_path, "e.csv", "prompt,chosen,rejected\nQ,,B\n"))


def test_parquet_unreadable(tmp_path):
    with pytest.raises(UserError, match="not a readable Parquet file"):
        load_preferences(write(tmp_path, "x.parquet", b"PAR1 not really"))


def test_empty_dataset(tmp_path):
    for content in ("", "\n\n  \n", "prompt,chosen,rejected\n"):
        path = write(tmp_path, "e.csv" if content.startswith("prompt") else "e.jsonl", content)
        with pytest.raises(UserError, match="no usable rows: the file is empty"):
            load_preferences(path)
    path = write(tmp_path, "s.jsonl", [{**GOOD, "chosen": 1}, {**GOOD, "rejected": "A"}])
    with pytest.raises(UserError, match="skipped 2") as info:
        load_preferences(path, skip_invalid=True)
    assert info.value.where == str(path) and f"{path}:1 field 'chosen'" in info.value.hint
    with pytest.raises(UserError, match="empty"):
        load_preferences(write(tmp_path, "l.json", "[]"))


def test_skip_report_counts_every_dropped_row(tmp_path):
    path = write(tmp_path, "m.jsonl", [GOOD, {"prompt": "Q"}, {"prompt": "Q"}, {**GOOD, "chosen": 1}, GOOD])
    rows, report = load_preferences(path, skip_invalid=True)
    assert report.rows == len(rows) == 2 and report.skipped == 3
    assert report.reasons == {"missing field 'chosen'": 2, "wrong type in field 'chosen'": 1}
    assert "skipped 3" in report.summary()


# --- split ------------------------------------------------------------------------------------------


def _rows(n_prompts: int, per_prompt: int) -> list[PreferenceRow]:
    return [
        PreferenceRow((user(f"q{i}"),), f"a{j}", f"b{j}", f"f:{i * per_prompt + j + 1}")
        for i in range(n_prompts)
        for j in range(per_prompt)
    ]


def test_split_is_deterministic_and_groups_by_prompt():
    rows = _rows(50, 3)
    train, held = split_train_eval(rows, 0.2, seed=1)
    assert (train, held) == split_train_eval(rows, 0.2, seed=1)
    assert split_train_eval(list(reversed(rows)), 0.2, seed=1)[1] == list(reversed(held))  # order-free
    assert held != split_train_eval(rows, 0.2, seed=2)[1]
    assert {r.prompt[0]["content"] for r in train}.isdisjoint({r.prompt[0]["content"] for r in held})
    assert len(held) == 30 and len(train) + len(held) == len(rows)
    assert train == [r for r in rows if r in train]  # input order kept


def test_split_ignores_system_prompt_when_grouping():
    rows = [
        PreferenceRow((user("q"),), "a", "b", "f:1"),
        PreferenceRow((system("s"), user("q")), "a", "b", "f:2"),
    ]
    rows += _rows(4, 1)
    train, held = split_train_eval(rows, 0.5, seed=0)
    assert (rows[0] in held) == (rows[1] in held)


def test_split_edges():
    rows = _rows(3, 1)
    assert split_train_eval(rows, 0.0, seed=0) == (rows, [])
    train, held = split_train_eval(rows, 0.01, seed=0)
    assert len(held) == 1 and len(train) == 2  # at least one eval prompt
    assert len(split_train_eval(rows, 0.99, seed=0)[0]) == 1  # never all
    with pytest.raises(UserError, match="same prompt"):
        split_train_eval(_rows(1, 5), 0.2, seed=0)
    with pytest.raises(UserError, match="eval_fraction"):
        split_train_eval(rows, 1.0, seed=0)
