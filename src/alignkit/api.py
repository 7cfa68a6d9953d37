"""The Python API: what the `alignkit` commands do, for notebooks and scripts.

    import alignkit

    cfg = alignkit.load_config("examples/task_api/dpo.yaml", {"train.max_steps": 3, "output_dir": "runs/nb"})
    print(alignkit.plan(cfg, gpu="t4"))                  # the memory plan, as `alignkit plan`
    run = alignkit.train(cfg, data=rows)                 # rows: a path, a list of dicts or a datasets.Dataset
    run.metrics["after"]["refusal_rate/harmful"], run.log[-1]["loss"], run.final, run.report
    alignkit.evaluate(run, max_probes=30)                # before/after evaluation again, as `alignkit eval`
    for finding in alignkit.diagnose(run): print(finding)

Each function checks its input as the command does and raises the same `alignkit.errors.UserError`
(message, `where`, `hint`); nothing is written when it does. Rows given in memory are written to
`RUN/data/train.jsonl` (and `eval.jsonl`), which the run's config.yaml names, and read back by the
same loader as a file, so they are validated exactly as a file is (an error names the row as
`data[i]`). Heavy libraries (torch, transformers) are imported on the first call, not by
`import alignkit`. Unlike the command line, the API does not set `HF_HUB_OFFLINE`: models are still
read from local directories and the local cache only (`alignkit.offline`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import UserError

INPUTS_DIR = "data"
"""The folder of a run directory that holds the rows `train` was given in memory."""


def _config_module():
    from alignkit import config  # pydantic + yaml: cheap, but not needed by `import alignkit`

    return config


def load_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | Iterable[str] | None = None,
                **fields: Any):
    """A validated `RunConfig`: the YAML file `path` (None: the defaults), then `overrides`, then `fields`.

    `overrides`: `"section.field=value"` strings, read as on the command line (`train.beta=0.3`), or
    a mapping of dotted names to Python values (`{"train.beta": 0.3}`). `fields`: top-level fields
    and sections as keywords (`output_dir="runs/x"`, `train={"max_steps": 3}`). Relative input paths
    in the file are read from its folder, those given here from the current folder, as with
    `alignkit train`. A mistake raises `UserError` naming the field (unknown fields get a "did you mean").
    """
    strings, values = _split_overrides(overrides)
    return _load(path, strings, _config_module().merge_values(values, fields))


def _load(path, strings: list[str], values: dict):
    try:
        return _config_module().load_config(path, strings, values=values)
    except UserError as e:
        if e.where != "command line":
            raise
        raise UserError(e.message, where="alignkit.load_config", hint=e.hint) from None


def _split_overrides(overrides) -> tuple[list[str], dict]:
    if overrides is None:
        return [], {}
    if isinstance(overrides, Mapping):
        return [], dict(overrides)
    if isinstance(overrides, str):
        return [overrides], {}
    return list(overrides), {}


def as_config(config=None, overrides=None, **fields):
    """`config` as a validated `RunConfig`: a `RunConfig`, a YAML path, a dict of fields, a `Run`, or None
    (the defaults); `overrides` and `fields` as in `load_config`. A `RunConfig` is copied, with its
    input paths made absolute (as the command line stores them)."""
    cm = _config_module()
    if isinstance(config, Run):
        config = config.config
    if isinstance(config, cm.RunConfig):
        if overrides or fields:  # re-validated with the changes; only the fields it set are kept
            strings, values = _split_overrides(overrides)
            data = cm.apply_overrides(config.model_dump(mode="json", exclude_unset=True), strings)
            cfg = _load(None, [], cm.merge_values(cm.merge_values(data, values), fields))
        else:
            cfg = config.model_copy(deep=True)
            for dotted in cm.PATH_FIELDS:
                section, name = dotted.split(".")
                value = getattr(getattr(cfg, section), name)
                if isinstance(value, str) and value.strip():
                    setattr(getattr(cfg, section), name, os.path.abspath(os.path.expanduser(value)))
        cfg._source = config.source
        return cfg
    if isinstance(config, Mapping):
        strings, values = _split_overrides(overrides)
        cfg = _load(None, strings, cm.merge_values(cm.merge_values(cm.merge_values({}, dict(config)), values), fields))
        cfg._source = "config"
        return cfg
    if config is not None and not isinstance(config, (str, os.PathLike)):
        raise UserError(f"config must be a RunConfig, a YAML path or a dict of fields, got {type(config).__name__}",
                        hint="e.g. alignkit.load_config('examples/task_api/dpo.yaml')")
    return load_config(config, overrides, **fields)


class Run:
    """A run directory written by `alignkit train` (or `alignkit.train`): its config, status, log,
    metrics and files. Everything is read from disk when asked, so a `Run` of a run still training
    (in another process) shows its progress."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Run:
        """The run in `path`; `UserError` when it is not a run directory."""
        run = cls(path)
        if not (run.path / "config.yaml").is_file():
            raise UserError("not a run directory (no config.yaml)", where=str(run.path),
                            hint="pass the output_dir of an earlier alignkit.train / `alignkit train`")
        return run

    @property
    def config(self):
        """The run's `RunConfig` (its config.yaml)."""
        return _config_module().load_config(self.path / "config.yaml", paths_from_file=False)

    @property
    def info(self) -> dict:
        """run.json: status, steps, timings, memory (an empty dict before the run started)."""
        return _read_json(self.path / "run.json") or {}

    @property
    def status(self) -> str | None:
        """`running`, `interrupted`, `failed`, `trained` (evaluation pending), `eval_failed` or `done`."""
        return self.info.get("status")

    @property
    def metrics(self) -> dict | None:
        """metrics.json (the before/after evaluation: `metrics["after"]["refusal_rate/harmful"]`), or None."""
        return _read_json(self.path / "metrics.json")

    @property
    def log(self) -> list[dict]:
        """The rows of log.jsonl, one per logged step (and the held-out `eval/` rows)."""
        path = self.path / "log.jsonl"
        rows = []
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line torn by a kill mid-write
                continue
        return rows

    @property
    def final(self) -> Path | None:
        """`final/`, the trained adapter or model, once training finished; else None."""
        path = self.path / "final"
        return path if path.is_dir() else None

    @property
    def report(self) -> Path | None:
        """report.md, once evaluated (report.html lies beside it); else None."""
        path = self.path / "report.md"
        return path if path.is_file() else None

    def summary(self) -> str:
        """The before/after table `alignkit train` prints at the end ("" before the evaluation)."""
        from alignkit.eval.runner import format_summary

        return format_summary(self.metrics) if self.metrics else ""

    def evaluate(self, **options) -> dict | None:
        """`alignkit.evaluate(self, **options)`."""
        return evaluate(self, **options)

    def diagnose(self) -> list:
        """`alignkit.diagnose(self)`."""
        return diagnose(self)

    def __fspath__(self) -> str:
        return str(self.path)

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and self.path.absolute() == other.path.absolute()

    def __hash__(self) -> int:
        return hash(self.path.absolute())

    def __repr__(self) -> str:
        info = self.info
        parts = [repr(str(self.path))]
        if info.get("method"):
            parts.append(f"method={info['method']}")
        parts.append(f"status={info.get('status', 'not started')}")
        if info.get("steps") is not None:
            parts.append(f"steps={info.get('done', 0) if info.get('status') != 'running' else '?'}/{info['steps']}")
        after = (self.metrics or {}).get("after") or {}
        shown = [f"{k}={after[k]:.3f}" for k in ("refusal_rate/harmful", "over_refusal/benign", "reward_accuracy",
                                                  "kl") if isinstance(after.get(k), (int, float))]
        return f"Run({', '.join(parts + shown)})"


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def _run_path(run) -> Path:
    if isinstance(run, Run):
        return run.path
    if isinstance(run, (str, os.PathLike)):
        return Path(run)
    raise UserError(f"expected a Run or a run directory, got {type(run).__name__}",
                    hint="pass the Run that alignkit.train returned, or its path")


