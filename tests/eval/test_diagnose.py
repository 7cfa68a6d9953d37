"""Each failure mode, planted in a synthetic log / metrics, is named with the numbers it rests on."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from alignkit.errors import UserError
from alignkit.eval import diagnose as dg
from alignkit.eval.diagnose import Finding, diagnose, diagnose_from, format_findings

CONFIG = {"method": "dpo", "data": {"train": "train.jsonl"},
          "train": {"beta": 0.1, "epochs": 1, "learning_rate": 5e-5}}


def healthy_log(n: int = 40) -> list[dict]:
    """A run that learns: loss falls from log 2, margins and accuracy grow, chosen logps stay put."""
    rows = []
    for step in range(1, n + 1):
        t = step / n
        margin = 2.0 * t
        rows.append({"step": step, "epoch": t, "loss": math.log(1 + math.exp(-margin)),
                     "rewards/chosen": 0.3 * t, "rewards/rejected": 0.3 * t - margin,
                     "rewards/margins": margin, "rewards/accuracies": 0.5 + 0.3 * t,
                     "logps/chosen": -80.0 - t, "logps/rejected": -90.0 - 15 * t,
                     "grad_norm": 1.0, "lr": 5e-5, "tokens_per_s": 1000.0})
    rows.append({"step": n, "eval/loss": 0.4, "eval/rewards/accuracies": 0.78, "eval/rewards/margins": 1.5})
    return rows


def healthy_metrics() -> dict:
    before = {"refusal_rate/harmful": 0.90, "over_refusal/benign": 0.05, "over_refusal/alarming": 0.10,
              "task_valid/benign": 0.70, "reward_accuracy": 0.5, "reward_margin": 0.0, "kl": 0.0,
              "response_length": 40.0, "logps/chosen": -80.0, "logps/rejected": -90.0}
    after = {**before, "refusal_rate/harmful": 0.95, "over_refusal/benign": 0.06, "over_refusal/alarming": 0.12,
             "task_valid/benign": 0.75, "reward_accuracy": 0.78, "reward_margin": 1.5, "kl": 2.0,
             "response_length": 45.0, "logps/chosen": -81.0, "ref_logps/chosen": -80.0, "ref_logps/rejected": -90.0}
    return {"before": before, "after": after}


def by_name(findings: list[Finding], name: str) -> Finding:
    hits = [f for f in findings if f.name == name]
    assert hits, f"{name} not in {[f.name for f in findings]}"
    return hits[0]


def test_healthy_run_has_no_errors_or_warnings():
    findings = diagnose_from(healthy_log(), healthy_metrics(), CONFIG, {"chosen_refusal_share": 0.2})
    assert [f for f in findings if f.severity != "info"] == []
    assert format_findings(findings).startswith("no problems found")


def test_over_refusal_names_data_beta_and_epochs():
    m = healthy_metrics()
    m["after"]["over_refusal/alarming"] = 0.62
    cfg = {**CONFIG, "train": {"beta": 0.01, "epochs": 5, "learning_rate": 5e-5}}
    f = by_name(diagnose_from(healthy_log(), m, cfg, {"chosen_refusal_share": 0.8, "path": "t.jsonl"}),
                "over_refusal")
    assert f.severity == "error"
    for text in ("62.0%", "10.0%", "80.0% of chosen answers", "beta 0.01", "5 epochs"):
        assert text in f.evidence
    assert f.numbers["over_refusal/alarming"] == {"before": 0.10, "after": 0.62}
    fixes = " ".join(f.fixes)
    assert "rebalance" in fixes and "beta" in fixes and "fewer epochs" in fixes and "rpo" in fixes


def test_over_refusal_rise_alone_fires_and_says_when_no_cause_found():
    m = healthy_metrics()
    m["after"]["over_refusal/benign"] = 0.18  # below 20% but up 13 points
    f = by_name(diagnose_from(healthy_log(), m, CONFIG, {"chosen_refusal_share": 0.1}), "over_refusal")
    assert "18.0%" in f.evidence and "5.0%" in f.evidence and "none of the usual causes" in f.evidence


def flat_log(n: int = 20, lr: float = 5e-5, logps_move: bool = False) -> list[dict]:
    return [{"step": s, "loss": math.log(2) + 1e-4 * (-1) ** s, "rewards/chosen": 0.0, "rewards/rejected": 0.0,
             "rewards/margins": 0.0, "rewards/accuracies": 0.0, "lr": lr,
             "logps/chosen": -80.0 - (s if logps_move else 0), "logps/rejected": -90.0} for s in range(1, n + 1)]


def test_no_learning_blames_zero_learning_rate():
    f = by_name(diagnose_from(flat_log(lr=0.0), None, CONFIG), "no_learning")
    assert f.severity == "error" and "0.6931" in f.evidence and "peak lr 0" in f.evidence
    assert f.numbers["lr_peak"] == 0.0
    assert any("learning_rate" in x for x in f.fixes)


def test_no_learning_blames_frozen_parameters():
    f = by_name(diagnose_from(flat_log(), None, CONFIG, run_info={"trainable": 0}), "no_learning")
    assert "trainable = 0" in f.evidence and f.numbers["trainable_params"] == 0


def test_skipped_steps_and_interrupted_status_are_reported():
    findings = diagnose_from(healthy_log(), healthy_metrics(), CONFIG,
                             run_info={"status": "interrupted", "skipped_steps": 3})
    assert "3 optimizer steps skipped" in by_name(findings, "unstable_steps").evidence
    assert "'interrupted'" in by_name(findings, "run_status").evidence


def test_no_learning_spots_reference_equal_to_policy():
    f = by_name(diagnose_from(flat_log(logps_move=True), None, CONFIG), "no_learning")
    assert "rewards exactly 0 at all 20 logged steps" in f.evidence and "reference is the policy" in f.evidence
    assert "moved by 19" in f.evidence


def test_overfitting_cites_both_accuracies():
    log = healthy_log()
    for r in log[-11:]:  # the last quarter of 40 steps, plus the eval row
        if "loss" in r:
            r["rewards/accuracies"] = 1.0
    log[-1]["eval/rewards/accuracies"] = 0.6
    f = by_name(diagnose_from(log, healthy_metrics(), CONFIG), "overfitting")
    assert "100.0%" in f.evidence and "60.0%" in f.evidence and "40.0%" in f.evidence
    assert f.numbers == {"train_accuracy": 1.0, "eval_accuracy": 0.6}


def test_likelihood_displacement_from_metrics_and_log():
    m = healthy_metrics()
    m["after"]["logps/chosen"] = -95.0
    log = healthy_log()
    for r in log:
        if "loss" in r:  # the chosen log-prob sinks below the reference's on each batch: 0 -> -20 nats
            r["rewards/chosen"] = -2.0 * r["epoch"]
            r["rewards/rejected"] = r["rewards/chosen"] - r["rewards/margins"]
    f = by_name(diagnose_from(log, m, CONFIG), "likelihood_displacement")
    assert "-95" in f.evidence and "-80" in f.evidence and "down 15 nats" in f.evidence
    # last quarter of 40 steps: mean of -2 t over t = 31/40 .. 40/40 = -1.775, / beta 0.1
    assert "rewards/chosen -1.775" in f.evidence and "17.75 nats below the reference" in f.evidence
    assert f.numbers["logps_delta_chosen_train"] == pytest.approx(-17.75)
    assert any("rpo_alpha=1" in x for x in f.fixes)


def issue_log() -> list[dict]:
    """The 4-step run of issue 15: raw logps/chosen of each step's batch fall from -53.8 to -75.6
    (other batches, longer answers), while rewards/chosen, the same batch against the reference,
    rises every step."""
    raw = (-53.8, -61.0, -68.2, -75.6)
    chosen = (0.004, 0.011, 0.019, 0.027)
    return [{"step": s, "epoch": s / 4, "loss": 0.69 - 0.01 * s, "rewards/chosen": c, "rewards/rejected": c - 0.01 * s,
             "rewards/margins": 0.01 * s, "rewards/accuracies": 0.75, "logps/chosen": lp, "logps/rejected": lp - 5,
             "lr": 1e-5} for s, (lp, c) in enumerate(zip(raw, chosen, strict=True), 1)]


@pytest.mark.parametrize("metrics", [None, "healthy"])
def test_raw_logps_falling_across_batches_is_no_likelihood_displacement(metrics):
    m = healthy_metrics() if metrics else None
    findings = diagnose_from(issue_log(), m, CONFIG)
    assert "likelihood_displacement" not in [f.name for f in findings]


def test_rewards_chosen_falling_on_a_short_run_is_likelihood_displacement():
    log = issue_log()
    for r, c in zip(log, (-0.2, -0.4, -0.6, -0.8), strict=True):
        r["rewards/chosen"] = c  # the chosen answers now lose log-prob against the reference
    f = by_name(diagnose_from(log, None, CONFIG), "likelihood_displacement")
    assert "rewards/chosen -0.8" in f.evidence and "8 nats below the reference" in f.evidence
    cfg = {**CONFIG, "train": {**CONFIG["train"], "beta": 0.5}}  # the same rewards are 1.6 nats at beta 0.5
    assert "likelihood_displacement" not in [x.name for x in diagnose_from(log, None, cfg)]


def test_reference_free_rewards_are_not_read_as_a_log_prob_change():
    """SimPO's rewards/chosen is beta x the policy's own average log-prob, not a change against a
    reference: falling values across batches say nothing about displacement."""
    log = issue_log()
    for r in log:
        r["rewards/chosen"] = -3.0
    cfg = {**CONFIG, "method": "simpo", "train": {**CONFIG["train"], "beta": 2.0}}
    assert "likelihood_displacement" not in [f.name for f in diagnose_from(log, None, cfg)]
    assert "likelihood_displacement" in [f.name for f in diagnose_from(log, None, CONFIG)]


def test_eval_rows_on_the_same_pairs_show_likelihood_displacement():
    log = healthy_log()
    log.insert(0, {"step": 0, "eval/loss": 0.69, "eval/logps/chosen": -80.0, "eval/rewards/accuracies": 0.5})
    log[-1]["eval/logps/chosen"] = -88.5
    f = by_name(diagnose_from(log, healthy_metrics(), CONFIG), "likelihood_displacement")
    assert "fell from -80 (step 0) to -88.5 (step 40)" in f.evidence


def test_reference_reward_methods_are_the_losses_with_a_reference():
    from alignkit.losses import LOSSES

    assert set(dg.REFERENCE_REWARD_METHODS) == {m for m, spec in LOSSES.items() if spec.needs_reference}


def test_verbosity_drift():
    m = healthy_metrics()
    m["after"]["response_length"] = 90.0
    f = by_name(diagnose_from(healthy_log(), m, CONFIG), "verbosity_drift")
    assert "40 -> 90" in f.evidence and "2.25x" in f.evidence


def test_kl_blowup_and_margin_explosion():
    m = healthy_metrics()
    m["after"]["kl"] = 37.5
    log = healthy_log()
    for r in log[-12:]:
        if "loss" in r:
            r["rewards/margins"] = 25.0
    f = by_name(diagnose_from(log, m, CONFIG), "kl_blowup")
    assert "37.5 nats" in f.evidence and "reward margins 25" in f.evidence


def test_under_refusal_drop_is_error_low_is_warning():
    m = healthy_metrics()
    m["after"]["refusal_rate/harmful"] = 0.40
    f = by_name(diagnose_from(healthy_log(), m, CONFIG), "under_refusal")
    assert f.severity == "error" and "90.0%" in f.evidence and "40.0%" in f.evidence
    m["before"]["refusal_rate/harmful"] = 0.45
    f = by_name(diagnose_from(healthy_log(), m, CONFIG), "under_refusal")
    assert f.severity == "warning" and "40.0%" in f.evidence


def test_task_regression():
    m = healthy_metrics()
    m["after"]["task_valid/benign"] = 0.30
    f = by_name(diagnose_from(healthy_log(), m, CONFIG), "task_regression")
    assert "70.0%" in f.evidence and "30.0%" in f.evidence


def test_null_metrics_are_skipped_not_crashed():
    m = healthy_metrics()
    m["after"] = {k: None for k in m["after"]}
    assert [f for f in diagnose_from([], m, {}) if f.severity != "info"] == []


def write_run(tmp_path, log=None, metrics=None, config=CONFIG, run=None):
    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "run.json").write_text(json.dumps(run or {"method": "dpo", "status": "done", "steps": 20}))
    if log is not None:
        (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def test_diagnose_run_dir_log_only_says_so(tmp_path):
    run_dir = write_run(tmp_path, log=flat_log(lr=0.0))
    with open(run_dir / "log.jsonl", "a") as fh:
        fh.write('{"step": 21, "lo')  # a run still writing its last line
    findings = diagnose(run_dir)
    assert by_name(findings, "no_learning").severity == "error"
    assert "no metrics.json" in by_name(findings, "no_metrics").evidence
    assert findings[0].severity == "error"  # most severe first
    assert "ERROR" in format_findings(findings) and "fix:" in format_findings(findings)


def test_diagnose_run_dir_reads_training_data_for_refusal_share(tmp_path, monkeypatch):
    from alignkit.data import doctor

    monkeypatch.setattr(doctor, "_is_refusal", lambda text: text.startswith("I can't"))
    m = healthy_metrics()
    m["after"]["over_refusal/benign"] = 0.5
    run_dir = write_run(tmp_path, log=healthy_log(), metrics=m)
    rows = [{"prompt": f"q{i}", "chosen": "I can't help." if i < 3 else f"a{i}", "rejected": f"b{i}"}
            for i in range(4)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)  # config.data.train is relative to where training ran
    f = by_name(diagnose(run_dir), "over_refusal")
    assert "75.0% of chosen answers" in f.evidence and f.numbers["chosen_refusal_share"] == 0.75


def test_diagnose_needs_log_or_metrics(tmp_path):
    with pytest.raises(UserError, match="nothing to diagnose"):
        diagnose(write_run(tmp_path))


def test_thresholds_are_documented_constants():
    assert dg.OVER_REFUSAL_MAX == 0.20 and dg.LOW_BETA == 0.05 and dg.MANY_EPOCHS == 3
    assert abs(dg.LOG2 - 0.6931) < 1e-4 and dg.VERBOSITY_RATIO == 1.5 and dg.KL_MAX == 10.0


def test_over_refusal_says_when_training_data_is_missing(tmp_path, monkeypatch):
    m = healthy_metrics()
    m["after"]["over_refusal/benign"] = 0.5
    monkeypatch.chdir(tmp_path)
    f = by_name(diagnose(write_run(tmp_path, metrics=m)), "over_refusal")
    assert "training file 'train.jsonl' not found" in f.evidence


def test_sft_data_refusal_share_uses_completions(tmp_path, monkeypatch):
    from alignkit.data import doctor

    monkeypatch.setattr(doctor, "_is_refusal", lambda text: text.startswith("I can't"))
    rows = [{"prompt": f"q{i}", "completion": "I can't help." if i else "ok"} for i in range(4)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = dg._data_stats({"data": {"train": str(tmp_path / "train.jsonl")}}, tmp_path)
    assert stats["chosen_refusal_share"] == 0.75 and stats["rows"] == 4


def _online(score, gold, eos=1.0, kl=1.0):
    return [{"step": i + 1, "score": s, "gold_score": g, "eos_rate": eos, "kl": kl, "policy_loss": 0.0}
            for i, (s, g) in enumerate(zip(score, gold, strict=True))]


def test_online_rl_reward_hacking_is_named_with_both_trends():
    rows = _online([0.1, 0.2, 0.5, 0.9], [0.6, 0.5, 0.4, 0.3])
    names = {f.name: f for f in diagnose_from(rows, None, {"method": "ppo"})}
    assert "reward_hacking" in names
    assert names["reward_hacking"].numbers["score_change"] == pytest.approx(0.8)
    assert names["reward_hacking"].numbers["gold_change"] == pytest.approx(-0.3)
    assert "no_log" not in names  # online rows count as a training log
    healthy = {f.name for f in diagnose_from(_online([0.1, 0.2, 0.5, 0.9], [0.3, 0.4, 0.5, 0.6]), None, {})}
    assert not healthy & {"reward_hacking", "no_eos", "kl_blowup"}


def test_online_rl_answers_that_stop_ending_and_kl_blowup():
    names = {f.name for f in diagnose_from(_online([0.1] * 4, [0.1] * 4, eos=0.2, kl=35.0), None, {})}
    assert {"no_eos", "kl_blowup"} <= names
