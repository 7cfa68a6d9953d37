"""On-policy preference pairs: sample the model's own answers, judge them, pair its failure with a better one.

Why: DPO pairs whose rejected answer is text the model would never write teach it to avoid those words,
not the behaviour behind them (the project's lesson, see the Task API README). Here the rejected side is
always one of the model's own samples, so the update pushes down what the model actually does.

Per prompt, `k` answers are drawn with `alignkit.sample.sample` (ancestral sampling at `temperature`),
decoded without special tokens and stripped, and scored by a judge (`alignkit.judges`). Then:

- **rejected**: the lowest-scored answer (the first such on ties). It may be one that did not end
  (hit `max_new_tokens`): a rambling answer is a real failure.
- **chosen**, by `chosen` mode:
  - ``"best"``: the highest-scored answer that ended (a cut-off answer is never a model to copy), if
    its score exceeds the rejected's by more than `min_margin`;
  - ``"reference"``: the row's reference answer (``reference``, else ``chosen``), judged too and kept
    only if it exceeds the rejected's score by more than `min_margin`;
  - ``"best_or_reference"`` (default): own best if it qualifies, else the reference.
- a prompt whose answers all scored equal goes through the rules above with `keep_ties` (the
  default; in practice the reference against one of the tied answers, which is the case that matters
  most: a model that fails a prompt every time), or is skipped without it (`--skip-ties`).
- empty answers (the model stopped at once) are never paired: the data format refuses empty text.

Every skipped prompt is counted under its reason in ``stats["skipped"]``: nothing is dropped silently.
Output rows load with `alignkit.data.formats.load_preferences` (see `pair_row` for the fields).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from alignkit.data.formats import PromptRow, normalize_row
from alignkit.data.tokenize import encode_prompt
from alignkit.errors import UserError
from alignkit.sample import pad_id as pad_id_of
from alignkit.sample import sample, stop_ids

MODES = ("best", "reference", "best_or_reference")
# Fields of the input row that are not copied to the output: the pair's own fields, and the shapes that
# would make a loader read the row differently (a `messages` or `completion` field wins over `chosen`
# in `load_sft`); a row's own `system` is already the first message of the written prompt.
_NOT_COPIED = {"prompt", "chosen", "rejected", "messages", "completion", "label", "system"}

EMPTY = "every answer is empty"
TIES = "all answers scored equal"
UNFINISHED = "no finished answer to choose"
MARGIN = "best answer does not beat the worst by more than min_margin"
NO_REFERENCE = "no reference answer"
REF_MARGIN = "reference does not beat the worst by more than min_margin"
IDENTICAL = "chosen identical to rejected"


def reference_text(meta: dict) -> str | None:
    """The row's reference answer: ``reference``, else ``chosen``; a string or an assistant message
    (alone, in a one-item list, or ending a full conversation). None when absent or blank."""
    value = meta.get("reference") or meta.get("chosen")
    if isinstance(value, list) and value:
        value = value[-1]
    if isinstance(value, dict) and value.get("role") == "assistant":
        value = value.get("content")
    return value if isinstance(value, str) and value.strip() else None


def _own_choice(texts: list[str], scores: list[float], ended: list[bool], min_margin: float,
                keep_ties: bool) -> tuple[int | None, int | None, str | None]:
    """`(rejected index, own chosen index or None, reason)` for one prompt's k answers.

    reason is a skip reason when no rejected exists (empty, ties), else why own best failed (or None).
    """
    cands = [i for i, t in enumerate(texts) if t]
    if not cands:
        return None, None, EMPTY
    if len(cands) > 1 and len({scores[i] for i in cands}) == 1 and not keep_ties:
        return None, None, TIES
    rejected = min(cands, key=lambda i: scores[i])  # min/max keep the first of equals
    finished = [i for i in cands if ended[i]]
    if not finished:
        return rejected, None, UNFINISHED
    best = max(finished, key=lambda i: scores[i])
    if not scores[best] - scores[rejected] > min_margin:
        return rejected, None, MARGIN
    return rejected, best, None


def _pick(mode: str, rej: int | None, best: int | None, why: str | None, texts: list[str], scores: list[float],
          ref: str | None, ref_score: float | None, min_margin: float) -> tuple[tuple | None, str | None]:
    """`((chosen text, chosen score, "policy" | "reference"), None)`, or `(None, skip reason)`."""
    if rej is None or (mode == "best" and best is None):
        return None, why
    if mode != "reference" and best is not None:
        pick = (texts[best], scores[best], "policy")
    elif ref is None or ref_score is None:
        return None, NO_REFERENCE if mode == "reference" else f"{why}; {NO_REFERENCE}"
    elif not ref_score - scores[rej] > min_margin:
        return None, REF_MARGIN
    else:
        pick = (ref, ref_score, "reference")
    # Judges need not be deterministic (a reward model's batch numerics), so equal text can score apart.
    if pick[0].strip() == texts[rej].strip():
        return None, IDENTICAL
    return pick, None


def _prompt_field(row: PromptRow) -> str | list[dict]:
    """The prompt as the input row gave it (its own system message included, one from a system-prompt
    file not): a plain string for a single user turn, else the message list."""
    prompt = normalize_row(row.meta, row.source, kind="prompt", system=None)[0].prompt
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return [dict(m) for m in prompt]


def pair_row(row: PromptRow, chosen: str, rejected: str, chosen_score: float, rejected_score: float,
             chosen_source: str, rejected_ended: bool) -> dict:
    """One output row: ``prompt``, ``chosen``, ``rejected``, ``chosen_score``, ``rejected_score``,
    ``chosen_source`` ("policy" | "reference"), ``rejected_ended``, the input row's other fields
    (``category``, ...), ``reference`` (the row's reference answer, kept so a judge of this file still
    compares with it and not with a sampled chosen), and ``source`` (the input's "path:line")."""
    out = {"prompt": _prompt_field(row), "chosen": chosen, "rejected": rejected,
           "chosen_score": chosen_score, "rejected_score": rejected_score, "chosen_source": chosen_source,
           "rejected_ended": rejected_ended}
    out.update({k: v for k, v in row.meta.items() if k not in _NOT_COPIED and k not in out})
    ref = reference_text(row.meta)
    if ref is not None:
        out["reference"] = ref
    out["source"] = row.source
    return out


def _judge(judge, prompts, texts, meta) -> list[float]:
    scores = [float(s) for s in judge(prompts, texts, meta)]
    name = getattr(judge, "name", type(judge).__name__)
    if len(scores) != len(texts) or not all(math.isfinite(s) for s in scores):
        raise UserError(f"judge {name!r} returned {len(scores)} scores for {len(texts)} answers, or a "
                        "non-finite one", where="--judge", hint="return one finite number per answer")
    return scores


def check_options(*, k: int, temperature: float, max_new_tokens: int, batch_size: int, chosen: str,
                  min_margin: float) -> None:
    """Refuse settings that cannot give pairs, naming the CLI option (before any model is loaded)."""
    if chosen not in MODES:
        raise UserError(f"unknown chosen mode {chosen!r}", where="--chosen", hint=f"use one of {', '.join(MODES)}")
    if k < 1 or (chosen == "best" and k < 2):
        raise UserError(f"k={k} answers per prompt are too few for chosen={chosen}", where="--k",
                        hint="use --k 4 (mode best needs 2 answers at least: a better and a worse one)")
    for name, value, ok in (("--temperature", temperature, temperature > 0),
                            ("--max-new-tokens", max_new_tokens, max_new_tokens >= 1),
                            ("--batch-size", batch_size, batch_size >= 1),
                            # a negative margin would let chosen score below rejected: a pair backwards
                            ("--min-margin", min_margin, min_margin >= 0)):
        if not ok:
            raise UserError(f"{name} {value} is out of range", where=name,
                            hint="temperature > 0, max-new-tokens and batch-size >= 1, min-margin >= 0")


def sample_pairs(model, tokenizer, prompts: Sequence[PromptRow], judge, *, k: int = 4,
                 temperature: float = 1.0, max_new_tokens: int = 64, batch_size: int = 32, seed: int = 0,
                 chosen: str = "best_or_reference", min_margin: float = 0.0,
                 keep_ties: bool = True, decode_dtype=None) -> tuple[list[dict], dict]:
    """Sample `k` answers per prompt, judge them and build on-policy pairs (rules: module docstring).

    Args:
        model, tokenizer: the policy and its tokenizer (chat template). `sample` is called once on all
            prompts with ``num_samples=k, do_sample=True, temperature, max_new_tokens, batch_size,
            seed``, the stops of `stop_ids(model, tokenizer)` and the tokenizer's pad id, so the same
            call reproduces every answer.
        prompts: rows from `formats.load_prompts`; each row's `meta` (its raw fields) goes to the judge.
        judge: ``judge(prompts, responses, meta) -> list[float]``, higher is better.
        chosen: ``"best"``, ``"reference"`` or ``"best_or_reference"``.
        min_margin: chosen's score must exceed rejected's by more than this.
        keep_ties: keep prompts whose answers all scored equal (see the module docstring).
        decode_dtype: sample from a copy in this precision (e.g. torch.bfloat16; `alignkit.sample`).

    Returns:
        ``(rows, stats)``: rows in prompt order (fields: `pair_row`); stats as in `_stats`.
    """
    check_options(k=k, temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size,
                  chosen=chosen, min_margin=min_margin)
    prompt_ids = [encode_prompt(tokenizer, p.prompt, p.source) for p in prompts]
    stops = stop_ids(model, tokenizer)
    drawn = sample(model, prompt_ids, stop_ids=stops, pad_id=pad_id_of(tokenizer, stops),
                   max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, num_samples=k,
                   batch_size=batch_size, seed=seed, decode_dtype=decode_dtype)
    texts = [tokenizer.decode(c, skip_special_tokens=True).strip() for c in drawn.completion_ids]
    owner = [prompts[i] for i in drawn.prompt_index]
    scores = _judge(judge, [list(p.prompt) for p in owner], texts, [p.meta for p in owner])

    # Pass 1: the model's own pair per prompt (indices into the flat sample list); the references
    # still needed are then judged in one batch.
    own = []
    for i in range(len(prompts)):
        sl = slice(i * k, (i + 1) * k)
        rej, best, why = _own_choice(texts[sl], scores[sl], drawn.ended[sl], min_margin, keep_ties)
        own.append((None if rej is None else i * k + rej, None if best is None else i * k + best, why))
    need_ref = [i for i, (rej, best, _) in enumerate(own) if rej is not None and reference_text(prompts[i].meta)
                and (chosen == "reference" or (chosen == "best_or_reference" and best is None))]
    ref_scores: dict[int, float] = {}
    if need_ref:
        got = _judge(judge, [list(prompts[i].prompt) for i in need_ref],
                     [reference_text(prompts[i].meta) for i in need_ref], [prompts[i].meta for i in need_ref])
        ref_scores = dict(zip(need_ref, got, strict=True))

    rows, skipped, outcome = [], Counter(), []
    for i, row in enumerate(prompts):
        rej = own[i][0]
        pick, why = _pick(chosen, *own[i], texts, scores, reference_text(row.meta), ref_scores.get(i), min_margin)
        if pick is None:
            skipped[why] += 1
        else:
            rows.append(pair_row(row, pick[0], texts[rej], pick[1], scores[rej], pick[2], drawn.ended[rej]))
        outcome.append(pick and pick[2])
    return rows, _stats(prompts, k, texts, scores, drawn.ended, rows, skipped, outcome)


def _mean(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def _stats(prompts, k, texts, scores, ended, rows, skipped, outcome) -> dict:
    """``prompts``, ``samples``, ``pairs``, ``skipped`` {reason: n}, ``mean_score`` (all samples),
    ``eos_rate`` (share of samples that ended), ``empty_answers``, ``all_equal_share`` (prompts whose
    non-empty answers, two or more, all scored equal), ``chosen_policy``/``chosen_reference`` (counts)
    and ``chosen_policy_share``, ``mean_chosen_score``/``mean_rejected_score`` (pairs), and
    ``by_category`` {category: {prompts, pairs, mean_score}} when rows have a ``category``."""
    def tied(i):
        got = {scores[j] for j in range(i * k, (i + 1) * k) if texts[j]}
        return len([j for j in range(i * k, (i + 1) * k) if texts[j]]) > 1 and len(got) == 1

    src = Counter(o for o in outcome if o)
    cats: dict = defaultdict(lambda: {"prompts": 0, "pairs": 0, "scores": []})
    for i, row in enumerate(prompts):
        if "category" in row.meta:
            c = cats[str(row.meta["category"])]
            c["prompts"] += 1
            c["pairs"] += outcome[i] is not None
            c["scores"] += scores[i * k:(i + 1) * k]
    return {
        "prompts": len(prompts), "samples": len(texts), "pairs": len(rows),
        "skipped": dict(sorted(skipped.items(), key=lambda x: -x[1])),
        "mean_score": _mean(scores), "eos_rate": _mean(float(e) for e in ended),
        "empty_answers": sum(not t for t in texts),
        "all_equal_share": _mean(float(tied(i)) for i in range(len(prompts))),
        "chosen_policy": src["policy"], "chosen_reference": src["reference"],
        "chosen_policy_share": src["policy"] / len(rows) if rows else None,
        "mean_chosen_score": _mean(r["chosen_score"] for r in rows),
        "mean_rejected_score": _mean(r["rejected_score"] for r in rows),
        "by_category": {name: {"prompts": c["prompts"], "pairs": c["pairs"], "mean_score": _mean(c["scores"])}
                        for name, c in sorted(cats.items())},
    }


def check_writable(path: str | Path, *, overwrite: bool, option: str) -> Path:
    """`path` as a Path, refusing an existing non-empty file unless `overwrite` (the error names it)."""
    path = Path(path)
    if path.is_dir():
        raise UserError("this is a directory, not a file", where=f"{option} {path}", hint="name a .jsonl file")
    if path.is_file() and path.stat().st_size > 0 and not overwrite:
        raise UserError("the file exists and is not empty", where=f"{option} {path}",
                        hint="choose another path, or pass --overwrite to replace it")
    return path


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary sibling and rename it over `path`: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    # default=str: a Parquet row may carry dates; a stray type must not lose the whole sampling run.
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def format_stats(stats: dict) -> str:
    """The stats as a few printable lines."""
    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    lines = [f"{stats['prompts']} prompts x {stats['samples'] // max(stats['prompts'], 1)} answers: "
             f"{stats['pairs']} pairs (chosen: {stats['chosen_policy']} policy, {stats['chosen_reference']} "
             f"reference)", f"mean score {f(stats['mean_score'])}, eos rate {f(stats['eos_rate'])}, all answers "
             f"equal on {f(stats['all_equal_share'])} of prompts, {stats['empty_answers']} empty answers"]
    lines += [f"  skipped {n}: {why}" for why, n in stats["skipped"].items()]
    lines += [f"  {name}: {c['pairs']}/{c['prompts']} prompts paired, mean score {f(c['mean_score'])}"
              for name, c in stats["by_category"].items()]
    return "\n".join(lines)


def sample_pairs_file(prompts_path: str | Path, *, model: str, out: str | Path, judge: str,
                      k: int = 4, temperature: float = 1.0, max_new_tokens: int = 64, batch_size: int = 32,
                      seed: int = 0, chosen: str = "best_or_reference", min_margin: float = 0.0,
                      keep_ties: bool = True, system_prompt_file: str | None = None,
                      stats_path: str | Path | None = None, max_prompts: int | None = None,
                      overwrite: bool = False, skip_invalid: bool = False, decode_dtype=None,
                      console=print) -> dict:
    """`alignkit data sample-pairs`: prompts file -> pairs JSONL (+ stats JSON); returns the stats.

    Everything a user can get wrong (paths, options, the judge spec, the prompt rows, a judge that
    fails on the first row) is checked before the model is loaded, and nothing is written when a
    check fails. Both files are written whole or not at all (`write_atomic`). When no prompt gives a
    pair, the stats are still written (they say why) and a `UserError` is raised instead of writing
    an empty pairs file, which no loader would accept.
    """
    from alignkit.data.formats import load_prompts
    from alignkit.judges import load_judge

    out = check_writable(out, overwrite=overwrite, option="--out")
    stats_file = check_writable(stats_path, overwrite=overwrite, option="--stats") if stats_path else None
    for other, option in ((Path(prompts_path), "PROMPTS"), (stats_file, "--stats")):
        if other is not None and other.resolve() == out.resolve():
            raise UserError(f"--out is the same file as {option}", where=f"--out {out}", hint="choose another --out")
    check_options(k=k, temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size,
                  chosen=chosen, min_margin=min_margin)
    if max_prompts is not None and max_prompts < 1:
        raise UserError(f"--max-prompts {max_prompts} is out of range", where="--max-prompts", hint="use 1 or more")
    system = None
    if system_prompt_file:
        if not Path(system_prompt_file).is_file():
            raise UserError("system prompt file not found", where=f"--system-prompt-file {system_prompt_file}",
                            hint="fix the path, e.g. examples/task_api/system_prompt.txt")
        system = Path(system_prompt_file).read_text(encoding="utf-8").strip()
    rows, report = load_prompts(prompts_path, system=system, skip_invalid=skip_invalid)
    rows = rows[:max_prompts] if max_prompts else rows
    if chosen == "reference" and not any(reference_text(r.meta) for r in rows):
        raise UserError("no row has a reference answer ('reference' or 'chosen'), so --chosen reference "
                        "cannot pair anything", where=str(prompts_path), hint="use --chosen best, or add references")
    judge_fn = load_judge(judge, where="--judge")
    first = rows[0]
    try:  # one row now, so a judge that cannot read these rows fails before minutes of sampling
        _judge(judge_fn, [list(first.prompt)], [reference_text(first.meta) or ""], [first.meta])
    except UserError as e:
        raise UserError(f"the judge fails on the first prompt: {e.message}", where=f"--judge {judge} on {first.source}",
                        hint=e.hint) from e

    import torch

    from alignkit.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model)
    if hasattr(judge_fn, "check_tokenizer"):  # a reward model judges token ids of its own vocabulary
        judge_fn.check_tokenizer(tokenizer, "--judge")
    policy = load_model(model, device="cuda" if torch.cuda.is_available() else "cpu")
    pairs, stats = sample_pairs(policy, tokenizer, rows, judge_fn, k=k, temperature=temperature,
                                max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, chosen=chosen,
                                min_margin=min_margin, keep_ties=keep_ties, decode_dtype=decode_dtype)
    stats["input"] = {"path": str(prompts_path), "rows": len(rows), "invalid_skipped": report.skipped}
    stats["settings"] = {"model": model, "judge": getattr(judge_fn, "name", judge), "k": k,
                         "temperature": temperature, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                         "seed": seed, "chosen": chosen, "min_margin": min_margin, "keep_ties": keep_ties,
                         "decode_dtype": str(decode_dtype).removeprefix("torch.") if decode_dtype else None,
                         "system_prompt_file": system_prompt_file}
    if stats_file is not None:
        write_atomic(stats_file, json.dumps(stats, indent=1) + "\n")
    console(format_stats(stats))
    if not pairs:
        why = ", ".join(f"{reason}: {n}" for reason, n in stats["skipped"].items())
        raise UserError(f"no prompt gave a pair, so nothing was written ({why})", where=f"--out {out}", hint="see the skip reasons above: lower --min-margin, raise --k "
                                                   "or --max-new-tokens, or use --chosen best_or_reference")
    write_jsonl(out, pairs)
    console(f"pairs: {out}" + (f"; stats: {stats_file}" if stats_file else ""))
    return stats
