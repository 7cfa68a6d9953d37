"""The Python API (`alignkit.api`, re-exported by `alignkit`) on tiny random models: training from a
path, a list of dicts and a `datasets.Dataset` gives the same run; an invalid in-memory row raises
the file's UserError, naming the row, and writes nothing; the Run object; `plan` gives the numbers of
`alignkit plan`; `diagnose` the findings of `alignkit diagnose`; `import alignkit` stays cheap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tinymodels import save_tiny_checkpoint

import alignkit
from alignkit.cli import main
from alignkit.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(quiet=True)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    lines = (ROOT / "examples/task_api/data/train.jsonl").read_text().splitlines()[:16]
    return [json.loads(x) for x in lines]


def cfg_dict(out: Path, ckpt: Path, *, evaluate: bool = False) -> dict:
    return {
        "method": "dpo", "output_dir": str(out),
        "model": {"name_or_path": str(ckpt), "lora": {"r": 4, "alpha": 8}},
        "data": {"eval_fraction": 0.0, "max_length": 128, "max_prompt_length": 96,
                 "system_prompt_file": str(ROOT / "examples/task_api/system_prompt.txt")},
        "train": {"learning_rate": 1e-2, "micro_batch_size": 4, "gradient_accumulation_steps": 2, "max_steps": 2,
                  "warmup_ratio": 0.0, "lr_scheduler": "constant"},
        "eval": {"enabled": evaluate, "probes": str(ROOT / "examples/task_api/data/probes.jsonl"), "max_probes": 4,
                 "max_new_tokens": 4, "kl_samples": 1, "task": "task_api", "batch_size": 4},
    }


def _losses(run) -> list[float]:
    return [r["loss"] for r in run.log if "loss" in r]


def test_train_from_a_list_evaluates_and_returns_the_run(tmp_path, tiny_ckpt, rows):
    run = alignkit.train(cfg_dict(tmp_path / "mem", tiny_ckpt, evaluate=True), data=rows[:12],
                         eval_data=rows[12:], **QUIET)
    assert isinstance(run, alignkit.Run) and run.path == tmp_path / "mem"
    staged = tmp_path / "mem" / "data" / "train.jsonl"
    assert [json.loads(x) for x in staged.read_text().splitlines()] == rows[:12]  # the rows as given
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert saved["data"]["train"] == str(staged) and saved["data"]["eval"] == str(run.path / "data" / "eval.jsonl")
    assert run.config.data.train == str(staged)
    # as `alignkit train`: evaluated after training, so `done`, with metrics and a report
    assert run.status == "done" and run.info["evaluation"] == "done"
    assert run.final == run.path / "final" and (run.final / "adapter_model.safetensors").is_file()
    assert run.report == run.path / "report.md" and (run.path / "report.html").is_file()
    after = run.metrics["after"]
    assert after["n/harmful"] + after["n/benign"] + after.get("n/alarming", 0) == 4
    assert after["n/pairs"] == 4 and 0.0 <= after["reward_accuracy"] <= 1.0
    assert [r["step"] for r in run.log if "loss" in r] == [1, 2]
    assert "reward_accuracy" in run.summary()
    text = repr(run)
    assert text.startswith(f"Run('{run.path}', method=dpo, status=done, steps=2/2") and "reward_accuracy=" in text
    assert alignkit.Run.load(run.path) == run


def test_list_dataset_and_file_train_the_same_run(tmp_path, tiny_ckpt, rows):
    datasets = pytest.importorskip("datasets")
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = [alignkit.train(cfg_dict(tmp_path / name, tiny_ckpt), data=data, **QUIET)
            for name, data in (("file", str(data_file)), ("list", rows), ("dataset", datasets.Dataset.from_list(rows)))]
    assert runs[0].config.data.train == str(data_file)  # a path is used in place, not copied
    assert not (runs[0].path / "data").exists()
    losses = [_losses(r) for r in runs]
    assert len(losses[0]) == 2 and losses[0] == losses[1] == losses[2]
    assert all(r.status == "done" and r.metrics is None and r.report is None for r in runs)  # evaluate off


def test_a_bad_row_in_memory_raises_the_files_error_naming_the_row(tmp_path, tiny_ckpt, rows):
    bad = [dict(r) for r in rows]
    del bad[4]["rejected"]
    data_file = tmp_path / "bad.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(UserError) as from_file:
        alignkit.train(cfg_dict(tmp_path / "f", tiny_ckpt), data=str(data_file), **QUIET)
    with pytest.raises(UserError) as from_list:
        alignkit.train(cfg_dict(tmp_path / "m", tiny_ckpt), data=bad, **QUIET)
    assert from_file.value.where == f"{data_file}:5 field 'rejected'"
    assert from_list.value.where == "data[4] field 'rejected'"
    assert from_list.value.message == from_file.value.message and from_list.value.hint == from_file.value.hint
    assert not (tmp_path / "m").exists() and not (tmp_path / "f").exists()  # nothing written


def test_a_failed_overwrite_keeps_the_earlier_run_and_its_data(tmp_path, tiny_ckpt, rows):
    first = alignkit.train(cfg_dict(tmp_path / "r", tiny_ckpt), data=rows, **QUIET)
    before = (first.path / "data" / "train.jsonl").read_text()
    with pytest.raises(UserError, match="already holds a run"):
        alignkit.train(cfg_dict(tmp_path / "r", tiny_ckpt), data=rows[:8], **QUIET)
    bad = [dict(r) for r in rows]
    bad[2]["chosen"] = 7
    with pytest.raises(UserError) as e:
        alignkit.train(cfg_dict(tmp_path / "r", tiny_ckpt), data=bad, overwrite=True, **QUIET)
    assert e.value.where.startswith("data[2] field 'chosen'")
    assert (first.path / "data" / "train.jsonl").read_text() == before
    assert sorted(p.name for p in first.path.iterdir()) == ["config.yaml", "data", "final", "log.jsonl", "run.json"]
    assert first.status == "done"
    again = alignkit.train(cfg_dict(tmp_path / "r", tiny_ckpt), data=rows[:8], overwrite=True, **QUIET)
    assert len((again.path / "data" / "train.jsonl").read_text().splitlines()) == 8
    assert not (again.path / ".data-replaced").exists() and again.status == "done"


def test_in_memory_input_mistakes(tmp_path, tiny_ckpt, rows):
    cfg = cfg_dict(tmp_path / "x", tiny_ckpt)
    with pytest.raises(UserError, match="a row must be a dict") as e:
        alignkit.train(cfg, data=[rows[0], "oops"], **QUIET)
    assert e.value.where == "data[1]"
    with pytest.raises(UserError, match="no rows"):
        alignkit.train(cfg, data=[], **QUIET)
    with pytest.raises(UserError, match="cannot be written as JSON") as e:
        alignkit.train(cfg, data=[rows[0], {**rows[1], "extra": object()}], **QUIET)
    assert e.value.where == "data[1]"
    with pytest.raises(UserError, match="resume=True takes the data"):
        alignkit.train(tmp_path / "x", data=rows, resume=True)
    with pytest.raises(UserError, match="not a run directory"):
        alignkit.Run.load(tmp_path)
    assert not (tmp_path / "x").exists()


def test_load_config_overrides_and_errors(tmp_path):
    cfg = alignkit.load_config(ROOT / "examples/task_api/dpo.yaml", ["train.beta=0.3"], output_dir="runs/o",
                               train={"max_steps": 3})
    assert (cfg.train.beta, cfg.train.max_steps, cfg.output_dir) == (0.3, 3, "runs/o")
    assert cfg.data.train == str(ROOT / "examples/task_api/data/train.jsonl")  # from the file's folder
    same = alignkit.load_config(ROOT / "examples/task_api/dpo.yaml", {"train.beta": 0.3, "train.max_steps": 3,
                                                                       "output_dir": "runs/o"})
    assert same.model_dump() == cfg.model_dump()
    assert alignkit.load_config(train={"beta": 0.5}).train.beta == 0.5
    with pytest.raises(UserError) as e:
        alignkit.load_config(train={"betta": 0.3})
    assert "did you mean 'beta'" in e.value.message and e.value.where == "alignkit.load_config"
    with pytest.raises(UserError, match="train.micro_batch_size"):
        alignkit.train({"data": {"train": str(tmp_path / "none.jsonl")}, "train": {"micro_batch_size": 0}})
    built = alignkit.RunConfig.model_validate({"method": "simpo", "data": {"train": "rel.jsonl"}})
    copy = alignkit.api.as_config(built)
    assert copy.data.train == str(Path.cwd() / "rel.jsonl") and copy.train.beta == 2.0
    assert built.data.train == "rel.jsonl"  # the caller's config is not changed


def test_plan_matches_alignkit_plan(capsys):
    cfg = ROOT / "examples/task_api/dpo.yaml"
    assert main(["plan", str(cfg), "--gpu", "t4", "--json", "train.micro_batch_size=2"]) == 0
    cli = json.loads(capsys.readouterr().out)
    p = alignkit.plan(cfg, gpu="t4", **{"train.micro_batch_size": 2})
    assert json.loads(json.dumps(p.to_dict(), default=str)) == cli
    assert p.total == cli["total"] and p.fits == cli["fits"]
    # the 7B QLoRA question of the lesson, without a config: the numbers of `alignkit plan --model`
    args = ["--model", "llama-2-7b", "--method", "dpo", "--quant", "4bit", "--lora-r", "16", "--batch", "8",
            "--seq-len", "1024", "--grad-ckpt", "--gpu", "t4", "--json"]
    assert main(["plan", *args]) == 0
    cli = json.loads(capsys.readouterr().out)
    p = alignkit.plan(model="llama-2-7b", method="dpo", quant="4bit", lora_r=16, micro_batch=8, seq_len=1024,
                      grad_ckpt=True, gpu="t4")
    assert json.loads(json.dumps(p.to_dict(), default=str)) == cli
    text = str(p)
    assert f"{p.total / 2**30:.2f} GiB" in text and "policy weights" in text
    assert repr(p).startswith("MemoryPlan(dpo on ") and p.verdict in repr(p)
    with pytest.raises(UserError, match="unknown plan setting"):
        alignkit.plan(model="7b", micro_batchh=2)
    with pytest.raises(UserError, match="needs a config or model"):
        alignkit.plan()


def _stuck_run(run: Path) -> None:
    """A run directory whose log shows no learning: DPO's loss stays at log 2, margins at 0."""
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "dpo", "train": {"beta": 0.1, "learning_rate": 1e-5}}))
    (run / "run.json").write_text(json.dumps({"status": "done", "method": "dpo", "steps": 8, "done": 8}))
    (run / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.6931, "rewards/margins": 0.0,
                                                       "rewards/accuracies": 0.5}) + "\n" for s in range(1, 9)))


