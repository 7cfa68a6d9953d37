"""A misspelled column is named ("did you mean"), by the loader and so by train and doctor alike;
doctor shows a row problem with its field path, as train does."""

from __future__ import annotations

import pytest

from alignkit.data.doctor import doctor
from alignkit.data.formats import RowError, load_preferences, normalize_row


def _error(raw, kind="preference") -> RowError:
    with pytest.raises(RowError) as e:
        normalize_row(raw, "f.jsonl:3", kind=kind)
    return e.value


def test_misspelled_column_is_named():
    e = _error({"prompt": "p", "choosen": "a", "rejected": "b"})
    assert e.where == "f.jsonl:3 field 'chosen'"
    assert e.message == "missing field 'chosen'; the row has 'choosen': did you mean 'chosen'?"
    assert e.hint == "rename 'choosen' to 'chosen'"
    assert e.reason == "missing field 'chosen'"  # the counting key is unchanged


@pytest.mark.parametrize("raw,kind,wanted,typo", [
    ({"promt": "p", "chosen": "a", "rejected": "b"}, "preference", "prompt", "promt"),
    ({"prompt": [{"rol": "user", "content": "x"}], "chosen": "a", "rejected": "b"}, "preference", "role", "rol"),
    ({"prompt": "p", "completion": "a", "lable": True}, "kto", "label", "lable"),  # `labels` is a known spelling
    ({"prompt": "p", "completions": "a"}, "sft", "completion", "completions"),
])
def test_near_misses_everywhere(raw, kind, wanted, typo):
    assert f"the row has '{typo}': did you mean '{wanted}'?" in _error(raw, kind).message


def test_no_suggestion_without_a_near_miss():
    e = _error({"prompt": "p", "chosen": "a", "answer_b": "b"})
    assert e.message == "missing field 'rejected'" and "did you mean" not in str(e)


def test_train_loader_and_doctor_say_the_same(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": [{"role": "human", "content": "hi"}], "chosen": "a", "rejected": "b"}\n'
                    '{"prompt": "hi there", "choosen": "a", "rejected": "b"}\n'
                    '{"prompt": "hi x", "chosen": "a", "rejected": "c"}\n')
    with pytest.raises(RowError) as e:
        load_preferences(path)
    assert str(e.value).splitlines()[0] == f"{path}:1 field 'prompt[0].role': unknown role 'human'"
    report = doctor(path)
    shown = {i.message: i.lines for i in report.issues("schema")}
    assert shown == {"field 'prompt[0].role': unknown role 'human'": [1],
                     "field 'chosen': missing field 'chosen'; the row has 'choosen': did you mean 'chosen'?": [2]}
