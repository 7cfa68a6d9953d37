"""`alignkit train`: a config in, a run directory out.

Order of work: check that every input the config names exists, check the run directory, load
tokenizer and data (cheap errors first), load the model, set up LoRA and the reference, build the
schedule, resume if asked, train, save `final/`. run.json's status ends `done`, or `trained` when the
caller evaluates next (`alignkit train`: `alignkit.eval.runner.evaluate_trained_run` makes it `done`).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import get_scheduler

from alignkit.config import ONLINE_METHODS, RunConfig, dump_config, load_config
from alignkit.data import formats, tokenize
from alignkit.data.kto_convert import kto_balance_warning
from alignkit.errors import UserError
from alignkit.models import (
    apply_lora,
    count_parameters,
    disable_dropout,
    load_model,
    load_tokenizer,
    resolve_mixed_precision,
)
from alignkit.train import preflight
from alignkit.train import reference as refs
from alignkit.train.checkpoint import latest_checkpoint, load_checkpoint
from alignkit.train.kto import KTOObjective
from alignkit.train.loop import LoopState, make_accelerator, make_schedule, run_loop
from alignkit.train.objectives import PolicyForward, PreferenceObjective, SFTObjective
from alignkit.train.reward import RewardObjective, finish_reward_run

PAIRED = ("dpo", "ipo", "hinge", "robust", "rpo", "dpop", "simpo", "cpo", "orpo")


@dataclass
class Prepared:
    train: list
    eval: list
    report: str


def system_prompt(cfg: RunConfig) -> str | None:
    if not cfg.data.system_prompt_file:
        return None
    path = Path(cfg.data.system_prompt_file)
    if not path.is_file():
        raise UserError(f"data.system_prompt_file: file not found: {path}", where=cfg.source,
                        hint="fix the path or set data.system_prompt_file: null")
    return path.read_text(encoding="utf-8").strip()


def data_options(cfg: RunConfig, *, held_out: bool = False) -> dict:
    """The loaders' keyword arguments from the config's data section (column mapping, split, score
    filter); `held_out`: for `data.eval`, whose folder split is `data.eval_split` when set."""
    d = cfg.data
    split = (d.eval_split or d.split) if held_out else d.split
    return dict(skip_invalid=d.skip_invalid, columns=d.columns, split=split, min_score_margin=d.min_score_margin)


def load_split(cfg: RunConfig, load, system: str | None):
    """(train rows, eval rows, train report, eval report or None): `data.eval` if set, else the
    seeded `eval_fraction` split of the training file (after `max_rows`); eval capped at
    `max_eval_rows`. The final evaluation calls this too, so it scores the rows training held out."""
    rows, rep = load(cfg.data.train, system=system, **data_options(cfg))
    if cfg.data.max_rows:
        rows = rows[:cfg.data.max_rows]
    if cfg.data.eval:
        eval_rows, erep = load(cfg.data.eval, system=system, **data_options(cfg, held_out=True))
    else:
        rows, eval_rows = formats.split_train_eval(rows, cfg.data.eval_fraction, cfg.train.seed)
        erep = None
    eval_rows = eval_rows[:cfg.data.max_eval_rows] if cfg.data.max_eval_rows else eval_rows
    return rows, eval_rows, rep, erep


def prepare_data(cfg: RunConfig, tokenizer) -> Prepared:
    """Load, validate, split and tokenize the training (and eval) data for the run's method."""
    if cfg.method == "kto" and cfg.train.micro_batch_size < 2:
        raise UserError("kto needs micro_batch_size >= 2: its KL reference point pairs each completion with "
                        "another row's prompt in the same micro-batch", where="config field train.micro_batch_size",
                        hint="use 2 or more (lower gradient_accumulation_steps to keep the effective batch)")
    if cfg.method == "kto":  # unpaired rows; a paired file unpairs into a desirable and an undesirable row
        load, tok = formats.load_kto, tokenize.tokenize_kto_rows
    elif cfg.method == "sft":
        load, tok = formats.load_sft, tokenize.tokenize_sft_rows
    else:
        load, tok = formats.load_preferences, tokenize.tokenize_pairs
    system = system_prompt(cfg)
    rows, eval_rows, rep, erep = load_split(cfg, load, system)
    kw = dict(max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length,
              skip_invalid=cfg.data.skip_invalid)
    train, ts = tok(tokenizer, rows, **kw)
    evals, es = tok(tokenizer, eval_rows, **kw) if eval_rows else ([], None)
    if not train:
        raise UserError("no training rows left after tokenization", where=cfg.data.train)
    filtered = f", {rep.filtered} below data.min_score_margin" if rep.filtered else ""
    lines = [f"train: {len(train)} rows from {cfg.data.train} ({rep.skipped - rep.filtered} invalid skipped{filtered})",
             f"  {rep.format_line()}",
             f"  truncated: {ts.prompt_truncated} prompts, {ts.completion_truncated} completions"
             f" (max_length {cfg.data.max_length}); {ts.skipped} rows too long skipped"]
    if evals:
        lines.append(f"eval: {len(evals)} rows" + (f" from {cfg.data.eval}" if erep else " split off train"))
        if erep:
            lines.append(f"  {erep.format_line()}")
    if cfg.method == "kto":
        n_d = sum(it.label for it in train)
        lines.append(f"kto: {n_d} desirable, {len(train) - n_d} undesirable rows")
        warning = kto_balance_warning(n_d, len(train) - n_d, cfg.train.kto_desirable_weight,
                                      cfg.train.kto_undesirable_weight)
        if warning:
            lines.append(f"warning: {warning}")
    return Prepared(train, evals, "\n".join(lines))


