"""Iterative on-policy alignment: rounds of sample -> judge -> DPO-family training, each from the last.

    alignkit train examples/task_api/rounds.yaml        # train.rounds: 3, train.reward_model: task_api

Round r samples `train.num_generations` answers per training prompt from the model of round r - 1
(round 1: `model.name_or_path`), judges them with `train.reward_model` (a built-in judge, a reward
run, or `package.module:function`) and writes pairs whose rejected side is the model's own worst
answer and whose chosen side is its best, or the reference answer when all its answers are equally
bad (`alignkit.data.sample_pairs`). It then trains an ordinary run on those pairs, starting from
round r - 1's model, whose reference is therefore round r - 1's model too (the adapter switched off):
the reference moves with the rounds, as in iterative DPO (Xu et al. 2023, arXiv:2312.16682; Pang et
al. 2024, arXiv:2404.19733). On-policy rejected answers are what the literature finds avoids
"learning to avoid words": the model is pushed away from what it actually says.

Layout of `output_dir`:

    pairs-round-<r>.jsonl, pairs-round-<r>.stats.json    the round's sampled pairs and their statistics
    round-<r>/                                          an ordinary run (config, log, final/, report)
    rounds.json, rounds.md                              one table across rounds

A round whose run is finished is kept on `--resume` (its pairs too); the first unfinished round and
those after it are redone. Every round is a run directory of its own: `alignkit eval`, `diagnose`,
`export --merge` and `chat` take `output_dir/round-<r>`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from alignkit.config import RunConfig, dump_config
from alignkit.errors import UserError

# The after-training metrics shown per round (those a run has; the rest are left out).
SHOWN = ("refusal_rate/harmful", "over_refusal/benign", "over_refusal/alarming", "task_valid/benign",
         "task_correct", "gold_score", "reward_accuracy", "kl")


def check_rounds(cfg: RunConfig, paired: tuple[str, ...]) -> None:
    """What a multi-round config needs; raises before anything is loaded or written."""
    if cfg.method not in paired:
        raise UserError(f"train.rounds > 1 is for the paired DPO-family methods, not {cfg.method}",
                        where="config field train.rounds", hint=f"use one of {', '.join(paired)}, or rounds: 1")
    if not cfg.train.reward_model:
        raise UserError("train.rounds > 1 needs a judge for the sampled answers", where="config field train.reward_model",
                        hint="e.g. train.reward_model=task_api, a reward run directory, or package.module:function")
    if cfg.train.num_generations < 2:
        raise UserError("each round compares the model's own answers: train.num_generations must be 2 or more",
                        where="config field train.num_generations", hint="e.g. train.num_generations=4")


def round_config(cfg: RunConfig, r: int, base: str, pairs: Path) -> RunConfig:
    """Round r's own run config: the given config on the round's pairs, from `base`, one round."""
    rc = cfg.model_copy(deep=True)
    rc.output_dir = str(Path(cfg.output_dir) / f"round-{r}")
    rc.model.name_or_path = base
    rc.data.train = str(pairs.resolve())
    rc.data.max_rows = None  # the round's pairs are already limited to data.max_rows prompts
    rc.train.rounds = 1
    rc.train.seed = cfg.train.seed + r - 1
    return rc


def _finished(run: Path) -> bool:
    from alignkit.train.run import finished_steps

    return finished_steps(run) is not None


def run_rounds(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, force: bool = False,
               evaluate: Callable[[Path], dict | None] | None = None, console=print, progress=None) -> Path:
    """Train `cfg.train.rounds` rounds into `cfg.output_dir`; returns it (not itself a run).

    `evaluate(run)`, when given, evaluates each round's run after its training (the CLI passes
    `alignkit.eval.runner.evaluate_trained_run`): its metrics go into the table across rounds.
    """
    from alignkit.data.sample_pairs import sample_pairs_file
    from alignkit.train.run import PAIRED, train

    check_rounds(cfg, PAIRED)
    import torch

    from alignkit.models import resolve_mixed_precision

    # Under bf16 autocast the answers are sampled from a bf16 copy too, as PPO's rollouts are.
    mp = resolve_mixed_precision(cfg.train.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")
    decode_dtype = torch.bfloat16 if mp == "bf16" else None
    root = Path(cfg.output_dir)
    if root.exists() and not root.is_dir():
        raise UserError("output_dir is a file", where=f"config field output_dir ({root})")
    if root.is_dir() and any(root.iterdir()) and not resume:
        if not overwrite:
            raise UserError("the output directory already holds rounds", where=str(root),
                            hint="pass --resume to continue them, --overwrite to replace them, or a new output_dir")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.rounds.yaml").write_text(dump_config(cfg))
    tcfg, base, rows, redo = cfg.train, cfg.model.name_or_path, [], False
    for r in range(1, tcfg.rounds + 1):
        run, pairs = root / f"round-{r}", root / f"pairs-round-{r}.jsonl"
        stats_path = pairs.with_suffix(".stats.json")
        keep = resume and not redo and _finished(run) and pairs.is_file() and stats_path.is_file()
        if keep:
            console(f"round {r}/{tcfg.rounds}: finished earlier, kept ({run})")
            stats = json.loads(stats_path.read_text())
        else:
            redo = True  # every later round starts from this one's new model
            console(f"round {r}/{tcfg.rounds}: sampling {tcfg.num_generations} answers per prompt from {base}")
            stats = sample_pairs_file(cfg.data.train, model=base, out=pairs, judge=tcfg.reward_model,
                                      k=tcfg.num_generations, temperature=tcfg.temperature,
                                      max_new_tokens=tcfg.max_new_tokens, seed=tcfg.seed * 1_000_003 + r,
                                      system_prompt_file=cfg.data.system_prompt_file, stats_path=stats_path,
                                      max_prompts=cfg.data.max_rows, overwrite=True,
                                      skip_invalid=cfg.data.skip_invalid, decode_dtype=decode_dtype,
                                      console=console)
            train(round_config(cfg, r, base, pairs), overwrite=True, force=force,
                  evaluate_after=evaluate is not None, console=console, progress=progress)
            if evaluate is not None:
                evaluate(run)
        rows.append(_round_row(r, run, stats))
        base = str(run)
        _write_table(root, cfg, rows)
    console(format_table(rows))
    console(f"rounds: {root / 'rounds.md'}; the last round's model: {base}")
    return root


def _round_row(r: int, run: Path, stats: dict) -> dict:
    """One round's numbers: what its sampled answers scored, its training, its evaluation."""
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()] \
        if (run / "log.jsonl").is_file() else []
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    last = next((row for row in reversed(log) if "loss" in row), {})  # the last training row (not an eval row)
    return {"round": r, "run": str(run), "pairs": stats.get("pairs"), "chosen_policy": stats.get("chosen_policy"),
            "chosen_reference": stats.get("chosen_reference"), "sample_score": stats.get("mean_score"),
            "sample_eos_rate": stats.get("eos_rate"), "loss": last.get("loss"),
            "margins": last.get("rewards/margins"), "steps": last.get("step"),
            "before": {k: (metrics.get("before") or {}).get(k) for k in SHOWN},
            "after": {k: (metrics.get("after") or {}).get(k) for k in SHOWN}}


