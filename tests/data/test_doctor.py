"""The data doctor finds each planted defect, on the right line, and nothing in a clean file.

fixtures_doctor/defects.jsonl plants one defect per line (see `PLANTED`); eval.jsonl repeats the
prompt of line 11 with other case and spacing; biased.jsonl has chosen longer than rejected in
every pair and refusals as 9 of 12 chosen answers; clean.jsonl has none of these.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest

from alignkit.data import doctor as doc
from alignkit.data.doctor import doctor, near_duplicates, normalize_text

FIX = Path(__file__).parent / "fixtures_doctor"
PLANTED = {
    "schema": [3],
    "duplicate": [6],
    "near_duplicate": [8],
    "identical_pair": [9],
    "empty_response": [10],
    "eval_leak": [11],
    "truncation": [12],
}


@pytest.fixture(autouse=True)
def refusal_stand_in(monkeypatch):
    """Use the real `is_refusal` where it exists; a plain prefix check otherwise."""
    try:
        from alignkit.judges.refusal import is_refusal  # noqa: F401
    except ImportError:
        pattern = re.compile(r"^\s*(i'm sorry|i am sorry|i can(no|')t|i won't)", re.IGNORECASE)
        monkeypatch.setattr(doc, "_is_refusal", lambda text: bool(pattern.match(text)))


def test_each_planted_defect_found_on_its_line():
    report = doctor(
        FIX / "defects.jsonl", eval_path=FIX / "eval.jsonl", max_length=256, max_prompt_length=128
    )
    for code, lines in PLANTED.items():
        issues = report.issues(code)
        assert issues, f"{code} not found: {report.format_table()}"
        assert sorted(n for i in issues for n in i.lines) == lines, code
    assert {i.code for i in report.errors} >= {"schema", "identical_pair", "empty_response", "eval_leak"}
    assert {i.code for i in report.warnings} >= {"duplicate", "near_duplicate", "truncation"}
    assert report.issues("duplicate")[0].details["pairs"] == [(4, 6)]
    a, b, sim = report.issues("near_duplicate")[0].details["pairs"][0]
    assert (a, b) == (7, 8) and 0.9 <= sim < 1
    assert report.issues("eval_leak")[0].details["eval_lines"] == [1]
    assert "missing field 'rejected'" in report.issues("schema")[0].message
    assert report.exit_code == 1
    s = report.stats
    assert (s["rows_total"], s["rows_valid"], s["rows_invalid"]) == (14, 11, 3)
    assert s["tokens"]["counted_by"].startswith("estimate") and s["tokens"]["truncated"] == 1
    assert s["tokens"]["max"] > 256 and s["tokens"]["p50"] < 64


def test_report_is_json_and_prints():
    report = doctor(FIX / "defects.jsonl", eval_path=FIX / "eval.jsonl", max_length=256)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["exit_code"] == 1 and data["errors"] and data["stats"]["rows_valid"] == 11
    table = report.format_table()
    for code in PLANTED:
        assert code in table
    assert "defects.jsonl" in table


def test_clean_file_has_no_errors_or_warnings():
    report = doctor(FIX / "clean.jsonl", eval_path=FIX / "eval.jsonl", max_length=256, max_prompt_length=128)
    assert report.errors == [] and report.warnings == [], report.format_table()
    assert report.exit_code == 0
    assert "no problems found" in report.format_table()
    assert 0.25 <= report.stats["length"]["chosen_longer_share"] <= 0.75


def test_length_bias_and_refusal_balance():
    report = doctor(FIX / "biased.jsonl")
    assert report.exit_code == 0  # warnings only
    (bias,) = report.issues("length_bias")
    assert bias.details["chosen_longer_share"] == 1.0 and bias.details["mean_length_ratio"] > 10
    (refusals,) = report.issues("refusal_balance")
    assert refusals.details["chosen_refusal_share"] == 0.75 and refusals.lines == list(range(1, 10))
    assert "75%" in refusals.message and "100%" in bias.message


def test_tokenizer_counts_are_used_when_given():
    class CharTokenizer:  # one token per character; no chat template
        chat_template = None

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [list(t) for t in texts]}

    report = doctor(FIX / "clean.jsonl", tokenizer=CharTokenizer(), max_length=100)
    tokens = report.stats["tokens"]
    assert tokens["counted_by"] == "tokenizer" and tokens["truncated"] > 0
    assert report.issues("truncation")[0].lines  # rows over 100 characters


def test_case_only_difference_counts_as_identical(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "chosen": "Hello there", "rejected": "hello  THERE"}) + "\n")
    assert doctor(path).issues("identical_pair")[0].lines == [1]


def test_normalize_text():
    assert normalize_text("  Hello\n\tWORLD ") == "hello world"
    assert normalize_text("ﬁne") == "fine"  # NFKC folds the ligature


def test_near_duplicates_finds_planted_pairs_in_10k_rows_quickly():
    rng = random.Random(0)
    words = [f"w{i}x" for i in range(3000)]
    texts = [" ".join(rng.choices(words, k=60)) for _ in range(10_000)]
    texts[9000] = texts[10] + " extra"  # near duplicates
    texts[5000] = texts[20].replace(texts[20][:8], "zzzzzzzz", 1)
    start = time.perf_counter()
    pairs = near_duplicates(texts, 0.9)
    elapsed = time.perf_counter() - start
    assert {(i, j) for i, j, _ in pairs} == {(10, 9000), (20, 5000)}
    assert elapsed < 30, elapsed  # seconds, not minutes, even on 2 shared cores


def test_missing_file_is_a_user_error(tmp_path):
    from alignkit.errors import UserError

    with pytest.raises(UserError, match="not found"):
        doctor(tmp_path / "nope.jsonl")


def test_system_prompt_counts_in_lengths_not_in_duplicates():
    plain = doctor(FIX / "clean.jsonl").stats["tokens"]["max"]
    report = doctor(FIX / "clean.jsonl", system="x" * 400, max_length=plain + 50)
    assert plain + 100 <= report.stats["tokens"]["max"] <= plain + 101  # 400 chars + newline, / 4
    assert report.issues("truncation") and not report.issues("near_duplicate")
