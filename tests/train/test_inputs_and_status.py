"""A user's own run, not the Task API example's (issues 13 and 15).

- Defaults name no example file: `data.train` is required, no system prompt, no probes, no task check.
- Relative input paths in a YAML file are read from its folder; overrides' from the current folder;
  the run's config.yaml stores them absolute.
- Every missing input is reported at once, with its field, before anything is loaded or written.
- run.json says `trained` until the evaluation succeeded (`done`); a failed evaluation leaves
  `eval_failed`, exit 2, `final/` kept, and `alignkit eval RUN` finishes it.
- Without probes the evaluation scores the held-out pairs only; with nothing to score it is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from alignkit.cli import main
from alignkit.config import PATH_FIELDS, RunConfig, dump_config, load_config
from alignkit.errors import UserError
from alignkit.train.preflight import check_inputs

GARDEN = [("When should I plant garlic?", "In autumn, a few weeks before the ground freezes.", "Garlic is a vegetable."),
          ("How often do I water tomatoes?", "Deeply, about twice a week, more in heat waves.", "Tomatoes are red."),
          ("Why are my basil leaves yellow?", "Usually overwatering; let the soil dry between waterings.", "Basil."),
          ("Can I compost citrus peels?", "Yes, in moderation; chop them so they break down faster.", "No idea."),
          ("What grows in shade?", "Hostas, ferns, lettuce and spinach cope with partial shade.", "Plants grow."),
          ("How deep do I sow carrots?", "About 1 cm deep, in loose, stone-free soil.", "Carrots are orange.")]


def _write_pairs(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in rows))
    return path


def _config(folder: Path, ckpt: Path, **sections) -> Path:
    """A tiny DPO config in `folder`/cfg.yaml whose data files sit next to it (relative paths)."""
    _write_pairs(folder / "data" / "train.jsonl", GARDEN)
    _write_pairs(folder / "data" / "eval.jsonl", GARDEN[:3])
    cfg = {"method": "dpo", "output_dir": str(folder / "run"),
           "model": {"name_or_path": str(ckpt), "lora": {"r": 4, "alpha": 8}},
           "data": {"train": "data/train.jsonl", "max_length": 96, "max_prompt_length": 64},
           "train": {"max_steps": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 1, "learning_rate": 1e-3},
           "eval": {"max_new_tokens": 4, "kl_samples": 0}}
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values} if isinstance(values, dict) else values
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _probes(path: Path, category: str = "benign") -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "category": category}) + "\n" for p, _, _ in GARDEN[:2]))
    return path


def _status(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


# ------------------------------------------------------------------------------- a. defaults --

def test_defaults_name_no_example_file_prompt_or_task():
    cfg = RunConfig()
    assert (cfg.data.train, cfg.data.eval, cfg.data.system_prompt_file, cfg.eval.probes) == (None, None, None, None)
    assert cfg.eval.task == "none"
    text = dump_config(cfg)
    assert "examples/" not in text and "task_api" not in text and "system_prompt.txt" not in text


def test_train_without_data_train_is_refused_naming_the_field(tmp_path, tiny_ckpt, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, tiny_ckpt)
    raw = yaml.safe_load(cfg.read_text())
    del raw["data"]["train"]
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: data.train: not set" in err and "hint:" in err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------- b. relative input paths --

def test_relative_paths_resolve_from_the_config_folder_and_overrides_from_cwd(tmp_path, tiny_ckpt, monkeypatch):
    cfg_path = _config(tmp_path / "project", tiny_ckpt, data={"system_prompt_file": "../prompts/sys.txt"},
                       eval={"probes": "probes.jsonl"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(cfg_path, ["data.eval=mine/eval.jsonl"])
    project = tmp_path / "project"
    assert cfg.data.train == str(project / "data" / "train.jsonl")
    assert cfg.data.system_prompt_file == str(tmp_path / "prompts" / "sys.txt")  # normalised, no '..'
    assert cfg.eval.probes == str(project / "probes.jsonl")
    assert cfg.data.eval == str(elsewhere / "mine" / "eval.jsonl")  # an override: from the current folder
    assert cfg.output_dir == str(project / "run") and cfg.model.name_or_path == str(tiny_ckpt)  # unchanged
    # A run directory's config.yaml holds absolute paths: it reads the same files from any folder.
    saved = tmp_path / "saved.yaml"
    saved.write_text(dump_config(cfg))
    monkeypatch.chdir(tmp_path)
    assert load_config(saved) == load_config(saved, paths_from_file=False)
    assert load_config(saved).data == cfg.data and load_config(saved).eval == cfg.eval
    # An older run's config.yaml (paths relative to where `train` ran) is read from the current folder.
    old = project / "old.yaml"
    old.write_text("data: {train: data/train.jsonl}\n")
    monkeypatch.chdir(project)
    assert load_config(old, paths_from_file=False).data.train == str(project / "data" / "train.jsonl")


def test_a_config_trains_from_any_folder(tmp_path, tiny_ckpt, monkeypatch, capsys):
    """The relative data paths of a config outside the current folder are found; config.yaml stores them absolute."""
    cfg = _config(tmp_path / "project", tiny_ckpt, data={"eval": "data/eval.jsonl"})
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert main(["train", str(cfg), "--no-eval"]) == 0, capsys.readouterr().err
    saved = yaml.safe_load((tmp_path / "project" / "run" / "config.yaml").read_text())
    assert saved["data"]["train"] == str(tmp_path / "project" / "data" / "train.jsonl")
    assert saved["data"]["eval"] == str(tmp_path / "project" / "data" / "eval.jsonl")


# ------------------------------------------------------------------ c. inputs checked up front --

def test_every_missing_input_is_listed_before_anything_is_loaded(tmp_path, tiny_ckpt, capsys, monkeypatch):
    import alignkit.train.run as run_mod

    def boom(*a, **k):
        raise AssertionError("loaded something before checking the inputs")

    monkeypatch.setattr(run_mod, "load_tokenizer", boom)
    monkeypatch.setattr(run_mod, "load_model", boom)
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, tiny_ckpt, data={"eval": "data/nope_eval.jsonl", "system_prompt_file": "sys.txt"},
                  eval={"probes": "gone/probes.jsonl"})
    assert main(["train", str(cfg), "model.name_or_path=./no-model"]) == 2
    err = capsys.readouterr().err
    assert f"error: {cfg}: 4 inputs not found:" in err, err
    for line in (f"data.eval: file not found: {tmp_path / 'data' / 'nope_eval.jsonl'}",
                 f"data.system_prompt_file: file not found: {tmp_path / 'sys.txt'}",
                 f"eval.probes: file not found: {tmp_path / 'gone' / 'probes.jsonl'}",
                 "model.name_or_path: directory not found: ./no-model"):
        assert line in err, line
    assert "data.train" not in err  # it exists
    assert not (tmp_path / "run").exists()


def test_probes_are_not_required_when_the_run_is_not_evaluated(tmp_path, tiny_ckpt):
    cfg = load_config(_config(tmp_path, tiny_ckpt, eval={"probes": "gone.jsonl"}))
    check_inputs(cfg, train=True, evaluate=False)  # --no-eval: the probes are never read
    with pytest.raises(UserError, match="eval.probes: file not found"):
        check_inputs(cfg, train=True, evaluate=True)


def test_online_reward_run_and_judges_are_checked(tmp_path, tiny_ckpt):
    cfg = load_config(_config(tmp_path, tiny_ckpt), ["method=grpo", "train.reward_model=runs/reward",
                                                     "train.gold_judge=taskapi"])
    with pytest.raises(UserError) as err:
        check_inputs(cfg)
    text = str(err.value)
    assert "train.reward_model: run directory not found: runs/reward" in text
    assert "train.gold_judge: unknown judge 'taskapi'" in text and "task_api" in text
    ok = load_config(_config(tmp_path, tiny_ckpt), ["method=grpo", "train.reward_model=task_api",
                                                    "train.gold_judge=tinymodels:word_share_reward"])
    check_inputs(ok)


def test_path_fields_are_the_files_the_checks_cover(tmp_path, tiny_ckpt):
    """Every field that is resolved from the config's folder is also checked for existence."""
    cfg_path = _config(tmp_path, tiny_ckpt)
    raw = yaml.safe_load(cfg_path.read_text())
    for dotted in PATH_FIELDS:
        section, field = dotted.split(".")
        raw.setdefault(section, {})[field] = f"missing-{field}.txt"
    cfg_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as err:
        check_inputs(load_config(cfg_path), train=True, evaluate=True)
    for dotted in PATH_FIELDS:
        assert f"{dotted}: file not found: {tmp_path}/missing-" in str(err.value), dotted


