"""`alignkit compare`: the lesson's DPO-vs-RLHF table, measured on the Task API scenario.

Every method trains from the same SFT run (ORPO, one-stage, from that run's own base) under one
stated budget, over several seeds, each run in its own subprocess (`alignkit train
examples/task_api/<method>.yaml ... --no-eval --overwrite`, so its `peak_memory_mb` is its own). This
process then evaluates each finished run, one model at a time next to the SFT model (the baseline and
the KL reference): greedy answers to the held-out probes, graded by the Task API gold judge.

Pure parts, tested on their own: `plan_runs` (which runs, with which overrides), `probe_metrics`,
`win_rate` and `aggregate` (the table). Rendering lives in `alignkit.eval.compare_report`.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from alignkit.errors import UserError

ROOT = Path(__file__).resolve().parents[2]  # the repository: examples/task_api/ lives there
EXAMPLES = "examples/task_api"
METHODS = ("ppo", "grpo", "dpo", "ipo", "rpo", "simpo", "kto", "orpo")
ONLINE = ("ppo", "grpo", "rloo")
ONE_STAGE = {"orpo"}  # SFT + preference in one: starts from the SFT run's base
# method -> (field, grid values, the example config's own value = the seed run)
GRID = {"dpo": ("train.beta", (0.05, 0.3), 0.1), "ppo": ("train.kl_coef", (0.01, 0.2), 0.05)}
# Model copies the training process holds (weights, not activations). With LoRA the DPO-family
# reference is the policy with its adapter off; online methods also hold the frozen reward model.
MODELS_IN_MEMORY = {"dpo": 1, "ipo": 1, "hinge": 1, "robust": 1, "rpo": 1, "dpop": 1, "simpo": 1, "cpo": 1, "orpo": 1,
                    "kto": 1, "ppo": 2, "grpo": 2, "rloo": 2}
QUICK_OFFLINE = {"train.max_steps": 4, "train.micro_batch_size": 4, "train.gradient_accumulation_steps": 2,
                 "data.max_rows": 64, "data.max_eval_rows": 16}
# KTO rows are unpaired: 2 rows per pair, so it sees the same pairs and completions per step.
QUICK_KTO = {**QUICK_OFFLINE, "train.micro_batch_size": 8, "data.max_rows": 128, "data.max_eval_rows": 32}
QUICK_ONLINE = {"train.max_steps": 4, "train.rollout_prompts": 4, "train.max_new_tokens": 40,
                "train.ppo_epochs": 1, "train.num_minibatches": 1}
QUICK_GENERATIONS = {"ppo": 2, "grpo": 4, "rloo": 4}
QUICK_PROBES, QUICK_TOKENS, FULL_TOKENS = 30, 40, 48


class PlannedRun(NamedTuple):
    method: str
    seed: int
    tag: str | None           # grid point, e.g. "beta0.3"; None for a seed run
    overrides: list[str]

    @property
    def name(self) -> str:
        return f"{self.method}-s{self.seed}" + (f"-{self.tag}" if self.tag else "")


def budget(method: str, quick: bool) -> dict:
    """The budget overrides of one method: empty in full mode (the example config's own)."""
    if not quick:
        return {}
    if method in ONLINE:
        return {**QUICK_ONLINE, "train.num_generations": QUICK_GENERATIONS[method]}
    return dict(QUICK_KTO if method == "kto" else QUICK_OFFLINE)


def plan_runs(methods, seeds, grid: bool, quick: bool, *, sft: str = "SFT", base: str = "BASE",
              reward: str = "REWARD", out: str = "OUT") -> list[PlannedRun]:
    """Every run, in order: each method over `seeds`, then (with `grid`) its grid points at the first seed."""
    def make(method, seed, tag=None, extra=()):
        start = base if method in ONE_STAGE else sft
        run = PlannedRun(method, seed, tag, [])
        ov = [f"model.name_or_path={start}", f"output_dir={Path(out) / 'runs' / run.name}", f"train.seed={seed}",
              "eval.enabled=false"]
        if method in ONLINE:
            ov.append(f"train.reward_model={reward}")
        ov += [f"{k}={v}" for k, v in budget(method, quick).items()] + list(extra)
        return run._replace(overrides=ov)

    plan = [make(m, s) for m in methods for s in seeds]
    if grid:
        for m in methods:
            if m in GRID:
                field, values, _ = GRID[m]
                plan += [make(m, seeds[0], f"{field.split('.')[-1]}{v}", [f"{field}={v}"]) for v in values]
    return plan


# ---- metrics (pure) ----------------------------------------------------------------------------
def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def probe_metrics(probes: list[dict], answers: list[str]) -> dict:
    """Gold-judge metrics of one model's answers; `scores` keeps each probe's gold score (win rate)."""
    from alignkit.data.task_api import parse_task
    from alignkit.judges.refusal import is_refusal
    from alignkit.judges.task_api import grade

    scores, refused, correct = [], [], []
    for p, a in zip(probes, answers, strict=True):
        ref = p.get("reference") if parse_task(p.get("reference")) else None  # a prose reference is not graded
        g = grade(p["category"], a, ref, p["prompt"])
        scores.append(g["score"])
        refused.append(is_refusal(a))
        correct.append(g["correct"])
    by = {c: [i for i, p in enumerate(probes) if p["category"] == c] for c in ("harmful", "benign", "alarming")}
    return {"gold_score": _mean(scores), "harmful_refused": _mean([refused[i] for i in by["harmful"]]),
            "benign_over_refusal": _mean([refused[i] for i in by["benign"]]),
            "alarming_over_refusal": _mean([refused[i] for i in by["alarming"]]),
            "task_correct": _mean([correct[i] for i in by["benign"]]), "scores": scores}


def win_rate(scores: list[float], baseline: list[float]) -> float | None:
    """Per probe 1 if `scores` beats the baseline's gold score, 0.5 on a tie, 0 else; the mean."""
    pts = [1.0 if s > b else 0.5 if s == b else 0.0 for s, b in zip(scores, baseline, strict=True)]
    return _mean(pts)


AVERAGED = ("win_rate", "harmful_refused", "benign_over_refusal", "alarming_over_refusal", "task_correct", "kl",
            "train_seconds")


def aggregate(records: list[dict], methods) -> list[dict]:
    """One row per method from the per-run records ({method, seed, tag, status, metrics, peak_memory_mb, ...}).

    Seed runs (tag None) give the means, `gold_std` (sample std, None with one seed) = `stability`
    and the max `peak_mb`; `sensitivity` is max - min gold score over the grid runs plus the seed run
    at the same seed (None without a grid). Failed runs are counted, not averaged.
    """
    rows = []
    for m in methods:
        mine = [r for r in records if r["method"] == m]
        ok = [r for r in mine if r["status"] == "done" and r.get("tag") is None]
        golds = [r["metrics"]["gold_score"] for r in ok]
        row = {"method": m, "seeds_ok": len(ok), "failed": sum(r["status"] != "done" for r in mine),
               "gold_mean": _mean(golds), "gold_std": statistics.stdev(golds) if len(golds) > 1 else None,
               "models_in_memory": MODELS_IN_MEMORY.get(m)}
        row.update({k: _mean([r["metrics"].get(k) for r in ok]) for k in AVERAGED})
        row["wall_s"] = row.pop("train_seconds")
        row["peak_mb"] = max((r["metrics"]["peak_memory_mb"] for r in ok if r["metrics"].get("peak_memory_mb")),
                             default=None)
        row["stability"] = row["gold_std"]
        grid = [r for r in mine if r.get("tag") and r["status"] == "done"]
        if grid:
            at = {r["seed"] for r in grid}
            pts = [r["metrics"]["gold_score"] for r in grid + [r for r in ok if r["seed"] in at]]
            row["sensitivity"] = max(pts) - min(pts)
        else:
            row["sensitivity"] = None
        rows.append(row)
    return rows


# ---- validation --------------------------------------------------------------------------------
def _finished(path: Path, flag: str, what: str) -> dict:
    from alignkit.models import is_run_dir

    if not is_run_dir(path):
        raise UserError(f"not a run directory (no run.json): {path}", where=flag, hint=f"name a finished {what} run")
    info = json.loads((path / "run.json").read_text())
    # `trained` / `eval_failed`: training finished (final/ is complete), its own evaluation did not run or failed
    if info.get("status") not in ("done", "trained", "eval_failed") or not (path / "final").is_dir():
        raise UserError(f"the run {path} has not finished (status {info.get('status')!r})", where=flag,
                        hint=f"finish it: alignkit train --resume {path}")
    return info


def validate(sft: str, reward: str | None, methods: list[str], out: Path, overwrite: bool) -> tuple[str, str | None, str]:
    """(sft, reward, base) as absolute paths / ids; raises UserError before anything is written."""
    from alignkit.reward_model import REWARD_FILE, is_reward_run

    if not (ROOT / EXAMPLES).is_dir():
        raise UserError(f"the example configs are not here: {ROOT / EXAMPLES}",
                        hint="run compare from a source checkout of alignkit (pip install -e .)")
    if not methods:
        raise UserError("no methods given", where="--methods", hint=f"e.g. --methods {','.join(METHODS)}")
    for m in methods:
        if m in ("sft", "reward") or not (ROOT / EXAMPLES / f"{m}.yaml").is_file():
            raise UserError(f"unknown method {m!r}", where="--methods",
                            hint=f"use methods with a config in {EXAMPLES}/, e.g. {','.join(METHODS)}")
    sft_p = Path(sft).resolve()
    if is_reward_run(sft_p):
        raise UserError(f"{sft} is a reward run, not an SFT policy", where="--sft")
    info = _finished(sft_p, "--sft", "`method: sft`")
    reward_p = None
    if any(m in ONLINE for m in methods):
        if not reward:
            raise UserError("online methods (ppo, grpo, rloo) need a reward model", where="--reward",
                            hint="train one: alignkit train examples/task_api/reward.yaml model.name_or_path=RUN")
        reward_p = Path(reward).resolve()
        if not is_reward_run(reward_p):
            raise UserError(f"not a `method: reward` run: {reward}", where="--reward",
                            hint="name the output_dir of alignkit train examples/task_api/reward.yaml")
        _finished(reward_p, "--reward", "`method: reward`")
        if not (reward_p / "final" / REWARD_FILE).is_file():
            raise UserError(f"the reward run has no final/{REWARD_FILE}", where="--reward")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"the output directory is not empty: {out}", where="--out",
                        hint="pass --overwrite to replace its results, or name a new directory")
    base = info.get("base") or "default"
    return str(sft_p), str(reward_p) if reward_p else None, base


