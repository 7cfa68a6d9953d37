"""Typed run configuration.

A YAML file holds exactly these fields; `a.b=c` overrides on the command line change them. Every
mistake names the field and what is allowed. Loading uses `yaml.safe_load` only.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from alignkit.errors import UserError

METHODS = ("sft", "dpo", "ipo", "hinge", "robust", "rpo", "dpop", "simpo", "cpo", "orpo", "kto", "reward",
           "ppo", "rloo", "grpo")
ONLINE_METHODS = ("ppo", "rloo", "grpo")
SIMPO_BETA = 2.0
"""`train.beta` of `method: simpo` when the config leaves it unset (also the default of
`alignkit.losses.simpo_loss`). SimPO's beta scales an average per-token log-prob (Meng et al. 2024
use 2.0-2.5); with the generic 0.1 and `simpo_gamma` 1.0 the loss asks for an average log-prob gap
of gamma/beta = 10 nats per token instead of the paper's ~0.5."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True,
                              allow_inf_nan=False)


class LoraConfig(_Section):
    enabled: bool = True
    """Train low-rank adapters (peft LoRA) instead of every weight."""
    r: int = Field(16, ge=1, le=1024)
    """Adapter rank."""
    alpha: float = Field(32.0, gt=0)
    """Adapter scale numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter input."""
    target_modules: list[str] | None = None
    """Module names to adapt; None picks the architecture's attention and MLP projections."""


class ModelConfig(_Section):
    name_or_path: str = "default"
    """`default` (the embedded SmolLM2-135M-Instruct), a local checkpoint dir, a hub id already in the
    local cache, or another run's directory (its adapter is merged into its base first)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight precision; `auto` is float32 on CPU and bfloat16 (float16 where bf16 is missing) on GPU."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    """Load the frozen base in 4-bit NF4 or 8-bit (bitsandbytes, CUDA only): QLoRA."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% more compute."""
    trust_remote_code: bool = False
    """Run Python code shipped with a hub model. Off unless you trust its author."""
    allow_pickle: bool = False
    """Accept pickle-based weight files (.bin/.pt). Off: pickles can execute code when loaded."""
    attn_implementation: Literal["eager", "sdpa"] | None = None
    """Attention kernel; None lets alignkit pick (sdpa)."""


DATA_COLUMNS = ("prompt", "chosen", "rejected", "completion", "messages", "label", "system", "score_chosen",
                "score_rejected")
"""The fields `data.columns` may map a file's columns to."""


class DataConfig(_Section):
    train: str | None = None
    """Training data: a .jsonl, .json, .csv, .parquet or .arrow file (also .gz or .zst compressed), or a
    folder (`datasets.save_to_disk`, or Parquet/Arrow/JSONL files). Required by `alignkit train`."""
    eval: str | None = None
    """Held-out file; None splits `eval_fraction` off the training file (by prompt)."""
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    """Share of training prompts held out when `eval` is None."""
    system_prompt_file: str | None = None
    """A text file whose content becomes the system message of every row without its own `system`;
    None adds no system message."""
    max_length: int = Field(384, ge=8)
    """Longest prompt + completion in tokens; longer rows are truncated (prompt first, from the left)."""
    max_prompt_length: int = Field(256, ge=4)
    """Prompts are cut from the left down to this many tokens before completions are cut."""
    max_rows: int | None = Field(None, ge=1)
    """Use only the first N training rows (quick experiments)."""
    max_eval_rows: int | None = Field(None, ge=1)
    """Use only the first N held-out rows (in-training eval and the report's preference metrics)."""
    skip_invalid: bool = False
    """Skip and count invalid rows instead of stopping at the first one."""
    split: str = "train"
    """The split read from a folder: a `datasets` DatasetDict, split subfolders, or files named `train-*`."""
    eval_split: str | None = None
    """The split `eval` reads when it is such a folder (e.g. `test`); None: the same as `split`."""
    columns: dict[str, str] | None = None
    """Rename the file's columns to alignkit's fields, e.g. `{prompt: question, chosen: good, rejected: bad}`;
    keys: prompt, chosen, rejected, completion, messages, label, system, score_chosen, score_rejected."""
    min_score_margin: float | None = None
    """Skip pairs whose score_chosen - score_rejected (UltraFeedback; SHP's score_A/score_B) is below
    this; rows without both scores are kept. None keeps every pair."""

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for key, column in (v or {}).items():
            if key not in DATA_COLUMNS:
                raise ValueError(f"unknown field {key!r} in data.columns: {_suggest(key, list(DATA_COLUMNS))}; "
                                 f"keys are alignkit's fields ({', '.join(DATA_COLUMNS)}), values your columns")
            if not column.strip():
                raise ValueError(f"data.columns.{key}: the column name is empty")
        twice = sorted({c for c in (v or {}).values() if list((v or {}).values()).count(c) > 1})
        if twice:
            raise ValueError(f"column {twice[0]!r} is mapped to two fields")
        return v


