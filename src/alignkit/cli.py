"""The `alignkit` command.

    alignkit train CONFIG [field=value ...] [--resume RUN] [--overwrite]
    alignkit export RUN --merge --out DIR
    alignkit score --reward RUN --data FILE [--out scores.jsonl]
    alignkit eval RUN | --model PATH [--adapter PATH] --data prefs.jsonl --prompts probes.jsonl [--task none]
    alignkit diagnose RUN
    alignkit doctor DATA [--eval DATA]
    alignkit chat RUN | CHECKPOINT | default | --model PATH [--adapter PATH]
    alignkit plan CONFIG --gpu t4 | --model ... --method ...
    alignkit recommend --data DATA --model MODEL --gpu t4
    alignkit data task-api --out DIR
    alignkit data sample-pairs PROMPTS --model RUN --judge task_api --out pairs.jsonl
    alignkit compare --sft RUN --reward RUN --out DIR --quick
    alignkit --version

User mistakes (alignkit.errors.UserError) print as one message without a traceback, exit code 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from alignkit.errors import UserError


def _fields_help() -> str:
    """Every config field with its default and the first sentence of its docstring."""
    from alignkit.config import RunConfig

    lines = ["config fields (YAML sections; override any with section.field=value):"]

    def walk(model, prefix: str) -> None:
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):  # a section: list its fields
                walk(ann, f"{prefix}{name}.")
                continue
            default = f.get_default(call_default_factory=True)
            doc = " ".join((f.description or "").split())
            first = re.split(r"(?<!e\.g\.)(?<!i\.e\.)(?<=[.!?])\s+(?=[A-Z(`])", doc)[0].rstrip(".")  # the first sentence
            lines.append(f"  {prefix}{name} = {default!r}" + (f"  -- {first}" if first else ""))

    walk(RunConfig, "")
    lines.append("every field is documented in the README, section 'Config fields'")
    return "\n".join(lines)


def cmd_train(args) -> int:
    import json

    from alignkit.config import load_config
    from alignkit.train.run import finished_for_resume, finished_steps, resume_config, train

    overrides = list(args.overrides)
    if args.resume:
        run = Path(args.resume)
        if args.config:  # `--resume RUN a.b=c`: argparse reads the first override as the config file
            if "=" not in args.config or Path(args.config).is_file():
                raise UserError("--resume takes the config from the run (RUN/config.yaml), not from a file",
                                where=args.config, hint=f"alignkit train --resume {run} [field=value ...]")
            overrides.insert(0, args.config)
        rounds = run / "config.rounds.yaml"  # a folder of rounds: finished rounds are kept, the rest redone
        cfg = load_config(rounds, [*overrides, f"output_dir={run}"], paths_from_file=False) if rounds.is_file() \
            else resume_config(run, overrides)
        done = None if rounds.is_file() else finished_for_resume(
            run, cfg, lambda done: f"train a new stage from it: alignkit train {run / 'config.yaml'} "
                                   f"model.name_or_path={run} output_dir=NEW train.max_steps={cfg.train.max_steps - done}")
        if done is not None:
            print(f"{run} is already finished ({done} steps): nothing to do. Evaluate it with `alignkit eval "
                  f"{run}`; to train more, pass a new output_dir and model.name_or_path={run}")
            return 0
    else:
        if not args.config:
            raise UserError("alignkit train needs a config file or --resume RUN",
                            hint="e.g. alignkit train examples/task_api/dpo.yaml")
        cfg = load_config(args.config, overrides)
    evaluate = cfg.eval.enabled and not args.no_eval and cfg.method != "reward"
    try:
        evaluate_round = None
        if evaluate and cfg.train.rounds > 1:  # each round is evaluated after its training
            from alignkit.eval.generation import progress_printer
            from alignkit.eval.runner import evaluate_trained_run

            def evaluate_round(r):
                return evaluate_trained_run(r, progress=progress_printer())
        run = train(cfg, resume=bool(args.resume), overwrite=args.overwrite, force=args.force, progress=_progress(),
                    evaluate_after=evaluate and cfg.train.rounds == 1, evaluate_round=evaluate_round)
    except KeyboardInterrupt:  # outside the loop's own handler: loading, a second Ctrl-C, held-out metrics
        out = Path(cfg.output_dir)
        if finished_steps(out) is not None:
            print(f"\ninterrupted: training is saved in {out / 'final'}; run `alignkit eval {out}` to evaluate it",
                  file=sys.stderr)
        elif (out / "config.yaml").is_file():
            print(f"\ninterrupted: `alignkit train --resume {out}` continues from its newest complete checkpoint "
                  f"(from step 0 if there is none)", file=sys.stderr)
        else:
            print("\ninterrupted before the run started", file=sys.stderr)
        return 130
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    if info.get("status") == "interrupted":  # a checkpoint was saved; scripts must not carry on
        return 143 if info.get("signal") == "SIGTERM" else 130
    if evaluate and (run / "final").is_dir():
        from alignkit.eval.generation import progress_printer
        from alignkit.eval.runner import evaluate_trained_run

        try:  # run.json: `done` on success, `eval_failed` (exit 2, final/ kept) if not
            evaluate_trained_run(run, progress=progress_printer())
        except KeyboardInterrupt:
            print(f"\nevaluation interrupted: training is saved in {run / 'final'}; run `alignkit eval {run}` "
                  f"to evaluate it", file=sys.stderr)
            return 130
    print(f"run directory: {run}")
    return 0


_SHOWN = [("loss", 4), ("rewards/accuracies", 2), ("rewards/margins", 3), ("score", 3), ("gold_score", 3),
          ("kl", 3), ("eos_rate", 2)]


def _progress():
    """A one-line progress display with ETA (plain prints when not on a terminal). The rate comes from
    the steps timed since the first report: after the first step there is none yet (`ETA ?`)."""
    import time

    start = {"t": None, "s": None}

    def show(step, total, row):
        now = time.perf_counter()
        if start["t"] is None:  # steps before this one (a resume) were not timed here
            start["t"], start["s"] = now, step
        timed = step - start["s"]
        eta = f"{(now - start['t']) / timed * (total - step):.0f}s" if timed > 0 else "?"
        every = max(1, total // 20)
        if step % every == 0 or step == total or step == 1:
            shown = [f"{k} {row[k]:.4f}" for k, _ in _SHOWN if isinstance(row.get(k), (int, float))]
            print(f"step {step}/{total}  " + "  ".join(shown) +
                  f"  {row.get('tokens_per_s', row.get('rollout_tokens_per_s', 0)):.0f} tok/s  ETA {eta}", flush=True)

    return show


def cmd_export(args) -> int:
    from alignkit.export import export

    out = export(Path(args.run), Path(args.out), merge=args.merge)
    print(f"exported to {out}")
    return 0


def cmd_score(args) -> int:
    from alignkit.train.reward import score_file

    out = Path(args.out) if args.out else Path(args.data).with_suffix(".scores.jsonl")
    summary = score_file(args.reward, args.data, out, system_prompt_file=args.system_prompt_file,
                         batch_size=args.batch_size)
    print(f"{summary['rows']} rows scored: {out}")
    if summary.get("accuracy") is not None:
        print(f"accuracy {summary['accuracy']:.3f}, margin {summary['margin']:.3f}, chosen mean "
              f"{summary['chosen_mean']:.3f}, rejected mean {summary['rejected_mean']:.3f}")
    return 0


def cmd_data(args) -> int:
    if args.dataset == "to-kto":
        from alignkit.data.kto_convert import to_kto

        if not args.input:
            raise UserError("alignkit data to-kto needs the paired file to convert",
                            hint="alignkit data to-kto pairs.jsonl --out kto.jsonl")
        c = to_kto(args.input, args.out, skip_invalid=args.skip_invalid)
        print(f"{c['pairs']} pairs -> {c['desirable']} desirable + {c['undesirable']} undesirable rows: {args.out}"
              + (f" ({c['skipped']} invalid rows skipped)" if c["skipped"] else ""))
        return 0
    if args.dataset == "sample-pairs":
        from alignkit.data.sample_pairs import sample_pairs_file

        if not (args.input and args.model and args.judge):
            raise UserError("alignkit data sample-pairs needs a prompts file, --model and --judge",
                            hint="alignkit data sample-pairs prompts.jsonl --model runs/sft --judge JUDGE --out pairs.jsonl"
                                 " (JUDGE: refusal, task_api for the Task API example, package.module:function "
                                 "or a reward run)")
        sample_pairs_file(args.input, model=args.model, out=args.out, judge=args.judge, k=args.k,
                          temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                          batch_size=args.batch_size, seed=args.seed, chosen=args.chosen,
                          min_margin=args.min_margin, keep_ties=not args.skip_ties,
                          system_prompt_file=args.system_prompt_file, stats_path=args.stats,
                          max_prompts=args.max_prompts, overwrite=args.overwrite, skip_invalid=args.skip_invalid)
        return 0
    from alignkit.data.task_api import write_task_api

    paths = write_task_api(Path(args.out), n_train=args.n_train, n_eval=args.n_eval, seed=args.seed)
    for name, p in paths.items():
        print(f"{name}: {p}")
    return 0


def cmd_eval(args) -> int:
    from alignkit.eval.generation import progress_printer
    from alignkit.eval.runner import evaluate_model_cli, evaluate_run

    for flag, value in (("--max-probes", args.max_probes), ("--max-eval-rows", args.max_eval_rows),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}", where=flag)
    limits = dict(max_probes=args.max_probes, max_eval_rows=args.max_eval_rows, task=args.task)
    progress = None if args.quiet else progress_printer()
    if args.run:
        given = [f for f, v in (("--model", args.model), ("--adapter", args.adapter), ("--data", args.data),
                                ("--prompts", args.prompts), ("--system-prompt-file", args.system_prompt_file),
                                ("--out", args.out)) if v]
        if given:  # refused rather than silently ignored: a run is evaluated on its own config's files
            raise UserError(f"{', '.join(given)} go with --model, not with a run directory", where=given[0],
                            hint="alignkit eval RUN [--max-probes N --max-eval-rows N --task none]   or   "
                                 "alignkit eval --model M [--adapter A] --prompts P --data D")
        evaluate_run(Path(args.run), max_new_tokens=args.max_new_tokens, progress=progress, **limits)
        return 0
    if not (args.model and (args.data or args.prompts)):
        raise UserError("alignkit eval needs a run directory, or --model with --data and/or --prompts",
                        hint="e.g. alignkit eval runs/dpo   or   alignkit eval --model M --prompts probes.jsonl")
    evaluate_model_cli(model=args.model, adapter=args.adapter, data=args.data, prompts=args.prompts,
                       system_prompt_file=args.system_prompt_file, out=Path(args.out) if args.out else None,
                       max_new_tokens=args.max_new_tokens or 48, beta=args.beta, progress=progress, **limits)
    return 0


def cmd_diagnose(args) -> int:
    import json

    from alignkit.eval.diagnose import diagnose, format_findings

    findings = diagnose(Path(args.run))
    print(json.dumps([f.to_dict() for f in findings], indent=1) if args.json else format_findings(findings))
    return 0


def cmd_doctor(args) -> int:
    import json

    from alignkit.data.doctor import doctor

    tokenizer, max_length, max_prompt, system, eval_path = None, args.max_length, None, None, args.eval
    options = dict(columns=None, split="train", min_score_margin=None)
    if args.config:
        from alignkit.config import load_config
        from alignkit.models import load_tokenizer
        from alignkit.train.run import system_prompt

        cfg = load_config(args.config)
        tokenizer = load_tokenizer(cfg.model.name_or_path)
        max_length, max_prompt = cfg.data.max_length, cfg.data.max_prompt_length
        system, eval_path = system_prompt(cfg), eval_path or cfg.data.eval
        options = dict(columns=cfg.data.columns, split=cfg.data.split, min_score_margin=cfg.data.min_score_margin)
        if cfg.data.eval_split:
            options["eval_split"] = cfg.data.eval_split
    if args.split:
        options["split"] = args.split
    report = doctor(args.data, eval_path=eval_path, tokenizer=tokenizer, max_length=max_length,
                    max_prompt_length=max_prompt, system=system, **options)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format_table())
    return report.exit_code


def cmd_chat(args) -> int:
    from alignkit.eval.chat import chat

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}", where="--max-new-tokens")
    chat(args.target, model=args.model, adapter=args.adapter, system_prompt=args.system_prompt,
         system_prompt_file=args.system_prompt_file, temperature=args.temperature,
         max_new_tokens=args.max_new_tokens)
    return 0


DEFAULT_PLAN_GPU = "t4"  # `plan` / `recommend` without --gpu (and they say so)


def cmd_plan(args) -> int:
    import json

    from alignkit.plan.advisor import fixes
    from alignkit.plan.architectures import load_arch
    from alignkit.plan.hardware import get_hardware
    from alignkit.plan.memory import PlanInput, estimate, format_table, plan_input_from_config, plan_to_dict

    if args.gpu is None:  # said on stderr, so --json output stays valid JSON
        print(f"note: no --gpu given: planning for {DEFAULT_PLAN_GPU}", file=sys.stderr)
    hw = get_hardware(args.gpu or DEFAULT_PLAN_GPU, ram=args.ram)
    if args.config:
        from alignkit.config import load_config

        cfg = load_config(args.config, args.overrides)
        inp = plan_input_from_config(cfg, arch=args.model)
    else:
        if not args.model:
            raise UserError("alignkit plan needs a config file or --model", hint="e.g. --model 7b --method dpo")
        inp = PlanInput(arch=load_arch(args.model), method=args.method, lora_r=args.lora_r, quant=args.quant,
                        dtype=args.dtype, micro_batch=args.batch, seq_len=args.seq_len,
                        grad_ckpt=args.grad_ckpt, reference=args.reference)
    plan = estimate(inp, hw)
    found = [] if plan.fits else fixes(inp, hw)
    if args.json:
        print(json.dumps({**plan_to_dict(plan), "fixes": [f.__dict__ | {"changes": f.changes} for f in found]},
                         indent=1, default=str))
    else:
        print(format_table(plan))
        for f in found:
            print(f"  fix {f.rank}: {f.description} -> {f.total / 2**30:.2f} GiB ({'fits' if f.fits else 'still too big'})")
    return 0


def cmd_recommend(args) -> int:
    from alignkit.plan.advisor import recommend

    if args.gpu is None:
        print(f"# note: no --gpu given: sizing for {DEFAULT_PLAN_GPU}", file=sys.stderr)
    rec = recommend(args.data, arch=args.model or "default", hardware=args.gpu or DEFAULT_PLAN_GPU, online_feedback=args.online,
                    model_name=args.model, eval_path=args.eval, output_dir=args.output_dir)
    for w in rec.warnings:
        print(f"# warning: {w}", file=sys.stderr)
    print(rec.yaml)
    return 0


def cmd_compare(args) -> int:
    import shlex

    from alignkit.compare import METHODS, run_compare
    from alignkit.eval.compare_report import format_table

    methods = [m.strip() for m in (args.methods or ",".join(METHODS)).split(",") if m.strip()]
    if not methods:
        raise UserError("no methods given", where="--methods", hint=f"e.g. --methods {','.join(METHODS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"seeds must be integers, got {args.seeds!r}", where="--seeds", hint="e.g. --seeds 0,1,2") from None
    if not seeds:
        raise UserError("no seeds given", where="--seeds", hint="e.g. --seeds 0,1,2")
    if args.max_probes is not None and args.max_probes < 1:
        raise UserError("--max-probes must be at least 1", where="--max-probes")
    cmd = ["alignkit", "compare", "--sft", args.sft, *(["--reward", args.reward] if args.reward else []),
           "--out", args.out, "--methods", ",".join(methods), "--seeds", ",".join(map(str, seeds)),
           *(["--quick"] if args.quick else []), *(["--no-grid"] if args.no_grid else []),
           *(["--probes", args.probes] if args.probes else []),
           *(["--max-probes", str(args.max_probes)] if args.max_probes is not None else []),
           *(["--overwrite"] if args.overwrite else [])]
    result = run_compare(sft=args.sft, reward=args.reward, out=args.out, methods=methods, seeds=seeds,
                         grid=not args.no_grid, quick=args.quick, probes=args.probes, max_probes=args.max_probes,
                         overwrite=args.overwrite, command=shlex.join(cmd),
                         console=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(result))
    print(f"\nwrote {Path(args.out) / 'compare.json'}, report.md, report.html")
    return 0 if all(r["status"] == "done" for r in result["runs"]) else 1


def build_parser() -> argparse.ArgumentParser:
    from alignkit import __version__

    p = argparse.ArgumentParser(prog="alignkit", description="Align a fine-tuned LM with preference data.")
    p.add_argument("--version", action="version", version=f"alignkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a run from a YAML config", epilog=_fields_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", nargs="?", help="YAML config (see examples/task_api/*.yaml)")
    t.add_argument("overrides", nargs="*", help="field=value overrides, e.g. train.beta=0.3 output_dir=runs/b03")
    t.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its newest complete checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in output_dir")
    t.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation at the end")
    t.add_argument("--force", action="store_true", help="start even when the memory plan says it will not fit")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("export", help="write a run's model as a plain transformers checkpoint")
    e.add_argument("run", help="run directory")
    e.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    e.add_argument("--merge", action="store_true",
                   help="merge LoRA adapters (of this run and every earlier stage) into the weights")
    e.set_defaults(fn=cmd_export)


    sc = sub.add_parser("score", help="score every row of a file with a reward-model run")
    sc.add_argument("--reward", required=True, help="a finished `method: reward` run directory")
    sc.add_argument("--data", required=True, help="preference pairs (scores both answers) or prompt/completion rows")
    sc.add_argument("--out", help="JSONL output, one object per row (default: DATA.scores.jsonl)")
    sc.add_argument("--system-prompt-file", default=None, help="system prompt added to rows without one "
                                                               "(default: the reward run's own)")
    sc.add_argument("--batch-size", type=int, default=16, help="rows scored per forward pass (default: 16)")
    sc.set_defaults(fn=cmd_score)

    ev = sub.add_parser("eval", help="before/after evaluation: a run vs its reference, or any model")
    ev.add_argument("run", nargs="?", help="run directory (writes metrics.json, report.md, report.html)")
    ev.add_argument("--model", help="model path, hub id in the local cache, run directory or `default`; "
                                    "without --adapter it is evaluated alone (one column)")
    ev.add_argument("--adapter", help="LoRA adapter dir applied to --model; the adapter-off model is 'before'")
    ev.add_argument("--data", help="held-out preference pairs for reward accuracy / margins / log-probs")
    ev.add_argument("--prompts", help="probe prompts {prompt, category}: category harmful, benign, alarming "
                                      "or any name of your own (its refusal rate is reported)")
    ev.add_argument("--system-prompt-file", default=None, help="system prompt added to every prompt")
    ev.add_argument("--out", help="directory for metrics.json and report.md/html")
    ev.add_argument("--max-new-tokens", type=int, default=None,
                    help="answer length (default: a run's eval.max_new_tokens; 48 with --model)")
    ev.add_argument("--max-probes", type=int, default=None, help="only the first N probes (a run: replaces "
                                                                 "eval.max_probes)")
    ev.add_argument("--max-eval-rows", type=int, default=None, help="only the first N held-out pairs (a run: "
                                                                    "replaces data.max_eval_rows)")
    ev.add_argument("--task", choices=["task_api", "none"], default=None,
                    help="task check on benign/alarming answers: task_api (Task API JSON: task_valid/*, "
                         "task_correct, gold_score) or none (no task metrics); default: a run's eval.task, "
                         "else the config default")
    ev.add_argument("--beta", type=float, default=0.1, help="beta of the implied rewards")
    ev.add_argument("--quiet", action="store_true", help="no generation progress on stderr")
    ev.set_defaults(fn=cmd_eval)

    dg = sub.add_parser("diagnose", help="name what went wrong in a run, with evidence and fixes")
    dg.add_argument("run", help="run directory (reads its run.json, log.jsonl, metrics.json and data)")
    dg.add_argument("--json", action="store_true", help="print the findings as JSON instead of text")
    dg.set_defaults(fn=cmd_diagnose)

    dc = sub.add_parser("doctor", help="find broken or biased preference data (exit 1 on errors)")
    dc.add_argument("data", help="preference file or folder to check (.jsonl, .json, .csv, .parquet, .arrow, "
                                 "also .gz/.zst; a datasets.save_to_disk or Parquet folder)")
    dc.add_argument("--split", help="the split of a folder to check (default: the config's data.split, or train)")
    dc.add_argument("--eval", help="held-out file, checked for prompts leaking from training")
    dc.add_argument("--config", help="a run config: its tokenizer, max lengths, system prompt and eval file")
    dc.add_argument("--max-length", type=int, default=None,
                    help="report rows longer than this many tokens (needs a tokenizer: use --config)")
    dc.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    dc.set_defaults(fn=cmd_doctor)

    ch = sub.add_parser("chat", help="talk to a model in the terminal (/help lists the commands)")
    ch.add_argument("target", nargs="?", help="a run directory, a checkpoint directory (config.json + "
                                              "tokenizer) or `default`")
    ch.add_argument("--model", help="the model instead of TARGET (same forms)")
    ch.add_argument("--adapter", help="a LoRA adapter directory applied to --model")
    sp = ch.add_mutually_exclusive_group()
    sp.add_argument("--system-prompt", default=None, help="system message text (default: a run's own system "
                                                          "prompt, else none)")
    sp.add_argument("--system-prompt-file", default=None, help="read the system message from this file")
    ch.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    ch.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit (default: 128)")
    ch.set_defaults(fn=cmd_chat)

    pl = sub.add_parser("plan", help="predict peak memory of a run and whether it fits a GPU")
    pl.add_argument("config", nargs="?", help="a run config to plan (or give --model and the settings below)")
    pl.add_argument("overrides", nargs="*", help="field=value overrides of the config, e.g. train.micro_batch_size=2")
    pl.add_argument("--gpu", default=None,
                    help="t4, l4, a10g, rtx3090, rtx4090, a100-40gb, a100-80gb, h100, h200, cpu, auto (this "
                         "machine), or a size like 24gb; prefix a count for several GPUs: 2xh100 (the plan is per "
                         "GPU, as with DDP). Default: t4, and the output says so")
    pl.add_argument("--ram", help="CPU RAM for --gpu cpu (default: this machine's)")
    pl.add_argument("--model", help="model: name (llama-2-7b, mistral-7b, qwen2.5-7b...), config dir, or size (7b)")
    pl.add_argument("--method", default="dpo", help="training method (sft, dpo, ..., ppo; default: dpo)")
    pl.add_argument("--quant", default="none", choices=["none", "8bit", "4bit"],
                    help="precision of the frozen base weights (4bit: QLoRA)")
    pl.add_argument("--lora-r", type=int, default=16, help="LoRA rank; 0 = full fine-tuning")
    pl.add_argument("--dtype", default=None, choices=[None, "fp32", "bf16", "fp16"],
                    help="compute precision (default: the device's: bf16, fp16 on a T4, fp32 on CPU)")
    pl.add_argument("--batch", type=int, default=1, help="micro-batch (pairs)")
    pl.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence, prompt + answer (default: 1024)")
    pl.add_argument("--grad-ckpt", action="store_true", help="with gradient checkpointing")
    pl.add_argument("--reference", default="auto", choices=["auto", "adapter", "copy", "precomputed", "none"],
                    help="how the reference model is held (auto: adapter with LoRA, else precomputed)")
    pl.add_argument("--json", action="store_true", help="print the plan and fixes as JSON")
    pl.set_defaults(fn=cmd_plan)

    rc = sub.add_parser("recommend", help="pick a method and write a config that fits your GPU")
    rc.add_argument("--data", required=True, help="your training data (its kind decides the method)")
    rc.add_argument("--eval", help="held-out file")
    rc.add_argument("--model", help="model name, config dir or size")
    rc.add_argument("--gpu", default=None, help="the GPU to size the config for, as for `alignkit plan` "
                                                "(default: t4, and it says so)")
    rc.add_argument("--online", action="store_true", help="you want online feedback (RLHF with PPO)")
    rc.add_argument("--output-dir", default=None, help="output_dir written into the config")
    rc.set_defaults(fn=cmd_recommend)

    d = sub.add_parser("data", help="generate example data, convert paired data to KTO rows, or sample "
                                    "on-policy pairs")
    d.add_argument("dataset", choices=["task-api", "to-kto", "sample-pairs"],
                   help="task-api: write the example data to --out; to-kto: convert INPUT to unpaired KTO rows; "
                        "sample-pairs: sample --k answers per prompt of INPUT from --model, judge them, and write "
                        "pairs whose rejected answer is the model's own")
    d.add_argument("input", nargs="?", help="to-kto: the paired preference file (.jsonl/.json/.csv/.parquet); "
                                            "sample-pairs: prompts (a prompt file or preference rows)")
    d.add_argument("--out", required=True, help="task-api: output directory; to-kto, sample-pairs: output file")
    d.add_argument("--skip-invalid", action="store_true", help="to-kto, sample-pairs: skip and count invalid rows")
    d.add_argument("--n-train", type=int, default=1500, help="task-api: training pairs to write")
    d.add_argument("--n-eval", type=int, default=200, help="task-api: held-out pairs to write")
    d.add_argument("--seed", type=int, default=0, help="random seed (task-api data, sample-pairs sampling)")
    d.add_argument("--model", help="sample-pairs: the policy: `default`, a checkpoint dir or a run directory")
    d.add_argument("--judge", default=None,
                   help="sample-pairs (required): refusal, task_api (the Task API example's judge), "
                        "package.module:function or a reward-model run")
    d.add_argument("--k", type=int, default=4, help="sample-pairs: answers sampled per prompt")
    d.add_argument("--temperature", type=float, default=1.0, help="sample-pairs: sampling temperature")
    d.add_argument("--max-new-tokens", type=int, default=64, help="sample-pairs: answer length limit")
    d.add_argument("--batch-size", type=int, default=32, help="sample-pairs: rows per forward pass")
    d.add_argument("--chosen", default="best_or_reference", choices=["best", "reference", "best_or_reference"],
                   help="sample-pairs: the chosen side: the model's best answer, the row's reference answer, or "
                        "its best when that beats its worst, else the reference")
    d.add_argument("--min-margin", type=float, default=0.0,
                   help="sample-pairs: chosen must score more than this above rejected")
    d.add_argument("--skip-ties", action="store_true",
                   help="sample-pairs: skip prompts whose answers all scored equal (by default they are paired "
                        "with the reference answer when it scores higher)")
    d.add_argument("--system-prompt-file", default=None, help="sample-pairs: system prompt added to every prompt "
                                                              "(not written to the pairs)")
    d.add_argument("--stats", help="sample-pairs: also write the stats as JSON here")
    d.add_argument("--max-prompts", type=int, default=None, help="sample-pairs: only the first N prompts")
    d.add_argument("--overwrite", action="store_true", help="sample-pairs: replace an existing --out/--stats")
    d.set_defaults(fn=cmd_data)

    cp = sub.add_parser("compare", help="train every method from one SFT run under one budget, over seeds, and "
                                        "write the measured comparison table (Task API)")
    cp.add_argument("--sft", required=True, help="a finished SFT run: every method starts from it (orpo: its base)")
    cp.add_argument("--reward", help="a finished `method: reward` run (needed for ppo, grpo, rloo)")
    cp.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    cp.add_argument("--quick", action="store_true", help="a small budget that fits a 2-core CPU (a few steps)")
    cp.add_argument("--methods", default=None, help="comma-separated (default: ppo,grpo,dpo,ipo,rpo,simpo,kto,orpo)")
    cp.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    cp.add_argument("--no-grid", action="store_true", help="skip the sensitivity grid (dpo beta, ppo kl_coef)")
    cp.add_argument("--probes", default=None, help="probe file (default: examples/task_api/data/probes.jsonl)")
    cp.add_argument("--max-probes", type=int, default=None, help="first N probes (default: 30 with --quick, else all)")
    cp.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    cp.set_defaults(fn=cmd_compare)
    return p


def _quiet_libraries() -> None:
    """For the command line only (not for library users): no weight-loading progress bars, no
    known-harmless FutureWarnings from transformers, and no hub access unless the user opted in."""
    import os
    import warnings

    from alignkit.offline import downloads_allowed

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read by huggingface_hub and transformers
    if not downloads_allowed():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if "transformers" in sys.modules:  # already imported (in-process callers): the env var came too late
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    for message in _HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


# FutureWarnings raised inside transformers/peft on every run, about calls alignkit does not make itself.
_HARMLESS_WARNINGS = (r"`is_gradient_checkpointing` is deprecated",)


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `field=value` overrides may come after options (argparse stops positionals at the first flag).
    if extra and args.command in ("train", "plan") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.fn(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