def _item_length(item) -> int:
    if hasattr(item, "chosen_ids"):
        return len(item.prompt_ids) + len(item.chosen_ids) + len(item.rejected_ids)
    return len(item.prompt_ids) + len(item.completion_ids)


def check_run_dir(cfg: RunConfig, *, resume: bool, overwrite: bool, keep: tuple[str, ...] = ()) -> Path:
    """Refuse to start over another run; touches nothing (called before any work is done).

    `keep`: names of entries the caller put into the run directory for this run (the Python API's
    `data/`, `alignkit.api.INPUTS_DIR`); they do not count as another run."""
    run = Path(cfg.output_dir)
    if run.exists() and not run.is_dir():
        raise UserError("output_dir is a file", where=f"config field output_dir ({run})")
    if run.is_dir() and _other_entries(run, keep) and not resume and not overwrite:
        raise UserError("the output directory already holds a run", where=str(run),
                        hint="pass --resume to continue it, --overwrite to replace it, "
                             "or set output_dir to a new directory")
    return run


def prepare_run_dir(run: Path, *, resume: bool, overwrite: bool, keep: tuple[str, ...] = ()) -> Path:
    """Create (or, with --overwrite, empty) the run directory, once the inputs have been validated;
    the entries named in `keep` stay."""
    if run.is_dir() and overwrite and not resume:
        for entry in _other_entries(run, keep):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    run.mkdir(parents=True, exist_ok=True)
    return run


def _other_entries(run: Path, keep: tuple[str, ...]) -> list[Path]:
    return [p for p in run.iterdir() if p.name not in keep]


def tracker_config(cfg: RunConfig) -> dict:
    """The run's config for `accelerator.init_trackers`: one flat level of dotted field names with
    scalar values (TensorBoard's hparams take nothing else; a list such as `model.lora.target_modules`
    becomes its comma-joined text, None stays None and TensorBoard leaves it out)."""
    flat: dict = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = ",".join(map(str, value)) if isinstance(value, list) else value

    walk(cfg.model_dump(mode="json"), "")
    return flat


# Fields an override may change on --resume: they do not change what the checkpoint was trained on.
# train.max_steps is honoured (the run continues to the new total); everything else is refused.
RESUMABLE = ("output_dir", "train.max_steps", "train.save_every", "train.keep_checkpoints", "train.log_every",
             "train.eval_every", "train.trackers", "eval.")