def train(config=None, data=None, eval_data=None, *, resume: bool = False, overwrite: bool = False,
          evaluate: bool = True, force: bool = False, quiet: bool = False, **fields) -> Run:
    """Train a run, as `alignkit train` does, and return it as a `Run`.

    `config`: a `RunConfig`, a YAML path, a dict of fields, or (with `resume=True`) a run directory or
    `Run`; `fields` are overrides (`output_dir="runs/x"`, `train={"max_steps": 3}`, or dotted names in
    a dict: `**{"train.beta": 0.3}`). `data` / `eval_data` replace `data.train` / `data.eval`: a file
    path, a list of row dicts, or a `datasets.Dataset`; in-memory rows are written to
    `RUN/data/train.jsonl` / `eval.jsonl` and validated exactly as a file (an invalid row raises the
    file's `UserError`, its place named `data[i]` / `eval_data[i]`).

    `resume`: continue an interrupted run from its newest complete checkpoint (a finished run is
    returned as it is); `overwrite`: replace a run already in `output_dir`. After training, the run is
    evaluated (reference before vs policy after: metrics.json, report.md/html) when `evaluate` and the
    config's `eval.enabled` are true, and its status becomes `done`; without the evaluation it is
    `done` at once. An evaluation that fails leaves `final/`, marks the run `eval_failed` and raises.
    A Ctrl-C during training saves a checkpoint and raises KeyboardInterrupt saying how to resume.
    `quiet`: print nothing (no progress, no summary).
    """
    from alignkit.eval.generation import progress_printer
    from alignkit.train import run as R

    console = (lambda *a, **k: None) if quiet else print
    if resume:
        if data is not None or eval_data is not None:
            raise UserError("resume=True takes the data from the run's config.yaml; data and eval_data are not "
                            "allowed with it", where="alignkit.train(resume=True)",
                            hint="call alignkit.train(RUN, resume=True) without data, or start a new run")
        run_dir = _run_path(config) if isinstance(config, (Run, str, os.PathLike)) else None
        if run_dir is None:
            run_dir = Path(as_config(config).output_dir)
        cfg = R.resume_config(run_dir, [f"{k}={json.dumps(v)}" for k, v in _dotted(fields).items()],
                              console=console)
        done = R.finished_for_resume(
            run_dir, cfg, lambda done: f"train a new stage from it: alignkit.train(alignkit.Run('{run_dir}').config, "
                                       f"output_dir=NEW, model={{'name_or_path': '{run_dir}'}})")
        if done is not None:
            console(f"{run_dir} is already finished ({done} steps): nothing to do")
            return Run(run_dir)
    else:
        cfg = as_config(config, **fields)
    run_dir = Path(cfg.output_dir)
    staged = _Staged(run_dir, cfg) if not resume else None
    if staged is not None:
        R.check_run_dir(cfg, resume=False, overwrite=overwrite, keep=(INPUTS_DIR,))  # before writing anything
    do_eval = evaluate and cfg.eval.enabled and cfg.method != "reward"
    try:
        if staged is not None:
            staged.add("train", "data", data)
            staged.add("eval", "eval_data", eval_data)
        R.train(cfg, resume=resume, overwrite=overwrite, force=force, evaluate_after=do_eval, console=console,
                progress=None if quiet else _progress(), keep=(INPUTS_DIR,) if staged and staged.files else ())
    except BaseException as e:
        if staged is not None:
            staged.undo_unless_started()
            if isinstance(e, UserError):
                raise staged.translate(e) from None
        if isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt(_interrupted_message(run_dir)) from None
        raise
    if staged is not None:
        staged.commit()
    run = Run(run_dir)
    if run.status == "interrupted":  # a checkpoint was saved (SIGINT/SIGTERM); callers must not carry on
        raise KeyboardInterrupt(_interrupted_message(run_dir))
    if do_eval and run.final is not None:
        from alignkit.eval.runner import evaluate_trained_run

        try:
            evaluate_trained_run(run_dir, console=console, progress=None if quiet else progress_printer())
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"evaluation interrupted: training is saved in {run_dir / 'final'}; "
                                    f"alignkit.evaluate('{run_dir}') evaluates it") from None
    return run


