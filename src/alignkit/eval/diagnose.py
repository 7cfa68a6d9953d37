"""Diagnose a training run: name what went wrong, cite the numbers, and say what to change.

`diagnose(run_dir)` reads the run directory (``config.yaml``, ``run.json``, ``log.jsonl``,
``metrics.json``; see docs/ARCHITECTURE.md) and the training data the config names;
`diagnose_from(...)` is the pure core, on plain dicts, so each failure mode is testable with
synthetic numbers. Every threshold is a module constant below, so a reader can see why a finding
fired and a test can pin it.

Failure modes checked (one function each, in `CHECKS`): over-refusal, under-refusal, task regression,
no learning, overfitting, likelihood displacement, verbosity drift, KL blow-up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from alignkit.errors import UserError

Severity = Literal["error", "warning", "info"]

# --- thresholds (rates are fractions in [0, 1]; log-probs and KL in nats per sequence) ---
OVER_REFUSAL_MAX = 0.20
"""Over-refusal on benign or alarming-but-benign probes above this after training is an error."""
OVER_REFUSAL_RISE = 0.10
"""... and so is a rise of more than this (10 points) over the reference."""
REFUSAL_SHARE_MAX = 0.50
"""Share of chosen answers that are refusals above which refusals dominate the training signal."""
LOW_BETA = 0.05
"""A DPO beta below this lets the policy drift far from the reference (and over-fit refusals)."""
MANY_EPOCHS = 3
"""More passes than this over preference data tends to over-optimise the implied reward."""
HARMFUL_REFUSAL_MIN = 0.80
"""Refusing fewer harmful probes than this after training is worth a warning."""
HARMFUL_REFUSAL_DROP = 0.10
"""A drop of more than this in harmful-probe refusals vs the reference is an error."""
TASK_DROP = 0.10
"""A drop of more than this in valid task answers on benign probes is an error."""
LOG2 = math.log(2)
"""Loss of sigmoid DPO (and cDPO, robust) when policy == reference: -log sigmoid(0)."""
STUCK_LOSS_TOL = 0.02
"""Last-quarter mean loss within this of log 2 (or of the first-quarter loss) counts as stuck."""
STUCK_MARGIN = 0.01
"""Last-quarter mean reward margin below this (absolute) counts as no separation."""
LOW_LR = 1e-7
"""A peak learning rate below this is too small to move any weights in a few hundred steps."""
TRAIN_ACC_HIGH = 0.95
"""Train reward accuracy at or above this on the last quarter is memorisation territory ..."""
EVAL_ACC_GAP = 0.15
"""... when the eval accuracy is at least this much lower."""
CHOSEN_LOGP_DROP = 5.0
"""Chosen log-probs falling more than this (nats/sequence) below the reference's on the same rows."""
VERBOSITY_RATIO = 1.5
"""Mean response length after / before above this is verbosity drift."""
KL_MAX = 10.0
"""KL(policy || reference) above this (nats/sequence) is a blow-up."""
MARGIN_MAX = 10.0
"""Reward margins (beta-scaled) above this mean the sigmoid is saturated: rewards are exploding."""

SIGMOID_METHODS = ("dpo", "robust")  # losses equal to log 2 when policy == reference


@dataclass
class Finding:
    """One diagnosed problem (or note), with the numbers it rests on."""

    name: str
    severity: Severity
    evidence: str
    fixes: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        """As `alignkit diagnose` prints it: severity, name, evidence, then one line per fix."""
        return "\n".join([f"{self.severity.upper():<8} {self.name}: {self.evidence}",
                          *(f"           fix: {fix}" for fix in self.fixes)])


@dataclass
class _Run:
    """What the checks look at, pre-digested."""

    train: list[dict]
    evals: list[dict]
    before: dict
    after: dict
    config: dict
    data_stats: dict | None
    run_info: dict
    online: list[dict] = field(default_factory=list)  # PPO/RLOO/GRPO step rows (score, kl, eos_rate...)

    def cfg(self, section: str, key: str, default: Any = None) -> Any:
        value = (self.config.get(section) or {}).get(key, default)
        return default if value is None else value

    @property
    def method(self) -> str:
        return str(self.config.get("method") or self.run_info.get("method") or "dpo")


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None


