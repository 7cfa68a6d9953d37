"""On-policy pairs (`alignkit.data.sample_pairs`): the rejected side is the model's own lowest-scored
answer, re-derived here by re-running `sample` with the same arguments and judging its texts."""

from __future__ import annotations

import json
import sys

import pytest
from tinymodels import save_small_vocab_checkpoint, save_tiny_checkpoint

from alignkit.cli import main
from alignkit.data import sample_pairs as sp
from alignkit.data.formats import load_preferences, load_prompts, load_sft
from alignkit.data.tokenize import encode_prompt
from alignkit.errors import UserError
from alignkit.models import load_model, load_tokenizer
from alignkit.sample import pad_id, sample, stop_ids

SYSTEM = "aaad aaad"
# The EOS alone ends few answers of the small random model; this frequent word as a second stop ends
# about 60% of 16-token answers, so every group mixes finished and cut-off answers.
STOP_WORD = "aaaaaab"
ROWS = [
    {"prompt": "aab aaac", "category": "benign", "reference": "aab aab aab"},
    {"prompt": [{"role": "user", "content": "ab ac"}], "category": "harmful", "reference": "ac"},
    {"prompt": "aaab", "system": "aad", "category": "benign", "chosen": "aae aae", "rejected": "ab"},
    {"messages": [{"role": "user", "content": "af"}], "category": "alarming", "reference": "af af"},
    {"prompt": "aaaf ab", "category": "harmful", "reference": "aaf", "completion": "x", "label": True},
    {"prompt": "aaag aag", "reference": "ag ag ag ag"},
    {"prompt": "aac aaac aaaac", "category": "benign", "reference": "aac"},
    {"prompt": "aaaaaac", "category": "alarming", "chosen": [{"role": "assistant", "content": "ad ad"}],
     "rejected": "ad"},
]
JUDGES = '''
def ref(m):
    value = m.get("reference") or m.get("chosen")
    return value[-1]["content"] if isinstance(value, list) else value

def length(prompts, responses, meta):
    """More words is better."""
    return [float(len(r.split())) for r in responses]

def ref_or_short(prompts, responses, meta):
    """1 for the row's reference; otherwise shorter is better, always below 1."""
    return [1.0 if r == ref(m) else -len(r) / 1000
            for r, m in zip(responses, meta)]

def constant(prompts, responses, meta):
    return [0.0] * len(responses)

def exact_reference(prompts, responses, meta):
    return [1.0 if r == ref(m) else 0.0 for r, m in zip(responses, meta)]

def long_reference(prompts, responses, meta):
    """Word count, and 100 for the reference: the reference beats every own answer."""
    return [100.0 if r == ref(m) else float(len(r.split()))
            for r, m in zip(responses, meta)]
'''


