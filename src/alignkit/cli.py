"""The `alignkit` command.

    alignkit train CONFIG [field=value ...] [--resume RUN] [--overwrite]
    alignkit export RUN --merge --out DIR
    alignkit eval RUN | --model PATH [--adapter PATH] --data prefs.jsonl --prompts probes.jsonl
    alignkit diagnose RUN
    alignkit doctor DATA [--eval DATA]
    alignkit chat RUN
    alignkit plan CONFIG --gpu t4 | --model ... --method ...
    alignkit recommend --data DATA --model MODEL --gpu t4
    alignkit data task-api --out DIR

User mistakes (alignkit.errors.UserError) print as one message without a traceback, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alignkit.errors import UserError


def _fields_help() -> str:
    from alignkit.config import RunConfig

    lines = ["config fields (YAML sections; override any with section.field=value):"]
    for section, finfo in RunConfig.model_fields.items():
        ann = finfo.annotation
        if isinstance(ann, type) and hasattr(ann, "model_fields"):
            for name, f in ann.model_fields.items():
                sub = f.annotation
                if isinstance(sub, type) and hasattr(sub, "model_fields"):
                    for n2, f2 in sub.model_fields.items():
                        lines.append(f"  {section}.{name}.{n2} = {f2.default!r}")
                else:
                    lines.append(f"  {section}.{name} = {f.default!r}")
        else:
            lines.append(f"  {section} = {finfo.default!r}")
    lines.append("every field is documented in the README, section 'Config fields'")
    return "\n".join(lines)


def cmd_train(args) -> int:
    from alignkit.config import load_config
    from alignkit.train.run import train

    if args.resume:
        run = Path(args.resume)
        if not (run / "config.yaml").is_file():
            raise UserError("not a run directory (no config.yaml)", where=str(run),
                            hint="pass the output_dir of an earlier `alignkit train`")
        cfg = load_config(run / "config.yaml", [*args.overrides, f"output_dir={run}"])
    else:
        if not args.config:
            raise UserError("alignkit train needs a config file or --resume RUN",
                            hint="e.g. alignkit train examples/task_api/dpo.yaml")
        cfg = load_config(args.config, args.overrides)
    run = train(cfg, resume=bool(args.resume), overwrite=args.overwrite, progress=_progress())
    if cfg.eval.enabled and (run / "final").is_dir() and not args.no_eval:
        from alignkit.eval.runner import evaluate_run

        evaluate_run(run)
    print(f"run directory: {run}")
    return 0


def _progress():
    """A one-line progress display with ETA (plain prints when not on a terminal)."""
    import time

    start = {"t": None, "s": None}

    def show(step, total, row):
        now = time.perf_counter()
        if start["t"] is None:
            start["t"], start["s"] = now, step - 1
        done = step - start["s"]
        eta = (now - start["t"]) / max(done, 1) * (total - step)
        every = max(1, total // 20)
        if step % every == 0 or step == total or step == 1:
            print(f"step {step}/{total}  loss {row.get('loss', float('nan')):.4f}  "
                  f"acc {row.get('rewards/accuracies', float('nan')):.2f}  "
                  f"margin {row.get('rewards/margins', float('nan')):.3f}  "
                  f"{row.get('tokens_per_s', 0):.0f} tok/s  ETA {eta:.0f}s", flush=True)

    return show


def cmd_export(args) -> int:
    from alignkit.export import export

    out = export(Path(args.run), Path(args.out), merge=args.merge)
    print(f"exported to {out}")
    return 0


def cmd_data(args) -> int:
    from alignkit.data.task_api import write_task_api

    paths = write_task_api(Path(args.out), n_train=args.n_train, n_eval=args.n_eval, seed=args.seed)
    for name, p in paths.items():
        print(f"{name}: {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alignkit", description="Align a fine-tuned LM with preference data.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a run from a YAML config", epilog=_fields_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", nargs="?", help="YAML config (see examples/task_api/*.yaml)")
    t.add_argument("overrides", nargs="*", help="field=value overrides, e.g. train.beta=0.3 output_dir=runs/b03")
    t.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its newest complete checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in output_dir")
    t.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation at the end")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("export", help="write a run's model as a plain transformers checkpoint")
    e.add_argument("run", help="run directory")
    e.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    e.add_argument("--merge", action="store_true",
                   help="merge LoRA adapters (of this run and every earlier stage) into the weights")
    e.set_defaults(fn=cmd_export)

    d = sub.add_parser("data", help="generate example data")
    d.add_argument("dataset", choices=["task-api"])
    d.add_argument("--out", required=True)
    d.add_argument("--n-train", type=int, default=1500)
    d.add_argument("--n-eval", type=int, default=200)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `field=value` overrides may come after options (argparse stops positionals at the first flag).
    if extra and args.command == "train" and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.fn(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
