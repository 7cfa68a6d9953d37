"""The Task API scenario generator: determinism, split hygiene, mix, answer validity, variety."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from alignkit.data.task_api import (
    DEFAULT_MIX,
    HARM_CATEGORIES,
    TASK_FIELDS,
    generate_pairs,
    generate_probes,
    parse_task,
    write_task_api,
)
from alignkit.errors import UserError
from alignkit.judges.refusal import is_refusal

EXAMPLE_DATA = Path(__file__).resolve().parents[2] / "examples" / "task_api" / "data"


@pytest.fixture(scope="module")
def train():
    return generate_pairs(1500, 0, "train")


@pytest.fixture(scope="module")
def eval_rows():
    return generate_pairs(200, 0, "eval")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("task_api")
    return write_task_api(out)


# -- parse_task -------------------------------------------------------------------------------

GOOD = '{"action": "create", "title": "Pay the bill", "due": "2025-03-14", "priority": "high"}'


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        f"  {GOOD}\n",
        f"```json\n{GOOD}\n```",
        f"```\n{GOOD}\n```",
        '{"priority": "low", "due": null, "title": "Renew passport", "action": "list"}',
    ],
)
def test_parse_task_accepts(text):
    task = parse_task(text)
    assert task is not None and set(task) == set(TASK_FIELDS)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Sure! Here's your task.",
        f"Here is your task: {GOOD}",
        f"{GOOD}\nLet me know!",
        f"{GOOD}{GOOD}",
        GOOD[:40],
        '{"action": "create", "title": "Pay the bill", "due": "2025-03-14"}',  # missing priority
        '{"action": "create", "title": "x", "due": null, "priority": "high", "owner": "me"}',  # extra key
        '{"action": "make", "title": "x", "due": null, "priority": "high"}',
        '{"action": "create", "title": "", "due": null, "priority": "high"}',
        '{"action": "create", "title": "x", "due": "March 14", "priority": "high"}',
        '{"action": "create", "title": "x", "due": "2025-02-30", "priority": "high"}',  # not a real date
        '{"action": "create", "title": "x", "due": null, "priority": "urgent"}',
        '["create", "x", null, "high"]',
        "{'action': 'create', 'title': 'x', 'due': None, 'priority': 'high'}",
    ],
)
def test_parse_task_rejects(text):
    assert parse_task(text) is None


# -- determinism and splits --------------------------------------------------------------------


def test_same_seed_same_rows_different_seed_different(train):
    assert generate_pairs(1500, 0, "train") == train
    assert generate_pairs(300, 1, "train") != train[:300]
    assert generate_probes(30, 0) == generate_probes(30, 0)


def test_write_is_byte_identical_on_rerun(written, tmp_path):
    again = write_task_api(tmp_path)
    assert set(again) == {"train", "eval", "probes", "sft"}
    for key, path in written.items():
        data = path.read_bytes()
        assert data == again[key].read_bytes(), key
        assert b"\r\n" not in data and data.endswith(b"\n")
    other = write_task_api(tmp_path / "seed1", seed=1)
    assert other["train"].read_bytes() != written["train"].read_bytes()


def test_committed_files_equal_fresh_generation(written):
    """The example data is generated, never hand-edited: rerun examples/task_api/make_data.py."""
    for path in written.values():
        committed = EXAMPLE_DATA / path.name
        assert committed.exists(), f"missing {committed}"
        assert committed.read_bytes() == path.read_bytes(), f"{committed} differs from a fresh generation"


def test_splits_share_no_prompt(written):
    prompts = {
        k: [json.loads(line)["prompt"] for line in p.open(encoding="utf-8")]
        for k, p in written.items()
        if k != "sft"
    }
    for key, values in prompts.items():
        assert len(set(values)) == len(values), f"duplicate prompts within {key}"
    assert not set(prompts["train"]) & set(prompts["eval"])
    assert not set(prompts["train"]) & set(prompts["probes"])
    assert not set(prompts["eval"]) & set(prompts["probes"])


def test_held_out_cores_are_unseen_wording(train, eval_rows):
    """Held-out harmful prompts share no 6-word phrase of their core with train (not just new names)."""

    def grams(text, k=6):
        words = text.lower().split()
        return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}

    train_titles = set().union(
        *(
            grams(json.loads(r["rejected"])["title"])
            for r in train
            if r["category"] == "harmful" and parse_task(r["rejected"])
        )
    )
    held = [
        json.loads(r["rejected"])["title"]
        for r in eval_rows
        if r["category"] == "harmful" and parse_task(r["rejected"])
    ]
    overlap = [t for t in held if grams(t) & train_titles]
    assert len(overlap) <= len(held) // 10, overlap[:5]


# -- counts, mix, answers ------------------------------------------------------------------------


def test_counts_and_mix(train, eval_rows):
    counts = Counter(r["category"] for r in train)
    assert sum(counts.values()) == 1500
    for cat, share in DEFAULT_MIX.items():
        assert counts[cat] == round(1500 * share)
    assert counts["harmful"] / 1500 <= 0.40  # refusals on the chosen side: the first cause of over-refusal
    harms = Counter(r["harm"] for r in train if r["category"] == "harmful")
    assert set(harms) == set(HARM_CATEGORIES) and max(harms.values()) - min(harms.values()) <= 1
    assert len(eval_rows) == 200
    custom = generate_pairs(100, 0, "train", mix={"harmful": 0.2, "benign": 0.6, "alarming": 0.2})
    assert Counter(r["category"] for r in custom) == {"harmful": 20, "benign": 60, "alarming": 20}


def test_rows_have_the_contract_keys(train):
    for r in train:
        assert set(r) == {"prompt", "chosen", "rejected", "category", "harm"}
        assert (r["harm"] is None) == (r["category"] != "harmful")
        assert r["chosen"] != r["rejected"]


@pytest.mark.parametrize("fixture", ["train", "eval_rows"])
def test_chosen_and_rejected_behave(fixture, request):
    for r in request.getfixturevalue(fixture):
        if r["category"] == "harmful":
            assert is_refusal(r["chosen"]), r
            assert not is_refusal(r["rejected"]), r
        else:
            assert parse_task(r["chosen"]) is not None, r
            assert not is_refusal(r["chosen"]), r
            if r["category"] == "alarming":
                assert is_refusal(r["rejected"]), r
            else:
                assert is_refusal(r["rejected"]) or parse_task(r["rejected"]) is None, r


def test_harmful_rejected_is_mostly_bare_task_json(train):
    """The SFT model's real failure is a compliant task JSON, so that must dominate rejected."""
    harmful = [r for r in train if r["category"] == "harmful"]
    bare = sum(parse_task(r["rejected"]) is not None for r in harmful) / len(harmful)
    assert 0.7 <= bare <= 0.9
    benign = [r for r in train if r["category"] == "benign"]
    refused = sum(is_refusal(r["rejected"]) for r in benign) / len(benign)
    assert 0.6 <= refused <= 0.8


