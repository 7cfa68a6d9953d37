"""What to change when a run does not fit, and which method to run on which data.

`fixes` answers "it does not fit: what is the smallest change that makes it fit?". Candidate changes
are ranked by how much they change the run (`FIX_ORDER`, least disruptive first): the first ones give
identical results and only cost time, the last ones change the model that is trained.

`recommend` answers "what should I run?": it reads the data (format, rows, token lengths), walks the
decision tree (paired -> DPO, or PPO when online feedback is asked for and fits; paired on a base model
-> ORPO; good/bad labels -> KTO; demonstrations only -> SFT; nothing labelled -> collect preferences),
and sizes the run with the memory model.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from alignkit.errors import UserError
from alignkit.plan.architectures import Arch, load_arch
from alignkit.plan.hardware import Hardware, get_hardware
from alignkit.plan.memory import _PAIRED, ONLINE, PlanInput, estimate, gib

# (name, why it is ranked here). Least disruptive first.
FIX_ORDER = (
    ("completion_only_logits", "same results: the LM head runs only where a completion token is predicted, "
                               "in recomputed chunks"),
    ("prefix_sharing", "same results: the prompt is forwarded once per pair instead of twice"),
    ("grad_ckpt", "same results, about 30% more compute: blocks recompute their activations in backward"),
    ("cpu_allocator", "same results, slower steps: start the run with MALLOC_MMAP_THRESHOLD_=1048576 in the "
                      "environment so that glibc returns freed activations to the OS (CPU only)"),
    ("micro_batch", "same effective batch (more accumulation steps): same maths, slower steps"),
    ("reference", "same maths: the reference is the base with LoRA switched off, or log-probs computed "
                  "once before training, instead of a second model in memory"),
    ("optimizer", "8-bit AdamW states: a small numerical change, well tested in practice"),
    ("seq_len", "shorter max length: the longest rows are truncated, so the data changes"),
    ("lora", "LoRA instead of full fine-tuning: a different, lower-rank update"),
    ("quant", "4-bit NF4 base (QLoRA): the frozen weights themselves are approximated"),
)
_RANK = {name: i for i, (name, _) in enumerate(FIX_ORDER)}


@dataclass
class Fix:
    """One change (or a greedy combination of changes) and its predicted peak.

    ``changes`` maps PlanInput fields to new values; ``rank`` is the position in `FIX_ORDER`
    (for a combination, that of its most disruptive part).
    """

    name: str
    description: str
    changes: dict
    total: int
    fits: bool
    rank: int

    def __str__(self) -> str:
        return f"{self.name}: {self.description} -> {gib(self.total)} ({'fits' if self.fits else 'does not fit'})"


def _largest_fitting(inp: PlanInput, hw: Hardware, candidates: list[PlanInput]) -> PlanInput | None:
    """The first candidate that fits, else the last (smallest) one; None without candidates."""
    for cand in candidates:
        if estimate(cand, hw).fits:
            return cand
    return candidates[-1] if candidates else None


def _candidate(name: str, inp: PlanInput, hw: Hardware) -> PlanInput | None:
    """`inp` with the fix `name` applied, or None where it does not apply."""
    # The online methods' head already runs on completion positions only, and their loop never
    # checkpoints (see memory.estimate): neither switch changes their plan.
    if name == "completion_only_logits" and not inp.completion_only_logits and inp.method not in ("reward", *ONLINE):
        return replace(inp, completion_only_logits=True)
    if name == "prefix_sharing" and not inp.prefix_sharing and inp.method in _PAIRED:
        return replace(inp, prefix_sharing=True)
    if name == "grad_ckpt" and not inp.grad_ckpt and inp.method not in ONLINE:
        return replace(inp, grad_ckpt=True)
    if name == "cpu_allocator" and hw.kind == "cpu" and inp.cpu_allocator == "glibc":
        return replace(inp, cpu_allocator="mmap")
    if name == "micro_batch" and inp.micro_batch > 1:
        sizes, mb = [], inp.micro_batch // 2
        while mb >= 1:
            sizes.append(mb)
            mb //= 2
        effective = inp.micro_batch * inp.grad_accum
        return _largest_fitting(inp, hw, [replace(inp, micro_batch=m, grad_accum=-(-effective // m)) for m in sizes])
    if name == "reference" and inp.reference == "copy":
        return replace(inp, reference="adapter" if inp.lora_r > 0 else "precomputed")
    if name == "optimizer" and inp.optimizer == "adamw":
        return replace(inp, optimizer="adamw8bit")
    if name == "seq_len" and inp.seq_len > 256:
        cands = []
        for frac in (0.75, 0.5, 0.25):
            s = max(128, int(inp.seq_len * frac) // 64 * 64)
            cands.append(replace(inp, seq_len=s, prompt_len=min(int(inp.prompt_len * frac), s - 64)))
        return _largest_fitting(inp, hw, cands)
    if name == "lora" and inp.lora_r == 0:
        return replace(inp, lora_r=16, reference="adapter" if inp.reference == "copy" else inp.reference)
    if name == "quant" and inp.quant != "4bit" and hw.supports_quantization:
        return replace(inp, quant="4bit", lora_r=inp.lora_r or 16,
                       reference="adapter" if inp.reference == "copy" else inp.reference)
    return None


def _diff(old: PlanInput, new: PlanInput) -> dict:
    keys = ("completion_only_logits", "prefix_sharing", "grad_ckpt", "micro_batch", "grad_accum", "reference",
            "optimizer", "seq_len", "prompt_len", "lora_r", "quant", "cpu_allocator")
    return {k: getattr(new, k) for k in keys if getattr(new, k) != getattr(old, k)}


def _describe(changes: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in changes.items())


def fixes(plan_input: PlanInput, hardware: Hardware | str = "t4") -> list[Fix]:
    """Changes that make `plan_input` fit on `hardware`, least disruptive first.

    Returns [] when it already fits. Each single change that fits on its own is listed with its
    predicted total. When none does, one greedy combination: changes applied in `FIX_ORDER` while they
    lower the peak, until it fits; then each change that turns out unnecessary is dropped again (most
    disruptive first). A combination that still does not fit is returned with ``fits=False``.
    """
    hw = get_hardware(hardware)
    if estimate(plan_input, hw).fits:
        return []
    singles = []
    for name, why in FIX_ORDER:
        cand = _candidate(name, plan_input, hw)
        if cand is None:
            continue
        p = estimate(cand, hw)
        if p.fits:
            changes = _diff(plan_input, cand)
            singles.append(Fix(name, f"{_describe(changes)} ({why})", changes, p.total, True, _RANK[name]))
    if singles:
        return singles

    def apply(names: list[str]) -> PlanInput:
        cur = plan_input
        for n in names:
            cand = _candidate(n, cur, hw)
            cur = cand if cand is not None else cur
        return cur

    applied: list[str] = []
    cur = plan_input
    for name, _ in FIX_ORDER:
        cand = _candidate(name, cur, hw)
        if cand is not None and estimate(cand, hw).total < estimate(cur, hw).total:
            applied.append(name)
            cur = cand
            if estimate(cur, hw).fits:
                break
    for name in sorted(applied[:-1], key=_RANK.get, reverse=True):
        trial = [n for n in applied if n != name]
        if estimate(apply(trial), hw).fits:
            applied = trial
    final = apply(applied)
    p = estimate(final, hw)
    changes = _diff(plan_input, final)
    return [Fix(" + ".join(applied) or "none", _describe(changes) or "no change applies", changes, p.total, p.fits,
                max((_RANK[n] for n in applied), default=0))]


# ------------------------------------------------------------------------------------ the advisor --

@dataclass
class Recommendation:
    """The advisor's answer: a method, why, and a run config (dict + commented YAML)."""

    method: str
    reasons: list[str]
    config: dict
    yaml: str
    plan: object | None = None
    stats: object | None = None
    warnings: list[str] = field(default_factory=list)