def _dotted(values: Mapping, prefix: str = "") -> dict:
    """{"train": {"max_steps": 3}} -> {"train.max_steps": 3} (dotted keys pass through)."""
    out = {}
    for k, v in values.items():
        if isinstance(v, Mapping):
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _interrupted_message(run_dir: Path) -> str:
    from alignkit.train.run import finished_steps

    if finished_steps(run_dir) is not None:
        return f"interrupted: training is saved in {run_dir / 'final'}; alignkit.evaluate('{run_dir}') evaluates it"
    if (run_dir / "config.yaml").is_file():
        return (f"interrupted: alignkit.train('{run_dir}', resume=True) continues from its newest complete "
                f"checkpoint (from step 0 if there is none)")
    return "interrupted before the run started"


def _progress():
    from alignkit.cli import _progress as cli_progress  # the same one-line display as `alignkit train`

    return cli_progress()


class _Staged:
    """In-memory rows written into RUN/data/ for a run, undone when the run does not start."""

    def __init__(self, run_dir: Path, cfg):
        self.run_dir, self.cfg = run_dir, cfg
        self.dir = run_dir / INPUTS_DIR
        self.files: dict[str, tuple[Path, str]] = {}  # config field -> (file, argument name)
        self.created_run = not run_dir.exists()
        self.backup: Path | None = None
        cfg_file = run_dir / "config.yaml"
        self.config_stamp = cfg_file.stat().st_mtime_ns if cfg_file.is_file() else None

    def add(self, field_name: str, arg: str, data) -> None:
        if data is None:
            return
        if isinstance(data, (str, os.PathLike)):
            setattr(self.cfg.data, field_name, os.path.abspath(os.path.expanduser(os.fspath(data))))
            return
        rows, tabular = _rows_of(data, arg)
        if not self.files and self.dir.exists():  # an earlier run's inputs: kept until this one starts
            self.backup = self.run_dir / f".{INPUTS_DIR}-replaced"
            if self.backup.exists():
                shutil.rmtree(self.backup)
            self.dir.rename(self.backup)
        path = (self.dir / f"{field_name}.jsonl").absolute()
        self.files[field_name] = (path, arg)
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for i, row in enumerate(rows):
                f.write(_jsonl_line(row, f"{arg}[{i}]", drop_missing=tabular) + "\n")
        setattr(self.cfg.data, field_name, str(path))

    def _started(self) -> bool:
        cfg_file = self.run_dir / "config.yaml"
        return cfg_file.is_file() and cfg_file.stat().st_mtime_ns != self.config_stamp

    def undo_unless_started(self) -> None:
        """Nothing written stays when the run did not start (a bad row, a missing model ...)."""
        if not self.files or self._started():
            return
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.backup is not None and self.backup.exists():
            self.backup.rename(self.dir)
        if self.created_run and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()

    def commit(self) -> None:
        if self.backup is not None and self.backup.exists():
            shutil.rmtree(self.backup)

    def translate(self, e: UserError) -> UserError:
        """A `UserError` that names one of the staged files names the row instead: `data[4] field 'chosen'`."""
        for path, arg in self.files.values():
            prefix = str(path)
            if e.where and e.where.startswith(prefix):
                rest = e.where[len(prefix):]
                if rest.startswith(":"):
                    number, _, tail = rest[1:].partition(" ")
                    if number.isdigit():
                        return UserError(e.message, where=f"{arg}[{int(number) - 1}]" + (f" {tail}" if tail else ""),
                                         hint=e.hint)
                return UserError(e.message, where=arg + rest, hint=e.hint)
        return e


