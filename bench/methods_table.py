"""Every preference method end to end on the Task API data, as one markdown table.

    .venv/bin/python bench/methods_table.py [--sft RUN] [--methods dpo,kto,...] [--quick] [--json PATH]

For each method, `alignkit train examples/task_api/<method>.yaml` runs in its own subprocess (so the
run's `peak_memory_mb`, ru_maxrss on CPU or max allocated CUDA memory, is that method's alone), with
small settings passed as overrides; the config file supplies everything else (beta, lr, batch...).
Defaults: data.max_rows=96 pairs, train.max_steps=6, eval.max_probes=30, eval.max_new_tokens=40.
KTO trains on unpaired rows, so it gets 2 x max_rows rows (the same 96 pairs, unpaired) and its
config's 8-row micro-batches see the same completions per step as the others' 4 pairs.

Start model: `--sft RUN` starts every method from that SFT run (its adapter merged, and it is also
the reference), except `orpo`, which is one-stage (SFT + preference) and starts from the base
model, as its config does. Without `--sft` all start from the embedded default model.

Columns, read from the run directory: peak MB and train s (run.json: `peak_memory_mb`,
`train_seconds`, the training loop only); refusal harmful, over-refusal alarming, task valid
(metrics.json `refusal_rate/harmful`, `over_refusal/alarming`, `task_valid/benign`) before (the
starting weights) -> after; reward acc (`reward_accuracy` of the trained policy against its start on
the held-out pairs, with each config's beta). A method that fails gets a row saying so, and its
output tail on stderr. Runs go to `--out` (default runs/methods_table/<method>, replaced each time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("dpo", "ipo", "hinge", "robust", "rpo", "simpo", "cpo", "orpo", "kto")
ONE_STAGE = {"orpo"}  # start from the base model even with --sft
SETTINGS = {
    "full": {"max_rows": 96, "max_steps": 6, "max_probes": 30, "max_new_tokens": 40, "eval_rows": None,
             "kl_samples": 1},
    # A smoke test of the script itself, not a measurement.
    "quick": {"max_rows": 16, "max_steps": 2, "max_probes": 6, "max_new_tokens": 8, "eval_rows": 8,
              "kl_samples": 0},
}


def overrides(method: str, s: dict, out: Path, sft: str | None) -> list[str]:
    rows = s["max_rows"] * (2 if method == "kto" else 1)
    ov = [f"output_dir={out}", f"data.max_rows={rows}", f"train.max_steps={s['max_steps']}",
          f"eval.max_probes={s['max_probes']}", f"eval.max_new_tokens={s['max_new_tokens']}",
          f"eval.kl_samples={s['kl_samples']}"]
    if sft and method not in ONE_STAGE:
        ov.append(f"model.name_or_path={sft}")
    if s["eval_rows"]:  # held-out rows scored (kto: unpaired rows during training)
        ov.append(f"data.max_eval_rows={s['eval_rows'] * (2 if method == 'kto' else 1)}")
    return ov


def run_method(method: str, s: dict, out_root: Path, sft: str | None) -> dict:
    out = out_root / method
    cmd = [sys.executable, "-m", "alignkit.cli", "train", f"examples/task_api/{method}.yaml",
           *overrides(method, s, out, sft), "--overwrite"]
    print(f"[{method}] {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    rec = {"method": method, "command": " ".join(cmd[2:]), "rc": proc.returncode,
           "wall_s": round(time.perf_counter() - t0, 1), "start": "base" if method in ONE_STAGE or not sft else sft}
    if proc.returncode != 0 or not (out / "metrics.json").is_file():
        tail = (proc.stdout + proc.stderr)[-3000:]
        print(f"[{method}] FAILED (rc {proc.returncode}):\n{tail}", file=sys.stderr, flush=True)
        rec["error"] = tail.strip().splitlines()[-1] if tail.strip() else f"rc {proc.returncode}"
        return rec
    info = json.loads((out / "run.json").read_text())
    m = json.loads((out / "metrics.json").read_text())
    rec.update(peak_mb=info.get("peak_memory_mb"), train_s=info.get("train_seconds"),
               before={k: m["before"].get(k) for k in KEYS}, after={k: m["after"].get(k) for k in KEYS})
    print(f"[{method}] done in {rec['wall_s']} s", file=sys.stderr, flush=True)
    return rec


KEYS = ("refusal_rate/harmful", "over_refusal/alarming", "task_valid/benign", "reward_accuracy")


def _f(x, digits=2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _arrow(rec: dict, key: str) -> str:
    return f"{_f(rec['before'][key])} -> {_f(rec['after'][key])}"


def table(records: list[dict]) -> str:
    lines = ["| method | peak MB | train s | refusal harmful before->after | over-refusal alarming before->after "
             "| task valid before->after | reward acc |", "|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'][:80]} | | | | | |")
            continue
        lines.append(f"| {r['method']} | {_f(r['peak_mb'], 0)} | {_f(r['train_s'], 1)} | "
                     f"{_arrow(r, 'refusal_rate/harmful')} | {_arrow(r, 'over_refusal/alarming')} | "
                     f"{_arrow(r, 'task_valid/benign')} | {_f(r['after']['reward_accuracy'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, default: all nine")
    p.add_argument("--sft", help="an SFT run directory to start from (not for orpo)")
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the script, measures nothing")
    p.add_argument("--out", default="runs/methods_table", help="parent directory of the runs")
    p.add_argument("--json", help="also write the records as JSON here")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if not (ROOT / f"examples/task_api/{m}.yaml").is_file()]
    if unknown:
        p.error(f"no example config for {unknown}")
    if args.sft and not (Path(args.sft) / "run.json").is_file():
        p.error(f"--sft {args.sft}: not a run directory (no run.json)")
    s = SETTINGS["quick" if args.quick else "full"]
    out_root = Path(args.out).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    sft = str(Path(args.sft).resolve()) if args.sft else None
    records = [run_method(m, s, out_root, sft) for m in methods]
    start = f"SFT run {args.sft} (orpo: base model)" if args.sft else "the embedded default model"
    print(f"Task API, {'quick smoke settings' if args.quick else 'small settings'} "
          f"({s['max_rows']} pairs, {s['max_steps']} steps, {s['max_probes']} probes x {s['max_new_tokens']} "
          f"new tokens), from {start}:\n")
    print(table(records))
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": s, "sft": args.sft, "records": records}, indent=1))
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