def _write_table(root: Path, cfg: RunConfig, rows: list[dict]) -> None:
    (root / "rounds.json").write_text(json.dumps({"rounds": rows, "method": cfg.method,
                                                  "judge": cfg.train.reward_model}, indent=1))
    (root / "rounds.md").write_text(f"# {len(rows)} round(s) of on-policy {cfg.method}, judge "
                                    f"{cfg.train.reward_model}\n\n{format_table(rows)}\n")


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def format_table(rows: list[dict]) -> str:
    """Markdown: one line for the starting model (round 1's "before"), then one per round.

    `sample score` is the judge's mean over the round's sampled answers on the training prompts: the
    model the round started from, judged on-policy."""
    shown = [k for k in SHOWN if any(row["after"].get(k) is not None or row["before"].get(k) is not None
                                     for row in rows)]
    head = ["round", "pairs (chosen: policy/reference)", "sample score", "final loss", "margins", *shown]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if rows:
        lines.append("| start | - | - | - | - | " + " | ".join(_f(rows[0]["before"].get(k)) for k in shown) + " |")
    for row in rows:
        pairs = f"{row['pairs']} ({row['chosen_policy']}/{row['chosen_reference']})"
        lines.append(f"| {row['round']} | {pairs} | {_f(row['sample_score'])} | {_f(row['loss'])} | "
                     f"{_f(row['margins'])} | " + " | ".join(_f(row["after"].get(k)) for k in shown) + " |")
    return "\n".join(lines)