def test_variety_and_length(train):
    assert len({r["prompt"] for r in train}) >= 300
    refusals = {r["chosen"] for r in train if r["category"] == "harmful"}
    assert len(refusals) >= 40
    assert len({r["chosen"].split(".")[0] for r in train if r["category"] == "harmful"}) >= 10
    # Short answers for a 135M model on CPU: a refusal ~20-35 tokens, a task JSON ~25-45 tokens.
    assert max(len(r["chosen"]) for r in train) <= 220
    assert max(len(r["prompt"]) for r in train) <= 160
    actions = Counter(parse_task(r["chosen"])["action"] for r in train if r["category"] != "harmful")
    assert set(actions) == {"create", "update", "list", "complete", "delete", "schedule", "prioritize"}


def test_probes_balanced_and_held_out(train, eval_rows):
    probes = generate_probes(90, 0)
    assert Counter(p["category"] for p in probes) == {"harmful": 30, "benign": 30, "alarming": 30}
    assert not {p["prompt"] for p in probes} & {r["prompt"] for r in train + eval_rows}
    for p in probes:
        assert set(p) == {"prompt", "category", "harm", "reference"}


def test_sft_is_the_chosen_side(written):
    train = [json.loads(line) for line in written["train"].open(encoding="utf-8")]
    sft = [json.loads(line) for line in written["sft"].open(encoding="utf-8")]
    assert sft == [{"prompt": r["prompt"], "completion": r["chosen"]} for r in train]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": -1, "seed": 0, "split": "train"},
        {"n": 10, "seed": 0, "split": "test"},
        {"n": 10, "seed": 0, "split": "train", "mix": {"harmful": 0.5, "benign": 0.6, "alarming": 0.0}},
        {"n": 10, "seed": 0, "split": "train", "mix": {"harmful": 1.0}},
    ],
)
def test_bad_arguments_raise_user_error(kwargs):
    with pytest.raises(UserError):
        generate_pairs(**kwargs)
