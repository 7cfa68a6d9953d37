"""Public preference data read as published: HH-RLHF transcripts, TRL's conversational and implicit-prompt
formats, UltraFeedback-binarized rows with scores, SHP rows, KTO label spellings, compressed files,
`datasets.save_to_disk` / Parquet / Arrow folders, data.split and data.columns, and the detected format
in the load report and the doctor's report.

Each fixture is a few rows written here in the exact shape of the dataset's documented schema
(Anthropic/hh-rlhf, trl-lib's dataset formats, HuggingFaceH4/ultrafeedback_binarized, stanfordnlp/SHP).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import sys
from pathlib import Path

import pytest

from alignkit.config import RunConfig, load_config
from alignkit.data.doctor import doctor
from alignkit.data.formats import RowError, load_kto, load_preferences, load_prompts, load_sft
from alignkit.errors import UserError


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text(jsonl(rows))
    return path


def triples(rows) -> list[tuple]:
    return [(r.prompt, r.chosen, r.rejected) for r in rows]


# --- HH-RLHF ---------------------------------------------------------------------------------------

HH = [  # Anthropic/hh-rlhf: {"chosen": transcript, "rejected": transcript}, nothing else
    {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: It is 6.\n\nSix.",
     "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 7, I think."},
    {"chosen": "\n\nHuman: Name a colour.\n\nAssistant: Blue.",
     "rejected": "\n\nHuman: Name a colour.\n\nAssistant: I won't."},
]
HH_EXPECTED = [
    ((user("What is 2+2?"), assistant("4."), user("And 3+3?")), "It is 6.\n\nSix.", "7, I think."),
    ((user("Name a colour."),), "Blue.", "I won't."),
]


def test_hh_rlhf_transcripts_split_at_the_last_assistant_turn(tmp_path):
    rows, report = load_preferences(write(tmp_path / "hh.jsonl", HH))
    assert triples(rows) == HH_EXPECTED
    assert report.format_line() == "format: hh-rlhf transcripts (2 rows)"
    # the same rows serve SFT (chosen side), KTO (unpaired) and prompt files
    assert [(r.prompt, r.completion) for r in load_sft(tmp_path / "hh.jsonl")[0]] == [e[:2] for e in HH_EXPECTED]
    kto = load_kto(tmp_path / "hh.jsonl")[0]
    assert [(k.completion, k.label) for k in kto[:2]] == [("It is 6.\n\nSix.", True), ("7, I think.", False)]
    assert load_prompts(tmp_path / "hh.jsonl")[0][0].prompt == HH_EXPECTED[0][0]


@pytest.mark.parametrize("row,field,words", [
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hey\n\nAssistant: Go away."},
     "rejected", "do not share the conversation up to the last '\\n\\nAssistant:'"),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi"},
     "rejected", "no '\\n\\nAssistant:' turn"),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": 3}, "rejected", "expected an HH-RLHF transcript"),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: ok?", "rejected": "\n\nHuman: Hi\n\nAssistant: No"},
     "chosen", "ends with a 'Human:' turn"),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant:  "},
     "rejected", "empty"),
])
def test_hh_rlhf_malformed_row_names_line_and_field(tmp_path, row, field, words):
    path = write(tmp_path / "hh.jsonl", [HH[1], row])
    with pytest.raises(RowError) as info:
        load_preferences(path)
    assert info.value.where == f"{path}:2 field '{field}'" and words in info.value.message
    rows, report = load_preferences(path, skip_invalid=True)
    assert len(rows) == 1 and report.skipped == 1


def test_doctor_reads_hh_rlhf(tmp_path):
    path = tmp_path / "test.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(HH + [HH[1] | {"rejected": "\n\nHuman: Other\n\nAssistant: x"}]).encode()))
    report = doctor(path)
    text = report.format_table()
    assert "missing field 'prompt'" not in text
    assert report.stats["rows_valid"] == 2 and report.stats["rows_invalid"] == 1
    assert "format: hh-rlhf transcripts (2 rows); read from .jsonl (gzip-compressed)" in text
    (issue,) = report.errors
    assert issue.lines == [3] and issue.message.startswith("field 'rejected': 'chosen' and 'rejected' do not share")


# --- TRL's conversational formats --------------------------------------------------------------------


def test_trl_conversational_explicit_prompt(tmp_path):
    rows, report = load_preferences(write(tmp_path / "c.jsonl", [
        {"prompt": [user("What color is the sky?")], "chosen": [assistant("It is blue.")],
         "rejected": [assistant("It is green.")]}]))
    assert triples(rows) == [((user("What color is the sky?"),), "It is blue.", "It is green.")]
    assert report.formats == {"conversational (message lists)": 1}


def test_trl_implicit_prompt_splits_off_the_shared_prefix(tmp_path):
    convo = [system("Be brief."), user("Hi"), assistant("Hello."), user("What color is the sky?")]
    path = write(tmp_path / "i.jsonl", [
        {"chosen": [*convo, assistant("It is blue.")], "rejected": [*convo, assistant("It is green.")]},
        {"chosen": [user("A"), assistant("x")], "rejected": [user("B"), assistant("y")]},
    ])
    with pytest.raises(RowError) as info:
        load_preferences(path)
    assert info.value.where == f"{path}:2 field 'rejected'" and "different prompts" in info.value.message
    rows, report = load_preferences(path, skip_invalid=True)
    assert triples(rows) == [(tuple(convo), "It is blue.", "It is green.")]
    assert report.format_line() == "format: implicit prompt (full conversations) (1 row)"


# --- UltraFeedback binarized ---------------------------------------------------------------------------

UF = [  # HuggingFaceH4/ultrafeedback_binarized, train_prefs: the user turn is repeated in chosen/rejected
    {"prompt": "Name a colour.", "prompt_id": "a1",
     "chosen": [user("Name a colour."), assistant("Blue.")],
     "rejected": [user("Name a colour."), assistant("Seven.")], "score_chosen": 9.0, "score_rejected": 2.0},
    {"prompt": "Say hi.", "prompt_id": "a2",
     "chosen": [user("Say hi."), assistant("Hi!")],
     "rejected": [user("Say hi."), assistant("Bye.")], "score_chosen": 7.5, "score_rejected": 7.0},
]


def test_ultrafeedback_rows_keep_scores_and_margin_filter(tmp_path):
    path = write(tmp_path / "uf.jsonl", UF)
    rows, report = load_preferences(path)
    assert triples(rows) == [((user("Name a colour."),), "Blue.", "Seven."), ((user("Say hi."),), "Hi!", "Bye.")]
    assert [r.meta for r in rows] == [{"score_chosen": 9.0, "score_rejected": 2.0},
                                      {"score_chosen": 7.5, "score_rejected": 7.0}]
    assert report.formats == {"prompt + full conversations (ultrafeedback-binarized) with scores": 2}
    rows, report = load_preferences(path, min_score_margin=1.0)  # the 0.5 gap goes, counted
    assert [r.chosen for r in rows] == ["Blue."] and report.filtered == 1
    assert report.reasons == {"score gap below data.min_score_margin": 1}
    assert len(load_kto(path, min_score_margin=1.0)[0]) == 2  # the kept pair, unpaired
    with pytest.raises(UserError, match="no usable rows") as info:
        load_preferences(path, min_score_margin=100)
    assert "min_score_margin" in info.value.hint


def test_ultrafeedback_bad_score_names_line_and_field(tmp_path):
    path = write(tmp_path / "uf.jsonl", [UF[0], UF[1] | {"score_chosen": "high"}])
    with pytest.raises(RowError) as info:
        load_preferences(path)
    assert info.value.where == f"{path}:2 field 'score_chosen'" and "expected a number" in info.value.message


# --- SHP -------------------------------------------------------------------------------------------------

SHP = [  # stanfordnlp/SHP: labels 1 = human_ref_A preferred; score_A/score_B are the comments' scores
    {"post_id": "p1", "domain": "askscience_train", "upvote_ratio": 0.99, "history": "Why is the sky blue?",
     "c_root_id_A": "a", "c_root_id_B": "b", "created_at_utc_A": 1, "created_at_utc_B": 2,
     "score_A": 52, "score_B": 4, "human_ref_A": "Rayleigh scattering.", "human_ref_B": "Magic.",
     "labels": 1, "seconds_difference": 1.0, "score_ratio": 13.0},
    {"post_id": "p2", "domain": "askscience_train", "upvote_ratio": 0.9, "history": "Why is grass green?",
     "score_A": 3, "score_B": 40, "human_ref_A": "Paint.", "human_ref_B": "Chlorophyll.", "labels": 0},
    {"history": "Is water wet?", "score_A": 10, "score_B": 9, "human_ref_A": "Yes.", "human_ref_B": "No."},
]


def test_shp_rows_become_pairs(tmp_path):
    path = write(tmp_path / "shp.jsonl", SHP)
    rows, report = load_preferences(path)
    assert triples(rows) == [((user("Why is the sky blue?"),), "Rayleigh scattering.", "Magic."),
                             ((user("Why is grass green?"),), "Chlorophyll.", "Paint."),
                             ((user("Is water wet?"),), "Yes.", "No.")]  # no labels: the higher score wins
    assert rows[1].meta == {"score_chosen": 40.0, "score_rejected": 3.0}
    assert report.format_line() == "format: shp (history, human_ref_A/B) (3 rows)"
    rows, report = load_preferences(path, min_score_margin=5)  # score difference, chosen minus rejected
    assert [r.chosen for r in rows] == ["Rayleigh scattering.", "Chlorophyll."] and report.filtered == 1


@pytest.mark.parametrize("row,field,words", [
    ({"history": "Q?", "human_ref_A": "Yes.", "labels": 1}, "human_ref_B", "missing field 'human_ref_B'"),
    ({"history": "Q?", "human_ref_A": "Yes.", "human_ref_B": "No.", "score_A": 3, "score_B": 3},
     "score_B", "score_A equals score_B"),
    ({"history": "Q?", "human_ref_A": "Yes.", "human_ref_B": "No.", "labels": 7}, "labels", "not a yes/no value"),
    ({"history": "", "human_ref_A": "Yes.", "human_ref_B": "No.", "labels": 1}, "history", "empty"),
])
def test_shp_malformed_row_names_line_and_field(tmp_path, row, field, words):
    path = write(tmp_path / "shp.jsonl", [SHP[0], row])
    with pytest.raises(RowError) as info:
        load_preferences(path)
    assert info.value.where == f"{path}:2 field '{field}'" and words in info.value.message


# --- KTO label spellings ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["label", "labels", "desirable", "is_desirable", "kto_label"])
@pytest.mark.parametrize("good,bad", [(True, False), (1, 0), (1.0, 0.0), ("true", "false")])
def test_kto_label_spellings(tmp_path, key, good, bad):
    path = write(tmp_path / "k.jsonl", [{"prompt": "Q?", "completion": "Yes.", key: good},
                                        {"prompt": [user("Q?")], "completion": [assistant("No.")], key: bad}])
    rows, report = load_kto(path)
    assert [(r.prompt, r.completion, r.label) for r in rows] == [((user("Q?"),), "Yes.", True),
                                                                 ((user("Q?"),), "No.", False)]
    assert report.formats == {f"unpaired prompt/completion + {key}": 2}


def test_kto_bad_label_names_its_column(tmp_path):
    path = write(tmp_path / "k.jsonl", [{"prompt": "Q?", "completion": "Yes.", "is_desirable": "maybe"}])
    with pytest.raises(RowError) as info:
        load_kto(path)
    assert info.value.where == f"{path}:1 field 'is_desirable'" and "not a yes/no value" in info.value.message


# --- compressed files -----------------------------------------------------------------------------------


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


@pytest.mark.parametrize("name,content", [
    ("hh.jsonl.gz", jsonl(HH)),
    ("hh.json.gz", json.dumps(HH)),
    ("hh.csv.gz", _csv(HH)),
])
def test_gzip_round_trip(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(gzip.compress(content.encode()))
    rows, report = load_preferences(path)
    assert triples(rows) == HH_EXPECTED
    assert report.source == f".{name.split('.')[1]} (gzip-compressed)"


def test_gzip_errors(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(HH).encode())[:-12])  # truncated
    with pytest.raises(UserError, match="not a readable gzip file") as info:
        load_preferences(path)
    assert info.value.where == str(path)
    other = tmp_path / "x.txt.gz"
    other.write_bytes(gzip.compress(b"x"))
    with pytest.raises(UserError, match="unknown file extension '.txt.gz'"):
        load_preferences(other)
    bz = tmp_path / "hh.jsonl.bz2"
    bz.write_bytes(bz2.compress(jsonl(HH).encode()))
    with pytest.raises(UserError, match="unknown file extension '.bz2'") as info:
        load_preferences(bz)
    assert ".gz or .zst" in info.value.hint


def test_zstandard_without_the_package_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "hh.jsonl.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 8)
    monkeypatch.setitem(sys.modules, "zstandard", None)  # `import zstandard` raises ImportError
    with pytest.raises(UserError, match="needs the 'zstandard' package") as info:
        load_preferences(path)
    assert "pip install zstandard" in info.value.hint and info.value.where == str(path)


def test_zstandard_round_trip(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    path = tmp_path / "hh.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(jsonl(HH).encode()))
    rows, report = load_preferences(path)
    assert triples(rows) == HH_EXPECTED and report.source == ".jsonl (zstandard-compressed)"


# --- folders -----------------------------------------------------------------------------------------------


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    one = tmp_path / "one"
    datasets.Dataset.from_list(HH).save_to_disk(str(one))
    rows, report = load_preferences(one)
    assert triples(rows) == HH_EXPECTED
    assert report.format_line() == "format: hh-rlhf transcripts (2 rows); read from datasets folder (save_to_disk)"

    both = tmp_path / "both"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(UF),
                          "test": datasets.Dataset.from_list(HH)}).save_to_disk(str(both))
    assert [r.chosen for r in load_preferences(both)[0]] == ["Blue.", "Hi!"]  # data.split defaults to train
    rows, report = load_preferences(both, split="test")
    assert triples(rows) == HH_EXPECTED and rows[0].source == f"{both / 'test'}:1"
    assert "split 'test'" in report.source
    with pytest.raises(UserError, match="no split 'validation'") as info:
        load_preferences(both, split="validation")
    assert "train" in info.value.message and "data.split" in info.value.hint
    assert doctor(both, split="test").stats["formats"] == {"hh-rlhf transcripts": 2}


def test_doctor_cli_split_flag(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    from alignkit.cli import main

    both = tmp_path / "both"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(UF),
                          "test": datasets.Dataset.from_list(HH)}).save_to_disk(str(both))
    assert main(["doctor", str(both), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "format: hh-rlhf transcripts (2 rows); read from datasets folder (save_to_disk), split 'test'" in out
    assert main(["doctor", str(both), "--split", "nope"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err


def test_parquet_folder_with_split_files_and_arrow_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "repo" / "data"  # the hub's layout
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(HH[:1]), data / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(HH[1:]), data / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(UF), data / "test-00000-of-00001.parquet")
    rows, report = load_preferences(tmp_path / "repo")
    assert triples(rows) == HH_EXPECTED
    assert rows[1].source == f"{data / 'train-00001-of-00002.parquet'}:1"
    assert report.source == "folder of 2 .parquet files (split 'train')"
    assert [r.chosen for r in load_preferences(tmp_path / "repo", split="test")[0]] == ["Blue.", "Hi!"]
    with pytest.raises(UserError, match="no files of split 'dev'"):
        load_preferences(tmp_path / "repo", split="dev")

    arrow = tmp_path / "arrow"
    arrow.mkdir()
    table = pa.Table.from_pylist(UF)
    with pa.ipc.new_stream(arrow / "data-00000-of-00001.arrow", table.schema) as w:
        w.write_table(table)
    rows, _ = load_preferences(arrow)
    assert [r.meta["score_chosen"] for r in rows] == [9.0, 7.5]


def test_folder_without_data_files_and_hub_id(tmp_path, monkeypatch):
    (tmp_path / "hh" / "harmless-base").mkdir(parents=True)
    with pytest.raises(UserError, match="no data files in this folder") as info:
        load_preferences(tmp_path / "hh")
    assert "harmless-base" in info.value.hint
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="file not found") as info:
        load_preferences("Anthropic/hh-rlhf")
    assert "save_to_disk" in info.value.hint and "huggingface-cli download" in info.value.hint


# --- column mapping --------------------------------------------------------------------------------------


def test_column_mapping(tmp_path):
    path = write(tmp_path / "m.jsonl", [{"question": "Q?", "good": "Yes.", "bad": "No.", "prompt": "ignored"}])
    rows, _ = load_preferences(path, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert triples(rows) == [((user("Q?"),), "Yes.", "No.")]
    with pytest.raises(RowError) as info:
        load_preferences(path, columns={"prompt": "question", "chosen": "best", "rejected": "bad"})
    assert info.value.where == f"{path}:1 field 'best'"
    assert info.value.message == "missing field 'best' (data.columns maps 'chosen' to it)"
    with pytest.raises(UserError, match="unknown field 'answer'") as info:
        load_preferences(path, columns={"answer": "good"})
    assert info.value.where == "data.columns.answer"


def test_config_fields_validated():
    cfg = load_config(None, ["data.columns={prompt: question, chosen: good}", "data.split=test",
                             "data.min_score_margin=1.5"])
    assert (cfg.data.columns, cfg.data.split, cfg.data.min_score_margin) == (
        {"prompt": "question", "chosen": "good"}, "test", 1.5)
    with pytest.raises(UserError, match="unknown field 'promt' in data.columns: did you mean 'prompt'"):
        load_config(None, ["data.columns={promt: question}"])
    with pytest.raises(UserError, match="column 'q' is mapped to two fields"):
        load_config(None, ["data.columns={prompt: q, chosen: q}"])


# --- training from HH-RLHF as published -------------------------------------------------------------------


def test_train_two_steps_from_hh_rlhf_jsonl_gz(tmp_path):
    from tinymodels import save_tiny_checkpoint

    from alignkit.train.run import train

    ckpt = save_tiny_checkpoint(tmp_path / "tiny")
    rows = [{"chosen": f"\n\nHuman: Question {i}?\n\nAssistant: Answer {i}.",
             "rejected": f"\n\nHuman: Question {i}?\n\nAssistant: No idea {i}."} for i in range(8)]
    data = tmp_path / "train.jsonl.gz"
    data.write_bytes(gzip.compress(jsonl(rows).encode()))
    cfg = RunConfig.model_validate({
        "method": "dpo", "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(ckpt), "lora": {"r": 4, "alpha": 8}},
        "data": {"train": str(data), "eval": None, "eval_fraction": 0.0, "max_length": 64, "max_prompt_length": 32},
        "train": {"learning_rate": 1e-2, "micro_batch_size": 2, "gradient_accumulation_steps": 2, "max_steps": 2,
                  "warmup_ratio": 0.0, "lr_scheduler": "constant"},
        "eval": {"enabled": False}})
    said: list[str] = []
    run = train(cfg, console=lambda *a: said.append(" ".join(map(str, a))))
    log = [json.loads(x) for x in (Path(run) / "log.jsonl").read_text().splitlines() if x.strip()]
    assert [r["step"] for r in log if "step" in r][-1] == 2
    assert any("format: hh-rlhf transcripts (8 rows); read from .jsonl (gzip-compressed)" in s for s in said)

    # the report train prints counts pairs dropped by data.min_score_margin apart from invalid rows
    from alignkit.models import load_tokenizer
    from alignkit.train.run import prepare_data

    uf = write(tmp_path / "uf.jsonl", UF + [UF[0] | {"rejected": [user("Name a colour."), assistant(" ")]}])
    cfg.data.train, cfg.data.min_score_margin, cfg.data.skip_invalid = str(uf), 1.0, True
    report = prepare_data(cfg, load_tokenizer(str(ckpt))).report.splitlines()
    assert report[0] == f"train: 1 rows from {uf} (1 invalid skipped, 1 below data.min_score_margin)"
    assert report[1] == "  format: prompt + full conversations (ultrafeedback-binarized) with scores (1 row)"


def test_eval_split_reads_the_held_out_split_of_the_same_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    from alignkit.data import formats
    from alignkit.train.run import load_split

    both = tmp_path / "both"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(UF),
                          "test": datasets.Dataset.from_list(HH)}).save_to_disk(str(both))
    cfg = load_config(None, [f"data.train={both}", f"data.eval={both}", "data.eval_split=test"])
    train_rows, eval_rows, _, erep = load_split(cfg, formats.load_preferences, None)
    assert [r.chosen for r in train_rows] == ["Blue.", "Hi!"] and triples(eval_rows) == HH_EXPECTED
    assert erep.formats == {"hh-rlhf transcripts": 2}


def test_train_preflight_names_how_to_get_a_hub_dataset(tmp_path, monkeypatch):
    from alignkit.train.preflight import check_inputs

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.train=Anthropic/hh-rlhf"])
    with pytest.raises(UserError, match="data.train: file not found") as info:
        check_inputs(cfg)
    assert "save_to_disk" in info.value.hint