class TrainConfig(_Section):
    beta: float = Field(0.1, gt=0)
    """KL strength for DPO-family losses: higher keeps the policy closer to the reference. When the config does not set it, `simpo` gets 2.0 (its reward scale: the SimPO paper's 2.0-2.5, gamma/beta 0.5 with `simpo_gamma` 1.0)."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """cDPO label smoothing for `dpo`; the assumed label-flip rate for `robust`."""
    rpo_alpha: float = Field(1.0, ge=0)
    """Weight of the chosen-answer NLL in `rpo`."""
    dpop_lambda: float = Field(50.0, ge=0)
    """`dpop`: weight of the penalty on the chosen answer's log-prob falling below the reference's (DPO-Positive, Pal et al. 2024; the paper's 50)."""
    simpo_gamma: float = Field(1.0, ge=0)
    """SimPO/CPO-simpo target reward margin gamma (absolute, as TRL; the paper's gamma/beta ~ 0.5)."""
    cpo_alpha: float = Field(1.0, ge=0)
    """Weight of the chosen-answer NLL in `cpo`."""
    orpo_lambda: float = Field(0.1, gt=0)
    """Weight of ORPO's odds-ratio term."""
    kto_desirable_weight: float = Field(1.0, gt=0)
    """KTO: weight of the loss on desirable (good) answers."""
    kto_undesirable_weight: float = Field(1.0, gt=0)
    """KTO: weight of the loss on undesirable (bad) answers."""
    reward_margin: float = 0.0
    """`reward`: margin m in the Bradley-Terry loss -log sigmoid(r_c - r_r - m) (Llama 2)."""
    center_rewards_coefficient: float = Field(0.0, ge=0)
    """`reward`: weight of (r_c + r_r)^2, which keeps rewards near zero (Eisenstein et al. 2023)."""
    reward_model: str | None = None
    """`ppo`/`rloo`/`grpo`: the reward; with `rounds` > 1, the judge of each round's sampled answers - a
    finished `method: reward` run directory, a built-in judge (`task_api`, `refusal`), or your own
    `package.module:function`."""
    rounds: int = Field(1, ge=1)
    """DPO family: more than 1 trains that many on-policy rounds, each sampling `num_generations` answers
    per training prompt from the last round's model, judging them with `reward_model`, and training on
    pairs of the model's own best and worst answers (`alignkit.train.rounds`; output_dir/round-N)."""
    gold_judge: str | None = None
    """`ppo`/`rloo`/`grpo`: a second judge logged on every rollout, never trained on (e.g. `task_api`):
    how far the learned reward and the gold judge agree shows reward hacking."""
    num_generations: int = Field(4, ge=1)
    """`ppo`/`rloo`/`grpo`: answers sampled per prompt each step (rloo/grpo need 2 or more)."""
    rollout_prompts: int = Field(8, ge=1)
    """`ppo`/`rloo`/`grpo`: prompts per step; the step's rollout is rollout_prompts x num_generations answers."""
    ppo_epochs: int = Field(2, ge=1)
    """`ppo`/`rloo`/`grpo`: passes over each rollout."""
    num_minibatches: int = Field(1, ge=1)
    """`ppo`/`rloo`/`grpo`: optimizer steps per pass over a rollout."""
    kl_coef: float = Field(0.05, ge=0)
    """`ppo`/`rloo`/`grpo`: weight of the KL penalty to the reference (the starting weights)."""
    kl_target: float | None = Field(None, gt=0)
    """`ppo`: adapt kl_coef towards this KL per answer (Ziegler et al. 2019); None keeps it fixed."""
    kl_horizon: int = Field(10000, ge=1)
    """`ppo`: horizon of the adaptive KL controller, in answers."""
    gamma: float = Field(1.0, ge=0, le=1)
    """`ppo`: discount of the per-token rewards."""
    lam: float = Field(0.95, ge=0, le=1)
    """`ppo`: GAE lambda."""
    clip_range: float = Field(0.2, gt=0)
    """`ppo`/`rloo`/`grpo`: PPO ratio clip epsilon."""
    clip_range_value: float = Field(0.2, gt=0)
    """`ppo`: value clip epsilon."""
    vf_coef: float = Field(0.1, ge=0)
    """`ppo`: weight of the value loss."""
    whiten_rewards: bool = False
    """`ppo`: scale per-token rewards to unit variance before GAE."""
    missing_eos_penalty: float = Field(1.0, ge=0)
    """`ppo`/`rloo`/`grpo`: subtracted from the score of an answer that hit max_new_tokens without ending."""
    temperature: float = Field(0.7, gt=0)
    """`ppo`/`rloo`/`grpo`: sampling temperature of rollouts (log-probs use the same temperature)."""
    max_new_tokens: int = Field(64, ge=1)
    """`ppo`/`rloo`/`grpo`: answer length limit of rollouts."""
    learning_rate: float = Field(5e-5, gt=0)
    """Peak learning rate of AdamW."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training data (fractions allowed)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (overrides `epochs`)."""
    micro_batch_size: int = Field(4, ge=1)
    """Rows per forward pass (pairs for preference methods)."""
    gradient_accumulation_steps: int = Field(4, ge=1)
    """Micro-batches per optimizer step; effective batch = micro_batch_size x this x processes."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warm-up."""
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    """Share of steps with a linear learning-rate warm-up."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm; None disables clipping."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast precision. `auto`: on a GPU bf16 where supported, else fp16; on a CPU bf16 where it has
    native bf16 (AVX512-BF16/AMX), else none (fp32). Trainable weights and optimizer states stay fp32."""
    reference: Literal["auto", "adapter", "copy", "precomputed", "none"] = "auto"
    """Reference model: `adapter` = the base with LoRA switched off (no extra memory); `copy` = a
    frozen copy; `precomputed` = reference log-probs computed once and cached on disk; `auto` picks
    `adapter` with LoRA and `precomputed` without."""
    prefix_sharing: bool = True
    """One forward per pair: [prompt, chosen, rejected] with a mask that hides chosen from rejected (sliding windows included). false: one row per sequence with the model's own masks, for a model whose attention takes no such mask (training says so)."""
    seed: int = 0
    """Seeds Python, NumPy and torch, and the data order."""
    log_every: int = Field(1, ge=1)
    """Write a log.jsonl row every N optimizer steps."""
    eval_every: int | None = Field(None, ge=1)
    """Evaluate preference metrics every N steps; None only at the end."""
    save_every: int | None = Field(None, ge=1)
    """Write a checkpoint every N steps; None: only when interrupted (SIGINT/SIGTERM)."""
    keep_checkpoints: int = Field(2, ge=1)
    """Complete checkpoints kept on disk (older ones are deleted after a new one is written)."""
    max_bad_steps: int = Field(5, ge=1)
    """Stop after this many consecutive steps with a non-finite loss or gradient."""
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)
    """Report metrics through accelerate's trackers as well as log.jsonl."""