def test_diagnose_returns_the_findings_of_alignkit_diagnose(tmp_path, capsys):
    _stuck_run(tmp_path / "stuck")
    findings = alignkit.diagnose(tmp_path / "stuck")
    assert "no_learning" in [f.name for f in findings]
    assert main(["diagnose", str(tmp_path / "stuck"), "--json"]) == 0
    assert [f.to_dict() for f in findings] == json.loads(capsys.readouterr().out)
    assert alignkit.Run(tmp_path / "stuck").diagnose() == findings
    text = str(next(f for f in findings if f.name == "no_learning"))
    assert text.split()[:2] == ["ERROR", "no_learning:"] or text.split()[:2] == ["WARNING", "no_learning:"]
    assert "fix: " in text
    with pytest.raises(UserError, match="nothing to diagnose"):
        alignkit.diagnose(tmp_path)


def test_evaluate_again_with_other_limits(tmp_path, tiny_ckpt, rows):
    run = alignkit.train(cfg_dict(tmp_path / "e", tiny_ckpt), data=rows[:12], eval_data=rows[12:], **QUIET)
    assert run.metrics is None
    result = alignkit.evaluate(run, max_probes=2, max_new_tokens=3, quiet=True)
    assert result == run.metrics and run.report is not None
    after = run.metrics["after"]
    assert after["n/harmful"] + after["n/benign"] + after.get("n/alarming", 0) == 2 and after["n/pairs"] == 4
    with pytest.raises(UserError, match="max_probes must be at least 1"):
        alignkit.evaluate(run, max_probes=0)
    # resume=True, as `alignkit train --resume`: a finished run is returned as it is, not extended
    assert alignkit.train(run.path, resume=True, quiet=True) == run and run.status == "done"
    with pytest.raises(UserError, match="extending a finished run to train.max_steps=5"):
        alignkit.train(run, resume=True, train={"max_steps": 5}, quiet=True)


def test_train_and_plan_stay_packages_and_callables():
    import alignkit.plan.memory
    import alignkit.train.run

    assert callable(alignkit.train) and callable(alignkit.plan)
    assert alignkit.train.run.train is not alignkit.api.train  # the module is still reachable by name
    assert alignkit.plan.memory.estimate is not None and alignkit.plan.Plan is alignkit.plan.memory.Plan
    assert alignkit.RunConfig is alignkit.config.RunConfig and alignkit.UserError is UserError


def test_import_alignkit_loads_no_heavy_library():
    code = ("import sys, alignkit; heavy = [m for m in ('torch', 'transformers', 'pydantic', 'yaml', 'accelerate') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}).stdout
    assert out.strip() == "[]"
