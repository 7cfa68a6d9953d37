"""Model shapes for the memory planner: from a config.json, the local hub cache, a built-in table, or a size.

The planner needs the shape of a model, never its weights: parameter count, hidden size, layers,
attention heads (query and key/value), MLP width, vocabulary, whether the embeddings are tied, and the
longest position. `load_arch` resolves, in order:

1. an `Arch` (returned as is);
2. a local path: a model directory holding ``config.json`` or the file itself;
3. the Hugging Face hub cache, offline only (``try_to_load_from_cache``: nothing is downloaded);
4. the built-in table of popular models (public config.json values, below);
5. a size alone (``"7b"``, ``"135m"``): a typical shape of that size.

Parameter counts are computed from the shapes (`Arch.n_params`), so they match the real checkpoints
exactly for the dense decoder families we know (Llama, Mistral, Qwen2, SmolLM2, Phi-3, Gemma 2).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from alignkit.errors import UserError

# Linear layers of one decoder block, per family: name -> (in_features, out_features) is built by
# `Arch.linear_shapes`. Phi-3 fuses q/k/v and gate/up, so its LoRA target names differ.
_LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PHI3_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


@dataclass(frozen=True)
class Arch:
    """The shape of a dense decoder-only transformer.

    Attributes:
        name: where the shape came from (model id, path or size).
        hidden: model width ``h``.
        layers: number of decoder blocks ``L``.
        heads: attention (query) heads.
        kv_heads: key/value heads (``heads`` for multi-head attention, fewer for GQA).
        intermediate: MLP width ``I`` (gated MLP: gate, up and down projections).
        vocab: vocabulary size ``V``.
        tied: input embedding and LM head share one matrix.
        max_pos: longest position the model was trained for.
        head_dim: per-head width; ``hidden // heads`` unless the config says otherwise (Gemma 2).
        family: ``"llama"`` (also Mistral, SmolLM2), ``"qwen2"`` (q/k/v biases), ``"phi3"`` (fused
            projections) or ``"gemma2"`` (four norms per block).
    """

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    max_pos: int = 4096
    head_dim: int = 0
    family: str = "llama"

    def __post_init__(self):
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """Linear layers of one block: module name -> (in_features, out_features)."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        if self.family == "phi3":
            return {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h), "gate_up_proj": (h, 2 * i), "down_proj": (i, h)}
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }

    @property
    def linear_params_per_layer(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def linear_params(self) -> int:
        """Parameters in the blocks' linear layers: the ones 4-bit/8-bit quantization applies to."""
        return self.layers * self.linear_params_per_layer

    @property
    def n_params(self) -> int:
        """Total parameters, counted from the shapes (tied embeddings once)."""
        norms = 4 if self.family == "gemma2" else 2
        per_layer = self.linear_params_per_layer + norms * self.hidden
        if self.family == "qwen2":  # q, k and v projections carry biases
            per_layer += self.q_dim + 2 * self.kv_dim
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * per_layer + embeddings + self.hidden  # + final norm

    def lora_targets(self) -> tuple[str, ...]:
        """Every linear module name LoRA can target in this family ("all-linear")."""
        return _PHI3_TARGETS if self.family == "phi3" else _LLAMA_TARGETS


def _a(name, hidden, layers, heads, kv, inter, vocab, tied, max_pos, head_dim=0, family="llama") -> Arch:
    return Arch(name, hidden, layers, heads, kv, inter, vocab, tied, max_pos, head_dim, family)


# Public config.json values. Keys are lower-case; `_ALIASES` maps hub ids and short names onto them.
BUILTIN: dict[str, Arch] = {
    "llama-2-7b": _a("meta-llama/Llama-2-7b-hf", 4096, 32, 32, 32, 11008, 32000, False, 4096),
    "llama-3-8b": _a("meta-llama/Meta-Llama-3-8B", 4096, 32, 32, 8, 14336, 128256, False, 8192),
    "llama-3.1-8b": _a("meta-llama/Llama-3.1-8B", 4096, 32, 32, 8, 14336, 128256, False, 131072),
    "mistral-7b": _a("mistralai/Mistral-7B-v0.1", 4096, 32, 32, 8, 14336, 32000, False, 32768),
    "qwen2.5-0.5b": _a("Qwen/Qwen2.5-0.5B", 896, 24, 14, 2, 4864, 151936, True, 32768, family="qwen2"),
    "qwen2.5-1.5b": _a("Qwen/Qwen2.5-1.5B", 1536, 28, 12, 2, 8960, 151936, True, 32768, family="qwen2"),
    "qwen2.5-3b": _a("Qwen/Qwen2.5-3B", 2048, 36, 16, 2, 11008, 151936, True, 32768, family="qwen2"),
    "qwen2.5-7b": _a("Qwen/Qwen2.5-7B", 3584, 28, 28, 4, 18944, 152064, False, 131072, family="qwen2"),
    "smollm2-135m": _a("HuggingFaceTB/SmolLM2-135M-Instruct", 576, 30, 9, 3, 1536, 49152, True, 8192),
    "smollm2-360m": _a("HuggingFaceTB/SmolLM2-360M-Instruct", 960, 32, 15, 5, 2560, 49152, True, 8192),
    "smollm2-1.7b": _a("HuggingFaceTB/SmolLM2-1.7B-Instruct", 2048, 24, 32, 32, 8192, 49152, True, 8192),
    "phi-3-mini": _a("microsoft/Phi-3-mini-4k-instruct", 3072, 32, 32, 32, 8192, 32064, False, 4096, family="phi3"),
    "gemma-2-2b": _a("google/gemma-2-2b", 2304, 26, 8, 4, 9216, 256000, True, 8192, 256, "gemma2"),
    "gemma-2-9b": _a("google/gemma-2-9b", 3584, 42, 16, 8, 14336, 256000, True, 8192, 256, "gemma2"),
}
_ALIASES = {
    "default": "smollm2-135m", "llama-2-7b-hf": "llama-2-7b", "llama-2-7b-chat-hf": "llama-2-7b",
    "meta-llama-3-8b": "llama-3-8b", "meta-llama-3-8b-instruct": "llama-3-8b", "llama-3.1-8b-instruct": "llama-3.1-8b",
    "meta-llama-3.1-8b": "llama-3.1-8b", "meta-llama-3.1-8b-instruct": "llama-3.1-8b",
    "mistral-7b-v0.1": "mistral-7b", "mistral-7b-instruct-v0.2": "mistral-7b",
    "phi-3-mini-4k-instruct": "phi-3-mini", "gemma-2-2b-it": "gemma-2-2b", "gemma-2-9b-it": "gemma-2-9b",
}
for _key in list(BUILTIN):
    if _key.startswith(("qwen", "smollm2")):
        _ALIASES[_key + "-instruct"] = _key
# A size alone maps to the model most people mean by it (Llama-2-7b: the course's 7B, and the
# conservative one: full multi-head attention gives it the largest KV cache of the 7B models).
SIZE_ALIASES = {"135m": "smollm2-135m", "360m": "smollm2-360m", "0.5b": "qwen2.5-0.5b", "1.5b": "qwen2.5-1.5b",
                "1.7b": "smollm2-1.7b", "2b": "gemma-2-2b", "3b": "qwen2.5-3b", "7b": "llama-2-7b",
                "8b": "llama-3-8b", "9b": "gemma-2-9b"}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([mb])$")


def builtin_key(name: str) -> str | None:
    """The built-in table key for a hub id or short name, or None."""
    key = name.strip().lower().rstrip("/").split("/")[-1]
    key = _ALIASES.get(key, key)
    return key if key in BUILTIN else None


def arch_from_config(cfg: dict, name: str = "config.json") -> Arch:
    """An `Arch` from a Hugging Face config dict (nested ``text_config`` of multimodal models included)."""
    cfg = cfg.get("text_config", cfg)

    def get(*keys, default=None):
        for k in keys:
            if cfg.get(k) is not None:
                return cfg[k]
        if default is None:
            raise UserError(f"config has none of the fields {', '.join(keys)}", where=name,
                            hint="the planner needs a decoder-only transformer config (hidden size, layers, heads).")
        return default

    hidden = int(get("hidden_size", "n_embd", "d_model"))
    heads = int(get("num_attention_heads", "n_head"))
    model_type = str(cfg.get("model_type", "llama"))
    family = {"qwen2": "qwen2", "phi3": "phi3", "gemma2": "gemma2"}.get(model_type, "llama")
    # Transformers' base default ties the embeddings; Llama-like configs nearly always say it explicitly.
    tied = bool(cfg.get("tie_word_embeddings", model_type not in ("llama", "mistral", "phi3")))
    return Arch(
        name=name, hidden=hidden, layers=int(get("num_hidden_layers", "n_layer")), heads=heads,
        kv_heads=int(get("num_key_value_heads", default=heads)),
        intermediate=int(get("intermediate_size", "n_inner", default=4 * hidden)),
        vocab=int(get("vocab_size")), tied=tied, max_pos=int(get("max_position_embeddings", "n_positions", default=4096)),
        head_dim=int(cfg.get("head_dim") or hidden // heads), family=family,
    )


def arch_for_size(n_params: float, name: str | None = None) -> Arch:
    """A typical Llama-style shape with about `n_params` parameters.

    Known sizes map onto a real model (`SIZE_ALIASES`); others get width ~ (n * 128 / 12)^(1/3) rounded to
    256 (layers ~ width / 128, the Llama-2 proportions), a 32k vocabulary and a 2.6875x gated MLP.
    """
    if n_params <= 0:
        raise UserError(f"model size must be positive, got {n_params}")
    vocab = 32000
    hidden = max(256, int(round((n_params * 128 / 12) ** (1 / 3) / 256)) * 256)
    inter = int(math.ceil(hidden * 2.6875 / 256) * 256)
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    layers = max(1, round((n_params - 2 * vocab * hidden) / per_layer))
    heads = max(1, hidden // 128)
    return Arch(name or f"~{n_params / 1e9:.2g}B (Llama-style)", hidden, layers, heads, heads, inter, vocab, False, 4096)


def _parse_size(spec: str) -> float | None:
    m = _SIZE.match(spec.strip().lower())
    if not m:
        return None
    return float(m.group(1)) * (1e6 if m.group(2) == "m" else 1e9)


def _from_hub_cache(repo_id: str) -> Path | None:
    """config.json of `repo_id` if it is already in the local hub cache (never downloads)."""
    if "/" not in repo_id or repo_id.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # a malformed id or a broken cache is "not cached", never a crash
        return None
    return Path(found) if isinstance(found, str) else None


def load_arch(spec: str | Path | Arch) -> Arch:
    """Resolve a model name, path or size into an `Arch` (see the module docstring for the order)."""
    if isinstance(spec, Arch):
        return spec
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read the model config: {exc}", where=str(path)) from exc
        return arch_from_config(cfg, name=str(path))
    cached = _from_hub_cache(text)
    if cached is not None:
        return arch_from_config(json.loads(cached.read_text()), name=text)
    key = builtin_key(text)
    if key is not None:
        return BUILTIN[key]
    size = _parse_size(text)
    if size is not None:
        alias = SIZE_ALIASES.get(text.strip().lower().replace(" ", ""))
        return replace(BUILTIN[alias], name=f"{text} (shape of {BUILTIN[alias].name})") if alias else arch_for_size(size)
    raise UserError(
        f"unknown model {text!r}: not a local path, not in the hub cache, not a built-in model, not a size",
        hint=f"give a directory with config.json, a size like '7b', or one of: {', '.join(sorted(BUILTIN))}",
    )


# ---- byte counts from shapes (the memory model's per-component formulas; see docs/PLANNER.md) ----

def quant_bytes_per_param(quant: str, dtype_bytes: int, double_quant: bool = True) -> float:
    """Bytes per quantized weight, quantization constants included.

    NF4 stores 4 bits per weight and one fp32 absmax per block of 64: 0.5 + 4/64. Double quantization
    stores those absmax values in 8 bits with one fp32 constant per 256 of them: 0.5 + 1/64 + 4/(64*256).
    LLM.int8 stores one byte per weight and an fp32 scale per output row (counted as 0: 1/in_features).
    """
    if quant == "4bit":
        return 0.5 + (1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64)
    if quant == "8bit":
        return 1.0
    return float(dtype_bytes)


def weight_bytes(arch: Arch, quant: str, dtype_bytes: int, double_quant: bool = True, *,
                 scalar_head: bool = False) -> float:
    """Bytes of one model's weights. Quantization applies to the blocks' linear layers only: bitsandbytes
    leaves embeddings, norms and the LM head in the compute dtype. A scalar head (reward/value model)
    replaces an untied LM head with a (hidden -> 1) projection."""
    other = arch.n_params - arch.linear_params
    if scalar_head:
        other += arch.hidden - (0 if arch.tied else arch.vocab * arch.hidden)
    return arch.linear_params * quant_bytes_per_param(quant, dtype_bytes, double_quant) + other * dtype_bytes


def lora_params(arch: Arch, r: int, targets: tuple[str, ...]) -> int:
    """LoRA parameters: A (r x in) and B (out x r) on each target of each block, r * (in + out)."""
    shapes = arch.linear_shapes()
    return arch.layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


# Which tensor feeds each linear layer: targets sharing an input (q/k/v, gate/up) share one saved copy
# in full fine-tuning, but peft casts the input to fp32 separately for each LoRA target.
_INPUT_OF = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "qkv_proj": "attn_in",
             "o_proj": "attn_out", "gate_proj": "mlp_in", "up_proj": "mlp_in", "gate_up_proj": "mlp_in",
             "down_proj": "mlp_out"}


def activation_bytes(arch: Arch, a: int, lora_targets: tuple[str, ...] | None, lora_dropout: float = 0.0, *,
                     frozen: bool = False, mask_bytes: int = 1) -> int:
    """Bytes saved for backward per token per block, with SDPA (flash / memory-efficient) attention.

    Counted tensor by tensor from what autograd saves in a Hugging Face Llama-style block (checked in
    tests/plan/test_plan_activations.py against ``saved_tensors_hooks``), `a` = activation bytes:

    - each RMSNorm keeps its input in fp32 (4h) and, when its weight trains, the normalized input (a*h);
    - attention keeps q, k, v after rotary and its output: a * (2 q_dim + 2 kv_dim);
    - the gated MLP keeps gate, up and act(gate): 3 a I;
    - a trained linear keeps its input (a per feature; shared by q/k/v and by gate/up, and the
      o_proj input is the attention output already kept); a frozen one keeps nothing;
    - a LoRA target keeps its input cast to fp32 (4 per feature, one copy per target; shared when
      a = 4), or with dropout the dropped-out copy plus the mask: `mask_bytes` per feature, 1 on CUDA
      (fused dropout keeps a bool mask) and 4 on CPU (dropout there multiplies by an fp32 noise tensor).

    ``lora_targets=None`` means full fine-tuning. ``frozen=True`` gives one block's intermediates of a
    no-grad forward (the widest moment: MLP input, gate, up and their product).
    """
    h, i, q, kv = arch.hidden, arch.intermediate, arch.q_dim, arch.kv_dim
    if frozen:
        return a * (h + 3 * i)
    widths = {"attn_in": h, "attn_out": q, "mlp_in": h, "mlp_out": i}
    n_norms = 4 if arch.family == "gemma2" else 2
    full = lora_targets is None
    total = n_norms * (4 * h + (a * h if full else 0)) + a * (2 * q + 2 * kv) + 3 * a * i
    if full:
        total += a * (widths["attn_in"] + widths["mlp_in"] + widths["mlp_out"])
        return total
    shared: set[str] = set()
    for t in lora_targets:
        src = _INPUT_OF[t]
        if lora_dropout > 0:
            total += (4 + mask_bytes) * widths[src]
        elif a == 4:  # x.to(fp32) is x itself: one saved copy per distinct input
            if src not in shared and src != "attn_out":
                total += 4 * widths[src]
            shared.add(src)
        else:
            total += 4 * widths[src]
    return total
