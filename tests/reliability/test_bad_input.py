"""Bad input, through `alignkit train` (alignkit.cli.main): every case exits 2 with one `error: ...`
message that names the file/line/field (or config field) and says what to do, and writes nothing:
the output_dir does not exist afterwards, or an existing run in it is byte-identical.

Also the preflight checks (alignkit.train.preflight) with fixed inputs: disk, memory, OOM message.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import _kill_worker as kw
import pytest
import yaml

from alignkit.cli import main

GOOD = {"prompt": "List my open tasks.", "chosen": '{"action": "list"}', "rejected": "I can't help."}


def _row(**kw_) -> str:
    return json.dumps({**GOOD, **kw_})


def _without(field: str) -> str:
    return json.dumps({k: v for k, v in GOOD.items() if k != field})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    ckpt = kw.build_tiny_ckpt(d / "ckpt")
    # The same model with a tokenizer that has no chat template.
    bare = d / "bare"
    shutil.copytree(ckpt, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    cfg_file = bare / "tokenizer_config.json"
    tc = json.loads(cfg_file.read_text())
    tc.pop("chat_template", None)
    cfg_file.write_text(json.dumps(tc))
    return ckpt, bare


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run(tmp: Path, tiny, capsys, *, lines=None, raw: bytes | None = None, data: Path | None = None,
         cfg: dict | None = None, yaml_extra: dict | None = None, overrides=(), args=()) -> tuple[int, str, Path]:
    """Write the data and a tiny config, run `alignkit train`; return (exit code, stderr, output_dir)."""
    ckpt, _ = tiny
    if data is None:
        data = tmp / "data.jsonl"
        data.write_bytes(raw if raw is not None else ("\n".join(lines or [_row()]) + "\n").encode())
    config = kw.run_config(tmp / "out", ckpt, data, max_steps=1, save_every=None)
    for dotted, value in (cfg or {}).items():
        node = config
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    config.update(yaml_extra or {})
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    code = main(["train", str(tmp / "cfg.yaml"), "--no-eval", *overrides, *args])
    return code, capsys.readouterr().err, tmp / "out"


def _assert_refused(code: int, err: str, out: Path, *needles: str):
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert "hint:" in err, f"no advice on what to do: {err!r}"
    assert not out.exists(), f"output_dir was created for a refused run: {sorted(out.rglob('*'))}"


# (id, _run keyword arguments, substrings the message must hold)
DATA_CASES = [
    ("missing_file", dict(data=Path("nope.jsonl")), ["cfg.yaml", "data.train: file not found", "nope.jsonl"]),
    ("unreadable_directory", dict(data=Path("adir.jsonl")), ["adir.jsonl", "no data files in this folder"]),
    ("not_json", dict(lines=[_row(), "{oops not json", _row()]), ["data.jsonl:2", "not valid JSON"]),
    ("truncated_last_line", dict(raw=(_row() + "\n" + _row()[:30]).encode()), ["data.jsonl:2", "truncated"]),
    ("latin1_bytes", dict(raw=(_row() + "\n" + json.dumps({**GOOD, "prompt": "caf\u00e9"}, ensure_ascii=False)
                                  + "\n").encode("latin-1")),
     ["data.jsonl:2", "UTF-8"]),
    ("missing_prompt", dict(lines=[_row(), _without("prompt")]), ["data.jsonl:2", "'prompt'", "missing"]),
    ("missing_chosen", dict(lines=[_without("chosen")]), ["data.jsonl:1", "'chosen'", "missing"]),
    ("missing_rejected", dict(lines=[_row(), _row(), _without("rejected")]), ["data.jsonl:3", "'rejected'"]),
    ("number_prompt", dict(lines=[_row(prompt=42)]), ["data.jsonl:1", "'prompt'", "got number"]),
    ("null_chosen", dict(lines=[_row(chosen=None)]), ["data.jsonl:1", "'chosen'", "got null"]),
    ("nested_object_rejected", dict(lines=[_row(rejected={"text": {"value": "x"}})]),
     ["data.jsonl:1", "'rejected"]),
    ("empty_chosen", dict(lines=[_row(chosen="")]), ["data.jsonl:1", "'chosen'", "empty"]),
    ("whitespace_rejected", dict(lines=[_row(rejected=" \n\t ")]), ["data.jsonl:1", "'rejected'", "empty"]),
    ("chosen_equals_rejected", dict(lines=[_row(rejected=GOOD["chosen"])]), ["data.jsonl:1", "same text"]),
    ("unknown_role", dict(lines=[_row(prompt=[{"role": "robot", "content": "hi"}])]),
     ["data.jsonl:1", "'prompt[0].role'", "unknown role 'robot'"]),
    ("assistant_last_in_prompt", dict(lines=[_row(prompt=[{"role": "user", "content": "hi"},
                                                           {"role": "assistant", "content": "hello"}])]),
     ["data.jsonl:1", "'prompt'", "assistant"]),
    ("prompt_leaves_no_room", dict(cfg={"data.max_length": 16, "data.max_prompt_length": 16}),
     ["data.jsonl:1", "max_prompt_length"]),
    ("all_rows_skipped", dict(lines=[_without("chosen"), _row(chosen=""), "{bad"], cfg={"data.skip_invalid": True}),
     ["data.jsonl", "no usable rows"]),
    ("empty_file", dict(raw=b"\n\n"), ["data.jsonl", "empty"]),
]
CONFIG_CASES = [
    ("unknown_key", dict(cfg={"train.betta": 0.3}), ["cfg.yaml", "train.betta", "did you mean 'beta'"]),
    ("unknown_section", dict(yaml_extra={"trian": {"beta": 0.3}}), ["cfg.yaml", "'trian'", "did you mean 'train'"]),
    ("unknown_override", dict(overrides=["model.lora.alpah=8"]), ["model.lora.alpah", "did you mean 'alpha'"]),
    ("unknown_override_no_match", dict(overrides=["model.lora.rank=8"]), ["model.lora.rank", "allowed: alpha"]),
    ("wrong_type", dict(cfg={"train.beta": "high"}), ["cfg.yaml", "train.beta", "'high'"]),
    ("wrong_type_override", dict(overrides=["train.micro_batch_size=two"]), ["train.micro_batch_size", "'two'"]),
    ("not_a_section", dict(overrides=["train=3"]), ["'train'"]),
    ("negative_beta", dict(cfg={"train.beta": -0.1}), ["train.beta", "greater than 0"]),
    ("zero_learning_rate", dict(cfg={"train.learning_rate": 0}), ["train.learning_rate", "greater than 0"]),
    ("zero_batch", dict(overrides=["train.micro_batch_size=0"]), ["train.micro_batch_size", "greater than or equal to 1"]),
    ("unknown_method", dict(overrides=["method=dpo2"]), ["method", "allowed"]),
    ("missing_model_dir", dict(cfg={"model.name_or_path": "./models/gone"}),
     ["model.name_or_path: directory not found", "./models/gone"]),
    ("missing_model_name", dict(cfg={"model.name_or_path": "no-such-model"}),
     ["model.name_or_path: directory not found", "no-such-model"]),
    ("missing_system_prompt_file", dict(cfg={"data.system_prompt_file": "nope/system.txt"}),
     ["cfg.yaml", "data.system_prompt_file: file not found", "nope/system.txt"]),
]
# Known gaps in other modules: the test documents the wanted behaviour and flips when it is fixed.
GAPS: dict[str, str] = {}  # case id -> known gap (strict xfail); empty now that every message has a hint


def _case_params(cases):
    return [pytest.param(kwargs, needles, id=cid,
                         marks=[pytest.mark.xfail(strict=True, reason=GAPS[cid])] if cid in GAPS else [])
            for cid, kwargs, needles in cases]


@pytest.mark.parametrize("kwargs,needles", _case_params(DATA_CASES + CONFIG_CASES))
def test_bad_input_is_refused_and_writes_nothing(tmp_path, tiny, capsys, monkeypatch, kwargs, needles):
    monkeypatch.chdir(tmp_path)  # relative paths in the cases resolve here
    if kwargs.get("data") == Path("adir.jsonl"):
        (tmp_path / "adir.jsonl").mkdir()  # root reads any file, so "unreadable" is a directory
    code, err, out = _run(tmp_path, tiny, capsys, **kwargs)
    _assert_refused(code, err, out, *needles)


@pytest.mark.parametrize("prompt", [
    pytest.param("Hi", id="system_prompt"),  # a string prompt + the config's system prompt file
    pytest.param([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                  {"role": "user", "content": "c"}], id="multi_turn"),
])
def test_tokenizer_without_chat_template_refuses_conversations(tmp_path, tiny, capsys, prompt):
    _, bare = tiny
    system = {} if isinstance(prompt, str) else {"data.system_prompt_file": None}
    code, err, out = _run(tmp_path, tiny, capsys, lines=[_row(prompt=prompt)],
                          cfg={"model.name_or_path": str(bare), **system})
    _assert_refused(code, err, out, "data.jsonl:1", "no chat template")


def _fake_run(out: Path) -> dict[str, bytes]:
    (out / "checkpoints" / "step-1").mkdir(parents=True)
    (out / "config.yaml").write_text("method: dpo\n")
    (out / "run.json").write_text(json.dumps({"status": "done", "method": "dpo"}))
    (out / "log.jsonl").write_text('{"step": 1, "loss": 0.69}\n')
    (out / "checkpoints" / "step-1" / "weights.safetensors").write_bytes(b"\x00\x01weights")
    return _snapshot(out)


def test_existing_run_is_refused_and_untouched(tmp_path, tiny, capsys):
    before = _fake_run(tmp_path / "out")
    code, err, out = _run(tmp_path, tiny, capsys)
    assert code == 2 and "already holds a run" in err and "--resume" in err and "--overwrite" in err, err
    assert _snapshot(out) == before


def test_resume_of_a_non_run_is_refused(tmp_path, capsys):
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "notes.txt").write_text("mine")
    code = main(["train", "--resume", str(tmp_path / "notarun"), "--no-eval"])
    err = capsys.readouterr().err
    assert code == 2 and "not a run directory" in err and "hint:" in err
    assert _snapshot(tmp_path / "notarun") == {"notes.txt": b"mine"}


def test_overwrite_replaces_an_existing_run(tmp_path, tiny, capsys):
    _fake_run(tmp_path / "out")
    code, err, out = _run(tmp_path, tiny, capsys, args=["--overwrite"])
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["status"] == "done"
    assert not (out / "checkpoints" / "step-1" / "weights.safetensors").exists()


# ------------------------------------------------------------------------------------- preflight --

class _Usage:
    def __init__(self, free: int):
        self.free, self.total, self.used = free, 10 * free, 9 * free

    def __call__(self, path):
        assert Path(path).exists()  # measured on the nearest existing parent
        return self


def test_checkpoint_bytes_counts_trainable_weights_optimizer_and_keep():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 2))  # 110 + 22 params
    model[0].requires_grad_(False)
    from alignkit.train.preflight import checkpoint_bytes

    assert checkpoint_bytes(model, keep=2) == 22 * 4 * 3 * 3
    assert checkpoint_bytes(model.to(torch.bfloat16), keep=1) == 22 * 2 * 3 * 2


def test_check_disk(tmp_path):
    from alignkit.errors import UserError
    from alignkit.train.preflight import check_disk

    run = tmp_path / "runs" / "new"  # does not exist yet
    assert check_disk(run, 1000, disk_usage=_Usage(5000)) == 5000
    with pytest.raises(UserError) as err:
        check_disk(run, 3 * 2**30, disk_usage=_Usage(512 * 2**20))
    text = str(err.value)
    assert "512.0 MiB free, 3.00 GiB needed" in text and str(run) in text and "keep_checkpoints" in text
    assert not run.exists()


def _plan(gpu: str = "t4", **settings):
    from alignkit.plan.memory import plan_from_args

    return plan_from_args("7b", "dpo", gpu=gpu, **settings)


def test_check_memory_refuses_a_plan_that_does_not_fit_and_lists_fixes():
    from alignkit.errors import UserError
    from alignkit.plan.advisor import fixes
    from alignkit.train.preflight import check_memory

    plan = _plan(lora_r=0, micro_batch=4, seq_len=2048)  # full fine-tuning of 7B on a T4
    assert not plan.fits
    found = fixes(plan.input, plan.hardware)
    with pytest.raises(UserError) as err:
        check_memory(plan, fixes=found)
    text = str(err.value)
    assert "is more than the 15.00 GiB of t4" in text and "1. " in text
    assert "model.lora.enabled=true" in text or "model.quantization=4bit" in text
    said = []
    check_memory(plan, fixes=found, force=True, console=said.append)  # forced: a warning, no error
    assert said and "starting anyway" in said[0]
    check_memory(_plan(quant="4bit", micro_batch=1, seq_len=512))  # fits: silent


def test_oom_message_names_prediction_parts_and_fixes():
    from alignkit.plan.advisor import fixes
    from alignkit.train.preflight import fix_overrides, is_oom, oom_message

    plan = _plan(micro_batch=16, seq_len=4096)
    found = fixes(plan.input, plan.hardware)
    text = oom_message(plan, found)
    assert "out of memory" in text and "t4" in text and "largest parts:" in text
    assert "alignkit train --resume" in text and fix_overrides(found[0].changes)[0] in text
    assert "micro_batch_size=1" in oom_message(None, [])
    assert fix_overrides({"micro_batch": 2, "grad_accum": 8, "optimizer": "adamw8bit"}) == [
        "train.micro_batch_size=2", "train.gradient_accumulation_steps=8"]
    import torch

    assert is_oom(torch.OutOfMemoryError("CUDA out of memory")) and is_oom(RuntimeError("DefaultCPUAllocator: "
                                                                                        "can't allocate memory: out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))
