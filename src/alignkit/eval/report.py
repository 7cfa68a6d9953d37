"""The run report: did alignment work, and did it break something?

`write_report` writes `report.md` (reads well in a terminal and in a git diff: no images) and
`report.html` (the same content with the training curves inline as base64 PNG, one file to send).
Both are rendered from one list of blocks, so they cannot drift apart.

Contents: a before (reference) vs after (policy) table of the measured metrics with deltas and
sample sizes (a lone model evaluated without a reference gets one column), the verdict lines of `alignkit.eval.diagnose`, example probes whose behaviour changed (refused before,
answered after, ...), plots from log.jsonl, run and memory facts, and the resolved config.

Plots use matplotlib's object API (`Figure` + Agg canvas), not pyplot: no global backend switch and
no figure registry, so the report is safe to write from a training process or a notebook.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure

from alignkit.eval.diagnose import Finding, diagnose_from
from alignkit.eval.metrics import MIN_N, passes, reported_keys, sample_size

MAX_EXAMPLES = 12
# +1: higher is better, -1: lower is better, 0: neither (KL and length are trade-offs, not goals).
DIRECTION = {"refusal_rate/harmful": 1, "over_refusal/benign": -1, "over_refusal/alarming": -1,
             "task_valid/benign": 1, "task_valid/alarming": 1, "task_correct": 1, "gold_score": 1, "reward_accuracy": 1,
             "reward_margin": 1, "kl": 0, "response_length": 0}
RATES = {"refusal_rate/harmful", "over_refusal/benign", "over_refusal/alarming", "task_valid/benign",
         "task_valid/alarming", "task_correct", "reward_accuracy"}
# Training curves: panel title -> series drawn on it (each also drawn from its "eval/" twin).
PANELS = {"loss": ("loss",), "rewards/margins": ("rewards/margins",),
          "rewards/accuracies": ("rewards/accuracies",), "logps": ("logps/chosen", "logps/rejected"),
          "grad_norm": ("grad_norm",)}
MAX_EXTRA_PANELS = 8


def _num(x: Any) -> float | None:
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else None


def _is_rate(key: str) -> bool:
    return key in RATES or key.startswith("refusal_rate/")


def _fmt(key: str, v: Any) -> str:
    v = _num(v)
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if _is_rate(key) else f"{v:.4g}"


def _n_cell(key: str, before: dict, after: dict) -> str:
    """The sample size of a metric, flagged when it is too small to judge."""
    n = sample_size(key, after) if _num(after.get(key)) is not None else sample_size(key, before)
    if n is None:
        return ""
    return f"{n} (n<{MIN_N}: too few to judge)" if n < MIN_N else str(n)


def _delta(key: str, before: Any, after: Any) -> tuple[str, str]:
    """(delta text, "better" | "worse" | "same" | "")."""
    b, a = _num(before), _num(after)
    if b is None or a is None:
        return "", ""
    d = a - b
    text = f"{100 * d:+.1f} pp" if _is_rate(key) else f"{d:+.4g}"
    if abs(d) < 1e-12:
        return text, "same"
    sign = DIRECTION.get(key, 0)
    return text, ("" if sign == 0 else "better" if d * sign > 0 else "worse")


# ---- changed examples --------------------------------------------------------------------------
def _prompt_text(prompt: Any) -> str:
    """A probe prompt as text: a string, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else str(prompt)


def _status(text: str, category: str, is_refusal: Callable[[str], bool], task_check) -> str:
    if is_refusal(text):
        return "refused"
    if category == "harmful":
        return "complied"
    if category not in ("benign", "alarming"):
        return "answered"  # a category of the user's own: no task check, no known right answer
    ok = passes(task_check, text)
    return "answered" if ok is None else "valid" if ok else "invalid"


# How good each status is for a probe of the category; a change up is "better", down is "worse".
_RANK = {"harmful": {"refused": 1, "complied": 0},
         "legit": {"refused": 0, "invalid": 1, "answered": 2, "valid": 2}}


def changed_examples(prompts: Sequence[Any], categories: Sequence[str], before: Sequence[str],
                     after: Sequence[str], is_refusal: Callable[[str], bool],
                     task_check: Callable[[str], object] | None = None) -> list[dict]:
    """Probes whose behaviour changed between the reference (`before`) and the policy (`after`).

    A behaviour is `refused`, `complied` (harmful probes), or for legitimate (benign, alarming) probes
    `valid` / `invalid` under `task_check` (`answered` without one); probes of any other category are
    `refused` or `answered`, and their changes have the verdict `changed` (whether refusing them is
    right is not known). Regressions come first (a legitimate probe
    now refused, then a harmful one now answered, then a broken task), improvements after.

    Returns dicts `{"prompt", "category", "before", "after", "change", "verdict"}`, with `change` like
    `"valid -> refused"` and `verdict` one of `worse`, `better`, `changed`.
    """
    out = []
    for prompt, cat, b, a in zip(prompts, categories, before, after, strict=True):
        s_b, s_a = _status(b, cat, is_refusal, task_check), _status(a, cat, is_refusal, task_check)
        if s_b == s_a:
            continue
        if cat in ("harmful", "benign", "alarming"):
            rank = _RANK["harmful" if cat == "harmful" else "legit"]
            diff = rank[s_a] - rank[s_b]
        else:
            diff = 0
        verdict = "better" if diff > 0 else "worse" if diff < 0 else "changed"
        out.append({"prompt": _prompt_text(prompt), "category": cat, "before": b, "after": a,
                    "change": f"{s_b} -> {s_a}", "verdict": verdict})

    def priority(ex: dict) -> tuple[int, int]:
        refusal_change = "refused" in ex["change"]
        order = {"worse": 0, "changed": 1, "better": 2}[ex["verdict"]]
        legit = ex["category"] in ("benign", "alarming")
        return order, 0 if (refusal_change and legit) else 1 if refusal_change else 2

    return sorted(out, key=priority)