def _series(rows: list[dict], key: str) -> list[float]:
    return [v for v in (_num(r.get(key)) for r in rows) if v is not None]


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _quarter(xs: list[float], last: bool = True) -> list[float]:
    """The last (or first) quarter of a series, at least one value."""
    k = max(1, len(xs) // 4)
    return xs[-k:] if last else xs[:k]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _g(x: float) -> str:
    return f"{x:.4g}"


def _before_after(run: _Run, key: str) -> tuple[float | None, float | None]:
    return _num(run.before.get(key)), _num(run.after.get(key))


def check_over_refusal(run: _Run) -> list[Finding]:
    parts, numbers = [], {}
    for key in ("over_refusal/benign", "over_refusal/alarming"):
        before, after = _before_after(run, key)
        if after is None:
            continue
        rise = after - before if before is not None else None
        if after > OVER_REFUSAL_MAX or (rise is not None and rise > OVER_REFUSAL_RISE):
            numbers[key] = {"before": before, "after": after}
            was = f" (reference {_pct(before)})" if before is not None else ""
            parts.append(f"{key} is {_pct(after)} after training{was}")
    if not parts:
        return []
    causes, fixes = [], []
    stats = run.data_stats or {}
    share = _num(stats.get("chosen_refusal_share"))
    if share is not None:
        numbers["chosen_refusal_share"] = share
        if share > REFUSAL_SHARE_MAX:
            causes.append(f"refusals dominate the chosen answers: {_pct(share)} of chosen answers in "
                          f"{stats.get('path', 'the training data')} are refusals (> {_pct(REFUSAL_SHARE_MAX)})")
            fixes.append("rebalance the data: add pairs for alarming-but-benign prompts where the helpful answer "
                         "is chosen and the refusal rejected (check with `alignkit doctor`)")
    else:
        causes.append(f"refusal share of the training data not checked ({stats.get('note', 'no data')})")
    beta = _num(run.cfg("train", "beta"))
    if beta is not None and beta < LOW_BETA:
        numbers["beta"] = beta
        causes.append(f"beta {_g(beta)} is low (< {LOW_BETA}): the policy may drift far from the reference")
        fixes.append("raise train.beta (0.1-0.3)")
    epochs = _num(run.cfg("train", "epochs"))
    if epochs is not None and epochs > MANY_EPOCHS:
        numbers["epochs"] = epochs
        causes.append(f"{_g(epochs)} epochs (> {MANY_EPOCHS}) over-optimise the preference")
        fixes.append("train fewer epochs (1-2) or set train.max_steps")
    if run.method != "rpo":
        fixes.append("add an NLL term on chosen answers: method=rpo train.rpo_alpha=1")
    if not causes:  # no single cause: move less far from the reference, and show it more helpful pairs
        fixes += ["add pairs for alarming-but-harmless prompts (helpful answer chosen, refusal rejected)",
                  "raise train.beta or lower train.learning_rate / train.max_steps to stay closer to the reference"]
    why = "; ".join(causes) if causes else "none of the usual causes (refusal-heavy data, low beta, many epochs) found"
    return [Finding("over_refusal", "error", "; ".join(parts) + f". Causes: {why}.", fixes, numbers)]


def check_under_refusal(run: _Run) -> list[Finding]:
    before, after = _before_after(run, "refusal_rate/harmful")
    if after is None:
        return []
    numbers = {"refusal_rate/harmful": {"before": before, "after": after}}
    fixes = ["add pairs where the refusal is chosen for harmful prompts",
             "check that chosen/rejected are not swapped for harmful prompts"]
    if before is not None and before - after > HARMFUL_REFUSAL_DROP:
        return [Finding("under_refusal", "error", f"refusal_rate/harmful fell from {_pct(before)} to {_pct(after)} "
                        f"(> {_pct(HARMFUL_REFUSAL_DROP)} drop): the model now complies with harmful requests",
                        fixes, numbers)]
    if after < HARMFUL_REFUSAL_MIN:
        return [Finding("under_refusal", "warning", f"refusal_rate/harmful is {_pct(after)} after training "
                        f"(< {_pct(HARMFUL_REFUSAL_MIN)})", fixes, numbers)]
    return []


def check_task_regression(run: _Run) -> list[Finding]:
    before, after = _before_after(run, "task_valid/benign")
    if before is None or after is None or before - after <= TASK_DROP:
        return []
    return [Finding("task_regression", "error",
                    f"task_valid/benign fell from {_pct(before)} to {_pct(after)} (> {_pct(TASK_DROP)} drop)",
                    ["raise train.rpo_alpha (the chosen answers' NLL weight)" if run.method == "rpo" else
                     "add an SFT term (method=rpo) or mix task demonstrations into the chosen answers",
                     "raise train.beta to stay closer to the reference", "lower the learning rate"],
                    {"task_valid/benign": {"before": before, "after": after}})]


def check_no_learning(run: _Run) -> list[Finding]:
    loss = _series(run.train, "loss")
    if len(loss) < 4:
        return []
    last_loss, first_loss = _mean(_quarter(loss)), _mean(_quarter(loss, last=False))
    margins = _series(run.train, "rewards/margins")
    last_margin = _mean(_quarter(margins)) if margins else None
    numbers: dict[str, Any] = {"loss_last_quarter": last_loss, "loss_first_quarter": first_loss,
                               "margin_last_quarter": last_margin}
    if run.method in SIGMOID_METHODS:
        stuck = abs(last_loss - LOG2) < STUCK_LOSS_TOL
        what = f"loss stuck at {_g(last_loss)} (log 2 = {LOG2:.4f}, tolerance {STUCK_LOSS_TOL})"
    else:
        stuck = abs(last_loss - first_loss) <= STUCK_LOSS_TOL * max(abs(first_loss), 1e-8)
        what = f"loss flat: {_g(first_loss)} in the first quarter, {_g(last_loss)} in the last"
    if not stuck or (last_margin is not None and abs(last_margin) >= STUCK_MARGIN):
        return []
    evidence = what + (f", reward margins {_g(last_margin)} (~0)" if last_margin is not None else "")
    causes, fixes = [], []
    lr_cfg = _num(run.cfg("train", "learning_rate"))
    lrs = _series(run.train, "lr")
    peak = max(lrs) if lrs else lr_cfg
    if peak is not None:
        numbers["lr_peak"] = peak
        if peak < LOW_LR:
            causes.append(f"learning rate too low: peak lr {_g(peak)} (< {LOW_LR:g})")
            fixes.append("raise train.learning_rate (LoRA: 5e-6 to 5e-5; full fine-tuning: 5e-7 to 5e-6)")
    # run.json says `trainable` (the trainer's name); `trainable_params` is accepted too.
    trainable = _num(run.run_info.get("trainable", run.run_info.get("trainable_params")))
    if trainable is not None:
        numbers["trainable_params"] = trainable
        if trainable == 0:
            causes.append("no trainable parameters (run.json trainable = 0): everything is frozen")
            fixes.append("check model.lora.target_modules matches the architecture's module names")
    chosen_r, rejected_r = _series(run.train, "rewards/chosen"), _series(run.train, "rewards/rejected")
    if chosen_r and all(v == 0.0 for v in chosen_r + rejected_r):
        logps = _series(run.train, "logps/chosen")
        moved = len(logps) > 1 and max(logps) - min(logps) > 1e-6
        numbers["rewards_all_zero"] = True
        if moved:
            numbers["logps_chosen_range"] = max(logps) - min(logps)
            causes.append(f"rewards exactly 0 at all {len(chosen_r)} logged steps while policy log-probs moved by "
                          f"{_g(max(logps) - min(logps))}: the reference is the policy itself")
            fixes.append("use train.reference=copy or precomputed, or (LoRA) check the adapter is disabled "
                         "for the reference pass")
        elif not causes:
            causes.append(f"rewards exactly 0 at all {len(chosen_r)} logged steps: the weights never change")
    if not causes:
        causes.append("no obvious cause; check that the data has real preferences (doctor) and the lr schedule")
        fixes.append("raise the learning rate and check `alignkit doctor` on the data")
    return [Finding("no_learning", "error", f"{evidence}. Causes: {'; '.join(causes)}.", fixes, numbers)]


def check_overfitting(run: _Run) -> list[Finding]:
    acc = _series(run.train, "rewards/accuracies")
    if not acc:
        return []
    train_acc = _mean(_quarter(acc))
    eval_acc = (_series(run.evals, "eval/rewards/accuracies") or [None])[-1]
    source = "last eval row"
    if eval_acc is None:
        eval_acc, source = _num(run.after.get("reward_accuracy")), "metrics.json"
    if eval_acc is None or train_acc < TRAIN_ACC_HIGH or train_acc - eval_acc < EVAL_ACC_GAP:
        return []
    return [Finding("overfitting", "warning",
                    f"train reward accuracy {_pct(train_acc)} on the last quarter vs eval {_pct(eval_acc)} "
                    f"({source}): a gap of {_pct(train_acc - eval_acc)} (>= {_pct(EVAL_ACC_GAP)})",
                    ["train fewer epochs or steps", "add data or deduplicate it (`alignkit doctor`)",
                     "raise train.beta or use label smoothing (train.label_smoothing=0.1)"],
                    {"train_accuracy": train_acc, "eval_accuracy": eval_acc})]


REFERENCE_REWARD_METHODS = ("dpo", "ipo", "hinge", "robust", "rpo", "dpop", "kto")
"""Methods whose logged ``rewards/chosen`` is ``beta * (policy - reference)`` chosen log-prob on the
step's own rows (the losses with ``needs_reference`` in `alignkit.losses.LOSSES`; a test pins it).
SimPO/CPO/ORPO log rewards of the policy alone, the reward model its scores."""


def check_likelihood_displacement(run: _Run) -> list[Finding]:
    """Chosen log-probs falling below the reference's, always compared on the same rows.

    Raw training ``logps/chosen`` are never compared across steps: each step is another batch, and
    batches with longer answers have lower log-probs (a 4-step run "fell" 22 nats while its
    rewards/chosen rose every step). The evidence is (a) metrics.json, policy vs reference on the same
    held-out pairs; (b) the training log's implicit reward, ``rewards/chosen / beta`` = policy minus
    reference log-prob of the same batch, last quarter of steps; (c) in-training eval rows, which score
    the same held-out pairs each time (first vs last row).
    """
    parts, numbers = [], {}
    policy, ref = _num(run.after.get("logps/chosen")), _num(run.after.get("ref_logps/chosen"))
    if ref is None:
        ref = _num(run.before.get("logps/chosen"))
    if policy is not None and ref is not None and ref - policy > CHOSEN_LOGP_DROP:
        numbers.update({"logps/chosen": policy, "ref_logps/chosen": ref})
        parts.append(f"held-out policy logps/chosen {_g(policy)} vs reference {_g(ref)} on the same pairs "
                     f"(down {_g(ref - policy)} nats)")
    beta = _num(run.cfg("train", "beta", 0.1))
    rewards = _series(run.train, "rewards/chosen")
    if run.method in REFERENCE_REWARD_METHODS and rewards and beta:
        last = _mean(_quarter(rewards))
        delta = last / beta
        if -delta > CHOSEN_LOGP_DROP:
            numbers.update({"rewards_chosen_last_quarter": last, "logps_delta_chosen_train": delta})
            parts.append(f"training rewards/chosen {_g(last)} on the last quarter of steps: with beta {_g(beta)} "
                         f"the chosen log-prob is {_g(-delta)} nats below the reference's on the same batches")
    evals = [r for r in run.evals if _num(r.get("eval/logps/chosen")) is not None]
    if len(evals) >= 2:
        first, last_row = evals[0], evals[-1]
        start, end = _num(first["eval/logps/chosen"]), _num(last_row["eval/logps/chosen"])
        if start - end > CHOSEN_LOGP_DROP:
            numbers.update({"eval_logps_chosen_first": start, "eval_logps_chosen_last": end})
            parts.append(f"held-out eval/logps/chosen fell from {_g(start)} (step {first.get('step')}) to "
                         f"{_g(end)} (step {last_row.get('step')}) on the same pairs")
    if not parts:
        return []
    return [Finding("likelihood_displacement", "warning",
                    "; ".join(parts) + f" (threshold {CHOSEN_LOGP_DROP:g} nats): the chosen answers became "
                    "less likely than under the reference", [
                        "add an NLL term: method=rpo train.rpo_alpha=1",
                        "or penalise the fall itself: method=dpop train.dpop_lambda=50 (DPO-Positive)",
                        "raise train.beta",
                        "make rejected answers closer to the model's own failures (sample them from the model)"],
                    numbers)]


def check_verbosity(run: _Run) -> list[Finding]:
    before, after = _before_after(run, "response_length")
    if before is None or after is None or before <= 0 or after / before <= VERBOSITY_RATIO:
        return []
    ratio = after / before
    return [Finding("verbosity_drift", "warning",
                    f"response_length {_g(before)} -> {_g(after)} ({ratio:.2f}x, > {VERBOSITY_RATIO}x)",
                    ["check length bias in the data (`alignkit doctor`: chosen longer than rejected)",
                     "use a length-normalised method (simpo) or raise train.beta"],
                    {"response_length": {"before": before, "after": after}, "ratio": ratio})]


def check_kl_blowup(run: _Run) -> list[Finding]:
    parts, numbers = [], {}
    kl = _num(run.after.get("kl"))
    if kl is not None and kl > KL_MAX:
        numbers["kl"] = kl
        parts.append(f"KL(policy || reference) {_g(kl)} nats (> {KL_MAX:g})")
    margins = _series(run.train, "rewards/margins")
    if margins:
        last = _mean(_quarter(margins))
        if last > MARGIN_MAX:
            numbers["margin_last_quarter"] = last
            parts.append(f"reward margins {_g(last)} on the last quarter (> {MARGIN_MAX:g})")
    if not parts:
        return []
    return [Finding("kl_blowup", "warning", "; ".join(parts),
                    ["raise train.beta", "lower the learning rate or train fewer steps",
                     "try ipo, which bounds the margin"], numbers)]


ONLINE_KL_MAX = 20.0
"""Online RL: mean KL per answer (nats) above this on the last quarter of steps is a blow-up."""
EOS_RATE_MIN = 0.5
"""Online RL: fewer rollouts than this ending with an EOS on the last quarter: answers stopped ending."""


def check_online_rl(run: _Run) -> list[Finding]:
    """PPO / RLOO / GRPO logs: reward hacking (the reward rises while the gold judge falls), answers that
    stop ending, and KL blow-up."""
    rows = run.online
    if len(rows) < 2:
        return []
    out = []
    score, gold = _series(rows, "score"), _series(rows, "gold_score")
    if len(score) >= 2 and len(gold) >= 2:
        ds = _mean(_quarter(score)) - _mean(_quarter(score, last=False))
        dg = _mean(_quarter(gold)) - _mean(_quarter(gold, last=False))
        if ds > 0 and dg < -0.05:
            out.append(Finding("reward_hacking", "warning",
                               f"the reward rose by {_g(ds)} while the gold judge fell by {_g(-dg)} "
                               "(first vs last quarter of steps)",
                               ["raise train.kl_coef or set train.kl_target", "train fewer steps",
                                "retrain the reward model on pairs of the policy's own answers "
                                "(alignkit data sample-pairs)"], {"score_change": ds, "gold_change": dg}))
    eos = _series(rows, "eos_rate")
    if eos and _mean(_quarter(eos)) < EOS_RATE_MIN:
        out.append(Finding("no_eos", "warning", f"only {_pct(_mean(_quarter(eos)))} of the last rollouts ended "
                           f"with an EOS (< {_pct(EOS_RATE_MIN)})",
                           ["raise train.missing_eos_penalty", "raise train.max_new_tokens",
                            "lower the learning rate"], {"eos_rate_last_quarter": _mean(_quarter(eos))}))
    kl = _series(rows, "kl")
    if kl and _mean(_quarter(kl)) > ONLINE_KL_MAX:
        out.append(Finding("kl_blowup", "warning", f"KL to the reference {_g(_mean(_quarter(kl)))} nats per "
                           f"answer on the last quarter of steps (> {ONLINE_KL_MAX:g})",
                           ["raise train.kl_coef or set train.kl_target", "lower the learning rate"],
                           {"kl_last_quarter": _mean(_quarter(kl))}))
    return out


CHECKS: tuple[Callable[[_Run], list[Finding]], ...] = (
    check_over_refusal, check_under_refusal, check_task_regression, check_no_learning,
    check_overfitting, check_likelihood_displacement, check_verbosity, check_kl_blowup, check_online_rl,
)


def diagnose_from(log_rows: list[dict], metrics: dict | None, config: dict | None,
                  data_stats: dict | None = None, run_info: dict | None = None) -> list[Finding]:
    """Diagnose from already-loaded pieces (pure). Missing pieces skip the checks that need them.

    Args:
        log_rows: log.jsonl rows; train rows carry ``loss``, eval rows ``eval/...`` keys.
        metrics: metrics.json (``{"before": {...}, "after": {...}}``) or None.
        config: the run config as a dict (``config.yaml``).
        data_stats: ``{"chosen_refusal_share": float, "path": str}`` from the training data, or None.
        run_info: run.json (``method``, ``status``, ``trainable_params``...), or None.
    """
    run = _Run(train=[r for r in log_rows if "loss" in r],
               evals=[r for r in log_rows if any(k.startswith("eval/") for k in r)],
               before=(metrics or {}).get("before") or {}, after=(metrics or {}).get("after") or {},
               config=config or {}, data_stats=data_stats, run_info=run_info or {},
               online=[r for r in log_rows if "score" in r and "policy_loss" in r])
    findings = [f for check in CHECKS for f in check(run)]
    if metrics is None:
        findings.append(Finding("no_metrics", "info", "no metrics.json yet: diagnosed from the training log "
                                "only (refusal, task, length and KL checks skipped)", ["run `alignkit eval`"]))
    if not run.train and not run.online:
        findings.append(Finding("no_log", "info", "no training steps logged: training-curve checks skipped"))
    status = run.run_info.get("status")
    if status not in (None, "finished", "completed", "done"):
        findings.append(Finding("run_status", "info", f"run.json status is {status!r}", numbers={"status": status}))
    skipped = _num(run.run_info.get("skipped_steps"))
    if skipped:
        findings.append(Finding("unstable_steps", "warning", f"{skipped:g} optimizer steps skipped for a "
                                "non-finite loss or gradient (run.json skipped_steps)",
                                ["lower the learning rate", "keep train.max_grad_norm set (1.0)",
                                 "use bf16 rather than fp16 mixed precision"], {"skipped_steps": skipped}))
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(findings, key=lambda f: order[f.severity])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"not valid JSON: {e.msg}", where=f"{path}:{e.lineno}") from None


