"""Memory planner accuracy on CPU: predicted peak vs measured peak RSS of real `alignkit train` runs.

    .venv/bin/python bench/planner_accuracy.py [--quick] [--explain] [--only NAME,...] [--json PATH]

Each configuration runs in its own subprocess (so `ru_maxrss` is that run's peak alone) calling
`alignkit.train.run.train(cfg)` with train.max_steps=2, gradient accumulation 1, eval off, no system
prompt, no eval split; the child's run.json holds `peak_memory_mb` (ru_maxrss: Python + imports +
tokenizer + data + model + training) and `predicted_memory_mb` (`plan.memory.estimate` of the same
config on hardware "cpu", i.e. the default `Calibration`). error = predicted / measured - 1.

Data: synthetic pairs of random common words (about one token each), 3 x max_length words per
field, so that tokenization truncates every row to exactly the planned lengths: the prompt is cut
from the left to max_prompt_length = max_length / 2 (= the plan's prompt_len), then chosen and
rejected are cut from the right to max_length - prompt (= the plan's seq_len - prompt_len). Every
micro-batch is therefore the planned b x s (SFT: the chosen side). 2 x micro_batch rows: one
micro-batch per step, two steps (the second step runs with AdamW's states allocated).

Models: two tiny random Llamas with SmolLM2's vocabulary (49152) and tokenizer, saved as local
checkpoints (`tiny-a`: hidden 128, 2 layers, tied embeddings; `tiny-b`: hidden 256, 4 layers,
untied), and the real SmolLM2-135M-Instruct (`model.name_or_path: default`). Each child gets its
own empty ALIGNKIT_CACHE (the default model symlinked in), so full fine-tuning always computes its
precomputed reference table (a no-grad pass) instead of finding one cached by an earlier run.

Matrix: method (sft, dpo, simpo, orpo) x LoRA/full x micro-batch (1, 4) x max_length (64, 256) as a
balanced half: 16 tiny-model runs, each method once in every LoRA/full x batch x length margin,
plus 5 SmolLM2 runs, 2 SmolLM2 runs added after `Calibration.cpu_heap_retention` was fitted
(held out), and SmolLM2 DPO with MALLOC_MMAP_THRESHOLD_=1048576 (the planner's `cpu_allocator` fix;
its prediction omits the heap-retention term). `--quick`: 3 runs.

`--explain` instruments the children: at each stage (imports, tokenizer, data, model load, LoRA,
reference, each forward/reference forward/backward/clip/optimizer step, save) it records VmRSS and
the peak RSS *within* the stage (VmHWM, reset through /proc/self/clear_refs after every mark), and
prints them next to the planner's components. The reset can lower ru_maxrss, so in this mode the
measured peak is max(ru_maxrss, the stages' peaks).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = {  # name -> LlamaConfig fields
    "tiny-a": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=384, tie_word_embeddings=True),
    "tiny-b": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                   intermediate_size=768, tie_word_embeddings=False),
}
WORDS = ("the of and to in is it that for on with as was at by be this have from or one had not but what "
         "all were when we there can an your which their said if do will each about how up out them then "
         "she many some so these would other into has more her two like him see time could no make than "
         "first been its who now people my made over did down only way find use may water long little very "
         "after words called just where most know get through back much before go good new write our used "
         "me man too any day same right look think also around another came come work three word must "
         "because does part even place well such here take why things help put years different away again "
         "off went old number great tell men say small every found still between name should home big give "
         "air line set own under read last never us left end along while might next sound below saw "
         "something thought both few those always looked show large often together asked house world").split()


def matrix(quick: bool) -> list[dict]:
    """The configurations: name, model, method, lora, micro_batch, max_length."""
    def cfg(model, method, lora, mb, s, env=None):
        tag = "lora" if lora else "full"
        return dict(name=f"{model}/{method}-{tag}-b{mb}-s{s}" + ("+mmap" if env else ""), model=model, method=method,
                    lora=lora, micro_batch=mb, max_length=s, env=env or {})

    if quick:
        return [cfg("tiny-a", "dpo", True, 1, 64), cfg("tiny-b", "sft", False, 4, 256),
                cfg("smollm2", "dpo", True, 1, 256)]
    out = []
    cells = [(1, 64), (1, 256), (4, 64), (4, 256)]
    pairs = (("sft", "dpo"), ("simpo", "orpo"))
    for lora in (True, False):
        for k, (mb, s) in enumerate(cells):
            # sft/dpo and simpo/orpo swap cells between LoRA and full, so every method meets every
            # LoRA/full, batch and length value; the two tiny shapes alternate likewise.
            methods = pairs[(k in (1, 2)) ^ (not lora)]
            for j, m in enumerate(methods):
                out.append(cfg("tiny-a" if (j + k) % 2 == 0 else "tiny-b", m, lora, mb, s))
    out += [cfg("smollm2", "dpo", True, 1, 256), cfg("smollm2", "dpo", True, 4, 256),
            cfg("smollm2", "orpo", True, 4, 64), cfg("smollm2", "sft", False, 4, 64),
            cfg("smollm2", "simpo", False, 1, 256),
            # not used to fit Calibration.cpu_heap_retention (added after it was fitted):
            cfg("smollm2", "simpo", True, 2, 128), cfg("smollm2", "sft", True, 2, 512),
            # the planner's CPU fix "cpu_allocator": glibc returns freed blocks to the OS
            cfg("smollm2", "dpo", True, 4, 256, env={"MALLOC_MMAP_THRESHOLD_": "1048576"})]
    return out


# ---------------------------------------------------------------- parent: setup, runs, table


def make_tiny_models(workdir: Path) -> dict[str, Path]:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from alignkit.models import default_model_dir

    tok = AutoTokenizer.from_pretrained(default_model_dir())
    dirs = {}
    for name, fields in TINY.items():
        d = workdir / "models" / name
        if not (d / "model.safetensors").is_file():
            torch.manual_seed(0)
            conf = LlamaConfig(vocab_size=49152, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **fields)
            LlamaForCausalLM(conf).save_pretrained(d, safe_serialization=True)
            tok.save_pretrained(d)
        dirs[name] = d
    return dirs


def make_data(path: Path, rows: int, max_length: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    n = 3 * max_length  # far more words than tokens: every field is truncated to the planned length

    def text():
        return " ".join(rng.choice(WORDS) for _ in range(n))

    with path.open("w") as f:
        for _ in range(rows):
            f.write(json.dumps({"prompt": text(), "chosen": text(), "rejected": text()}) + "\n")


def run_config(c: dict, workdir: Path, model_dirs: dict, default_dir: Path, explain: bool) -> dict:
    slug = c["name"].replace("/", "_")
    data = workdir / "data" / f"rows{2 * c['micro_batch']}-len{c['max_length']}.jsonl"
    if not data.is_file():
        make_data(data, 2 * c["micro_batch"], c["max_length"])
    out = workdir / "runs" / slug
    cache = Path(tempfile.mkdtemp(prefix=f"cache-{slug}-", dir=workdir))
    (cache / "models").mkdir()
    (cache / "models" / default_dir.name).symlink_to(default_dir)
    s = c["max_length"]
    cfg = {
        "method": c["method"], "output_dir": str(out),
        "model": {"name_or_path": "default" if c["model"] == "smollm2" else str(model_dirs[c["model"]]),
                  "lora": {"enabled": c["lora"]}},
        "data": {"train": str(data), "eval": None, "eval_fraction": 0.0, "system_prompt_file": None,
                 "max_length": s, "max_prompt_length": s // 2, "max_rows": 2 * c["micro_batch"]},
        "train": {"max_steps": 2, "micro_batch_size": c["micro_batch"], "gradient_accumulation_steps": 1,
                  "learning_rate": 1e-5, "warmup_ratio": 0.0},
        "eval": {"enabled": False},
    }
    spec = workdir / f"{slug}.spec.json"
    spec.write_text(json.dumps({"config": cfg, "explain": explain, "explain_out": str(workdir / f"{slug}.explain.json")}))
    env = dict(os.environ, ALIGNKIT_CACHE=str(cache), PYTHONPATH=str(ROOT / "src"), **c["env"])
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(spec)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{c['name']} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    info = json.loads((out / "run.json").read_text())
    measured, predicted = info["peak_memory_mb"], info["predicted_memory_mb"]
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    res = dict(name=c["name"], predicted_mb=round(predicted, 1), measured_mb=round(measured, 1), seconds=round(seconds, 1),
               tokens_per_s=round(steps[-1]["tokens_per_s"], 1), config=cfg)
    if explain:
        ex = json.loads((workdir / f"{slug}.explain.json").read_text())
        res["measured_mb"] = round(max(measured, max(r["peak_mb"] for r in ex["stages"])), 1)
        res["explain"] = ex
    res["error"] = round(res["predicted_mb"] / res["measured_mb"] - 1, 4)
    return res


def run_probe() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "probe"], capture_output=True,
                          text=True, env=env, cwd=ROOT, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plan_input(cfg: dict, mmap: bool):
    """The planner's input for a child's run config, with the allocator policy the child ran under."""
    from alignkit.config import RunConfig
    from alignkit.models import base_of
    from alignkit.plan.memory import plan_input_from_config

    rc = RunConfig.model_validate(cfg)
    inp = plan_input_from_config(rc, arch=base_of(rc.model.name_or_path))
    inp.cpu_allocator = "mmap" if mmap else "glibc"
    return inp


def probe_prediction(cfg: dict, calib, env: dict) -> float:
    """The planner's total (MB) for `cfg` with the probe's measured constants instead of the defaults."""
    from alignkit.plan.hardware import get_hardware
    from alignkit.plan.memory import estimate

    return estimate(plan_input(cfg, "MALLOC_MMAP_THRESHOLD_" in env), get_hardware("cpu"), calib).total / 2**20


def retention_sweep(results: list[dict], workdir: Path, ks=(0.0, 1.0, 1.25, 1.5, 1.75, 2.0)) -> dict[float, tuple]:
    """(median, max) |error| of the same runs re-predicted with other `Calibration.cpu_heap_retention`
    values: how sensitive the fit is (the runs are not repeated; their configs are re-planned)."""
    from dataclasses import replace

    import yaml

    from alignkit.plan.hardware import get_hardware
    from alignkit.plan.memory import CALIBRATION, estimate

    inputs = []
    for r in results:
        cfg = yaml.safe_load((workdir / "runs" / r["name"].replace("/", "_") / "config.yaml").read_text())
        inputs.append((plan_input(cfg, r["name"].endswith("+mmap")), r["measured_mb"]))
    out = {}
    for k in ks:
        calib = replace(CALIBRATION, cpu_heap_retention=k)
        errs = [abs(estimate(inp, get_hardware("cpu"), calib).total / 2**20 / m - 1) for inp, m in inputs]
        out[k] = (statistics.median(errs), max(errs))
    return out


def print_explain(r: dict) -> None:
    ex = r["explain"]
    print(f"\n== {r['name']}: predicted {r['predicted_mb']:.0f} MB, measured {r['measured_mb']:.0f} MB")
    print(f"   tokens: {ex['tokens']}")
    print(f"   {'stage':34s} {'RSS after':>10s} {'peak in stage':>14s}")
    for st in ex["stages"]:
        print(f"   {st['stage']:34s} {st['rss_mb']:10.1f} {st['peak_mb']:14.1f}")
    print(f"   planner ({ex['plan']['peak_phase']} phase is the peak):")
    for name, comp in ex["plan"]["components"].items():
        print(f"   {name:34s} {comp['bytes'] / 2**20:10.1f} MB  {comp['phase']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 configurations")
    ap.add_argument("--explain", action="store_true", help="per-stage RSS next to the planner's components")
    ap.add_argument("--only", help="comma-separated substrings of configuration names")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--workdir", help="models, data and runs (default: a new temporary directory)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "probe":
        return probe_child()
    if args.child:
        return child(Path(args.child))

    sys.path.insert(0, str(ROOT / "src"))
    from alignkit.models import default_model_dir

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="alignkit-planner-bench-")).resolve()
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    configs = matrix(args.quick)
    if args.only:
        keys = args.only.split(",")
        configs = [c for c in configs if any(k in c["name"] for k in keys)]
    default_dir = default_model_dir().resolve()
    model_dirs = make_tiny_models(workdir)
    from dataclasses import replace

    from alignkit.plan.memory import CALIBRATION

    probe = run_probe()
    calib = replace(CALIBRATION, cpu_baseline=int(probe["rss_after_tokenizer_mb"] * 2**20),
                    logit_bytes_train=round(probe["logit_bytes_train"]))
    print(f"probe: RSS after imports {probe['rss_after_imports_mb']:.0f} MB, after the tokenizer "
          f"{probe['rss_after_tokenizer_mb']:.0f} MB (Calibration.cpu_baseline {CALIBRATION.cpu_baseline / 2**20:.0f}); "
          f"log-softmax fwd+bwd {probe['logit_bytes_train']:.1f} B/element "
          f"(Calibration.logit_bytes_train {CALIBRATION.logit_bytes_train})")
    print("'probe' column: the planner with those two measured constants (what-if, not what run.json records)")
    results = []
    print(f"{'configuration':32s} {'predicted MB':>12s} {'measured MB':>12s} {'error':>8s} {'probe MB':>9s} "
          f"{'error':>7s}", flush=True)
    for c in configs:
        r = run_config(c, workdir, model_dirs, default_dir, args.explain)
        r["probe_mb"] = round(probe_prediction(r.pop("config"), calib, c["env"]), 1)
        r["probe_error"] = round(r["probe_mb"] / r["measured_mb"] - 1, 4)
        results.append(r)
        print(f"{r['name']:32s} {r['predicted_mb']:12.1f} {r['measured_mb']:12.1f} {r['error']:+8.1%} "
              f"{r['probe_mb']:9.1f} {r['probe_error']:+7.1%}   ({r['seconds']:.0f} s, last step "
              f"{r['tokens_per_s']:.0f} tok/s)", flush=True)
    errs = [abs(r["error"]) for r in results]
    med, mx = statistics.median(errs), max(errs)
    print(f"median |error| {med:.1%}   max |error| {mx:.1%}   ({len(results)} configurations; "
          f"target: all within 20%, median within 10%)")
    perr = [abs(r["probe_error"]) for r in results]
    print(f"with the probe's constants: median |error| {statistics.median(perr):.1%}   max |error| {max(perr):.1%}")
    sweep = retention_sweep(results, workdir)
    print("the same runs re-planned with other cpu_heap_retention (k) values: " + ", ".join(
        f"k={k:g}: median {med_:.1%} max {max_:.1%}" for k, (med_, max_) in sweep.items()))
    if args.explain:
        for r in results:
            print_explain(r)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "configs": [{k: r[k] for k in ("name", "predicted_mb", "measured_mb", "error", "tokens_per_s")}
                        for r in results],
            "median_abs_error": round(med, 4), "max_abs_error": round(mx, 4),
            "probe": probe, "probe_predictions": {r["name"]: r["probe_mb"] for r in results},
        }, indent=1))
    return 0


# ---------------------------------------------------------------- child: one training run


def _status_mb() -> tuple[float, float]:
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, v = line.split(":")
                vals[key] = int(v.split()[0]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


class _Stages:
    """RSS at each mark and the peak since the previous mark (VmHWM, reset after each mark)."""

    def __init__(self):
        self.rows: list[dict] = []
        self.reset_ok = self._reset()

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # 5 = reset the peak RSS (VmHWM) to the current RSS
            return True
        except OSError:
            return False

    def mark(self, stage: str) -> None:
        rss, hwm = _status_mb()
        self.rows.append({"stage": stage, "rss_mb": round(rss, 1), "peak_mb": round(hwm, 1)})
        self._reset()


def _instrument(stages: _Stages, tokens: dict) -> None:
    import torch
    from accelerate import Accelerator

    import alignkit.train.loop as loop
    import alignkit.train.run as run
    from alignkit.train import objectives
    from alignkit.train import reference as refs

    step = {"n": 1}

    def after(owner, name, label):
        fn = getattr(owner, name)

        def wrapped(*a, **kw):
            out = fn(*a, **kw)
            stages.mark(label() if callable(label) else label)
            return out
        setattr(owner, name, wrapped)

    for name, label in (("load_tokenizer", "tokenizer"), ("prepare_data", "data (read + tokenize)"),
                        ("run_plan", "planner"), ("load_model", "model load"), ("apply_lora", "LoRA"),
                        ("_reference", "reference setup"), ("save_final", "save final/")):
        after(run, name, label)
    after(loop, "_clip", lambda: f"step {step['n']}: clip grad norm")
    fwd = objectives.PolicyForward.forward

    def forward(self, batch):
        tokens.setdefault("forward", []).append(list(batch.input_ids.shape) + [int(batch.targets.shape[0])])
        out = fwd(self, batch)
        stages.mark(f"step {step['n']}: policy forward")
        return out
    objectives.PolicyForward.forward = forward
    for cls in (refs.AdapterReference, refs.CopyReference):
        after(cls, "logps", lambda: f"step {step['n']}: reference forward")
    after(Accelerator, "backward", lambda: f"step {step['n']}: backward")
    sched_step = torch.optim.lr_scheduler.LRScheduler.step

    def lr_step(self, *a, **kw):
        out = sched_step(self, *a, **kw)
        if getattr(self, "_bench_init_done", False):
            stages.mark(f"step {step['n']}: optimizer step")
            step["n"] += 1
        self._bench_init_done = True
        return out
    torch.optim.lr_scheduler.LRScheduler.step = lr_step


def probe_child() -> int:
    """Measure the CPU constants directly, in a fresh process: the RSS after alignkit's imports and
    after loading the SmolLM2 tokenizer (`cpu_baseline`), and the peak bytes per (position x vocab)
    element of a forward + backward through alignkit's LM-head log-softmax (`logit_bytes_train`),
    with the hidden states requiring grad as in training. Printed as one JSON line."""
    rss_imports = _status_mb()[0]
    import torch

    from alignkit.logprobs import CHUNK, _token_logps
    from alignkit.models import default_model_dir, load_tokenizer
    from alignkit.train.run import train  # noqa: F401  (the child's imports, exactly)

    rss_imports = _status_mb()[0]
    load_tokenizer(str(default_model_dir()))
    rss_tok = _status_mb()[0]
    n, v, h = CHUNK, 49152, 64
    head = torch.nn.Linear(h, v, bias=False).requires_grad_(False)
    hidden = torch.randn(n, h, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    per_elem = []
    for _ in range(3):  # the first round includes the allocator's warm-up; report the steady rounds
        start = _status_mb()[0]
        _Stages._reset()
        _token_logps(hidden, head, targets).sum().backward()
        per_elem.append((_status_mb()[1] - start) * 2**20 / (n * v))
        hidden.grad = None
    print(json.dumps({"rss_after_imports_mb": round(rss_imports, 1), "rss_after_tokenizer_mb": round(rss_tok, 1),
                      "logit_bytes_train": round(min(per_elem[1:]), 2)}))
    return 0


def child(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    stages = _Stages() if spec["explain"] else None
    from alignkit.config import RunConfig
    from alignkit.train.run import train

    cfg = RunConfig.model_validate(spec["config"])
    if stages is None:
        train(cfg, overwrite=True)
        return 0
    tokens: dict = {}
    stages.mark("python + imports")
    _instrument(stages, tokens)
    train(cfg, overwrite=True)
    from alignkit.models import base_of
    from alignkit.plan.hardware import get_hardware
    from alignkit.plan.memory import estimate, plan_input_from_config, plan_to_dict

    root = base_of(cfg.model.name_or_path)
    plan = estimate(plan_input_from_config(cfg, arch=root), get_hardware("cpu"))
    Path(spec["explain_out"]).write_text(json.dumps({
        "stages": stages.rows, "reset_ok": stages.reset_ok, "plan": plan_to_dict(plan),
        "tokens": {"forward (rows, length, head positions)": tokens.get("forward", [])[:1]},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