@dataclass
class DataStats:
    """What the advisor knows about a data file.

    ``format`` is ``"paired"`` (prompt/chosen/rejected), ``"unpaired"`` (prompt/completion/label),
    ``"sft"`` (prompt/completion or messages) or ``"unlabelled"``. Lengths are in tokens (a tokenizer's,
    or characters / 4 plus 16 tokens of chat template when none is given), as percentiles
    {50, 95, 98, 99, 100}: ``prompt`` and ``total`` (prompt + the longer completion).
    """

    path: str
    format: str
    rows: int
    prompt: dict[int, int]
    total: dict[int, int]
    keys: tuple[str, ...] = ()


def _read_rows(path: Path, limit: int) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        return list(data if isinstance(data, list) else data.get("data", []))[:limit]
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"not JSON: {exc.msg}", where=f"{path}:{n}", hint="one JSON object per line") from None
            if len(rows) >= limit:
                break
    return rows


def detect_format(rows: list[dict]) -> str:
    """The data format from the keys of the first rows (see `DataStats`)."""
    keys = set().union(*(r.keys() for r in rows[:20] if isinstance(r, dict))) if rows else set()
    if {"chosen", "rejected"} <= keys:
        return "paired"
    if "label" in keys and ({"completion", "response"} & keys):
        return "unpaired"
    if "messages" in keys or ({"prompt"} <= keys and {"completion", "response"} & keys):
        return "sft"
    return "unlabelled"