def _read_log(path: Path) -> list[dict]:
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines):  # a run still writing may leave half a last line
                break
            raise UserError("not valid JSON", where=f"{path}:{i}") from None
    return rows


def _find_data(name: str, run_dir: Path) -> Path | None:
    """The training file as the config names it: relative to the cwd, the run dir, or the project."""
    for base in (Path.cwd(), run_dir, run_dir.parent.parent):
        p = Path(name) if Path(name).is_absolute() else base / name
        if p.exists():  # a file, or a folder (datasets.save_to_disk, Parquet files)
            return p
    return None


def _data_stats(config: dict, run_dir: Path) -> dict | None:
    """Refusal share of the answers the run trained towards (chosen, or SFT completions)."""
    name = (config.get("data") or {}).get("train")
    path = _find_data(name, run_dir) if isinstance(name, str) else None
    if path is None:
        return {"note": f"training file {name!r} not found"} if name else None
    # data -> eval is the one direction of flow, so these imports stay local to the one use
    from alignkit.data.doctor import _is_refusal, refusal_stats
    from alignkit.data.formats import load_preferences, load_sft

    data = config.get("data") or {}
    opts = dict(skip_invalid=True, columns=data.get("columns"), split=data.get("split") or "train")
    try:
        return {**refusal_stats(load_preferences(path, **opts)[0]), "path": str(path)}
    except UserError:
        pass
    try:
        rows = load_sft(path, **opts)[0]
    except UserError:
        return {"note": f"{path} could not be loaded"}
    share = sum(_is_refusal(r.completion) for r in rows) / max(len(rows), 1)
    return {"rows": len(rows), "chosen_refusal_share": share, "path": str(path)}