def _changed_from_raw(examples: list[dict], config: dict) -> list[dict]:
    """`changed_examples` for raw `{"prompt", "category", "before", "after"}` rows (every probe)."""
    # Local imports: only this fallback needs the classifier and the task parser.
    from alignkit.data.task_api import parse_task
    from alignkit.judges.refusal import is_refusal

    task = (config.get("eval") or {}).get("task", "none")
    return changed_examples([e.get("prompt", "") for e in examples], [e.get("category", "") for e in examples],
                            [e.get("before", "") for e in examples], [e.get("after", "") for e in examples],
                            is_refusal, parse_task if task == "task_api" else None)


# ---- plots -------------------------------------------------------------------------------------
def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(rows):
        y = _num(row.get(key))
        if y is not None:
            xs.append(_num(row.get("step")) if _num(row.get("step")) is not None else float(i))
            ys.append(y)
    return xs, ys


def _png(title: str, lines: list[tuple[str, list[float], list[float]]]) -> bytes:
    fig = Figure(figsize=(5.0, 3.0), dpi=100)
    ax = fig.add_subplot()
    for label, xs, ys in lines:
        marker = "o" if label.startswith("eval/") or len(xs) < 3 else None
        ax.plot(xs, ys, label=label, marker=marker, markersize=3)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_log(log_rows: list[dict]) -> list[tuple[str, bytes]]:
    """(title, PNG bytes) per panel with data: the training curves, then remaining `eval/*` series."""
    plots, used = [], set()
    for title, keys in PANELS.items():
        lines = []
        for key in keys:
            for k in (key, f"eval/{key}"):
                xs, ys = _series(log_rows, k)
                used.add(k)
                if ys:
                    lines.append((k, xs, ys))
        if lines:
            plots.append((title, _png(title, lines)))
    extra = sorted({k for r in log_rows for k in r if k.startswith("eval/") and k not in used})
    for key in extra[:MAX_EXTRA_PANELS]:
        xs, ys = _series(log_rows, key)
        if ys:
            plots.append((key, _png(key, [(key, xs, ys)])))
    return plots


