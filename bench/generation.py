"""Greedy generation throughput and peak memory: HF `model.generate` vs alignkit's decode loop.

    .venv/bin/python bench/generation.py [--quick] [--json PATH]

Setup (the same for every variant): the embedded SmolLM2-135M-Instruct (`load_model("default")`,
fp32 on CPU), the 90 Task API probe prompts (`examples/task_api/data/probes.jsonl`, field `prompt`)
as `[system, user]` conversations with `examples/task_api/system_prompt.txt` as the system message,
through the chat template; greedy, 48 new tokens, batch 32, stop ids `stop_ids(model, tokenizer)`.
Prompts are sorted by length (longest first) and left-padded for every variant, so each runs the
same batches:
- generate:    `model.generate(do_sample=False)` per batch, with the neutral repetition settings
               the evaluation used before it moved to `alignkit.sample` (the old `generate_ids`).
- sample_fp32: `alignkit.sample.sample(do_sample=False)` on the model as it is.
- sample_bf16: the same with `decode_dtype=torch.bfloat16` (a bf16 copy of the weights, made inside
               the timed call, as every caller pays for it).
- generate_b96, sample_bf16_b96: the two at batch 96, every prompt in one batch (the sampler's best
               setting; generate at the same batch for a fair ratio).

What is timed: one pass over all prompts (prefill and decode of every batch), after a warm-up call
on two prompts. tokens/s = generated tokens (each completion up to and including its stop token,
or 48 when it never stopped) / seconds. Each variant runs in its own subprocess, so `ru_maxrss` at
its end is that variant's own peak RSS (model load included). One round, variants in the order
above; `same_as_generate` is the fraction of prompts whose completion equals `generate`'s token for
token. The thread count is torch's default for the process (set OMP_NUM_THREADS to change it) and is
recorded in the JSON.
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
PROBES = ROOT / "examples" / "task_api" / "data" / "probes.jsonl"
SYSTEM = ROOT / "examples" / "task_api" / "system_prompt.txt"

MAX_NEW, BATCH, BIG = 48, 32, 96
# name -> (decoder, bf16 weights, batch). The *_b96 pair runs every probe in one batch (the evaluation's
# default batch_size is 64; PPO's rollouts are one batch of prompts x samples).
VARIANTS = {"generate": ("generate", False, BATCH), "sample_fp32": ("sample", False, BATCH),
            "sample_bf16": ("sample", True, BATCH), "generate_b96": ("generate", False, BIG),
            "sample_bf16_b96": ("sample", True, BIG)}


def _conversations(quick: bool) -> list[list[dict]]:
    system = SYSTEM.read_text(encoding="utf-8").strip()
    probes = [json.loads(line) for line in PROBES.read_text(encoding="utf-8").splitlines() if line.strip()]
    convs = [[{"role": "system", "content": system}, {"role": "user", "content": p["prompt"]}] for p in probes]
    return convs[:6] if quick else convs


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _hf_generate(model, prompts, stops, pad, max_new: int, batch: int) -> list[list[int]]:
    """The old evaluation path: the same length-sorted, left-padded batches through `model.generate`."""
    import torch

    from alignkit.sample import cut_at_stop, left_pad

    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            ids, mask = left_pad([prompts[i] for i in idx], pad, "cpu")
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 eos_token_id=stops, pad_token_id=pad, repetition_penalty=1.0,
                                 no_repeat_ngram_size=0, min_new_tokens=0)
            for row, i in enumerate(idx):
                out[i] = cut_at_stop(gen[row, ids.shape[1]:].tolist(), stops)
    return out


def child(variant: str, quick: bool) -> dict:
    import torch

    from alignkit.models import load_model, load_tokenizer
    from alignkit.sample import encode_prompts, pad_id, sample, stop_ids

    model = load_model("default", dtype="float32").eval()
    tok = load_tokenizer("default")
    prompts = encode_prompts(tok, _conversations(quick))
    stops = stop_ids(model, tok)
    pad = pad_id(tok, stops)
    max_new = 8 if quick else MAX_NEW

    kind, bf16, batch = VARIANTS[variant]

    def run(ps, n):
        if kind == "generate":
            return _hf_generate(model, ps, stops, pad, n, batch)
        return sample(model, ps, stop_ids=stops, pad_id=pad, max_new_tokens=n, do_sample=False,
                      batch_size=batch, decode_dtype=torch.bfloat16 if bf16 else None).completion_ids

    run(prompts[:2], 2)  # warm-up: first-call allocations and kernel selection
    t0 = time.perf_counter()
    completions = run(prompts, max_new)
    seconds = time.perf_counter() - t0
    tokens = sum(len(c) for c in completions)
    return {"variant": variant, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "stopped": sum(bool(c) and c[-1] in stops for c in completions), "prompts": len(prompts),
            "prompt_tokens": sum(len(p) for p in prompts), "peak_rss_mb": _peak_rss_mb(),
            "threads": torch.get_num_threads(), "batch_size": batch, "completions": completions}


def run_child(variant: str, quick: bool) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, __file__, "--child", variant, "--out", str(out)] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"child {variant} failed (exit {proc.returncode})")
    result = json.loads(out.read_text())
    out.unlink()
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke check: 6 prompts, 8 new tokens")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        Path(args.out).write_text(json.dumps(child(args.child, args.quick)))
        return

    t_start = time.perf_counter()
    print(f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    results = {}
    for v in VARIANTS:
        results[v] = run_child(v, args.quick)
        print(f"  {v}: {results[v]['seconds']:.1f} s", file=sys.stderr, flush=True)
    base = results["generate"]
    for r in results.values():
        r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["peak_rss_ratio"] = r["peak_rss_mb"] / base["peak_rss_mb"]
        r["same_as_generate"] = sum(a == b for a, b in zip(r["completions"], base["completions"], strict=True)) \
            / len(base["completions"])
    print(f"\n{base['prompts']} prompts ({base['prompt_tokens']} prompt tokens), greedy, "
          f"{8 if args.quick else MAX_NEW} new tokens, {base['threads']} thread(s); speedup against generate "
          f"at batch {BATCH}, and (last column) against generate at the same batch")
    print(f"{'variant':16s} {'batch':>5s} {'tokens':>7s} {'seconds':>8s} {'tok/s':>7s} {'speedup':>8s} {'RSS MB':>7s} "
          f"{'RSS ratio':>9s} {'same as generate':>16s} {'vs same batch':>13s}")  # fmt: skip
    for v, r in results.items():
        same = results["generate_b96" if r["batch_size"] == BIG else "generate"]
        r["speedup_same_batch"] = r["tokens_per_s"] / same["tokens_per_s"]
        print(f"{v:16s} {r['batch_size']:5d} {r['tokens']:7d} {r['seconds']:8.1f} {r['tokens_per_s']:7.1f} {r['speedup']:7.2f}x "
              f"{r['peak_rss_mb']:7.0f} {r['peak_rss_ratio']:8.2f}x {r['same_as_generate']:16.0%} {r['speedup_same_batch']:12.2f}x")  # fmt: skip
    print(f"(total {time.perf_counter() - t_start:.0f} s; load average now {os.getloadavg()[0]:.2f})")
    if args.json:
        slim = {v: {k: x for k, x in r.items() if k != "completions"} for v, r in results.items()}
        meta = {"quick": args.quick, "max_new_tokens": 8 if args.quick else MAX_NEW, "batch_size": BATCH,
                "big_batch_size": BIG}
        Path(args.json).write_text(json.dumps({**slim, "meta": meta}, indent=1))


if __name__ == "__main__":
    main()