class EvalConfig(_Section):
    enabled: bool = True
    """Evaluate the reference before and the policy after training, and write report.md/html."""
    probes: str | None = None
    """Prompts labelled harmful / benign / alarming for generation metrics; None: the evaluation scores
    the held-out pairs only (no generation)."""
    max_probes: int | None = Field(None, ge=1)
    """Use only the first N probes."""
    max_new_tokens: int = Field(64, ge=1)
    """Answer length limit for probe generation."""
    batch_size: int = Field(64, ge=1)
    """Probes per generation batch (on CPU, decoding reads all weights per step: larger is faster)."""
    do_sample: bool = False
    """Sample answers instead of greedy decoding."""
    decode_dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    """Precision the probe answers are decoded in. `float32`: the model as trained and exported (answers
    are what you ship). `bfloat16`: from a bf16 copy, about 2x faster on CPUs with AMX/AVX512-BF16
    (bench/generation.py), but greedy answers differ from fp32's where the top two tokens are close.
    `auto`: bf16 where the hardware has it natively."""
    kl_samples: int = Field(1, ge=0)
    """Sampled completions per probe for the KL(policy || reference) estimate (0 disables)."""
    task: Literal["task_api", "none"] = "none"
    """Task-quality check applied to benign answers: `task_api` parses the Task API example's task JSON
    (examples/task_api); `none` checks no task format."""