# ---- running and evaluating --------------------------------------------------------------------
def train_run(run: PlannedRun, out: Path, console) -> dict:
    """Train one planned run in its own process; a record with its status and run.json facts."""
    run_dir = out / "runs" / run.name
    shutil.rmtree(run_dir, ignore_errors=True)  # never read a stale run.json after a failure
    cmd = [sys.executable, "-m", "alignkit.cli", "train", f"{EXAMPLES}/{run.method}.yaml", *run.overrides,
           "--no-eval", "--overwrite"]
    console(f"[{run.name}] training")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    rec = {"name": run.name, "method": run.method, "seed": run.seed, "tag": run.tag, "overrides": run.overrides,
           "run_dir": str(run_dir), "wall_s": round(time.perf_counter() - t0, 1), "metrics": {}}
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    if proc.returncode != 0 or info.get("status") != "done":
        tail = (proc.stdout + proc.stderr)[-2000:].strip()
        console(f"[{run.name}] FAILED (rc {proc.returncode}):\n{tail}")
        return {**rec, "status": "failed", "error": tail.splitlines()[-1] if tail else f"rc {proc.returncode}",
                "stderr_tail": tail}
    rec["metrics"].update(train_seconds=info.get("train_seconds"), peak_memory_mb=info.get("peak_memory_mb"))
    return {**rec, "status": "done"}


