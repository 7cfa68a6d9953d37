"""Online RL steps (PPO, GRPO, ...): where a step's time goes, and rollouts vs plain `model.generate`.

    .venv/bin/python bench/online_rl.py [--model default|DIR] [--methods ppo,grpo] [--steps 3]
                                        [--reward task_api|RUN|pkg.module:fn] [--json OUT] [--out DIR]

Setup (every method the same): `--model` (default: the embedded SmolLM2-135M-Instruct), fp32 on CPU,
LoRA r=16 alpha=32 on the default targets, the Task API prompts (`--prompts`, default
examples/task_api/data/train.jsonl, with examples/task_api/system_prompt.txt as the system message,
prompts cut to 256 tokens), the reward `--reward` (default `task_api`, the gold judge: no reward model),
`rollout_prompts` 4 x `num_generations` 4 rollouts per step, 48 new tokens, temperature 0.7,
micro-batch 8, every other field its TrainConfig default (ppo_epochs 2, num_minibatches 1, kl_coef 0.05).

What is measured. Each method runs `alignkit.train.run.train` for `--steps` steps in its own
subprocess and its own fresh run directory (so `ru_maxrss` at the child's end is that method's peak
RSS), then its `log.jsonl` is read: per step `time/generation` (the `alignkit.sample` rollout),
`time/scoring` (the judge), `time/update` (old/reference log-probs, advantages, the PPO epochs) and
the rollout's real tokens (response_length x rollouts). Step 1 is the warm-up (first-call
allocations) and is left out of the means when there are 2 or more steps; the JSON keeps every step.
rollout tok/s = real rollout tokens / generation seconds over the measured steps.

Plain generate, in one more subprocess: the base model (no LoRA) on exactly the prompts of the
measured steps (the same seeded prompt order as the trainer), each repeated num_generations times,
left-padded, all rollouts of a step in one `model.generate(do_sample=True, temperature=T, top_k=0,
top_p=1.0, max_new_tokens=48)` call, after a warm-up call. Its tokens are counted the same way (up to
and including the first stop token). `vs generate` = rollout tok/s / generate tok/s: rollouts must not
be slower than plain generate. They carry the unmerged LoRA adapter and sample from a policy that
changes every step (other answer lengths), so expect noise of a few percent. One round, generate
first; the thread count is torch's default for the process (set OMP_NUM_THREADS to change it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "examples" / "task_api" / "data" / "train.jsonl"
SYSTEM = ROOT / "examples" / "task_api" / "system_prompt.txt"
SHAPE = dict(rollout_prompts=4, num_generations=4, max_new_tokens=48, temperature=0.7, micro_batch_size=8)
MAX_PROMPT, SEED = 256, 0
TIMES = ("generation", "scoring", "update")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _config(args, method: str, out: Path):
    from alignkit.config import RunConfig

    return RunConfig.model_validate({
        "method": method, "output_dir": str(out),
        "model": {"name_or_path": args.model, "dtype": "float32", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
        "data": {"train": args.prompts, "eval": None, "eval_fraction": 0.0, "system_prompt_file": args.system_prompt,
                 "max_prompt_length": MAX_PROMPT},
        "train": {**SHAPE, "reward_model": args.reward, "max_steps": args.steps, "seed": SEED,
                  "mixed_precision": "no"},
        "eval": {"enabled": False}})  # fmt: skip


def child_method(args) -> dict:
    import torch

    from alignkit.train.run import train

    run = train(_config(args, args.method, Path(args.run_dir)), overwrite=True, console=lambda *a: None)
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    return {"rows": rows, "peak_rss_mb": _peak_rss_mb(), "threads": torch.get_num_threads(), "run_dir": str(run)}


def child_generate(args) -> dict:
    import torch

    from alignkit.data import formats
    from alignkit.data.tokenize import encode_prompt
    from alignkit.models import load_model, load_tokenizer
    from alignkit.sample import cut_at_stop, left_pad, pad_id, stop_ids
    from alignkit.train.ppo import _prompt_order

    tok = load_tokenizer(args.model)
    model = load_model(args.model, dtype="float32").eval()
    system = Path(args.system_prompt).read_text(encoding="utf-8").strip() if args.system_prompt else None
    prompts, _ = formats.load_prompts(args.prompts, system=system)  # as alignkit.train.ppo.run_online
    ids = [encode_prompt(tok, p.prompt, p.source)[-MAX_PROMPT:] for p in prompts]
    stops = stop_ids(model, tok)
    pad = pad_id(tok, stops)
    k, n, T = SHAPE["num_generations"], SHAPE["rollout_prompts"], SHAPE["temperature"]
    order = _prompt_order(len(ids), args.steps * n, SEED)  # the trainer's prompts, step by step
    steps = range(1 if args.steps > 1 else 0, args.steps)  # the measured steps
    torch.manual_seed(SEED)

    def generate(batch, new_tokens):
        x, mask = left_pad(batch, pad, "cpu")
        with torch.inference_mode():
            out = model.generate(input_ids=x, attention_mask=mask, do_sample=True, temperature=T, top_k=0,
                                 top_p=1.0, max_new_tokens=new_tokens, eos_token_id=stops, pad_token_id=pad,
                                 repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0)
        return [cut_at_stop(row, stops) for row in out[:, x.shape[1]:].tolist()]

    generate([ids[order[0]]] * 2, 2)  # warm-up
    tokens, seconds = 0, 0.0
    for s in steps:
        batch = [ids[i] for i in order[s * n:(s + 1) * n] for _ in range(k)]
        t0 = time.perf_counter()
        got = generate(batch, SHAPE["max_new_tokens"])
        seconds += time.perf_counter() - t0
        tokens += sum(len(c) for c in got)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "batches": len(steps),
            "rows_per_batch": n * k, "peak_rss_mb": _peak_rss_mb(), "threads": torch.get_num_threads()}


CHILDREN = {"method": child_method, "generate": child_generate}


def run_child(kind: str, args, **extra) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, __file__, "--child", kind, "--child-out", str(out), "--model", args.model,
           "--steps", str(args.steps), "--reward", args.reward, "--prompts", args.prompts,
           "--system-prompt", args.system_prompt or ""]
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"child {kind} {extra} failed (exit {proc.returncode})")
    result = json.loads(out.read_text())
    out.unlink()
    result["process_seconds"] = time.perf_counter() - t0
    return result


def summarize(res: dict) -> dict:
    """Means over the measured steps (all but the first when there are 2 or more)."""
    rows = res["rows"]
    measured = rows[1:] if len(rows) > 1 else rows
    rollouts = SHAPE["rollout_prompts"] * SHAPE["num_generations"]
    secs = {t: sum(r[f"time/{t}"] for r in measured) / len(measured) for t in TIMES}
    step = sum(secs.values())
    tokens = [r["response_length"] * rollouts for r in measured]
    gen_s = sum(t / r["rollout_tokens_per_s"] for t, r in zip(tokens, measured, strict=True))  # unrounded
    out = {f"{t}_s": secs[t] for t in TIMES} | {f"{t}_share": secs[t] / step for t in TIMES}
    out.update(step_s=step, rollout_tokens=sum(tokens), measured_steps=len(measured),
               rollout_tokens_per_s=sum(tokens) / gen_s,
               peak_rss_mb=res["peak_rss_mb"], threads=res["threads"], process_seconds=res["process_seconds"])
    for key in ("score", "kl", "response_length", "eos_rate"):
        out[key] = sum(r[key] for r in measured) / len(measured)
    return out | {"steps": rows}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default", help="`default` (SmolLM2-135M-Instruct) or a checkpoint dir")
    p.add_argument("--methods", default="ppo,grpo")
    p.add_argument("--steps", type=int, default=3, help="steps per method; the first is the warm-up")
    p.add_argument("--reward", default="task_api", help="a judge name, a reward run or package.module:function")
    p.add_argument("--prompts", default=str(PROMPTS))
    p.add_argument("--system-prompt", default=str(SYSTEM), help="a text file; '' for none")
    p.add_argument("--out", help="run directories go under this folder (default: a temporary one)")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.system_prompt = str(Path(args.system_prompt).resolve()) if args.system_prompt else None
    args.prompts = str(Path(args.prompts).resolve())
    if args.child:
        Path(args.child_out).write_text(json.dumps(CHILDREN[args.child](args)))
        return

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    log(f"load average {os.getloadavg()[0]:.2f}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results: dict = {"generate": run_child("generate", args)}
    g = results["generate"]
    log(f"  generate: {g['tokens_per_s']:.1f} tok/s ({g['process_seconds']:.0f} s process)")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out) if args.out else Path(tmp)
        for m in methods:
            results[m] = summarize(run_child("method", args, method=m, run_dir=base / m))
            results[m]["vs_generate"] = results[m]["rollout_tokens_per_s"] / g["tokens_per_s"]
            log(f"  {m}: {results[m]['step_s']:.1f} s/step ({results[m]['process_seconds']:.0f} s process)")
    rollouts = SHAPE["rollout_prompts"] * SHAPE["num_generations"]
    print(f"\n{args.model}, reward {args.reward}: {SHAPE['rollout_prompts']} prompts x {SHAPE['num_generations']} "
          f"answers, {SHAPE['max_new_tokens']} new tokens, T {SHAPE['temperature']}, {args.steps} steps "
          f"(means over {max(args.steps - 1, 1)}), {g['threads']} thread(s)")
    print(f"{'method':8s} {'gen s':>7s} {'score s':>8s} {'update s':>9s} {'split gen/score/update':>23s} "
          f"{'tok/s':>7s} {'vs generate':>11s} {'RSS MB':>7s}")  # fmt: skip
    for m in methods:
        r = results[m]
        split = "/".join(f"{r[f'{t}_share']:.0%}" for t in TIMES)
        print(f"{m:8s} {r['generation_s']:7.2f} {r['scoring_s']:8.2f} {r['update_s']:9.2f} {split:>23s} "
              f"{r['rollout_tokens_per_s']:7.1f} {r['vs_generate']:10.2f}x {r['peak_rss_mb']:7.0f}")  # fmt: skip
    print(f"{'generate':8s} {g['seconds'] / max(g['batches'], 1):7.2f} {'':8s} {'':9s} {'':>23s} "
          f"{g['tokens_per_s']:7.1f} {1:10.2f}x {g['peak_rss_mb']:7.0f}  (HF generate, {rollouts} rows a batch)")
    print("rollouts must not be slower than plain generate: "
          + ", ".join(f"{m} {results[m]['vs_generate']:.2f}x" for m in methods))
    print(f"(total {time.perf_counter() - t_start:.0f} s; load average now {os.getloadavg()[0]:.2f})")
    if args.json:
        meta = {"model": args.model, "reward": args.reward, "steps": args.steps, "prompts": args.prompts,
                "system_prompt": args.system_prompt, "max_prompt_length": MAX_PROMPT, **SHAPE}
        Path(args.json).write_text(json.dumps({**results, "meta": meta}, indent=1))


if __name__ == "__main__":
    main()