def _text(value) -> str:
    if isinstance(value, list):  # a conversation: the contents count
        return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in value)
    return "" if value is None else str(value)


def _percentiles(values: list[int]) -> dict[int, int]:
    values = sorted(values) or [0]
    return {q: values[min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1 if q else 0)] for q in (50, 95, 98, 99, 100)}


def data_stats(path: str | Path, tokenizer=None, max_rows: int = 50_000) -> DataStats:
    """Read a .jsonl/.json file: format from the first rows, lengths from up to `max_rows` rows."""
    path = Path(path)
    if not path.is_file():
        raise UserError("data file not found", where=str(path))
    if path.suffix not in (".jsonl", ".json"):
        raise UserError(f"the advisor reads .jsonl and .json files, not {path.suffix!r}", where=str(path))
    rows = _read_rows(path, max_rows)
    fmt = detect_format(rows)

    def n_tokens(text: str) -> int:
        if tokenizer is not None:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return math.ceil(len(text) / 4) + 16  # chars/4, plus a chat template's role markers

    prompts, totals = [], []
    for r in rows:
        if "messages" in r and fmt == "sft":
            msgs = r["messages"]
            prompt, answers = msgs[:-1], [msgs[-1].get("content", "")] if msgs else [""]
        else:
            prompt = r.get("prompt")
            answers = [r.get(k) for k in ("chosen", "rejected", "completion", "response") if k in r]
        p = n_tokens(_text(prompt))
        prompts.append(p)
        totals.append(p + max((n_tokens(_text(a)) for a in answers), default=0))
    keys = tuple(sorted(set().union(*(r.keys() for r in rows[:20])))) if rows else ()
    return DataStats(str(path), fmt, len(rows), _percentiles(prompts), _percentiles(totals), keys)


def _is_sft_model(arch: Arch, model_name: str | None, tokenizer) -> bool | None:
    """True for a chat/instruction model, False for a base model, None when it cannot be told."""
    if tokenizer is not None:
        return getattr(tokenizer, "chat_template", None) is not None
    name = model_name or arch.name
    local = Path(name) / "tokenizer_config.json"
    if local.is_file():
        return "chat_template" in json.loads(local.read_text()) or (Path(name) / "chat_template.jinja").is_file()
    if re.search(r"(instruct|chat|-it\b|sft)", name.lower()):
        return True
    return None


# Peak learning rates per method: (LoRA, where it comes from), (full fine-tuning, where it comes from).
# A low-rank update starts at zero and moves few weights, so LoRA takes far larger rates than full
# fine-tuning. The LoRA values are those of examples/task_api/<method>.yaml, measured on SmolLM2-135M
# (README, "The demo" and "Every method"; issue 15 reported a margin of 0.01 after 4 steps with the
# 1e-5 proposed before); larger models may want less. The full fine-tuning values are the published
# recipes': DPO 5e-7 (Zephyr, Tunstall et al. 2023; the DPO paper used 1e-6), KTO the same as DPO.
_LR = {
    "dpo": ((2e-4, "examples/task_api/dpo.yaml and the demo's DPO stage"),
            (5e-7, "the Zephyr DPO recipe; the DPO paper used 1e-6")),
    "kto": ((5e-5, "examples/task_api/kto.yaml"), (5e-7, "as DPO (the Zephyr DPO recipe)")),
    "orpo": ((2e-4, "examples/task_api/orpo.yaml: an SFT-like rate, its NLL term does SFT's job"),
             (8e-6, "the order of ORPO's full fine-tuning runs")),
    "sft": ((2e-4, "the QLoRA paper's rate for 7B-13B models (examples/task_api/sft.yaml uses 1e-3 on a 135M model)"),
            (2e-5, "the Zephyr SFT recipe")),
    "ppo": ((1e-4, "examples/task_api/ppo.yaml"), (1e-6, "a common full fine-tuning PPO rate")),
}