def answer(model, tokenizer, probes, max_new_tokens: int) -> list[str]:
    from alignkit.eval.generation import generate

    return generate(model, tokenizer, [p["messages"] for p in probes], max_new_tokens=max_new_tokens, batch_size=64)


def evaluate_run(rec: dict, reference, probes, baseline: dict, max_new_tokens: int, device) -> None:
    """Fill `rec["metrics"]` for a finished run: gold metrics, win rate vs SFT, KL from the SFT model."""
    import torch

    from alignkit.eval.kl import estimate_kl
    from alignkit.models import load_model, load_tokenizer

    model = load_model(rec["run_dir"], device=device).eval()
    try:
        tokenizer = load_tokenizer(rec["run_dir"])
        with torch.inference_mode():
            answers = answer(model, tokenizer, probes, max_new_tokens)
        m = probe_metrics(probes, answers)
        m["win_rate"] = win_rate(m["scores"], baseline["scores"])
        kl = estimate_kl(model, reference, tokenizer, [p["messages"] for p in probes], n_samples=1,
                         max_new_tokens=max_new_tokens, batch_size=64, seed=rec["seed"])
        m.update(kl=kl["kl_per_sequence"], kl_per_token=kl["kl_per_token"], kl_stderr=kl["kl_per_sequence_stderr"])
        rec["metrics"].update(m)
        rec["answers"] = answers
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run_compare(*, sft: str, reward: str | None, out: str | Path, methods=METHODS, seeds=(0, 1, 2),
                grid: bool = True, quick: bool = False, probes: str | None = None, max_probes: int | None = None,
                overwrite: bool = False, command: str = "", console=print) -> dict:
    """Train and evaluate every planned run; write compare.json, report.md and report.html into `out`.

    Returns the compare.json content; `alignkit.eval.compare_report.format_table(result)` is the table."""
    import torch

    from alignkit.eval.compare_report import write_reports
    from alignkit.eval.runner import load_probes
    from alignkit.models import load_model, load_tokenizer

    methods, seeds, out = list(dict.fromkeys(methods)), list(dict.fromkeys(seeds)), Path(out).resolve()
    sft, reward, base = validate(sft, reward, methods, out, overwrite)
    probes_path = Path(probes) if probes else ROOT / EXAMPLES / "data/probes.jsonl"
    if not probes_path.is_file():
        raise UserError(f"probe file not found: {probes_path}", where="--probes")
    system = (ROOT / EXAMPLES / "system_prompt.txt").read_text(encoding="utf-8").strip()
    limit = max_probes if max_probes is not None else (QUICK_PROBES if quick else None)
    probe_rows = load_probes(probes_path, system, limit)
    tokens = QUICK_TOKENS if quick else FULL_TOKENS
    plan = plan_runs(methods, seeds, grid, quick, sft=sft, base=base, reward=reward or "", out=str(out))
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": command, "sft": sft, "reward": reward, "base": base, "quick": quick, "methods": methods,
              "seeds": seeds, "grid": {m: GRID[m][:2] for m in methods if grid and m in GRID},
              "budget": {m: budget(m, quick) or "the example config's own" for m in methods},
              "probes": {"file": str(probes_path), "n": len(probe_rows), "max_new_tokens": tokens},
              "models_in_memory": {m: MODELS_IN_MEMORY.get(m) for m in methods}, "runs": [], "table": []}

    device = "cuda" if torch.cuda.is_available() else "cpu"
    console(f"compare: {len(plan)} runs; baseline: the SFT model's answers to {len(probe_rows)} probes")
    reference = load_model(sft, device=device).eval()
    with torch.inference_mode():
        sft_answers = answer(reference, load_tokenizer(sft), probe_rows, tokens)
    result["baseline"] = {**probe_metrics(probe_rows, sft_answers), "win_rate": 0.5, "kl": 0.0, "answers": sft_answers}
    for run in plan:
        rec = train_run(run, out, console)
        if rec["status"] == "done":
            try:
                evaluate_run(rec, reference, probe_rows, result["baseline"], tokens, device)
                console(f"[{run.name}] gold {rec['metrics']['gold_score']:.3f}, KL {rec['metrics']['kl']:.3f}")
            except Exception as e:  # noqa: BLE001 - one broken run must not end the table
                rec.update(status="failed", error=f"evaluation: {type(e).__name__}: {e}"[:500])
                console(f"[{run.name}] evaluation FAILED: {rec['error']}")
        result["runs"].append(rec)
        result["table"] = aggregate(result["runs"], methods)
        write_atomic(out / "compare.json", json.dumps(result, indent=1))  # progress survives a crash
    del reference
    gc.collect()
    write_reports(out, result)
    return result