class RunConfig(_Section):
    method: str = "dpo"
    """One of: sft, dpo, ipo, hinge, robust, rpo, dpop, simpo, cpo, orpo, kto, reward, ppo, rloo, grpo."""
    output_dir: str = "runs/dpo"
    """The run directory (config, log, checkpoints, final model, report)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    _source: str = PrivateAttr("config")  # the config file it was read from, for error messages

    @property
    def source(self) -> str:
        """Where the config came from: its YAML file, "command line", or "config" (built in Python)."""
        return self._source

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; allowed: {', '.join(METHODS)}")
        return v

    @model_validator(mode="after")
    def _method_defaults(self) -> RunConfig:
        """Defaults that depend on the method, applied only to fields the config did not set."""
        if self.method == "simpo" and "beta" not in self.train.model_fields_set:
            self.train.beta = SIMPO_BETA
        return self


def _suggest(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    return f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(sorted(allowed))}"


def _fields_of(path: tuple[str, ...]) -> list[str]:
    cls: type[BaseModel] = RunConfig
    for part in path:
        ann = cls.model_fields[part].annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        cls = ann
    return list(cls.model_fields)


def _user_error(err: ValidationError, source: str) -> UserError:
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        field = ".".join(loc)
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown field {field!r}: {_suggest(loc[-1], _fields_of(loc[:-1]))}")
        else:
            lines.append(f"field {field!r}: {e['msg']} (got {e.get('input')!r})")
    return UserError("invalid config: " + "; ".join(lines), where=source,
                     hint="see `alignkit train --help` or README 'Config fields'")


def parse_value(text: str) -> Any:
    """A CLI override value: YAML scalar rules (`0.3` -> float, `true` -> bool, `null` -> None)."""
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` overrides to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not of the form field=value",
                            hint="e.g. train.beta=0.3 output_dir=runs/b03")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = parse_value(value)
    return data


# Input files a config names. Relative paths in a YAML file are read from that file's folder (so a
# config and its data travel together); relative paths in `a.b=c` overrides from the current folder.
# Both are stored absolute, so a run directory's config.yaml reads the same files from anywhere.
# output_dir, model.name_or_path and train.reward_model name runs you make: they stay relative to
# the current folder, as the commands that made them were.
PATH_FIELDS = ("data.train", "data.eval", "data.system_prompt_file", "eval.probes")


def _resolve_paths(data: dict, base: Path) -> None:
    """Make the PATH_FIELDS of a raw config mapping absolute against `base` (in place)."""
    for dotted in PATH_FIELDS:
        section, field = dotted.split(".")
        node = data.get(section)
        if isinstance(node, dict) and isinstance(node.get(field), str) and node[field].strip():
            node[field] = os.path.abspath(os.path.join(base, os.path.expanduser(node[field])))


def merge_values(data: dict, values: dict) -> dict:
    """Merge Python values into a nested config dict (in place) and return it: keys are field names
    or dotted paths (``{"train.beta": 0.3}``), a dict value for a section merges into it
    (``{"train": {"beta": 0.3}}``). Unlike `apply_overrides`, values are taken as they are (no YAML)."""
    for key, value in values.items():
        parts = str(key).strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {key!r}: {part!r} is not a section")
        last = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(last, {}), dict):
            merge_values(node.setdefault(last, {}), value)
        else:
            node[last] = value
    return data


def load_config(path: str | Path | None, overrides: list[str] = (), *, paths_from_file: bool = True,
                values: dict | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults when `path` is None) and apply overrides.

    `overrides` are `a.b=c` strings (YAML values, as on the command line); `values` are Python values
    (`merge_values`), applied after them. Relative input paths (PATH_FIELDS) in the file resolve from
    the file's folder, those in overrides and values from the current folder; `paths_from_file=False`
    reads the file's relative paths from the current folder too (a run directory's config.yaml
    written before paths were stored absolute).
    """
    data: dict = {}
    source = "command line"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise UserError("config file not found", where=source, hint="check the path")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except RecursionError:
            raise UserError("YAML nested too deeply", where=source) from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else source
            raise UserError(f"not valid YAML: {getattr(e, 'problem', e)}", where=where) from None
        if not isinstance(data, dict):
            raise UserError("a config file must be a mapping of fields", where=source)
        if paths_from_file:
            _resolve_paths(data, path.parent.absolute())
    apply_overrides(data, list(overrides))
    if values:
        merge_values(data, values)
    _resolve_paths(data, Path.cwd())  # the overrides' paths (the file's are absolute by now)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise _user_error(e, source) from None
    cfg._source = source
    return cfg


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def fields_markdown() -> str:
    """The README's table of config fields, generated from the field docstrings."""
    rows = ["| field | default | meaning |", "|---|---|---|"]

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for name, f in cls.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            default = f.default if f.default_factory is None else f.default_factory()
            doc = " ".join((f.description or "").split())
            rows.append(f"| `{prefix}{name}` | `{default!r}` | {doc} |")

    walk(RunConfig, "")
    return "\n".join(rows)


if __name__ == "__main__":
    print(fields_markdown())