def learning_rate(method: str, lora: bool) -> tuple[float, str]:
    """The peak learning rate the advisor proposes for `method`, and where it comes from."""
    return _LR[method][0 if lora else 1]


_BETA = {"dpo": (0.1, "the DPO paper's default; raise it (0.3-0.5) if the policy drifts too far"),
         "kto": (0.1, "the KTO paper's default"), "orpo": (0.1, "ORPO's lambda (odds-ratio weight), paper default"),
         "ppo": (0.05, "KL penalty coefficient toward the reference, a common PPO starting point"),
         "sft": (0.1, "unused by SFT")}


def _choose_method(stats: DataStats, sft_model: bool | None, online_feedback: bool, ppo_fits: bool, ppo_total: int,
                   hw: Hardware) -> tuple[str, list[str]]:
    """The decision tree (docs/PLANNER.md); returns (method, reasons)."""
    fmt = stats.format
    if fmt == "unlabelled":
        raise UserError(f"no preference signal in the data (keys: {', '.join(stats.keys) or 'none'})",
                        where=stats.path,
                        hint="collect preferences first: two answers per prompt with the better one marked "
                             "({prompt, chosen, rejected}), or single answers labelled good/bad ({prompt, completion, label})")
    if fmt == "unpaired":
        return "kto", ["the data has single answers labelled good/bad, not pairs: KTO learns from unpaired labels"]
    if fmt == "sft":
        return "sft", ["the data has demonstrations only, no preferences: fine-tune on them (SFT); "
                       "collect chosen/rejected pairs to align afterwards"]
    if sft_model is False:
        return "orpo", ["paired data on a base model (no chat template): ORPO does SFT on the chosen answers and "
                        "preference alignment in one pass, with no reference model"]
    reasons = ["the data has chosen/rejected pairs: DPO learns from them directly, with no reward model"]
    if sft_model is None:
        reasons.append("assumed the model is already instruction-tuned (pass sft_model=False for a base model: ORPO)")
    if online_feedback and ppo_fits:
        return "ppo", ["online feedback asked for, and PPO (LoRA policy with a value head, reference = adapter off, "
                       "rollout KV cache, a reward model) fits: "
                       f"{gib(ppo_total)} of {gib(hw.memory)}"]
    if online_feedback:
        reasons.append(f"online feedback asked for, but PPO does not fit here ({gib(ppo_total)} > {gib(hw.memory)})")
    return "dpo", reasons


