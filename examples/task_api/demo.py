"""The Task API demo: SFT, then DPO with an NLL anchor (RPO), on the embedded SmolLM2-135M-Instruct, CPU only.

Each stage is an ordinary run (`alignkit train CONFIG overrides...`); the preference stage starts
from the SFT run, so its reference is the SFT model (the DPO adapter switched off). At the end it
prints how often the model refuses harmful requests and answers legitimate ones with valid task
JSON: base -> SFT -> SFT+RPO.

Why RPO and not plain DPO for the second stage: measured with `--method dpo`, plain DPO raises the
harmful refusals but the task JSON breaks (the model keeps talking after the JSON: DPO lowered the
end-of-answer likelihood along with the rejected answers), and `alignkit diagnose runs/demo` names it
(task_regression -> method=rpo). RPO is the same DPO loss plus the chosen answers' NLL.

    python examples/task_api/demo.py [--method dpo|rpo] [--rows N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from alignkit.cli import main as alignkit

HERE = Path(__file__).parent
ROWS = ("refusal_rate/harmful", "over_refusal/benign", "over_refusal/alarming", "task_valid/benign",
        "reward_accuracy", "kl", "response_length")


def stage(config: str, *overrides: str) -> None:
    t = time.perf_counter()
    code = alignkit(["train", str(HERE / config), "--overwrite", *overrides])
    if code:
        sys.exit(code)
    print(f"[demo] {config} finished in {time.perf_counter() - t:.0f}s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=320, help="training rows per stage")
    ap.add_argument("--out", default="runs")
    ap.add_argument("--method", default="rpo", choices=["rpo", "dpo"], help="the preference stage")
    args = ap.parse_args()
    t0 = time.perf_counter()
    sft, dpo = f"{args.out}/demo-sft", f"{args.out}/demo"
    stage("sft.yaml", f"output_dir={sft}", f"data.max_rows={args.rows}")
    stage(f"{args.method}.yaml", f"output_dir={dpo}", f"model.name_or_path={sft}", f"data.max_rows={args.rows}",
          "data.max_eval_rows=64")
    m1 = json.loads(Path(sft, "metrics.json").read_text())
    m2 = json.loads(Path(dpo, "metrics.json").read_text())
    cols = {"base": m1["before"], "after SFT": m1["after"], f"after SFT+{args.method.upper()}": m2["after"]}
    print("\nTask API held-out probes (greedy):")
    print(f"{'metric':<24}" + "".join(f"{c:>16}" for c in cols))
    for k in ROWS:
        print(f"{k:<24}" + "".join(f"{_fmt(v.get(k)):>16}" for v in cols.values()))
    print(f"\ntotal {time.perf_counter() - t0:.0f}s; reports: {sft}/report.md, {dpo}/report.md; "
          f"diagnosis: alignkit diagnose {dpo}")
    print(f"export the final model: alignkit export {dpo} --merge --out merged/")


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


if __name__ == "__main__":
    main()
