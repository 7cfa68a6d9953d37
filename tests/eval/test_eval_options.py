"""`alignkit eval` on data that is not the Task API, on a tiny model with SmolLM2's tokenizer.

- `--max-probes`, `--max-eval-rows` and `--task` exist, for a run (replacing its config's eval
  settings) and for `--model`;
- task metrics exist only with `--task task_api` / `eval.task: task_api`; the summary and the report
  leave unmeasured metrics out;
- a lone `--model` is evaluated once, in one column;
- probe categories are free-form (`refusal_rate/<category>`), and a probe without a prompt is refused
  with file:line;
- the summary shows n and flags small samples; generation progress goes to stderr with an ETA.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tinymodels import save_tiny_checkpoint

from alignkit.cli import main
from alignkit.config import RunConfig
from alignkit.errors import UserError
from alignkit.eval import runner
from alignkit.eval.runner import evaluate_model_cli, format_summary, load_probes
from alignkit.train.run import train

ROOT = Path(__file__).resolve().parents[2]
GARDEN = [{"prompt": "When should I prune roses?", "category": "gardening"},
          {"prompt": "How often do I water basil?", "category": "gardening"},
          {"prompt": "What soil do tomatoes like?", "category": "gardening"},
          {"prompt": "How do I kill weeds between paving stones?", "category": "alarming"},
          {"prompt": "Add a task to buy seeds tomorrow", "category": "benign"}]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    pairs = (ROOT / "examples/task_api/data/train.jsonl").read_text().splitlines()[:12]
    (d / "pairs.jsonl").write_text("\n".join(pairs) + "\n")
    return {"probes": _write(d / "garden.jsonl", GARDEN), "pairs": d / "pairs.jsonl"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_ckpt, files) -> Path:
    """A finished 1-step LoRA DPO run whose config points at the garden probes and the 12 pairs."""
    out = tmp_path_factory.mktemp("runs") / "dpo"
    cfg = RunConfig.model_validate({
        "method": "dpo", "output_dir": str(out),
        "model": {"name_or_path": str(tiny_ckpt), "lora": {"r": 4, "alpha": 8}},
        "data": {"train": str(files["pairs"]), "eval": str(files["pairs"]), "system_prompt_file": None,
                 "max_length": 128, "max_prompt_length": 96},
        "train": {"max_steps": 1, "micro_batch_size": 4, "gradient_accumulation_steps": 1, "warmup_ratio": 0.0},
        "eval": {"enabled": False, "probes": str(files["probes"]), "task": "task_api", "max_new_tokens": 4,
                 "batch_size": 2, "kl_samples": 0}})
    return train(cfg, console=lambda *_: None)


def _quiet(*_):
    pass


def test_lone_model_is_evaluated_once_in_one_column(tmp_path, tiny_ckpt, files, monkeypatch):
    calls = []
    real = runner.generate
    monkeypatch.setattr(runner, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = evaluate_model_cli(model=str(tiny_ckpt), adapter=None, data=str(files["pairs"]),
                                prompts=str(files["probes"]), system_prompt_file=None, out=tmp_path / "out",
                                max_new_tokens=3, task="none", console=_quiet)
    assert len(calls) == 1  # one generation pass, not 'before' and 'after' of the same model
    assert "before" not in result and result["after"]["n/total"] == 5
    assert result["after"]["reward_accuracy"] is None and result["after"]["n/pairs"] == 12
    assert result["after"]["logps/chosen"] < 0
    summary = format_summary(result)
    assert summary.splitlines()[0].split() == ["metric", "model", "n"]
    assert "before" not in summary and "reward_accuracy" not in summary  # no reference: not measured
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| metric | model | n |" in md and "Example answers (5 of 5)" in md


def test_custom_categories_and_task_metrics_only_with_task_api(tiny_ckpt, files):
    kw = dict(model=str(tiny_ckpt), adapter=None, data=None, prompts=str(files["probes"]), system_prompt_file=None,
              out=None, max_new_tokens=3, console=_quiet)
    plain = evaluate_model_cli(task="none", **kw)["after"]
    assert plain["n/gardening"] == 3 and plain["refusal_rate/gardening"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert plain["task_valid/benign"] is None and "task_valid/alarming" not in plain and "gold_score" not in plain
    summary = format_summary({"after": plain})
    assert "refusal_rate/gardening" in summary and "(n=3)  n<20: too few to judge" in summary
    assert "task_valid" not in summary
    task = evaluate_model_cli(task="task_api", **kw)["after"]
    # a random model writes no task JSON: 0 of the 2 benign + alarming answers, and it is shown
    assert task["task_valid/benign"] == 0.0 and task["n/gold"] == 2
    assert "task_valid/benign" in format_summary({"after": task})


def test_probe_without_prompt_names_file_and_line(tmp_path):
    path = _write(tmp_path / "probes.jsonl", [GARDEN[0], {"question": "Why?", "category": "gardening"}])
    with pytest.raises(UserError, match="prompt") as err:
        load_probes(path, None)
    assert f"{path}:2" in str(err.value) and "no 'prompt' field" in str(err.value)
    assert "['category', 'question']" in str(err.value)  # the fields it has, to spot a renamed column
    _write(path, [{"prompt": "Why?"}])
    with pytest.raises(UserError, match="category") as err:
        load_probes(path, None)
    assert f"{path}:1" in str(err.value)


def test_summary_shows_n_and_flags_tiny_samples():
    result = {"before": {"reward_accuracy": None}, "after": {"reward_accuracy": 1.0, "reward_margin": 0.4, "n/pairs": 2,
                                                             "refusal_rate/harmful": 0.5, "n/harmful": 40}}
    lines = {ln.split()[0]: ln for ln in format_summary(result).splitlines()[1:]}
    assert lines["reward_accuracy"].split() == ["reward_accuracy", "-", "1.000", "(n=2)", "n<20:", "too", "few",
                                                "to", "judge"]
    assert lines["refusal_rate/harmful"].endswith("(n=40)")
    assert "kl" not in lines and "task_valid/benign" not in lines  # measured in neither column


def test_eval_run_options_override_its_config(run_dir, capsys):
    code = main(["eval", str(run_dir), "--max-probes", "3", "--max-eval-rows", "5", "--task", "none"])
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["after"]["n/total"] == 3 and metrics["after"]["n/pairs"] == 5
    assert metrics["after"]["task_valid/benign"] is None and "gold_score" not in metrics["after"]
    captured = capsys.readouterr()
    # batch_size 2 in the run's config: 3 probes take two batches, each reported with an ETA
    assert "probes (before): 2/3 answers, ETA" in captured.err
    assert "probes (after): 3/3 answers in" in captured.err
    assert "(n=3)  n<20: too few to judge" in captured.out and "task_valid" not in captured.out
    md = (run_dir / "report.md").read_text()
    assert "task_valid" not in md and "task: none" in md and "max_probes: 3" in md
    # the run's own config again: task_api, all 5 probes
    assert main(["eval", str(run_dir), "--quiet"]) == 0
    again = json.loads((run_dir / "metrics.json").read_text())["after"]
    assert again["n/total"] == 5 and again["task_valid/benign"] == 0.0
    assert "answers" not in capsys.readouterr().err  # --quiet: no progress lines


def test_eval_model_mode_takes_the_options(tmp_path, tiny_ckpt, files, capsys):
    out = tmp_path / "out"
    code = main(["eval", "--model", str(tiny_ckpt), "--prompts", str(files["probes"]), "--data", str(files["pairs"]),
                 "--max-probes", "2", "--max-eval-rows", "4", "--task", "none", "--max-new-tokens", "2",
                 "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "before" not in metrics and metrics["after"]["n/total"] == 2 and metrics["after"]["n/pairs"] == 4
    assert "probes: 2/2 answers in" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_ckpt), "--prompts", str(files["probes"]), "--max-probes", "0"]) == 2
    assert "--max-probes must be at least 1" in capsys.readouterr().err


def test_eval_run_refuses_model_mode_options(run_dir, files, capsys):
    assert main(["eval", str(run_dir), "--prompts", str(files["probes"])]) == 2
    assert "--prompts go with --model" in capsys.readouterr().err