# ------------------------------------------------------------ d. status reflects the evaluation --

def test_failed_evaluation_is_not_done_keeps_final_and_can_be_rerun(tmp_path, tiny_ckpt, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    probes = _probes(tmp_path / "probes.jsonl", category="total")  # exists, but a reserved category name
    cfg = _config(tmp_path, tiny_ckpt, data={"eval": "data/eval.jsonl"}, eval={"probes": "probes.jsonl"})
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    run = tmp_path / "run"
    assert "training finished, but the evaluation failed" in err and f"{probes}:1" in err
    assert f"alignkit eval {run}" in err and str(run / "final") in err
    info = _status(run)
    assert info["status"] == "eval_failed" and "category" in info["eval_error"]
    assert (run / "final" / "adapter_model.safetensors").is_file() and not (run / "metrics.json").exists()
    _probes(probes)  # fixed
    assert main(["eval", str(run)]) == 0
    info = _status(run)
    assert info["status"] == "done" and info["eval_error"] is None and info["evaluation"] == "done"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["status"] == "done" and len(metrics["examples"]) == 2


def test_a_crash_in_the_evaluation_marks_the_run_and_says_how_to_rerun(tmp_path, tiny_ckpt, capsys, monkeypatch):
    import alignkit.eval.runner as runner

    def crash(run, **kw):
        raise RuntimeError("boom in generation")

    monkeypatch.setattr(runner, "evaluate_run", crash)
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, tiny_ckpt, data={"eval": "data/eval.jsonl"})
    with pytest.raises(RuntimeError, match="boom"):
        main(["train", str(cfg)])
    err = capsys.readouterr().err
    assert f"alignkit eval {tmp_path / 'run'}" in err
    info = _status(tmp_path / "run")
    assert info["status"] == "eval_failed" and info["eval_error"] == "RuntimeError: boom in generation"
    assert (tmp_path / "run" / "final").is_dir()