@pytest.fixture
def judges(tmp_path, monkeypatch):
    """The module `pairjudges` (the functions above), importable as a user's judge."""
    (tmp_path / "pairjudges.py").write_text(JUDGES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pairjudges", raising=False)
    import pairjudges

    yield pairjudges
    sys.modules.pop("pairjudges", None)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = save_small_vocab_checkpoint(tmp_path_factory.mktemp("small"))
    tok = load_tokenizer(str(path))
    gen = json.loads((path / "generation_config.json").read_text())
    gen["eos_token_id"] = [tok.eos_token_id, tok.convert_tokens_to_ids(STOP_WORD)]
    (path / "generation_config.json").write_text(json.dumps(gen))
    return path, load_model(str(path)), tok


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture(scope="module")
def rows(prompts_file):
    return load_prompts(prompts_file, system=SYSTEM)[0]


KW = dict(k=4, temperature=1.0, max_new_tokens=16, batch_size=8, seed=3)


def groups(model, tok, rows, judge, k=4, max_new_tokens=16, batch_size=8, seed=3, temperature=1.0):
    """The plain twin: `sample` with the documented arguments -> per prompt [(text, ended, score)]."""
    stops = stop_ids(model, tok)
    s = sample(model, [encode_prompt(tok, r.prompt, r.source) for r in rows], stop_ids=stops,
               pad_id=pad_id(tok, stops), max_new_tokens=max_new_tokens, temperature=temperature,
               num_samples=k, batch_size=batch_size, seed=seed)
    texts = [tok.decode(c, skip_special_tokens=True).strip() for c in s.completion_ids]
    owner = [rows[i] for i in s.prompt_index]
    scores = judge([list(r.prompt) for r in owner], texts, [r.meta for r in owner])
    out = [list(zip(texts[i * k:(i + 1) * k], s.ended[i * k:(i + 1) * k], scores[i * k:(i + 1) * k],
                    strict=True)) for i in range(len(rows))]
    return {r.source: g for r, g in zip(rows, out, strict=True)}


def worst(group):
    """The first non-empty answer with the lowest score."""
    cands = [g for g in group if g[0]]
    return next(g for g in cands if g[2] == min(c[2] for c in cands))


def best_finished(group):
    cands = [g for g in group if g[0] and g[1]]
    return next(g for g in cands if g[2] == max(c[2] for c in cands)) if cands else None


@pytest.mark.parametrize("texts, scores, ended, margin, ties, expect", [
    (["a", "bb", "ccc"], [1, 2, 3], [True, True, False], 0.0, False, (0, 1, None)),  # ccc is cut off
    (["a", "bb", "ccc"], [1, 2, 3], [True, True, True], 0.0, False, (0, 2, None)),
    (["a", "bb", "ccc"], [1, 2, 3], [True, True, True], 2.0, False, (0, None, sp.MARGIN)),  # 3 - 1 = 2, not > 2
    (["a", "bb", "ccc"], [1, 2, 3], [True, True, True], 1.9, False, (0, 2, None)),
    (["a", "bb"], [2, 1], [False, False], 0.0, False, (1, None, sp.UNFINISHED)),
    (["a", "bb", "c"], [1, 1, 1], [True, True, True], 0.0, False, (None, None, sp.TIES)),
    (["a", "bb", "c"], [1, 1, 1], [True, True, True], 0.0, True, (0, None, sp.MARGIN)),
    (["", "bb", "c"], [-5, 1, 3], [True, True, True], 0.0, False, (1, 2, None)),  # empty: never paired
    (["", ""], [0, 1], [True, True], 0.0, False, (None, None, sp.EMPTY)),
    (["a"], [1], [True], 0.0, False, (0, None, sp.MARGIN)),  # one answer is no tie
    (["a", "b", "c", "d"], [0, 2, 0, 2], [True, True, True, True], 0.0, False, (0, 1, None)),  # first of equals
])
def test_own_choice_hand_cases(texts, scores, ended, margin, ties, expect):
    assert sp._own_choice(texts, scores, ended, margin, ties) == expect


def test_best_mode_rejected_is_own_worst_and_chosen_own_best_finished(small, rows, judges):
    _, model, tok = small
    pairs, stats = sp.sample_pairs(model, tok, rows, judges.length, chosen="best", **KW)
    twin = groups(model, tok, rows, judges.length)
    assert len(pairs) >= 3, stats
    beaten = 0
    for p in pairs:
        group = twin[p["source"]]
        assert (p["rejected"], p["rejected_ended"], p["rejected_score"]) == worst(group)
        assert (p["chosen"], True, p["chosen_score"]) == best_finished(group)
        assert p["chosen_source"] == "policy" and p["chosen_score"] > p["rejected_score"]
        beaten += any(not e and s > p["chosen_score"] for _, e, s in group)
    assert beaten, "no cut-off answer outscored the chosen one: the test would not catch choosing it"
    for source in set(twin) - {p["source"] for p in pairs}:  # each skipped prompt had no better finished answer
        b = best_finished(twin[source])
        assert b is None or b[2] <= worst(twin[source])[2]
    assert stats["pairs"] + sum(stats["skipped"].values()) == stats["prompts"] == len(rows)


def test_reference_mode_pairs_reference_with_own_worst(small, rows, judges):
    _, model, tok = small
    pairs, stats = sp.sample_pairs(model, tok, rows, judges.ref_or_short, chosen="reference", **KW)
    twin = groups(model, tok, rows, judges.ref_or_short)
    assert len(pairs) == len(rows) and stats["chosen_reference"] == len(rows) and stats["chosen_policy"] == 0
    for p, row in zip(pairs, rows, strict=True):
        assert p["source"] == row.source
        assert p["chosen"] == sp.reference_text(row.meta) and p["chosen_score"] == 1.0
        assert p["chosen_source"] == "reference"
        assert (p["rejected"], p["rejected_ended"], p["rejected_score"]) == worst(twin[row.source])


def test_best_or_reference_uses_own_best_else_reference(small, rows, judges):
    _, model, tok = small
    pairs, stats = sp.sample_pairs(model, tok, rows, judges.long_reference, **KW)
    twin = groups(model, tok, rows, judges.long_reference)
    assert len(pairs) == len(rows)
    assert stats["chosen_policy"] > 0 and stats["chosen_reference"] > 0, stats
    for p in pairs:
        group, row = twin[p["source"]], next(r for r in rows if r.source == p["source"])
        b, w = best_finished(group), worst(group)
        assert p["rejected"] == w[0]
        if b is not None and b[2] > w[2]:
            assert (p["chosen"], p["chosen_source"]) == (b[0], "policy")
        else:
            assert (p["chosen"], p["chosen_source"]) == (sp.reference_text(row.meta), "reference")


def test_min_margin_skips_and_counts(small, rows, judges):
    _, model, tok = small
    twin = groups(model, tok, rows, judges.length)
    gaps = sorted(best_finished(g)[2] - worst(g)[2] for g in twin.values() if best_finished(g))
    margin = gaps[len(gaps) // 2]  # some pairs pass, some do not
    expect_pairs = sum(gap > margin for gap in gaps)
    pairs, stats = sp.sample_pairs(model, tok, rows, judges.length, chosen="best", min_margin=margin, **KW)
    assert 0 < len(pairs) == expect_pairs < len(rows)
    assert all(p["chosen_score"] - p["rejected_score"] > margin for p in pairs)
    assert stats["skipped"].get(sp.MARGIN, 0) == sum(gap <= margin for gap in gaps)
    assert stats["skipped"].get(sp.UNFINISHED, 0) == sum(best_finished(g) is None for g in twin.values())

    # The reference must clear the margin too: exact_reference scores it 1 and every own answer 0.
    kept, _ = sp.sample_pairs(model, tok, rows, judges.exact_reference, chosen="reference", keep_ties=True,
                              min_margin=0.5, **KW)
    assert len(kept) == len(rows)
    none, stats = sp.sample_pairs(model, tok, rows, judges.exact_reference, chosen="reference", keep_ties=True,
                                  min_margin=1.0, **KW)
    assert none == [] and stats["skipped"] == {sp.REF_MARGIN: len(rows)}


def test_ties_kept_by_default_and_skipped_on_request(small, rows, judges):
    _, model, tok = small
    twin = groups(model, tok, rows, judges.constant)
    assert all(sum(bool(t) for t, _, _ in g) >= 2 for g in twin.values())
    pairs, stats = sp.sample_pairs(model, tok, rows, judges.exact_reference, keep_ties=False, **KW)
    assert pairs == [] and stats["skipped"] == {sp.TIES: len(rows)} and stats["all_equal_share"] == 1.0
    pairs, stats = sp.sample_pairs(model, tok, rows, judges.exact_reference, **KW)  # keep_ties=True: the default
    assert len(pairs) == len(rows) and stats["chosen_reference"] == len(rows)
    assert [p["rejected"] for p in pairs] == [next(t for t, _, _ in twin[r.source] if t) for r in rows]
    # In mode best a tie never makes a pair, kept or not.
    pairs, stats = sp.sample_pairs(model, tok, rows, judges.constant, chosen="best", keep_ties=True, **KW)
    assert pairs == [] and set(stats["skipped"]) <= {sp.MARGIN, sp.UNFINISHED}


def test_chosen_identical_to_rejected_is_skipped(small, rows):
    _, model, tok = small

    class ScoresReferencesHigher:
        """Own answers 0 (all tied, so the first is rejected); references, judged in a second call, 1."""

        name, calls = "staged", 0

        def __call__(self, prompts, responses, meta):
            self.calls += 1
            return [0.0 if self.calls == 1 else 1.0] * len(responses)

    first = {s: next(t for t, _, _ in g if t)
             for s, g in groups(model, tok, rows, ScoresReferencesHigher()).items()}
    same = [type(r)(r.prompt, {**r.meta, "reference": first[r.source]}, r.source) for r in rows]
    pairs, stats = sp.sample_pairs(model, tok, same, ScoresReferencesHigher(), chosen="reference",
                                   keep_ties=True, **KW)
    assert pairs == [] and stats["skipped"] == {sp.IDENTICAL: len(rows)}


def test_written_pairs_load_as_preferences_with_documented_fields(small, rows, judges, tmp_path):
    _, model, tok = small
    pairs, _ = sp.sample_pairs(model, tok, rows, judges.long_reference, **KW)
    out = tmp_path / "pairs.jsonl"
    sp.write_jsonl(out, pairs)
    raw = [json.loads(line) for line in out.read_text().splitlines()]
    for r, meta in zip(raw, (next(x.meta for x in rows if x.source == r["source"]) for r in raw), strict=True):
        assert {"prompt", "chosen", "rejected", "chosen_score", "rejected_score", "chosen_source",
                "rejected_ended", "source"} <= set(r)
        assert not {"messages", "system", "completion", "label"} & set(r)
        assert r.get("category") == meta.get("category") and r["reference"] == sp.reference_text(meta)
        assert SYSTEM not in json.dumps(r["prompt"])  # the system-prompt file is not written into the data
    loaded, report = load_preferences(out, system=SYSTEM)
    assert report.rows == len(pairs) and report.skipped == 0
    by_source = {r.source: r for r in rows}
    for row, p in zip(loaded, pairs, strict=True):
        assert row.prompt == by_source[p["source"]].prompt  # the same conversation, system prompts included
        assert (row.chosen, row.rejected) == (p["chosen"], p["rejected"])
    assert [r.completion for r in load_sft(out)[0]] == [p["chosen"] for p in pairs]


def test_stats(small, rows, judges):
    _, model, tok = small
    pairs, stats = sp.sample_pairs(model, tok, rows, judges.length, chosen="best", **KW)
    twin = groups(model, tok, rows, judges.length)
    flat = [x for g in twin.values() for x in g]
    assert (stats["prompts"], stats["samples"], stats["pairs"]) == (len(rows), 4 * len(rows), len(pairs))
    assert stats["eos_rate"] == pytest.approx(sum(e for _, e, _ in flat) / len(flat))
    assert 0 < stats["eos_rate"] < 1
    assert stats["mean_score"] == pytest.approx(sum(s for _, _, s in flat) / len(flat))
    assert stats["chosen_policy_share"] == 1.0 and stats["chosen_reference"] == 0
    cats = stats["by_category"]
    assert {c: v["prompts"] for c, v in cats.items()} == {"alarming": 2, "benign": 3, "harmful": 2}
    benign = [s for r in rows if r.meta.get("category") == "benign" for _, _, s in twin[r.source]]
    assert cats["benign"]["mean_score"] == pytest.approx(sum(benign) / len(benign))
    assert sum(v["pairs"] for v in cats.values()) == sum(p.get("category") is not None for p in pairs)


@pytest.mark.parametrize("option, kw", [("--k", {"k": 0}), ("--k", {"k": 1, "chosen": "best"}),
                                        ("--temperature", {"temperature": 0.0}), ("--min-margin", {"min_margin": -1}),
                                        ("--chosen", {"chosen": "worst"}), ("--max-new-tokens", {"max_new_tokens": 0})])
def test_bad_options_name_the_option(option, kw):
    opts = dict(k=4, temperature=1.0, max_new_tokens=8, batch_size=4, chosen="best_or_reference", min_margin=0.0)
    with pytest.raises(UserError) as e:
        sp.check_options(**{**opts, **kw})
    assert e.value.where == option


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def cli(*args):
    return main(["data", "sample-pairs", *map(str, args)])


def test_cli_end_to_end_then_refuses_to_overwrite(tiny, prompts_file, judges, tmp_path, capsys):
    system = tmp_path / "system.txt"
    system.write_text(SYSTEM + "\n")
    out, stats = tmp_path / "out" / "pairs.jsonl", tmp_path / "stats.json"
    args = [prompts_file, "--model", tiny, "--out", out, "--judge", "pairjudges:ref_or_short", "--k", 2,
            "--max-new-tokens", 6, "--stats", stats, "--system-prompt-file", system, "--max-prompts", 5, "--seed", 1]
    assert cli(*args) == 0
    printed = capsys.readouterr().out
    assert "5 prompts x 2 answers" in printed and str(out) in printed
    loaded, _ = load_preferences(out, system=SYSTEM)
    st = json.loads(stats.read_text())
    assert len(loaded) == st["pairs"] >= 1 and st["prompts"] == 5 and st["samples"] == 10
    assert st["settings"]["judge"] == "pairjudges:ref_or_short" and st["settings"]["k"] == 2
    assert st["eos_rate"] == 0.0  # a 49k-token random model never stops: so the reference is chosen
    assert st["chosen_reference"] == st["pairs"]
    written = out.read_bytes()
    assert not list(out.parent.glob(".*.tmp"))

    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    assert out.read_bytes() == written
    assert cli(*args, "--overwrite") == 0
    assert out.read_bytes() == written  # same seed, same answers


def test_cli_bad_judge_is_refused_before_the_model_loads(tiny, prompts_file, judges, tmp_path, capsys,
                                                       monkeypatch):
    import alignkit.models

    def refuse(*a, **k):
        raise AssertionError("the model must not be loaded before the inputs are checked")

    monkeypatch.setattr(alignkit.models, "load_model", refuse)
    monkeypatch.setattr(alignkit.models, "load_tokenizer", refuse)
    out, stats = tmp_path / "pairs.jsonl", tmp_path / "stats.json"
    for spec in ("no_such_judge", "pairjudges:missing", "no_such_module_xyz:f"):
        assert cli(prompts_file, "--model", tiny, "--out", out, "--stats", stats, "--judge", spec) == 2
        err = capsys.readouterr().err
        assert "--judge" in err and spec in err
    assert not out.exists() and not stats.exists()
    out.write_text("old\n")
    assert cli(prompts_file, "--model", tiny, "--out", out, "--judge", "pairjudges:constant") == 2
    assert str(out) in capsys.readouterr().err and out.read_text() == "old\n"
    out.unlink()
    assert cli(prompts_file, "--model", tiny, "--out", out) == 2  # no judge: none is picked for you
    assert "--judge" in capsys.readouterr().err and not out.exists()


def test_cli_no_pair_writes_stats_not_an_empty_file(tiny, prompts_file, judges, tmp_path, capsys):
    out, stats = tmp_path / "pairs.jsonl", tmp_path / "stats.json"
    assert cli(prompts_file, "--model", tiny, "--out", out, "--stats", stats, "--judge", "pairjudges:constant",
               "--k", 2, "--max-new-tokens", 3, "--max-prompts", 2, "--skip-ties") == 2
    assert "no prompt gave a pair" in capsys.readouterr().err
    assert not out.exists() and json.loads(stats.read_text())["skipped"] == {sp.TIES: 2}
    assert cli(prompts_file, "--out", out) == 2 and "--model" in capsys.readouterr().err
