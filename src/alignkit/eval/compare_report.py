"""The `alignkit compare` report: the methods table, the reward-vs-KL frontier, the budget.

`report.md` and `report.html` are rendered from one list of blocks by `alignkit.eval.report`'s
renderers (same look as a run's report); the HTML holds the frontier plot inline as a base64 PNG.
The frontier follows the DPO paper's Figure 2: x = KL from the SFT model (nats per answer, sampled
answers), y = gold-judge score; one series per method, one marker per seed run (filled) and per
grid point (hollow, labelled with its value); the SFT model itself is the star at KL 0.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from matplotlib.figure import Figure

HEADER = ["method", "gold score (mean ± std)", "win rate vs SFT", "harmful refused", "benign over-refusal",
          "alarming over-refusal", "task correct", "KL from SFT", "wall s", "peak MB", "models in memory",
          "stability (std)", "sensitivity (grid range)", "runs ok / failed"]

NOTES = [
    "gold score: the Task API gold judge (`alignkit.judges.task_api.grade`) on greedy answers to the held-out "
    "probes, mean over probes, then mean ± sample std over seeds.",
    "win rate vs SFT: per probe 1 if the run's gold score beats the SFT model's, 0.5 on a tie, 0 else; mean.",
    "refusals: `alignkit.judges.refusal.is_refusal`; task correct: `grade(...)['correct']` on benign probes.",
    "KL: KL(policy || SFT) in nats per answer on one sampled answer per probe (full-vocabulary estimator, "
    "`alignkit.eval.kl.estimate_kl`). ORPO starts from the base model, so its KL from SFT is not a drift.",
    "wall s: the training loop's `train_seconds` (run.json), mean over seeds; peak MB: the training process's "
    "peak (CUDA max allocated, or max RSS on CPU), max over seeds.",
    "models in memory (weights the training process holds; a fixed fact of the method): DPO-family with LoRA 1 "
    "(the reference is the policy with its adapter off), SimPO / CPO / ORPO 1 (no reference), KTO 1 (adapter "
    "off), PPO 2 (policy with its value head, plus the frozen reward model), GRPO / RLOO 2 (policy + reward "
    "model).",
    "stability: std of the gold score over seeds; sensitivity: max - min gold score over the grid (DPO: "
    "train.beta, PPO: train.kl_coef) and the config's own value, at the first seed.",
]


def _f(x, digits: int = 3) -> str:
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
    return f"{x:.{digits}f}" if ok else "-"


def _kl(x) -> str:
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
    return (f"{x:.3f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2g}") if ok else "-"


def table_rows(result: dict) -> list[list[str]]:
    """The table as strings: the SFT baseline, then one row per method."""
    b = result.get("baseline") or {}
    rows = [["sft (start, baseline)", _f(b.get("gold_score")), "0.500 (itself)", _f(b.get("harmful_refused")),
             _f(b.get("benign_over_refusal")), _f(b.get("alarming_over_refusal")), _f(b.get("task_correct")),
             "0", "-", "-", "-", "-", "-", "-"]] if b else []
    for r in result.get("table", []):
        gold = _f(r["gold_mean"]) + (f" ± {_f(r['gold_std'])}" if r.get("gold_std") is not None else "")
        rows.append([r["method"], gold, _f(r["win_rate"]), _f(r["harmful_refused"]), _f(r["benign_over_refusal"]),
                     _f(r["alarming_over_refusal"]), _f(r["task_correct"]), _kl(r["kl"]), _f(r["wall_s"], 1),
                     _f(r["peak_mb"], 0), str(r.get("models_in_memory") or "-"), _f(r["stability"]),
                     _f(r["sensitivity"]), f"{r['seeds_ok']} / {r['failed']}"])
    return rows


def markdown_table(result: dict) -> str:
    from alignkit.eval.report import _md_cell

    return "\n".join(["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER),
                      *("| " + " | ".join(_md_cell(c) for c in r) + " |" for r in table_rows(result))])


def format_table(result: dict) -> str:
    """What `alignkit compare` prints at the end."""
    return f"{'quick' if result.get('quick') else 'full'} budget, {result['probes']['n']} probes\n\n" \
           + markdown_table(result)


def frontier_png(result: dict) -> bytes:
    fig = Figure(figsize=(7.0, 4.5), dpi=100)
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(10)]
    markers = "osD^vP*XhP"
    for i, m in enumerate(result.get("methods", [])):
        runs = [r for r in result.get("runs", []) if r["method"] == m and r["status"] == "done"
                and r["metrics"].get("kl") is not None]
        c, mk = colors[i % 10], markers[i % len(markers)]
        seed = [r for r in runs if not r.get("tag")]
        grid = [r for r in runs if r.get("tag")]
        if seed:
            ax.scatter([r["metrics"]["kl"] for r in seed], [r["metrics"]["gold_score"] for r in seed], color=c,
                       marker=mk, label=m, s=30)
        if grid:
            ax.scatter([r["metrics"]["kl"] for r in grid], [r["metrics"]["gold_score"] for r in grid],
                       facecolors="none", edgecolors=c, marker=mk, s=45, label=None if seed else m)
            for r in grid:
                ax.annotate(r["tag"], (r["metrics"]["kl"], r["metrics"]["gold_score"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    b = result.get("baseline") or {}
    if b.get("gold_score") is not None:
        ax.scatter([0.0], [b["gold_score"]], color="black", marker="*", s=90, label="sft (start)")
    ax.set_xlabel("KL(policy || SFT), nats per answer")
    ax.set_ylabel("gold-judge score")
    ax.set_title("reward vs KL frontier (filled: seeds, hollow: grid)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _blocks(result: dict) -> list[tuple]:
    failed = [r for r in result.get("runs", []) if r["status"] != "done"]
    blocks: list[tuple] = [
        ("h1", "alignkit compare: DPO-family vs RLHF on the Task API"),
        ("p", f"Start: SFT run {result['sft']} (orpo: its base, {result['base']}); reward model (ppo, grpo, rloo): "
              f"{result.get('reward') or '-'}. Seeds: {', '.join(map(str, result['seeds']))}. Probes: "
              f"{result['probes']['n']} from {result['probes']['file']}, greedy, {result['probes']['max_new_tokens']} "
              "new tokens."),
        ("h2", "Methods"), ("table", HEADER, table_rows(result)), ("list", NOTES),
        ("h2", "Reward vs KL frontier"), ("images", [("frontier", frontier_png(result))]),
        ("h2", "Budget"),
        ("p", "Quick budget: a CPU smoke-sized measurement (a few optimizer steps), enough to compare the methods' "
              "cost and direction, not their converged quality." if result.get("quick") else
              "Full budget: each example config's own (sized for a GPU; this mode is untested)."),
        ("table", ["method", "overrides (besides model, output_dir, seed, eval off, reward)", "grid"],
         [[m, " ".join(f"{k}={v}" for k, v in b.items()) if isinstance(b, dict) else b,
           " ".join(f"{result['grid'][m][0]}={v}" for v in result["grid"][m][1]) if m in result.get("grid", {})
           else "-"] for m, b in result["budget"].items()]),
    ]
    if failed:
        blocks += [("h2", f"Failed runs ({len(failed)})"),
                   ("list", [f"{r['name']}: {r.get('error', '')}" for r in failed])]
    blocks += [("h2", "Runs"),
               ("table", ["run", "status", "gold", "win rate", "KL", "train s", "peak MB"],
                [[r["name"], r["status"], _f(r["metrics"].get("gold_score")), _f(r["metrics"].get("win_rate")),
                  _kl(r["metrics"].get("kl")), _f(r["metrics"].get("train_seconds"), 1),
                  _f(r["metrics"].get("peak_memory_mb"), 0)] for r in result.get("runs", [])]),
               ("h2", "Command"), ("code", "sh", result.get("command") or "-")]
    return blocks


def write_reports(out: Path, result: dict) -> tuple[Path, Path]:
    """report.md and report.html in `out` (each written to a temporary file, then renamed)."""
    from alignkit.compare import write_atomic
    from alignkit.eval.report import _html, _markdown

    blocks = _blocks(result)
    md, page = Path(out) / "report.md", Path(out) / "report.html"
    write_atomic(md, _markdown(blocks))
    write_atomic(page, _html(blocks))
    return md, page