# ---- rendering ---------------------------------------------------------------------------------
def _one_line(text: Any, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _blocks(run_dir: Path, metrics: dict, log_rows: list[dict], config_yaml: str, examples: list[dict],
            findings: list[Finding]) -> list[tuple]:
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    run = metrics.get("run") or {}
    blocks: list[tuple] = [("h1", f"alignkit report: {run.get('name') or run_dir.name}")]
    facts = [f"{k}: {v}" for k, v in run.items() if isinstance(v, str | int | float | bool)]
    if facts:
        blocks.append(("p", " | ".join(facts)))

    # Metrics measured in neither column (no task check, no pairs, no KL sample...) are left out.
    keys = [k for k in reported_keys(before, after) if _num(before.get(k)) is not None or _num(after.get(k)) is not None]
    if "before" not in metrics and "after" in metrics:  # one model evaluated alone, no reference
        rows = [[k, _fmt(k, after.get(k)), _n_cell(k, {}, after)] for k in keys]
        blocks += [("h2", "Metrics (one model, no reference)"), ("table", ["metric", "model", "n"], rows)]
    else:
        rows = [[k, _fmt(k, before.get(k)), _fmt(k, after.get(k)), *_delta(k, before.get(k), after.get(k)),
                 _n_cell(k, before, after)] for k in keys]
        blocks += [("h2", "Before (reference) vs after (policy)"),
                   ("table", ["metric", "before", "after", "delta", "", "n"], rows)]
    if not keys:
        blocks[-1] = ("p", "No metric was measured (no probes and no held-out pairs).")

    blocks.append(("h2", "Verdict"))
    lines = [f"{f.severity.upper()} {f.name}: {f.evidence}" + "".join(f"\n  - fix: {x}" for x in f.fixes)
             for f in findings if f.severity != "info"]
    lines = lines or ["OK: no problems found by `alignkit diagnose`"]
    blocks.append(("list", lines + [f"note: {f.evidence}" for f in findings if f.severity == "info"]))

    shown = examples[:MAX_EXAMPLES]
    answers = metrics.get("answers") or []
    if answers and "before" not in metrics:  # one model alone: nothing changed, show what it said
        blocks.append(("h2", f"Example answers ({min(len(answers), MAX_EXAMPLES)} of {len(answers)})"))
        blocks.append(("table", ["category", "prompt", "answer"],
                       [[a.get("category", ""), _one_line(a.get("prompt", "")), _one_line(a.get("answer", ""))]
                        for a in answers[:MAX_EXAMPLES]]))
    else:
        blocks.append(("h2", f"Examples where behaviour changed ({len(shown)} of {len(examples)})"))
        if shown:
            blocks.append(("table", ["category", "change", "prompt", "before", "after"],
                           [[e.get("category", ""), e.get("change", ""), _one_line(e.get("prompt", "")),
                             _one_line(e.get("before", "")), _one_line(e.get("after", ""))] for e in shown]))
        else:
            blocks.append(("p", "No probe changed behaviour."))

    blocks += [("h2", "Training curves"), ("images", plot_log(log_rows))]
    # run facts are on the title line; memory gets its own table
    if metrics.get("memory"):
        blocks += [("h2", "Memory"),
                   ("table", ["key", "value"], [[k, _one_line(v)] for k, v in metrics["memory"].items()])]
    blocks += [("h2", "Config"), ("code", "yaml", config_yaml.rstrip())]
    return blocks


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "h1":
            out.append(f"# {rest[0]}")
        elif kind == "h2":
            out.append(f"## {rest[0]}")
        elif kind == "p":
            out.append(rest[0])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in rest[0]))
        elif kind == "table":
            head, rows = rest
            out.append("\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                                  *("| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows)]))
        elif kind == "code":
            fence = "~~~" if "```" in rest[1] else "```"
            out.append(f"{fence}{rest[0]}\n{rest[1]}\n{fence}")
        elif kind == "images":
            titles = ", ".join(t for t, _ in rest[0])
            out.append(f"Plots ({titles}) are in report.html." if rest[0] else "No training log rows to plot.")
    return "\n\n".join(out) + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;"
        "vertical-align:top}pre{background:#f6f8fa;padding:1em;overflow:auto}li{white-space:pre-wrap}"
        ".better{color:#1a7f37}.worse{color:#cf222e;font-weight:bold}img{margin:4px}")


def _html(blocks: list[tuple]) -> str:
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(blocks[0][1])}</title>"
           f"<style>{_CSS}</style></head><body>"]
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{e(rest[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(rest[0])}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in rest[0]) + "</ul>")
        elif kind == "table":
            head, rows = rest
            # the better/worse column gets a colour; every other cell is plain text
            body = "".join("<tr>" + "".join(f"<td class='{c}'>{c}</td>" if c in ("better", "worse")
                                            else f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + f"</tr>{body}</table>")
        elif kind == "code":
            out.append(f"<pre><code>{e(rest[1])}</code></pre>")
        elif kind == "images":
            out.append("".join(f"<img alt='{e(t)}' title='{e(t)}' src='data:image/png;base64,"
                               f"{base64.b64encode(png).decode('ascii')}'>" for t, png in rest[0])
                       or "<p>No training log rows to plot.</p>")
    return "\n".join(out) + "\n</body></html>\n"


def write_report(run_dir: Path, metrics: dict, log_rows: list[dict], config_yaml: str,
                 examples: list[dict], *, findings: list[Finding] | None = None) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into `run_dir`; returns their paths.

    Args:
        metrics: the metrics.json layout: `{"before": {...}, "after": {...}, "examples": [...],
            "memory": {...}, "run": {...}}`; any part may be missing, any value None. Without
            "before" but with "after" (a model evaluated alone) the table has one column and
            `metrics["answers"]` (`{"prompt", "category", "answer"}` rows) are shown as examples.
        log_rows: log.jsonl rows; missing keys and non-numeric values are skipped in plots.
        config_yaml: the resolved config, shown verbatim.
        examples: changed probes (`changed_examples`), worst first; empty falls back to
            `metrics["examples"]`. Raw rows without a `change` key (every probe's before/after) are
            classified here with `is_refusal` and the config's task check. At most `MAX_EXAMPLES`
            are shown.
        findings: verdicts from `alignkit.eval.diagnose.diagnose(run_dir)` when the caller has them
            (they include training-data checks); by default `diagnose_from` on these inputs.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(config_yaml) if config_yaml.strip() else {}
    config = config if isinstance(config, dict) else {}
    examples = list(examples or metrics.get("examples") or [])
    if examples and not all("change" in e for e in examples):
        examples = _changed_from_raw(examples, config)
    if findings is None:
        findings = diagnose_from(log_rows, metrics, config, run_info=metrics.get("run"))
    blocks = _blocks(run_dir, metrics, log_rows, config_yaml, examples, findings)
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    md_path.write_text(_markdown(blocks), encoding="utf-8")
    html_path.write_text(_html(blocks), encoding="utf-8")
    return md_path, html_path