def _rows_of(data, arg: str) -> tuple[list, bool]:
    """(rows, tabular) of a list of dicts, a `datasets.Dataset` (anything with `to_list`) or a pandas
    DataFrame; `tabular`: a table, whose rows hold every column (None / NaN where a row has none)."""
    tabular = True
    if hasattr(data, "to_list") and callable(data.to_list):  # datasets.Dataset
        rows = data.to_list()
    elif hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas.DataFrame
        rows = data.to_dict(orient="records")
    elif isinstance(data, Iterable) and not isinstance(data, (bytes, str, Mapping)):
        rows, tabular = list(data), False
    else:
        raise UserError(f"{arg} must be a file path, a list of row dicts or a datasets.Dataset, got "
                        f"{type(data).__name__}", where=arg,
                        hint='e.g. [{"prompt": "...", "chosen": "...", "rejected": "..."}]')
    if not rows:
        raise UserError("no rows", where=arg, hint="pass at least one row")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise UserError(f"a row must be a dict of fields, got {type(row).__name__}", where=f"{arg}[{i}]",
                            hint='e.g. {"prompt": "...", "chosen": "...", "rejected": "..."}')
    return rows, tabular


def _jsonl_line(row: Mapping, where: str, *, drop_missing: bool) -> str:
    """One row as a JSON line. `drop_missing` (a table's rows): None and NaN are left out, so a column
    a row does not have reads as absent, as in a JSON file without that field."""
    clean = {k: v for k, v in row.items()
             if not drop_missing or (v is not None and not (isinstance(v, float) and math.isnan(v)))}
    try:
        return json.dumps(clean, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as e:
        raise UserError(f"the row cannot be written as JSON: {e}", where=where,
                        hint="use strings, numbers, booleans, lists and dicts") from None


def _json_default(value):
    if hasattr(value, "tolist"):  # numpy scalars and arrays (pandas, datasets with numpy format)
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def evaluate(run, *, max_probes: int | None = None, max_eval_rows: int | None = None, task: str | None = None,
             max_new_tokens: int | None = None, quiet: bool = False) -> dict | None:
    """`alignkit eval RUN`: evaluate a trained run against its reference again, writing metrics.json,
    report.md and report.html; returns the metrics (None when there is nothing to evaluate). The
    options replace the config's `eval.max_probes`, `data.max_eval_rows`, `eval.task` and
    `eval.max_new_tokens` for this evaluation."""
    from alignkit.eval.generation import progress_printer
    from alignkit.eval.runner import evaluate_run

    path = Run.load(_run_path(run)).path
    if not (path / "final").is_dir():
        raise UserError("the run has no trained model yet (no final/)", where=str(path),
                        hint=f"finish it first: alignkit.train('{path}', resume=True)")
    for name, value in (("max_probes", max_probes), ("max_eval_rows", max_eval_rows),
                        ("max_new_tokens", max_new_tokens)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1, got {value}", where=name)
    return evaluate_run(path, console=(lambda *a, **k: None) if quiet else print, max_probes=max_probes,
                        max_eval_rows=max_eval_rows, task=task, max_new_tokens=max_new_tokens,
                        progress=None if quiet else progress_printer())


def diagnose(run) -> list:
    """`alignkit diagnose RUN`: the findings (`alignkit.eval.diagnose.Finding`: name, severity, evidence,
    fixes, numbers), most severe first; `str(finding)` is its text."""
    from alignkit.eval.diagnose import diagnose as diagnose_dir

    return diagnose_dir(_run_path(run))


@dataclass
class MemoryPlan:
    """What `alignkit plan` predicts: `plan` (`alignkit.plan.memory.Plan`: components in bytes, total,
    fits, verdict) and, when it does not fit, `fixes`, the cheapest changes that make it fit.
    `print(plan)` shows the table `alignkit plan` prints; `to_dict()` is its `--json` output."""

    plan: Any
    fixes: list = field(default_factory=list)

    @property
    def total(self) -> int:
        """Predicted peak memory in bytes (per GPU)."""
        return self.plan.total

    @property
    def total_gib(self) -> float:
        return self.plan.total / 2**30

    @property
    def fits(self) -> bool:
        return self.plan.fits

    @property
    def verdict(self) -> str:
        return self.plan.verdict

    @property
    def components(self) -> dict[str, int]:
        return dict(self.plan.components)

    def table(self) -> str:
        from alignkit.plan.memory import format_table

        lines = [format_table(self.plan)]
        for f in self.fixes:
            lines.append(f"  fix {f.rank}: {f.description} -> {f.total / 2**30:.2f} GiB "
                         f"({'fits' if f.fits else 'still too big'})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        from alignkit.plan.memory import plan_to_dict

        return {**plan_to_dict(self.plan), "fixes": [f.__dict__ | {"changes": f.changes} for f in self.fixes]}

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        inp = self.plan.input
        return (f"MemoryPlan({inp.method} on {inp.arch.name}, {self.plan.hardware.name}: "
                f"{self.total_gib:.2f} GiB, {self.verdict}{f', {len(self.fixes)} fixes' if self.fixes else ''})")


def plan(config=None, gpu: str = "t4", *, ram: str | None = None, model: str | None = None, **settings) -> MemoryPlan:
    """`alignkit plan`: the predicted peak memory of a run on `gpu` (t4, l4, a10g, ..., h200, cpu, auto,
    a size like "24gb", "2xh100"), with fixes when it does not fit.

    With `config` (a `RunConfig`, YAML path, dict or `Run`; `settings` are then config overrides as in
    `load_config`), its model, method and sizes are planned; `model` names another architecture for
    the same settings (a 7B shape for a config written for a small model: `model="llama-2-7b"`).
    Without a config, `model` and `settings` are `alignkit.plan.memory.PlanInput` fields, as
    `alignkit plan --model`: `plan(model="7b", method="dpo", quant="4bit", lora_r=16, micro_batch=2,
    seq_len=1024, grad_ckpt=True)`.
    """
    from alignkit.plan.advisor import fixes
    from alignkit.plan.architectures import load_arch
    from alignkit.plan.hardware import get_hardware
    from alignkit.plan.memory import PlanInput, estimate, plan_input_from_config

    hw = get_hardware(gpu, ram=ram)
    if config is not None:
        inp = plan_input_from_config(as_config(config, **settings), arch=model)
    else:
        if not model:
            raise UserError("alignkit.plan needs a config or model=", hint='e.g. alignkit.plan(model="7b", method="dpo")')
        try:
            inp = PlanInput(arch=load_arch(model), **settings)
        except TypeError as e:
            raise UserError(f"unknown plan setting: {e}", where="alignkit.plan",
                            hint="settings are PlanInput fields: method, lora_r, quant, dtype, micro_batch, seq_len, "
                                 "grad_ckpt, reference, ...") from None
    p = estimate(inp, hw)
    return MemoryPlan(p, [] if p.fits else fixes(inp, hw))