def test_status_is_trained_until_the_evaluation_ran(tmp_path, tiny_ckpt):
    from alignkit.eval.runner import evaluate_run
    from alignkit.train.run import train

    cfg = load_config(_config(tmp_path, tiny_ckpt, data={"eval": "data/eval.jsonl"}))
    run = train(cfg, evaluate_after=True, console=lambda *_: None)
    assert _status(run)["status"] == "trained"
    evaluate_run(run, console=lambda *_: None)
    assert _status(run)["status"] == "done"
    other = train(cfg.model_copy(update={"output_dir": str(tmp_path / "plain")}), console=lambda *_: None)
    assert _status(other)["status"] == "done"  # nobody evaluates it next: done as before


# ------------------------------------------------------------------- e. evaluation without probes --

def test_without_probes_only_the_held_out_pairs_are_scored(tmp_path, tiny_ckpt, capsys, monkeypatch):
    import alignkit.eval.runner as runner

    monkeypatch.setattr(runner, "generate", lambda *a, **k: pytest.fail("generated without probes"))
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, tiny_ckpt, data={"eval": "data/eval.jsonl"})
    assert main(["train", str(cfg)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "scoring the held-out pairs only" in out
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    after = metrics["after"]
    assert after["n/pairs"] == 3 and after["reward_accuracy"] is not None
    for key in ("refusal_rate/harmful", "over_refusal/benign", "task_valid/benign", "response_length", "kl"):
        assert after[key] is None, key
    assert metrics["examples"] == [] and _status(run)["status"] == "done"
    findings = {f["name"] for f in _diagnose(run)}
    assert not findings & {"under_refusal", "over_refusal", "task_regression"}, findings


def _diagnose(run: Path) -> list[dict]:
    from alignkit.eval.diagnose import diagnose

    return [f.to_dict() for f in diagnose(run)]


def test_nothing_to_evaluate_is_skipped_and_said(tmp_path, tiny_ckpt, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, tiny_ckpt, data={"eval_fraction": 0.0})
    assert main(["train", str(cfg)]) == 0, capsys.readouterr().err
    assert "evaluation skipped: no held-out pairs" in capsys.readouterr().out
    run = tmp_path / "run"
    info = _status(run)
    assert info["status"] == "done" and info["evaluation"].startswith("skipped")
    assert not (run / "metrics.json").exists() and (run / "final").is_dir()