def _changed(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _changed(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


def resume_config(run: Path, overrides: list[str], console=print) -> RunConfig:
    """The config to resume `run` with: its own config.yaml plus `overrides`. An override of a field
    the checkpoint depends on (model, data, method, hyperparameters) is refused, naming the fields;
    a new `train.max_steps` is honoured, and refused when it is below the newest checkpoint's step."""
    if not (run / "config.yaml").is_file():
        raise UserError("not a run directory (no config.yaml)", where=str(run),
                        hint="pass the output_dir of an earlier `alignkit train`")
    # A run's config.yaml holds absolute paths; older ones hold paths relative to where `train` ran.
    old = load_config(run / "config.yaml", [f"output_dir={run}"], paths_from_file=False)
    new = load_config(run / "config.yaml", [*overrides, f"output_dir={run}"], paths_from_file=False)
    changed = _changed(old.model_dump(mode="json"), new.model_dump(mode="json"))
    fixed = [k for k in changed if not k.startswith(RESUMABLE)]
    if fixed:
        raise UserError(f"cannot change on resume: {', '.join(fixed)} (the checkpoints were trained with the "
                        f"values in {run / 'config.yaml'})", where=f"--resume {run}",
                        hint="start a new run for other values (alignkit train CONFIG output_dir=NEW ...); "
                             "on resume only train.max_steps, train.save_every, train.keep_checkpoints, "
                             "train.log_every, train.eval_every, train.trackers and eval.* may change")
    if "train.max_steps" in changed and finished_steps(run) is None:
        ckpt, _ = latest_checkpoint(run)
        at = int(json.loads((ckpt / "trainer_state.json").read_text())["step"]) if ckpt else 0
        total = new.train.max_steps
        if total is not None and total < at:
            raise UserError(f"train.max_steps={total} is below the newest checkpoint's step {at}",
                            where=f"--resume {run}", hint=f"use train.max_steps={at} or more")
        t = new.train
        if t.lr_scheduler != "constant" or t.warmup_ratio:
            console(f"note: train.max_steps {old.train.max_steps} -> {total}: the {t.lr_scheduler} learning-rate "
                    f"schedule{' with warmup' if t.warmup_ratio else ''} is recomputed for {total} steps; steps "
                    f"1-{at} followed the old one, so this run differs from one started with "
                    f"train.max_steps={total}")
    return new


FINISHED = ("done", "trained", "eval_failed")


def finished_steps(run: Path) -> int | None:
    """The number of steps of a run whose training finished (run.json status `done`, or `trained` /
    `eval_failed`: trained, evaluation pending or failed), else None."""
    path = run / "run.json"
    try:
        info = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return None
    return int(info.get("done") or info.get("steps") or 0) if info.get("status") in FINISHED else None


def finished_for_resume(run: Path, cfg: RunConfig, new_stage_hint) -> int | None:
    """The steps of `run` when its training finished (a resume has nothing to do), else None.

    A `train.max_steps` beyond a finished run's steps is refused: the optimizer state of its last
    step is not kept. `new_stage_hint(done)` says how to train a new stage from it instead (the CLI
    and the Python API word it their own way)."""
    done = finished_steps(run)
    if done is not None and cfg.train.max_steps and cfg.train.max_steps > done:
        raise UserError(f"the run is finished ({done} steps); extending a finished run to "
                        f"train.max_steps={cfg.train.max_steps} is not supported (the optimizer state of "
                        f"its last step is not kept)", where=str(run), hint=new_stage_hint(done))
    return done


def run_plan(cfg: RunConfig, device):
    """The memory planner's plan for this run on this device (its total is recorded next to the
    measured peak), or None for an architecture the planner does not know."""
    from alignkit.models import base_of
    from alignkit.plan.hardware import get_hardware
    from alignkit.plan.memory import estimate, plan_input_from_config

    root = base_of(cfg.model.name_or_path)
    arch = root if root == "default" or Path(root, "config.json").is_file() else None
    try:
        hw = get_hardware("cpu" if torch.device(device).type == "cpu" else "auto")
        return estimate(plan_input_from_config(cfg, arch=arch), hw)
    except (UserError, ValueError, KeyError) as e:  # an unknown architecture: no prediction, say why
        print(f"memory planner: no prediction ({e})")
        return None


def _reference(cfg: RunConfig, model, lora: bool, pairs, evals, pad_id, accelerator, console, tokenizer):
    """The reference strategy of a method that needs one, and its name. A precomputed table is
    computed under the run's autocast (the policy's forward is) and cached per precision."""
    kind = cfg.train.reference
    if kind == "auto":
        kind = "adapter" if lora else ("copy" if cfg.method == "kto" else "precomputed")
    if kind == "precomputed" and cfg.method == "kto":
        raise UserError("reference 'precomputed' is not supported for kto yet (its KL rows depend on the "
                        "micro-batch)", where="config field train.reference", hint="use adapter (LoRA) or copy")
    if kind == "none":
        raise UserError(f"method {cfg.method} needs a reference model", where="config field train.reference",
                        hint="use auto, adapter, copy or precomputed")
    if kind == "adapter":
        if not lora:
            raise UserError("reference 'adapter' needs LoRA (the reference is the base with the adapter off)",
                            where="config field train.reference", hint="use copy or precomputed for full fine-tuning")
        return refs.AdapterReference(), kind
    if kind == "copy":
        return refs.CopyReference(model), kind
    key = refs.reference_key(refs.reference_key_parts(
        model, tokenizer, name_or_path=cfg.model.name_or_path, quantization=cfg.model.quantization,
        autocast=accelerator.mixed_precision, prefix_sharing=cfg.train.prefix_sharing))
    with accelerator.autocast():
        table, _, _ = refs.cached_reference_table(model, pairs + evals, model_key=key, pad_id=pad_id,
                                                  batch_size=cfg.train.micro_batch_size, device=accelerator.device,
                                                  log=console, shared=cfg.train.prefix_sharing)
    return refs.PrecomputedReference(table), kind


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, force: bool = False,
          evaluate_after: bool = False, evaluate_round=None, console=print, progress=None,
          keep: tuple[str, ...] = ()) -> Path:
    """Run `cfg` to completion (or resume it); returns the run directory.

    `evaluate_after`: the caller evaluates the run next, so the evaluation's inputs are checked up
    front too and the finished run's status is `trained` (not yet `done`). `keep`: entries of the run
    directory the caller wrote for this run (`check_run_dir`), kept by `overwrite`. With
    `train.rounds` > 1 the rounds run instead (`alignkit.train.rounds`), each evaluated by
    `evaluate_round(run)` when given, and the rounds' folder is returned."""
    preflight.check_inputs(cfg, train=True, evaluate=evaluate_after or evaluate_round is not None)
    if cfg.train.rounds > 1:
        from alignkit.train.rounds import run_rounds

        return run_rounds(cfg, resume=resume, overwrite=overwrite, force=force, evaluate=evaluate_round,
                          console=console, progress=progress)
    if cfg.method in ONLINE_METHODS:  # rollout-then-update: a loop of its own
        from alignkit.train.ppo import run_online

        return run_online(cfg, resume=resume, overwrite=overwrite, force=force, console=console, progress=progress,
                          evaluate_after=evaluate_after, keep=keep)
    run = check_run_dir(cfg, resume=resume, overwrite=overwrite, keep=keep)
    tcfg = cfg.train
    mp = resolve_mixed_precision(tcfg.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")
    accelerator = make_accelerator(mp, trackers=tcfg.trackers, project_dir=str(run))
    set_seed(tcfg.seed)
    tokenizer = load_tokenizer(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    data = prepare_data(cfg, tokenizer)
    console(data.report)
    plan = run_plan(cfg, accelerator.device)
    if plan is not None and accelerator.device.type == "cuda":
        preflight.check_memory(plan, force=force, console=console)  # before hours are spent, not after
    model = load_model(cfg.model.name_or_path, dtype=cfg.model.dtype, device=accelerator.device,
                       trust_remote_code=cfg.model.trust_remote_code, allow_pickle=cfg.model.allow_pickle,
                       attn_implementation=cfg.model.attn_implementation, quantization=cfg.model.quantization)
    if cfg.method != "sft":  # policy and reference must be the same function of the weights (no random masks)
        disable_dropout(model)
    if cfg.method == "reward":  # the causal LM's backbone under a scalar head
        from alignkit.reward_model import to_reward_model

        model = to_reward_model(model)
    lora = cfg.model.lora.enabled
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    pad_id = tokenizer.pad_token_id
    needs_ref = cfg.method == "kto" or (cfg.method in PAIRED and _needs_ref(cfg.method))
    pairs = data.train if cfg.method in PAIRED else []
    evals = data.eval if cfg.method in PAIRED else []
    # A frozen copy / precomputed table must come from the starting weights, before LoRA or training.
    ref, ref_kind = (None, "none")
    if needs_ref and not lora:
        ref, ref_kind = _reference(cfg, model, False, pairs, evals, pad_id, accelerator, console, tokenizer)
    if lora:
        lc = cfg.model.lora
        model = apply_lora(model, r=lc.r, alpha=lc.alpha, dropout=lc.dropout, target_modules=lc.target_modules,
                           gradient_checkpointing=cfg.model.gradient_checkpointing,
                           task_type="SEQ_CLS" if cfg.method == "reward" else "CAUSAL_LM")
        if needs_ref:
            ref, ref_kind = _reference(cfg, model, True, pairs, evals, pad_id, accelerator, console, tokenizer)
    trainable, total = count_parameters(model)
    if trainable == 0:
        raise UserError("the model has no trainable parameters", where="config field model.lora",
                        hint="check model.lora.target_modules")
    if cfg.method == "sft":
        objective = SFTObjective(pad_id)
    elif cfg.method == "reward":
        objective = RewardObjective(pad_id, margin=tcfg.reward_margin,
                                    center_rewards_coefficient=tcfg.center_rewards_coefficient,
                                    shared=tcfg.prefix_sharing)
    elif cfg.method == "kto":
        objective = KTOObjective(tcfg.model_dump(), pad_id, ref, shared=tcfg.prefix_sharing)
    else:
        objective = PreferenceObjective(cfg.method, tcfg.model_dump(), pad_id, ref, shared=tcfg.prefix_sharing)
        objective.eval_offset = len(pairs)  # eval pairs follow train pairs in a precomputed table
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tcfg.learning_rate,
                                  weight_decay=tcfg.weight_decay)
    lengths = [_item_length(x) for x in data.train]
    per_step = tcfg.gradient_accumulation_steps * accelerator.num_processes
    per_epoch = math.ceil(len(lengths) / tcfg.micro_batch_size)  # micro-batches
    epochs = tcfg.max_steps * per_step / per_epoch if tcfg.max_steps else tcfg.epochs
    schedule = make_schedule(lengths, tcfg.micro_batch_size, per_step, epochs, tcfg.seed)
    total_steps = tcfg.max_steps or math.ceil(len(schedule) / per_step)
    scheduler = get_scheduler(tcfg.lr_scheduler if tcfg.lr_scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=int(tcfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    forward = getattr(objective, "make_forward", PolicyForward)(model)
    forward, optimizer, scheduler = accelerator.prepare(forward, optimizer, scheduler)
    prepare_run_dir(run, resume=resume, overwrite=overwrite, keep=keep)
    state = LoopState()
    log_file = run / "log.jsonl"
    if accelerator.is_main_process:
        (run / "config.yaml").write_text(dump_config(cfg))  # first: it makes the directory a run
        _write_run_json(run, cfg, status="running", steps=total_steps, trainable=trainable, total=total,
                        reference=ref_kind, data=data.report, mixed_precision=mp,
                        predicted_memory_mb=plan.total / 2**20 if plan else None)
    if resume:
        state = _resume(run, model, optimizer, scheduler, log_file, console)
    else:
        log_file.write_text("")
    preflight.check_disk(run, preflight.checkpoint_bytes(model, tcfg.keep_checkpoints))
    if tcfg.trackers:
        accelerator.init_trackers(run.name, config=tracker_config(cfg))
    console(f"{cfg.method}: {total_steps} steps x {per_step} micro-batches of {tcfg.micro_batch_size}; "
            f"trainable {trainable:,} / {total:,} params; reference: {ref_kind}; autocast: {mp}")

    def evaluate():
        from alignkit.train.evaluate import pair_metrics
        return pair_metrics(model, objective, data.eval, tcfg.micro_batch_size, accelerator.device)

    t0 = time.perf_counter()
    try:
        state = run_loop(accelerator=accelerator, model=model, forward=forward, objective=objective,
                         items=data.train, schedule=schedule, optimizer=optimizer, scheduler=scheduler,
                         total_steps=total_steps, steps_per_epoch=per_epoch / per_step, tcfg=tcfg, state=state,
                         run_dir=run, log_file=log_file, evaluate=evaluate if data.eval else None,
                         progress=progress, console=console)
    except Exception as e:
        _write_run_json(run, cfg, status="failed", error=str(e).splitlines()[0][:300])
        if preflight.is_oom(e):
            from alignkit.plan.advisor import fixes

            raise UserError(preflight.oom_message(plan, fixes(plan.input, plan.hardware) if plan else []),
                            where=f"{run} step {state.step + 1}") from None
        raise
    if state.step < total_steps:
        _write_run_json(run, cfg, status="interrupted", steps=total_steps, done=state.step,
                        signal=state.interrupted_by)
        return run
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_final(accelerator.unwrap_model(forward).model, tokenizer, run)
        if cfg.method == "reward":  # it scores its held-out pairs itself
            _finish_reward(cfg, model, data, pad_id, run, console)
        _write_run_json(run, cfg, status=finished_status(evaluate_after), steps=total_steps, done=state.step,
                        train_seconds=round(time.perf_counter() - t0, 1), skipped_steps=state.skipped_steps,
                        peak_memory_mb=peak_memory_mb(accelerator.device))
    # The held-out metrics come after final/ and "done": a Ctrl-C here loses no training.
    if data.eval and accelerator.is_main_process and cfg.method != "reward":
        with open(log_file, "a") as f:
            f.write(json.dumps({"step": state.step, **evaluate()}) + "\n")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run


def finished_status(evaluate_after: bool) -> str:
    """run.json status of a run whose training finished: `trained` while an evaluation is to follow."""
    return "trained" if evaluate_after else "done"


def _finish_reward(cfg: RunConfig, model, data: Prepared, pad_id: int, run: Path, console) -> None:
    """Centre the rewards (offset in final/reward.json) and write the held-out metrics."""
    result = finish_reward_run(model, data.train, data.eval, pad_id, run / "final",
                               batch_size=cfg.train.micro_batch_size * 2)
    (run / "metrics.json").write_text(json.dumps({"method": "reward", **result}, indent=1))
    _write_run_json(run, cfg, reward=result)
    held = result["eval"] or result["train"]
    corr = held.get("length_correlation")
    console(f"reward model: offset {result['offset']:.4f}; {'held-out' if result['eval'] else 'train'} accuracy "
            f"{held['accuracy']:.3f}, margin {held['margin']:.3f}, chosen {held['chosen_mean']:.3f} / rejected "
            f"{held['rejected_mean']:.3f}, length correlation {'-' if corr is None else f'{corr:.3f}'}")


def _needs_ref(method: str) -> bool:
    from alignkit.losses import LOSSES
    return LOSSES[method].needs_reference


def _resume(run: Path, model, optimizer, scheduler, log_file: Path, console) -> LoopState:
    ckpt, notes = latest_checkpoint(run)
    for n in notes:
        console(n)
    if ckpt is None:
        if (run / "final").is_dir():
            raise UserError("this run already finished", where=str(run),
                            hint=f"start a new output_dir; to evaluate it again: alignkit eval {run}")
        console("no complete checkpoint: starting from step 0")
        log_file.write_text("")
        return LoopState()
    ts = load_checkpoint(ckpt, model, optimizer, scheduler)
    console(f"resuming from {ckpt} (step {ts['step']})")
    # Keep the log rows up to the checkpoint, so the log equals an uninterrupted run's.
    rows = [ln for ln in log_file.read_text().splitlines() if ln.strip()] if log_file.exists() else []
    kept = []
    for ln in rows:
        try:
            row = json.loads(ln)
        except ValueError:  # a line torn by a kill mid-write
            continue
        if row.get("step", 0) <= ts["step"]:
            kept.append(ln)
    log_file.write_text("".join(ln + "\n" for ln in kept))
    return LoopState(step=ts["step"], skipped_steps=ts.get("skipped_steps", 0), tokens_seen=ts.get("tokens_seen", 0),
                     extra=ts.get("extra", {}))


def save_final(model, tokenizer, run: Path) -> None:
    """final/: the adapter (LoRA) or the full model, in safetensors, with the tokenizer."""
    tmp = run / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    for name, p in model.named_parameters():
        if p.requires_grad and not torch.isfinite(p).all():
            raise FloatingPointError(f"refusing to save non-finite weights ({name})")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    final = run / "final"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def peak_memory_mb(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _write_run_json(run: Path, cfg: RunConfig, **fields) -> None:
    path = run / "run.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    base = cfg.model.name_or_path
    if Path(base).exists():  # absolute, so the chain resolves from any working directory
        base = str(Path(base).resolve())
    info.update(method=cfg.method, base=base, lora=cfg.model.lora.enabled, **fields)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(path)
