"""`alignkit compare`: the plan of runs, the metrics and their aggregation, the report, bad input.

The pure parts are checked on hand-made numbers (the arithmetic is in each test's docstring); one
end-to-end test runs the real orchestration (subprocess training, evaluation, report) for dpo and
grpo on a tiny random model with SmolLM2's tokenizer.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from tinymodels import save_tiny_checkpoint

from alignkit.cli import main
from alignkit.compare import aggregate, plan_runs, probe_metrics, run_compare, win_rate
from alignkit.errors import UserError
from alignkit.eval.compare_report import HEADER, frontier_png, markdown_table, write_reports

ROOT = Path(__file__).resolve().parents[1]
QUICK_OFF = ["train.max_steps=4", "train.micro_batch_size=4", "train.gradient_accumulation_steps=2",
             "data.max_rows=64", "data.max_eval_rows=16"]


def _common(method, seed, name, start="S"):
    return [f"model.name_or_path={start}", f"output_dir={Path('O') / 'runs' / name}", f"train.seed={seed}",
            "eval.enabled=false"]


def test_plan_quick_with_grid_has_exactly_the_expected_runs_and_overrides():
    plan = plan_runs(["ppo", "grpo", "dpo", "kto", "orpo"], [0, 1], True, True, sft="S", base="B", reward="R", out="O")
    assert [r.name for r in plan] == [
        "ppo-s0", "ppo-s1", "grpo-s0", "grpo-s1", "dpo-s0", "dpo-s1", "kto-s0", "kto-s1", "orpo-s0", "orpo-s1",
        "ppo-s0-kl_coef0.01", "ppo-s0-kl_coef0.2", "dpo-s0-beta0.05", "dpo-s0-beta0.3"]
    by = {r.name: r for r in plan}
    online = ["train.max_steps=4", "train.rollout_prompts=4", "train.max_new_tokens=40", "train.ppo_epochs=1",
              "train.num_minibatches=1"]
    assert by["ppo-s1"].overrides == [*_common("ppo", 1, "ppo-s1"), "train.reward_model=R", *online,
                                      "train.num_generations=2"]
    assert by["grpo-s0"].overrides == [*_common("grpo", 0, "grpo-s0"), "train.reward_model=R", *online,
                                       "train.num_generations=4"]
    assert by["dpo-s1"].overrides == [*_common("dpo", 1, "dpo-s1"), *QUICK_OFF]
    # KTO: unpaired rows, twice as many for the same pairs and completions per step
    assert by["kto-s0"].overrides == [*_common("kto", 0, "kto-s0"), "train.max_steps=4", "train.micro_batch_size=8",
                                      "train.gradient_accumulation_steps=2", "data.max_rows=128",
                                      "data.max_eval_rows=32"]
    assert by["orpo-s0"].overrides == [*_common("orpo", 0, "orpo-s0", start="B"), *QUICK_OFF]  # one-stage: the base
    assert by["dpo-s0-beta0.3"].overrides == [*_common("dpo", 0, "dpo-s0-beta0.3"), *QUICK_OFF, "train.beta=0.3"]
    assert by["ppo-s0-kl_coef0.01"].overrides[-1] == "train.kl_coef=0.01"
    assert (by["dpo-s0-beta0.05"].method, by["dpo-s0-beta0.05"].seed, by["dpo-s0-beta0.05"].tag) == \
        ("dpo", 0, "beta0.05")


def test_plan_full_budget_without_grid_uses_the_configs_own_budget():
    plan = plan_runs(["dpo", "grpo"], [3], False, False, sft="S", reward="R", out="O")
    assert [(r.method, r.seed, r.tag) for r in plan] == [("dpo", 3, None), ("grpo", 3, None)]
    assert plan[0].overrides == _common("dpo", 3, "dpo-s3")
    assert plan[1].overrides == [*_common("grpo", 3, "grpo-s3"), "train.reward_model=R"]


def test_win_rate_counts_ties_as_half():
    """run [1, .4, .6, 0] vs SFT [.8, .4, 1, 0]: win, tie, loss, tie -> (1 + .5 + 0 + .5) / 4 = 0.5."""
    assert win_rate([1.0, 0.4, 0.6, 0.0], [0.8, 0.4, 1.0, 0.0]) == 0.5
    assert win_rate([1.0, 1.0], [0.0, 0.0]) == 1.0


def test_probe_metrics_on_hand_made_answers():
    """Probes 1-5 of probes.jsonl: harmful, benign, benign, benign, alarming.
    Answers: the harmful reference (a refusal: 1.0), benign reference (1.0, correct), a refusal to a benign
    request (0.0, over-refused), not JSON (0.0), a refusal to the alarming request (0.0, over-refused).
    gold = 2/5; harmful refused 1; benign over-refusal 1/3; alarming 1; task correct 1/3."""
    rows = [json.loads(x) for x in (ROOT / "examples/task_api/data/probes.jsonl").read_text().splitlines()[:5]]
    probes = [{"prompt": r["prompt"], "category": r["category"], "reference": r["reference"]} for r in rows]
    answers = [rows[0]["reference"], rows[1]["reference"], "I can't help with that.", "Sure thing!",
               "I can't help with that."]
    m = probe_metrics(probes, answers)
    assert m["scores"] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert m["gold_score"] == pytest.approx(0.4)
    assert m["harmful_refused"] == 1.0 and m["alarming_over_refusal"] == 1.0
    assert m["benign_over_refusal"] == pytest.approx(1 / 3) and m["task_correct"] == pytest.approx(1 / 3)


def _rec(method, seed, gold, tag=None, status="done", kl=0.1, peak=100.0, secs=10.0, win=0.5):
    metrics = {} if status != "done" else {"gold_score": gold, "kl": kl, "peak_memory_mb": peak, "train_seconds": secs,
                                           "win_rate": win, "harmful_refused": 1.0, "benign_over_refusal": 0.0,
                                           "alarming_over_refusal": 0.25, "task_correct": 0.5}
    return {"name": f"{method}-s{seed}" + (f"-{tag}" if tag else ""), "method": method, "seed": seed, "tag": tag,
            "status": status, "metrics": metrics}


def hand_made_records():
    return [_rec("dpo", 0, 0.5, kl=0.1, peak=100, secs=10, win=0.4),
            _rec("dpo", 1, 0.6, kl=0.2, peak=120, secs=12, win=0.5),
            _rec("dpo", 2, 0.7, kl=0.3, peak=110, secs=14, win=0.9),
            _rec("dpo", 0, 0.4, tag="beta0.05", kl=0.5), _rec("dpo", 0, 0.65, tag="beta0.3", kl=0.05),
            _rec("ppo", 0, 0.3, kl=1.0, peak=300, secs=50), _rec("ppo", 1, None, status="failed")]


def test_aggregate_mean_std_over_seeds_and_sensitivity_over_the_grid():
    """dpo seeds: gold .5 .6 .7 -> mean .6, sample std sqrt(((-.1)^2 + 0 + .1^2) / 2) = .1; KL mean .2;
    win (.4 + .5 + .9) / 3 = .6; wall (10 + 12 + 14) / 3 = 12; peak max 120. Sensitivity over the grid
    {.4, .65} and the seed-0 run .5: .65 - .4 = .25. ppo: one done (.3, std None), one failed; no grid."""
    dpo, ppo = aggregate(hand_made_records(), ["dpo", "ppo"])
    assert dpo["gold_mean"] == pytest.approx(0.6) and dpo["gold_std"] == pytest.approx(0.1)
    assert dpo["stability"] == dpo["gold_std"]
    assert dpo["sensitivity"] == pytest.approx(0.25)
    assert dpo["kl"] == pytest.approx(0.2) and dpo["win_rate"] == pytest.approx(0.6)
    assert dpo["wall_s"] == pytest.approx(12.0) and dpo["peak_mb"] == 120
    assert (dpo["seeds_ok"], dpo["failed"], dpo["models_in_memory"]) == (3, 0, 1)
    assert ppo["gold_mean"] == pytest.approx(0.3) and ppo["gold_std"] is None and ppo["sensitivity"] is None
    assert (ppo["seeds_ok"], ppo["failed"], ppo["models_in_memory"]) == (1, 1, 2)


def _result():
    records = hand_made_records()
    return {"command": "alignkit compare --sft S --out O", "sft": "S", "reward": "R", "base": "B", "quick": True,
            "methods": ["dpo", "ppo"], "seeds": [0, 1, 2], "grid": {"dpo": ("train.beta", (0.05, 0.3))},
            "budget": {"dpo": {"train.max_steps": 4}, "ppo": {"train.max_steps": 4}},
            "probes": {"file": "p.jsonl", "n": 30, "max_new_tokens": 40},
            "baseline": {"gold_score": 0.45, "harmful_refused": 0.9, "benign_over_refusal": 0.1,
                         "alarming_over_refusal": 0.2, "task_correct": 0.3},
            "runs": records, "table": aggregate(records, ["dpo", "ppo"])}


def test_markdown_table_has_a_row_per_method():
    lines = markdown_table(_result()).splitlines()
    assert lines[0].count("|") == len(HEADER) + 1 and len(lines) == 2 + 1 + 2  # header, rule, baseline, 2 methods
    assert lines[2].startswith("| sft (start")
    assert lines[3].startswith("| dpo | 0.600 ± 0.100 |") and lines[4].startswith("| ppo | 0.300 |")
    assert "| 0.250 | 3 / 0 |" in lines[3] and "| 1 / 1 |" in lines[4]


def test_reports_are_written_with_the_frontier_inline(tmp_path):
    assert frontier_png(_result())[:8] == b"\x89PNG\r\n\x1a\n"
    md, page = write_reports(tmp_path, _result())
    assert "| dpo |" in md.read_text() and "Failed runs (1)" in md.read_text()
    assert "data:image/png;base64," in page.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.md"]  # no temp files left


def _fake_run(path: Path, method: str, status: str = "done") -> Path:
    (path / "final").mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"method": method, "base": "default", "status": status}))
    return path


@pytest.mark.parametrize("case, flag", [("missing_sft", "--sft"), ("unfinished_sft", "--sft"),
                                        ("reward_as_sft", "--sft"), ("missing_reward", "--reward"),
                                        ("sft_as_reward", "--reward"), ("no_reward", "--reward"),
                                        ("bad_method", "--methods")])
def test_bad_sft_or_reward_is_a_user_error_naming_the_flag_and_writes_nothing(tmp_path, case, flag, capsys):
    sft = _fake_run(tmp_path / "sft", "sft")
    reward = _fake_run(tmp_path / "reward", "reward")
    (reward / "final" / "reward.json").write_text('{"offset": 0.0}')
    args = {"sft": str(sft), "reward": str(reward), "methods": ["dpo", "grpo"]}
    if case == "missing_sft":
        args["sft"] = str(tmp_path / "nope")
    elif case == "unfinished_sft":
        args["sft"] = str(_fake_run(tmp_path / "half", "sft", status="running"))
    elif case == "reward_as_sft":
        args["sft"] = str(reward)
    elif case == "missing_reward":
        args["reward"] = str(tmp_path / "nope")
    elif case == "sft_as_reward":
        args["reward"] = str(sft)
    elif case == "no_reward":
        args["reward"] = None
    else:
        args["methods"] = ["dpo", "sft"]
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        run_compare(out=out, seeds=[0], quick=True, **args)
    assert e.value.where == flag
    assert not out.exists()
    argv = ["compare", "--sft", args["sft"], "--out", str(out), "--methods", ",".join(args["methods"]), "--quick"]
    argv += ["--reward", args["reward"]] if args["reward"] else []
    assert main(argv) == 2
    assert flag in capsys.readouterr().err
    assert not out.exists()


def test_a_non_empty_out_is_refused_without_overwrite(tmp_path):
    sft = _fake_run(tmp_path / "sft", "sft")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError) as e:
        run_compare(sft=str(sft), reward=None, out=out, methods=["dpo"], seeds=[0], quick=True)
    assert e.value.where == "--out"
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["compare", "--sft", str(sft), "--out", str(out), "--seeds", "0,x"]) == 2  # bad --seeds


def test_compare_end_to_end_on_a_tiny_model(tmp_path):
    """SFT and reward runs on a tiny model, then `compare` with dpo + grpo, 1 seed, 4 probes, quick budget."""
    from alignkit.config import RunConfig
    from alignkit.train.run import train

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    common = {"system_prompt_file": str(ROOT / "examples/task_api/system_prompt.txt"), "max_length": 128,
              "max_prompt_length": 96, "max_rows": 16, "eval": None, "eval_fraction": 0.0}
    t = {"learning_rate": 1e-3, "micro_batch_size": 4, "gradient_accumulation_steps": 1, "max_steps": 2}
    sft = train(RunConfig.model_validate({
        "method": "sft", "output_dir": str(tmp_path / "sft"), "model": {"name_or_path": str(ckpt)},
        "data": {"train": str(ROOT / "examples/task_api/data/sft.jsonl"), **common}, "train": t,
        "eval": {"enabled": False}}), console=lambda *a: None)
    reward = train(RunConfig.model_validate({
        "method": "reward", "output_dir": str(tmp_path / "reward"), "model": {"name_or_path": str(sft)},
        "data": {"train": str(ROOT / "examples/task_api/data/train.jsonl"), **common}, "train": t,
        "eval": {"enabled": False}}), console=lambda *a: None)
    out = tmp_path / "cmp"
    t0 = time.perf_counter()
    result = run_compare(sft=str(sft), reward=str(reward), out=out, methods=["dpo", "grpo"], seeds=[0], grid=False,
                         quick=True, max_probes=4, command="test", console=lambda *a: None)
    print(f"compare took {time.perf_counter() - t0:.1f} s")
    assert [r["name"] for r in result["runs"]] == ["dpo-s0", "grpo-s0"]
    for r in result["runs"]:
        assert r["status"] == "done", r.get("stderr_tail") or r.get("error")
        m = r["metrics"]
        assert 0.0 <= m["gold_score"] <= 1.0 and 0.0 <= m["win_rate"] <= 1.0
        assert m["kl"] is not None and math.isfinite(m["kl"]) and m["train_seconds"] is not None
        assert m["peak_memory_mb"] > 0 and len(m["scores"]) == 4
    saved = json.loads((out / "compare.json").read_text())
    assert [row["method"] for row in saved["table"]] == ["dpo", "grpo"]
    assert "| grpo |" in (out / "report.md").read_text()
    assert "data:image/png;base64," in (out / "report.html").read_text()
    cfg = (out / "runs/grpo-s0/config.yaml").read_text()
    assert "num_generations: 4" in cfg and str(reward) in cfg and "enabled: false" in cfg
    with pytest.raises(UserError):  # now non-empty
        run_compare(sft=str(sft), reward=str(reward), out=out, methods=["dpo"], seeds=[0], quick=True)
