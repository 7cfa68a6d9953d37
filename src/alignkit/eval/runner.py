"""Before/after evaluation of a model: what `alignkit train` runs at the end and `alignkit eval` runs alone.

"Before" is the reference (the starting weights; with LoRA the same model with the adapter
switched off, so no second copy is loaded) and "after" is the trained policy. Both answer the same
probe prompts with greedy decoding, both score the same held-out pairs, and the KL of the policy
from the reference is estimated on sampled answers. A lone model (`alignkit eval --model M` without
an adapter) is evaluated once: its metrics are under "after" and there is no "before".

`progress(label, done, total)`, when given, hears about every generation batch
(`alignkit.eval.generation.progress_printer` prints it with an ETA); None keeps library calls quiet.
Without probes (`eval.probes: null`) only the held-out pairs are scored; with neither, the
evaluation is skipped and says so.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch
from pydantic import ValidationError

from alignkit.config import RunConfig, _user_error, load_config
from alignkit.data import formats, tokenize
from alignkit.data.task_api import parse_task
from alignkit.errors import UserError
from alignkit.eval.generation import generate
from alignkit.eval.kl import estimate_kl
from alignkit.eval.metrics import (
    MIN_N,
    STABLE_KEYS,
    check_category,
    generation_metrics,
    preference_metrics,
    reported_keys,
    sample_size,
)
from alignkit.judges.refusal import is_refusal
from alignkit.judges.task_api import grade
from alignkit.logprobs import pair_logps_table
from alignkit.models import load_model, load_tokenizer, resolve_decode_dtype


def load_probes(path: str | Path, system: str | None, limit: int | None = None) -> list[dict]:
    """Probe rows {prompt, category[, reference]} -> {"messages", "prompt", "category", "reference"}.

    A category is any name (`harmful`, `benign` and `alarming` have their fixed meanings, see
    `alignkit.eval.metrics`); a row without a string prompt or category is refused with file:line.
    """
    probes = []
    hint = ('each line is like {"prompt": "How do I prune roses?", "category": "benign"}; the category is '
            "harmful, benign, alarming or a name of your own")
    for line, raw in formats.iter_rows_raw(path):
        where = f"{path}:{line}"
        if not isinstance(raw.get("prompt"), str) or not raw["prompt"].strip():
            got = "no 'prompt' field" if "prompt" not in raw else f"'prompt' is {type(raw['prompt']).__name__}"
            raise UserError(f"a probe needs a non-empty string 'prompt' ({got}; fields: {sorted(raw)})",
                            where=where, hint=hint)
        problem = check_category(raw.get("category"))
        if problem:
            raise UserError(problem + ("" if "category" in raw else " (the row has none)"),
                            where=f"{where} field 'category'", hint=hint)
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": raw["prompt"]}]
        reference = raw.get("reference") if isinstance(raw.get("reference"), str) else None
        probes.append({"messages": msgs, "prompt": raw["prompt"], "category": raw["category"],
                       "reference": reference})
    return probes[:limit] if limit else probes


def pair_logps(model, pairs, pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """(n, 2) chosen/rejected completion log-probs of tokenized pairs (model in eval mode)."""
    model.eval()
    return pair_logps_table(model, pairs, pad_id, batch_size)


@contextlib.contextmanager
def merged(model):
    """Generate with the LoRA update folded into the weights: the same function, without ~200 small
    adapter matmuls per decoding step (about a third of the time on CPU). Unmerged afterwards."""
    if not hasattr(model, "merge_adapter"):
        yield model
        return
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()


def _labelled(progress, label: str):
    """`progress(label, done, total)` as the `(done, total)` callback `generate` takes (None stays None)."""
    return None if progress is None else (lambda done, total: progress(label, done, total))


def _gen_metrics(model, tokenizer, probes, ecfg, progress=None, label: str = "probes") -> tuple[dict, list[str]]:
    answers = generate(model, tokenizer, [p["messages"] for p in probes], max_new_tokens=ecfg.max_new_tokens,
                       batch_size=ecfg.batch_size, do_sample=ecfg.do_sample, progress=_labelled(progress, label),
                       decode_dtype=resolve_decode_dtype(ecfg.decode_dtype, next(model.parameters()).device))
    task_api = ecfg.task == "task_api"  # task metrics only for the Task API: absent otherwise
    # Only task-JSON references are graded: a user's own probes may carry prose references, and the
    # evaluation at the end of a training run must not fail on them (they just leave task_correct None).
    refs = [p.get("reference") if task_api and parse_task(p.get("reference")) else None for p in probes]
    m = generation_metrics(answers, [p["category"] for p in probes], is_refusal=is_refusal,
                           task_check=parse_task if task_api else None, tokenizer=tokenizer,
                           references=refs, prompts=[p["prompt"] for p in probes], grader=grade if task_api else None)
    return m, answers


def evaluate_pair(policy, reference, tokenizer, cfg: RunConfig, *, probes, pairs, console=print,
                  progress=None) -> dict:
    """Metrics of `reference` (before) and `policy` (after).

    `reference` is a model, or None when `policy` is a peft model whose adapter-off state is the
    reference.
    """
    ecfg = cfg.eval

    def ref_ctx():
        return policy.disable_adapter() if reference is None else contextlib.nullcontext()

    ref_model = policy if reference is None else reference
    before, after = {}, {}
    if probes:
        console(f"eval: generating answers to {len(probes)} probes (before)")
        with ref_ctx():
            before, before_answers = _gen_metrics(ref_model, tokenizer, probes, ecfg, progress, "probes (before)")
    if pairs:  # everything under the reference first, before merging touches the base weights
        with ref_ctx():
            ref_lp = pair_logps(ref_model, pairs, tokenizer.pad_token_id)
    if probes:
        console(f"eval: generating answers to {len(probes)} probes (after)")
        with merged(policy):
            after, after_answers = _gen_metrics(policy, tokenizer, probes, ecfg, progress, "probes (after)")
    if pairs:
        pol_lp = pair_logps(policy, pairs, tokenizer.pad_token_id)
        pm = preference_metrics(pol_lp[:, 0], pol_lp[:, 1], ref_lp[:, 0], ref_lp[:, 1], cfg.train.beta)
        after.update(pm)
        before.update({"reward_accuracy": None, "reward_margin": None,
                       "logps/chosen": pm["ref_logps/chosen"], "logps/rejected": pm["ref_logps/rejected"]})
    if probes and ecfg.kl_samples:
        console("eval: estimating KL(policy || reference) on sampled answers")
        kl = estimate_kl(policy, reference, tokenizer, [p["messages"] for p in probes], n_samples=ecfg.kl_samples,
                         max_new_tokens=ecfg.max_new_tokens, batch_size=ecfg.batch_size, seed=cfg.train.seed,
                         progress=_labelled(progress, "kl samples"))
        before["kl"] = 0.0  # the reference against itself; only stated when the policy's KL was measured
        after["kl"] = kl["kl_per_sequence"]
        after["kl_per_token"] = kl["kl_per_token"]
        after["n/kl"] = kl["n_sequences"]
    for d in (before, after):
        for k in STABLE_KEYS:
            d.setdefault(k, None)
    examples, changed = [], []
    if probes:
        from alignkit.eval.report import changed_examples

        examples = [{"prompt": p["prompt"], "category": p["category"], "before": b, "after": a}
                    for p, b, a in zip(probes, before_answers, after_answers, strict=True)]
        changed = changed_examples([p["prompt"] for p in probes], [p["category"] for p in probes],
                                   before_answers, after_answers, is_refusal,
                                   parse_task if ecfg.task == "task_api" else None)
    return {"before": before, "after": after, "changed": changed, "examples": examples}


def evaluate_single(model, tokenizer, cfg: RunConfig, *, probes, pairs, console=print, progress=None) -> dict:
    """Metrics of one model alone (no reference to compare with): generated once, reported under
    "after"; with pairs, the mean chosen/rejected log-probs (reward accuracy needs a reference)."""
    metrics: dict = {}
    answers: list[str] = []
    if probes:
        console(f"eval: generating answers to {len(probes)} probes")
        metrics, answers = _gen_metrics(model, tokenizer, probes, cfg.eval, progress, "probes")
    if pairs:
        lp = pair_logps(model, pairs, tokenizer.pad_token_id)
        metrics.update({"logps/chosen": float(lp[:, 0].mean()), "logps/rejected": float(lp[:, 1].mean()),
                        "n/pairs": len(pairs)})
    for k in STABLE_KEYS:
        metrics.setdefault(k, None)
    return {"after": metrics, "changed": [],
            "answers": [{"prompt": p["prompt"], "category": p["category"], "answer": a}
                        for p, a in zip(probes, answers, strict=True)]}


def _eval_pairs(cfg: RunConfig, tokenizer, system):
    """The held-out pairs: `data.eval`, or else the `eval_fraction` split training held out."""
    from alignkit.train.run import data_options, load_split

    if not cfg.data.eval and (not cfg.data.eval_fraction or cfg.method == "kto"):
        return []  # (KTO splits its unpaired rows, so the paired split would not be the held-out one)
    if cfg.data.eval:
        try:
            rows, _ = formats.load_preferences(cfg.data.eval, system=system, **data_options(cfg, held_out=True))
        except UserError:
            if cfg.method != "kto":
                raise
            return []  # an unpaired KTO eval file: no pairs to score reward accuracy on
        rows = rows[:cfg.data.max_eval_rows] if cfg.data.max_eval_rows else rows
    else:
        rows = load_split(cfg, formats.load_preferences, system)[1]
    pairs, _ = tokenize.tokenize_pairs(tokenizer, rows, max_length=cfg.data.max_length,
                                       max_prompt_length=cfg.data.max_prompt_length, skip_invalid=True)
    return pairs


def evaluate_run(run: Path, console=print, *, max_probes: int | None = None, max_eval_rows: int | None = None,
                 task: str | None = None, max_new_tokens: int | None = None, progress=None) -> dict | None:
    """Evaluate a finished run against its reference; write metrics.json, report.md, report.html.

    `max_probes`, `max_eval_rows`, `task` and `max_new_tokens`, when given, replace the run config's
    `eval.max_probes`, `data.max_eval_rows`, `eval.task` and `eval.max_new_tokens` for this evaluation
    (the report's config shows the values used). Returns the metrics, or None when there is nothing
    to evaluate (no held-out pairs, no probes). A run whose status was `trained` or `eval_failed`
    becomes `done`.
    """
    from alignkit.train.preflight import check_inputs
    from alignkit.train.run import system_prompt

    overrides = [f"{field}={value}" for field, value in (
        ("eval.max_probes", max_probes), ("data.max_eval_rows", max_eval_rows), ("eval.task", task),
        ("eval.max_new_tokens", max_new_tokens)) if value is not None]
    # A run's config.yaml holds absolute paths; older ones hold paths relative to where `train` ran.
    cfg = load_config(run / "config.yaml", overrides, paths_from_file=False)
    check_inputs(cfg, train=False, evaluate=True)
    info = json.loads((run / "run.json").read_text())
    tokenizer = load_tokenizer(str(run))
    system = system_prompt(cfg)
    probes = load_probes(cfg.eval.probes, system, cfg.eval.max_probes) if cfg.eval.probes else []
    pairs = _eval_pairs(cfg, tokenizer, system) if cfg.method != "sft" else []
    if not probes and not pairs:
        console("evaluation skipped: no held-out pairs (data.eval, or data.eval_fraction of the training file) "
                "and no probes (eval.probes)")
        _mark_evaluated(run, cfg, info, evaluation="skipped: no held-out pairs and no probes")
        return None
    if not probes:
        console("eval: no probes (eval.probes is null): scoring the held-out pairs only, no generation")
    base = load_model(cfg.model.name_or_path, dtype=cfg.model.dtype,
                      attn_implementation=cfg.model.attn_implementation, allow_pickle=cfg.model.allow_pickle)
    if (run / "final" / "adapter_config.json").is_file():
        from peft import PeftModel

        policy, reference = PeftModel.from_pretrained(base, run / "final"), None
    else:
        policy, reference = load_model(str(run / "final"), dtype=cfg.model.dtype), base
    result = evaluate_pair(policy, reference, tokenizer, cfg, probes=probes, pairs=pairs, console=console,
                           progress=progress)
    result["memory"] = {"peak_mb": info.get("peak_memory_mb"), "predicted_mb": info.get("predicted_memory_mb")}
    result["run"] = _mark_evaluated(run, cfg, info, evaluation="done")  # before the report: diagnose reads it
    write_outputs(run, result, cfg)
    console(format_summary(result))
    return result


def _mark_evaluated(run: Path, cfg: RunConfig, info: dict, **fields) -> dict:
    """run.json after an evaluation that finished: a `trained` / `eval_failed` run is `done` now; the
    run.json content."""
    from alignkit.train.run import _write_run_json

    if info.get("status") not in ("trained", "eval_failed"):
        return info
    _write_run_json(run, cfg, status="done", eval_error=None, **fields)
    return json.loads((run / "run.json").read_text())


def evaluate_trained_run(run: Path, console=print, progress=None) -> dict | None:
    """The evaluation `alignkit train` runs after training (run.json status `trained`).

    Success makes the run `done`. A failure marks it `eval_failed` with the error, keeps `final/`,
    and raises a `UserError` (or re-raises a bug) saying how to run the evaluation again. An
    interrupt (KeyboardInterrupt) leaves the status `trained`.
    """
    try:
        return evaluate_run(run, console=console, progress=progress)
    except Exception as e:
        from alignkit.train.run import _write_run_json

        cfg = load_config(run / "config.yaml", paths_from_file=False)
        first = (str(e).splitlines() or [type(e).__name__])[0][:300]
        _write_run_json(run, cfg, status="eval_failed", eval_error=f"{type(e).__name__}: {first}")
        again = f"the trained model is kept in {run / 'final'}; fix the cause, then evaluate it: alignkit eval {run}"
        if isinstance(e, UserError):
            raise UserError(f"training finished, but the evaluation failed: {e.message}", where=e.where,
                            hint=f"{e.hint}; then: {again}" if e.hint else again) from None
        print(f"error: training finished, but the evaluation failed ({type(e).__name__}); {again}", file=sys.stderr)
        raise


def write_outputs(run: Path, result: dict, cfg: RunConfig) -> None:
    from alignkit.config import dump_config
    from alignkit.eval.report import write_report

    (run / "metrics.json").write_text(json.dumps(result, indent=1))
    log_rows = []
    if (run / "log.jsonl").is_file():
        log_rows = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines() if ln.strip()]
    findings = None
    if log_rows:
        from alignkit.eval.diagnose import diagnose

        findings = diagnose(run)
    write_report(run, result, log_rows, dump_config(cfg), result.get("changed", []), findings=findings)


def format_summary(result: dict) -> str:
    """The table printed at the end of `train` / `eval`: the stable keys (and the task and custom
    category keys that were measured) with their sample size; metrics measured in neither column are
    left out, and a sample under `MIN_N` is flagged."""
    single = "before" not in result
    before, after = result.get("before") or {}, result.get("after") or {}
    heads = ["model"] if single else ["before", "after"]
    rows = [f"{'metric':<24}" + "".join(f"{h:>10}" for h in heads) + "  n"]
    for k in reported_keys(before, after):
        values = [after.get(k)] if single else [before.get(k), after.get(k)]
        if all(v is None for v in values):
            continue
        n = sample_size(k, after) if after.get(k) is not None else sample_size(k, before)
        note = "" if n is None else f"  (n={n})" + (f"  n<{MIN_N}: too few to judge" if n < MIN_N else "")
        rows.append(f"{k:<24}" + "".join(f"{_fmt(v):>10}" for v in values) + note)
    return "\n".join(rows)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def evaluate_model_cli(*, model: str, adapter: str | None, data: str | None, prompts: str | None,
                       system_prompt_file: str | None, out: Path | None, max_new_tokens: int = 48,
                       beta: float = 0.1, max_probes: int | None = None, max_eval_rows: int | None = None,
                       task: str | None = None, console=print, progress=None) -> dict:
    """`alignkit eval --model M [--adapter A] --data D --prompts P`.

    With an adapter, "before" is the model with the adapter off and "after" with it on; without
    one, the model is evaluated once, alone (`evaluate_single`: "after" only, no "before").
    `task` defaults to the config default of `eval.task`.
    """
    spec = {"model": {"name_or_path": model},
            "data": {"eval": data, "system_prompt_file": system_prompt_file, "max_eval_rows": max_eval_rows},
            "train": {"beta": beta},
            "eval": {"probes": prompts, "max_new_tokens": max_new_tokens, "kl_samples": 1 if adapter else 0,
                     "max_probes": max_probes, **({"task": task} if task is not None else {})}}
    try:
        cfg = RunConfig.model_validate(spec)
    except ValidationError as e:
        raise _user_error(e, "command line") from None
    from alignkit.train.run import system_prompt

    tokenizer = load_tokenizer(adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else model)
    system = system_prompt(cfg)
    probes = load_probes(prompts, system, max_probes) if prompts else []
    pairs = _eval_pairs(cfg, tokenizer, system) if data else []
    base = load_model(model)
    if adapter:
        from peft import PeftModel

        policy = PeftModel.from_pretrained(base, adapter)
        result = evaluate_pair(policy, None, tokenizer, cfg, probes=probes, pairs=pairs, console=console,
                               progress=progress)
    else:
        result = evaluate_single(base, tokenizer, cfg, probes=probes, pairs=pairs, console=console,
                                 progress=progress)
    result["run"] = {"model": model, "adapter": adapter}
    if out:
        out.mkdir(parents=True, exist_ok=True)
        write_outputs(out, result, cfg)
    console(format_summary(result))
    return result