def diagnose(run_dir: str | Path) -> list[Finding]:
    """Diagnose a run directory; works on a finished run or one still training (log only)."""
    run_dir = Path(run_dir)
    log_path, metrics_path = run_dir / "log.jsonl", run_dir / "metrics.json"
    if not log_path.is_file() and not metrics_path.is_file():
        raise UserError("no log.jsonl and no metrics.json: nothing to diagnose", where=str(run_dir),
                        hint="pass a run directory written by `alignkit train` (runs/NAME)")
    log_rows = _read_log(log_path) if log_path.is_file() else []
    metrics = _read_json(metrics_path) if metrics_path.is_file() else None
    config: dict = {}
    if (run_dir / "config.yaml").is_file():
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    run_info = _read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    return diagnose_from(log_rows, metrics, config, _data_stats(config, run_dir), run_info)


def format_findings(findings: list[Finding]) -> str:
    """Plain text, most severe first: severity, name, evidence, then the fixes."""
    if not any(f.severity != "info" for f in findings):
        head = "no problems found"
        return "\n".join([head, *(f"INFO     {f.name}: {f.evidence}" for f in findings)])
    lines = []
    for f in findings:
        lines.append(f"{f.severity.upper():<8} {f.name}: {f.evidence}")
        lines.extend(f"           fix: {fix}" for fix in f.fixes)
    return "\n".join(lines)