def _size_run(arch: Arch, method: str, hw: Hardware, seq_len: int, prompt_len: int, effective: int,
              headroom: float = 0.9) -> tuple[PlanInput, object, list[str]]:
    """The least intrusive settings that fit in `headroom` of the device: plain LoRA at the device's
    precision first, then gradient checkpointing, then a 4-bit base; within each, the largest power-of-two
    micro-batch up to the effective batch. Without checkpointing a micro-batch below 4 is not accepted
    while checkpointing would allow a bigger one (recomputing costs ~30%, tiny batches cost more)."""
    options = [("none", False), ("none", True)] + ([("4bit", True)] if hw.supports_quantization else [])
    best = None
    for quant, ckpt in options:
        mb = min(effective, 16)
        while mb >= 1:
            inp = PlanInput(arch, method, lora_r=16, quant=quant, dtype=hw.default_dtype, micro_batch=mb,
                            grad_accum=max(1, effective // mb), seq_len=seq_len, prompt_len=prompt_len,
                            grad_ckpt=ckpt)
            plan = estimate(inp, hw)
            if plan.total <= headroom * hw.memory:
                if best is None:
                    best = (inp, plan)
                if ckpt or mb >= min(4, effective):
                    return inp, plan, []
                break
            mb //= 2
    if best is not None:
        return best[0], best[1], []
    inp = PlanInput(arch, method, lora_r=16, quant=options[-1][0], dtype=hw.default_dtype, micro_batch=1,
                    grad_accum=effective, seq_len=seq_len, prompt_len=prompt_len, grad_ckpt=True)
    return inp, estimate(inp, hw), [f"even the smallest setting predicts {gib(estimate(inp, hw).total)} "
                                    f"on {hw.name} ({gib(hw.memory)}): it will not fit"]


_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _round_up(n: int, to: int = 64) -> int:
    return max(to, -(-n // to) * to)


def recommend(data: str | Path | DataStats, arch: str | Arch = "default", hardware: str | Hardware = "t4", *,
              tokenizer=None, online_feedback: bool = False, sft_model: bool | None = None,
              model_name: str | None = None, eval_path: str | None = None,
              output_dir: str | None = None) -> Recommendation:
    """Pick a method and a run config for `data` on `arch` and `hardware`.

    Args:
        data: a .jsonl/.json path, or `DataStats` already computed.
        arch: model name, path, size or `Arch`; its name becomes ``model.name_or_path``.
        tokenizer: counts tokens (and tells a chat model by its template); else chars / 4.
        online_feedback: the user wants online (on-policy) feedback: PPO when it fits.
        sft_model: the model is instruction-tuned (True) or a base model (False); None: guess from the
            tokenizer, a local tokenizer_config.json or the name.
    Raises:
        UserError: the data holds no preference or demonstration signal (collect preferences first).
    """
    hw = get_hardware(hardware)
    model = load_arch(arch)
    stats = data if isinstance(data, DataStats) else data_stats(data, tokenizer)
    name = model_name or (str(arch) if not isinstance(arch, Arch) else arch.name)
    if isinstance(arch, str) and arch.strip().lower() in ("default", "smollm2-135m"):
        name = "default"
    max_length = min(_round_up(stats.total[98]), model.max_pos)
    max_prompt = min(_round_up(stats.prompt[98]), max_length - 64 if max_length > 128 else max_length // 2)
    effective = 8 if stats.rows < 1000 else 16 if stats.rows < 5000 else 32
    ppo_inp, ppo_plan, _ = _size_run(model, "ppo", hw, max_length, max_prompt, effective)
    ppo_fits = ppo_plan.total <= 0.9 * hw.memory
    if sft_model is None:
        sft_model = _is_sft_model(model, model_name or model.name, tokenizer)
    method, reasons = _choose_method(stats, sft_model, online_feedback, ppo_fits, ppo_plan.total, hw)
    inp, plan, warnings = _size_run(model, method, hw, max_length, max_prompt, effective)
    lora = True  # the advisor always proposes LoRA r=16 (see _size_run)
    lr, lr_why = learning_rate(method, lora)
    full_lr, full_why = learning_rate(method, lora=False)
    beta, beta_why = _BETA[method]
    epochs = 2 if stats.rows < 2000 else 1
    ref = {"dpo": "adapter", "kto": "adapter", "ppo": "adapter"}.get(method, "none")
    config = {
        "method": method,
        "output_dir": output_dir or f"runs/{method}",
        "model": {"name_or_path": name, "dtype": _DTYPE_NAMES[inp.dtype], "quantization": inp.quant,
                  "gradient_checkpointing": inp.grad_ckpt,
                  "lora": {"enabled": lora, "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": None}},
        # Absolute: a config reads relative paths from its own folder, and this one is saved anywhere.
        "data": {"train": os.path.abspath(stats.path), "eval": os.path.abspath(eval_path) if eval_path else None,
                 "system_prompt_file": None,
                 "max_length": max_length, "max_prompt_length": max_prompt},
        "train": {"learning_rate": lr, "epochs": epochs, "micro_batch_size": inp.micro_batch,
                  "gradient_accumulation_steps": inp.grad_accum, "reference": ref},
        "eval": {"probes": None, "task": "none"},
    }
    if method == "orpo":
        config["train"]["orpo_lambda"] = beta
    elif method != "sft":
        config["train"]["beta"] = beta
    p98 = f"98th percentile of {stats.rows} rows"
    fits = plan.total <= 0.9 * hw.memory
    precision = {"fp32": "fp32", "bf16": "bf16 (half-precision)", "fp16": "fp16 (half-precision)"}[inp.dtype]
    rounded = _round_up(stats.total[98])
    length_why = (f"{p98}: prompt + longer answer = {stats.total[98]} tokens, rounded up to a multiple of 64 = "
                  f"{max_length}" if max_length == rounded else
                  f"{p98}: prompt + longer answer = {stats.total[98]} tokens, capped at the model's context of "
                  f"{max_length}")
    prompt_why = (f"{p98}: prompt = {stats.prompt[98]} tokens, rounded up to a multiple of 64 = {max_prompt}"
                  if max_prompt == _round_up(stats.prompt[98]) else
                  f"{p98}: prompt = {stats.prompt[98]} tokens, capped at {max_prompt} to leave "
                  f"{max_length - max_prompt} of {max_length} for the answer")
    if inp.quant == "4bit":
        quant_why = f"4-bit NF4 base (QLoRA): the {precision} base does not fit"
    elif fits:
        quant_why = f"none: the {precision} base fits, no need to approximate it"
    else:
        quant_why = f"none: 4-bit is not available on {hw.name}, and the {precision} base does not fit (see the warning)"
    comments = {
        "method": "; ".join(reasons),
        "model.name_or_path": f"{model.name}, {model.n_params / 1e9:.2f}B parameters",
        "model.dtype": f"{hw.name}: " + ("no bf16 support (pre-Ampere), so fp16" if inp.dtype == "fp16" else
                                         "bf16 where supported" if inp.dtype == "bf16" else "CPU trains in fp32"),
        "model.quantization": quant_why,
        "model.gradient_checkpointing": "needed to fit the activations" if inp.grad_ckpt else "off: fits without (saves ~30% compute)",
        "model.lora.r": "rank 16: alignment changes behaviour, not knowledge; small ranks suffice",
        "model.lora.alpha": "2 x r, the usual scale",
        "model.lora.dropout": "0: dropout keeps an extra copy of each adapted input"
                              + (", and beta already regularizes" if "beta" in config["train"] else ""),
        "model.lora.target_modules": "null = all attention and MLP projections",
        "data.eval": f"held-out file {eval_path}" if eval_path else "null: a share of the training prompts is held out",
        "data.system_prompt_file": "none: rows carry their own system messages, if any",
        "data.max_length": length_why,
        "data.max_prompt_length": prompt_why,
        "train.beta": beta_why, "train.orpo_lambda": beta_why,
        "train.learning_rate": f"{lr:g} for {method} with " + ("LoRA" if lora else "full fine-tuning")
                               + f", from {lr_why}" + (f"; full fine-tuning would use ~{full_lr:g} ({full_why})"
                                                       if lora else ""),
        "train.epochs": f"{stats.rows} rows: " + ("small data, two passes" if epochs == 2 else "one pass; more overfits"),
        "train.micro_batch_size": (f"largest that fits: predicted peak {gib(plan.total)} of {gib(hw.memory)}"
                                   if fits else f"the smallest: predicted peak {gib(plan.total)} of "
                                                f"{gib(hw.memory)} does not fit"),
        "train.gradient_accumulation_steps": f"effective batch {inp.micro_batch * inp.grad_accum} for {stats.rows} rows",
        "train.reference": "the base with LoRA switched off: no second model in memory" if ref == "adapter"
        else f"{method} needs no reference model",
        "eval.task": "no task-specific check for your data", "eval.probes": "no probe prompts for your data",
    }
    return Recommendation(method, reasons, config, to_yaml(config, comments), plan, stats, warnings)


def to_yaml(config: dict, comments: dict[str, str], prefix: str = "", indent: int = 0) -> str:
    """YAML for a nested dict, with `comments[dotted.key]` after each value (or before a section)."""
    lines = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        pad = "  " * indent
        note = f"  # {comments[path]}" if path in comments else ""
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:{note}")
            lines.append(to_yaml(value, comments, path + ".", indent + 1))
        else:
            scalar = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"{pad}{key}: {scalar}{note}")
    return "\n".join(lines) + ("\n" if indent == 0 else "")
