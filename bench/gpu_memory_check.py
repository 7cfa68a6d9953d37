"""The memory planner against a real CUDA GPU: predicted vs torch.cuda peak, a few SmolLM2 runs.

    .venv/bin/python bench/gpu_memory_check.py [--hardware h200|auto] [--json PATH]

On a machine without CUDA it prints "no CUDA device: skipped" and exits 0.

Each configuration runs `alignkit.train.run.train(cfg)` in its own subprocess (so the CUDA peak
counters start at zero), on the embedded SmolLM2-135M-Instruct, 2 optimizer steps, eval off, with
synthetic pairs that fill max_length exactly (bench/planner_accuracy.py's data: prompt cut to
max_length / 2, completions to the rest). The child reports `torch.cuda.max_memory_allocated`
(tensors only: what run.json's peak_memory_mb holds on CUDA) and `max_memory_reserved` (plus the
caching allocator's unused blocks). The planner's total also counts the CUDA context
(`Calibration.cuda_context`), which neither counter sees, so the comparable prediction is
"predicted - context"; both are printed. Predictions use `estimate(plan_input_from_config(cfg),
HARDWARE)` with HARDWARE "h200" (default) or "auto" (the detected device).

Configurations (dtype auto = bf16 on a bf16 GPU, mixed precision bf16):
- smollm2/dpo-lora-b4-s256: LoRA r=16 all linear, reference = adapter off;
- smollm2/dpo-full-b4-s256: full fine-tuning, reference precomputed;
- smollm2/sft-full-b4-s256: full fine-tuning, no reference;
- smollm2/dpo-qlora-b4-s256: 4-bit NF4 base + LoRA (only if bitsandbytes is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

CONFIGS = [
    dict(name="smollm2/dpo-lora-b4-s256", method="dpo", lora=True, quant="none"),
    dict(name="smollm2/dpo-full-b4-s256", method="dpo", lora=False, quant="none"),
    dict(name="smollm2/sft-full-b4-s256", method="sft", lora=False, quant="none"),
    dict(name="smollm2/dpo-qlora-b4-s256", method="dpo", lora=True, quant="4bit"),
]
MB, S = 4, 256


def run_config(c: dict, workdir: Path, data: Path) -> dict:
    slug = c["name"].replace("/", "_")
    cfg = {
        "method": c["method"], "output_dir": str(workdir / "runs" / slug),
        "model": {"name_or_path": "default", "quantization": c["quant"], "lora": {"enabled": c["lora"]}},
        "data": {"train": str(data), "eval": None, "eval_fraction": 0.0, "system_prompt_file": None,
                 "max_length": S, "max_prompt_length": S // 2, "max_rows": 2 * MB},
        "train": {"max_steps": 2, "micro_batch_size": MB, "gradient_accumulation_steps": 1,
                  "learning_rate": 1e-5, "warmup_ratio": 0.0},
        "eval": {"enabled": False},
    }
    spec = workdir / f"{slug}.json"
    out = workdir / f"{slug}.result.json"
    spec.write_text(json.dumps({"config": cfg, "out": str(out)}))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(spec)],
                          capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    if proc.returncode != 0:
        return dict(name=c["name"], error=(proc.stdout[-1500:] + proc.stderr[-1500:]).strip())
    return dict(name=c["name"], **json.loads(out.read_text()))


def child(spec_path: Path) -> int:
    import torch

    from alignkit.config import RunConfig
    from alignkit.train.run import train

    spec = json.loads(spec_path.read_text())
    cfg = RunConfig.model_validate(spec["config"])
    train(cfg, overwrite=True, force=True)
    Path(spec["out"]).write_text(json.dumps({
        "allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
        "reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
        "config": spec["config"],
    }))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hardware", default="h200", help="planner hardware: a catalog name or 'auto' (detected)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--workdir", help="data and runs (default: a new temporary directory)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(Path(args.child))

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    from planner_accuracy import make_data

    from alignkit.config import RunConfig
    from alignkit.plan.hardware import get_hardware
    from alignkit.plan.memory import CALIBRATION, estimate, plan_input_from_config

    try:
        import bitsandbytes  # noqa: F401
        configs = CONFIGS
    except ImportError:
        configs = [c for c in CONFIGS if c["quant"] == "none"]
        print("bitsandbytes not installed: the 4-bit QLoRA configuration is skipped")
    hw = get_hardware(args.hardware)
    print(f"device: {torch.cuda.get_device_name(0)}; planner hardware: {hw.name}")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="alignkit-gpu-check-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "pairs.jsonl"
    make_data(data, 2 * MB, S)
    ctx = CALIBRATION.cuda_context / 2**20
    print(f"{'configuration':28s} {'predicted':>10s} {'pred-ctx':>10s} {'allocated':>10s} {'reserved':>10s} "
          f"{'error':>8s}   (MB; error = (predicted - context) / allocated - 1)")
    results = []
    for c in configs:
        r = run_config(c, workdir, data)
        if "error" in r:
            print(f"{c['name']:28s} FAILED\n{r['error']}")
            results.append(r)
            continue
        plan = estimate(plan_input_from_config(RunConfig.model_validate(r.pop("config"))), hw)
        r.update(predicted_mb=plan.total / 2**20, predicted_minus_context_mb=plan.total / 2**20 - ctx,
                 components_mb={k: v / 2**20 for k, v in plan.components.items()}, peak_phase=plan.peak_phase)
        r["error"] = r["predicted_minus_context_mb"] / r["allocated_mb"] - 1
        results.append(r)
        print(f"{r['name']:28s} {r['predicted_mb']:10.0f} {r['predicted_minus_context_mb']:10.0f} "
              f"{r['allocated_mb']:10.0f} {r['reserved_mb']:10.0f} {r['error']:+8.1%}", flush=True)
    for r in results:
        if "components_mb" in r:
            parts = ", ".join(f"{k} {v:.0f}" for k, v in r["components_mb"].items())
            print(f"  {r['name']} ({r['peak_phase']} peak): {parts}")
    if args.json:
        Path(args.json).write_text(json.dumps({"hardware": hw.name, "configs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
