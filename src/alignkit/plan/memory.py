"""Memory model of a training run: how many bytes each component needs, and will it fit.

Every term is a formula of the model shape (`Arch`) and the run settings (`PlanInput`); docs/PLANNER.md
writes them out with the reason for each. Components belong to a *phase*: ``persistent`` ones (weights,
gradients, optimizer states, runtime) live for the whole run; the others are transient and never
coexist, so the predicted peak is ``persistent + max(train, nograd, generate)``:

- ``train``: the forward + backward with gradients (saved activations and the logits' backward);
- ``nograd``: a forward without gradients (reference log-probs, the KTO KL batch, PPO scoring);
- ``generate``: online rollouts (PPO, RLOO, GRPO: the KV cache of every rollout at once).

The online methods are planned as `alignkit.train.ppo` builds them: one LoRA policy, its reference
the same weights with the adapter switched off, (PPO) a linear value head on the policy, a frozen
reward model only when ``train.reward_model`` is a reward run, all rollouts decoded in one batch.

Constants that depend on the runtime (CUDA context, CPU baseline, the logits' bytes per element) live
in `Calibration`, so that bench/planner_accuracy.py can fit them against measured peaks.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from alignkit.errors import UserError
from alignkit.plan.architectures import Arch, activation_bytes, load_arch, lora_params, weight_bytes
from alignkit.plan.hardware import GiB, Hardware, get_hardware, multi_gpu_note

METHODS = ("sft", "dpo", "ipo", "hinge", "robust", "rpo", "dpop", "simpo", "cpo", "orpo", "kto", "reward", "ppo", "rloo",
           "grpo")
ONLINE = ("ppo", "rloo", "grpo")
_PAIRED = {"dpo", "ipo", "hinge", "robust", "rpo", "dpop", "simpo", "cpo", "orpo", "reward"}
_NEEDS_REF = {"dpo", "ipo", "hinge", "robust", "rpo", "dpop", "kto", *ONLINE}
_JUDGE_BATCH = 16  # alignkit.judges.reward_model.RewardModelJudge's batch_size
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class Calibration:
    """Runtime constants of the model, in one place so that measured peaks can refit them.

    Attributes:
        cuda_context: CUDA context, cuBLAS workspace and caching-allocator slack on a GPU (0.5-1 GB).
        cpu_baseline: RSS of a training process before any model: Python + ``alignkit.train.run``'s
            imports (torch, transformers, peft, accelerate, alignkit) + the loaded tokenizer and data.
            Measured by bench/planner_accuracy.py's probe (VmRSS, torch 2.13 CPU, transformers 5.24):
            412 MiB after the imports, 456 MiB once SmolLM2's 49k-token BPE fast tokenizer is loaded
            (+44 MiB; a 128k-152k vocabulary tokenizer costs proportionally more). ru_maxrss, which
            run.json records, includes both, so both are the baseline. (Was 420: imports only.)
        logit_bytes_train: bytes per (position x vocabulary) element in a forward+backward through
            log-softmax: the fp32 log-softmax output kept for backward, the gather's dense gradient,
            the log-softmax input gradient, and one more N x V because the two input gradients are
            summed out of place (the hidden states require grad, as in training) = 16. Measured by
            bench/planner_accuracy.py's probe (torch 2.13 CPU: 16.0). This is autograd's order of
            work, not the allocator's, so the same constant is used on a GPU. (Was 12.)
            The online methods' forward (alignkit.train.ppo.token_outputs) also computes the entropy
            (exp of the log-softmax, kept in the graph but not in the loss): still 16, measured the
            same way (n 256, vocab 49152, torch 2.13 CPU).
        logit_bytes_nograd: same without gradients: the fp32 copy and the log-softmax output (8), plus
            the model's half-precision logits when the model runs in fp16/bf16 (added in the code).
            The online methods' scoring forward adds the entropy's exp(): one more fp32 N x V
            (measured 12, added in the code).
        logit_chunk_tokens: positions per chunk of the chunked (recomputed) log-softmax used with
            ``completion_only_logits``; must match alignkit.logprobs.
        cpu_heap_retention: on CPU with glibc's default malloc, the activations freed after the
            first step stay in the process heap (glibc raises its mmap threshold once a large block
            is freed, so later activations come from the heap, which does not shrink), and the
            next step's activations do not all fit back into those holes. Gradients and optimizer
            states allocated after the first forward do reuse them (full fine-tuning shows no
            excess). Modelled as ``max(0, k x activations - gradients - optimizer states)`` in the
            train phase; k = 1.5 fitted on bench/planner_accuracy.py's 24 runs, which also prints
            the same runs re-planned with other k (last run: k 0 gives max 44.8%, k 1.25-1.75 give
            max 11-13%; k 1.0, a first fit on --explain runs whose peak-RSS resets under-measure,
            gives max 18.5%; k 2.0 gives 17.8%). Zero with ``cpu_allocator="mmap"``
            (MALLOC_MMAP_THRESHOLD_=1048576: freed blocks go back to the OS).
        activation_scale_gpu / activation_scale_cpu: multiplier on the counted saved tensors, for the
            allocator's rounding and temporaries; 1.0 until bench/planner_accuracy.py measures otherwise.
    """

    cuda_context: int = int(0.75 * GiB)
    cpu_baseline: int = 456 * 1024**2
    logit_bytes_train: int = 16
    logit_bytes_nograd: int = 8
    logit_chunk_tokens: int = 1024
    cpu_heap_retention: float = 1.5
    activation_scale_gpu: float = 1.0
    activation_scale_cpu: float = 1.0


CALIBRATION = Calibration()


@dataclass
class PlanInput:
    """The settings of one training run, as far as memory is concerned.

    ``lora_r = 0`` is full fine-tuning. ``dtype = None`` and ``reference = "auto"`` are resolved by
    `estimate` (the hardware's precision; adapter switch-off with LoRA, precomputed log-probs without:
    the rule of ``train.reference: auto`` in alignkit.config). ``seq_len`` is the longest sequence
    (prompt + completion); ``prompt_len`` the prompt part of it. `prefix_sharing` and
    `completion_only_logits` default to what alignkit's trainer does; set both False to plan a run
    that forwards chosen and rejected separately and computes logits at every position (TRL's way).
    ``cpu_allocator`` (CPU only): ``"glibc"``, the C library's default malloc, which keeps freed
    activations in the heap; ``"mmap"``, the run started with ``MALLOC_MMAP_THRESHOLD_=1048576``
    so that freed blocks go back to the OS (lower peak RSS, slower steps).

    Online methods (ppo, rloo, grpo): ``seq_len`` is prompt + ``max_new_tokens`` (``prompt_len`` the
    prompt), ``micro_batch`` the update's micro-batch; each step decodes ``rollout_prompts x
    num_generations`` rollouts in one batch. ``reward_model``: ``"model"``, a reward run (a frozen copy
    of the base with a scalar head), or ``"judge"``, a programmatic judge (``task_api``,
    ``package.module:function``) that holds no weights. `prefix_sharing` and `completion_only_logits`
    do not apply: the LM head runs on the completion positions only, without chunking.
    """

    arch: Arch
    method: str = "dpo"
    lora_r: int = 16
    lora_targets: tuple[str, ...] | str = "all-linear"
    lora_dropout: float = 0.0
    quant: str = "none"
    double_quant: bool = True
    dtype: str | None = None
    micro_batch: int = 1
    grad_accum: int = 1
    seq_len: int = 1024
    prompt_len: int | None = None
    grad_ckpt: bool = False
    optimizer: str = "adamw"
    reference: str = "auto"
    prefix_sharing: bool = True
    completion_only_logits: bool = True
    cpu_allocator: str = "glibc"
    device: str = "gpu"
    rollout_prompts: int = 8
    num_generations: int = 4
    reward_model: str = "model"

    def __post_init__(self):
        def bad(name, value, allowed):
            raise UserError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}",
                            where=f"plan input {name}")

        checks = {"method": METHODS, "quant": ("none", "8bit", "4bit"), "optimizer": ("adamw", "adamw8bit"),
                  "reference": ("auto", "adapter", "copy", "precomputed", "none"), "device": ("gpu", "cpu"),
                  "cpu_allocator": ("glibc", "mmap"), "reward_model": ("model", "judge")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                bad(name, getattr(self, name), allowed)
        if self.dtype is not None and self.dtype not in DTYPE_BYTES:
            bad("dtype", self.dtype, tuple(DTYPE_BYTES))
        if self.micro_batch < 1 or self.seq_len < 2 or self.lora_r < 0 or self.grad_accum < 1:
            raise UserError("micro_batch, grad_accum must be >= 1, seq_len >= 2, lora_r >= 0", where="plan input")
        if self.rollout_prompts < 1 or self.num_generations < 1:
            raise UserError("rollout_prompts and num_generations must be >= 1", where="plan input")
        if self.prompt_len is None:
            self.prompt_len = self.seq_len // 2
        if not 0 <= self.prompt_len < self.seq_len:
            raise UserError(f"prompt_len {self.prompt_len} must be below seq_len {self.seq_len}", where="plan input")
        if self.quant != "none" and self.lora_r == 0:
            raise UserError("a quantized base cannot be fully fine-tuned", where="plan input quant",
                            hint="use LoRA (lora_r > 0) with 4-bit/8-bit, i.e. QLoRA")

    @property
    def targets(self) -> tuple[str, ...]:
        if self.lora_targets in ("all-linear", "all", None):
            return self.arch.lora_targets()
        targets = (self.lora_targets,) if isinstance(self.lora_targets, str) else tuple(self.lora_targets)
        unknown = [t for t in targets if t not in self.arch.lora_targets()]
        if unknown:
            raise UserError(f"LoRA targets {unknown} are not modules of {self.arch.name}", where="plan input lora_targets",
                            hint=f"choose from {', '.join(self.arch.lora_targets())} or 'all-linear'")
        return targets


@dataclass
class Plan:
    """Predicted memory of a run on a device.

    ``components`` maps a name to bytes; ``phases`` maps the same names to their phase. ``total`` is the
    predicted peak: persistent components plus the largest transient phase.
    """

    input: PlanInput
    hardware: Hardware
    components: dict[str, int] = field(default_factory=dict)
    phases: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, nbytes: float, phase: str = "persistent") -> None:
        if nbytes > 0:
            self.components[name] = self.components.get(name, 0) + int(nbytes)
            self.phases[name] = phase

    def phase_total(self, phase: str) -> int:
        return sum(b for n, b in self.components.items() if self.phases[n] == phase)

    @property
    def peak_phase(self) -> str:
        return max(("train", "nograd", "generate"), key=self.phase_total)

    @property
    def total(self) -> int:
        return self.phase_total("persistent") + self.phase_total(self.peak_phase)

    @property
    def headroom(self) -> int:
        return self.hardware.memory - self.total

    @property
    def fits(self) -> bool:
        return self.total <= self.hardware.memory

    @property
    def verdict(self) -> str:
        if not self.fits:
            return "does not fit"
        return "fits (tight: under 5% headroom)" if self.headroom < 0.05 * self.hardware.memory else "fits"


def resolve(inp: PlanInput, hw: Hardware) -> PlanInput:
    """Fill the hardware-dependent defaults (dtype, reference) and check the combination."""
    dtype = inp.dtype or hw.default_dtype
    if dtype == "bf16" and not hw.bf16:
        raise UserError(f"{hw.name} has no bf16 support", where="plan input dtype", hint="use fp16 (or fp32)")
    if inp.quant != "none" and not hw.supports_quantization:
        raise UserError("4-bit/8-bit weights need a CUDA GPU (bitsandbytes)", where="plan input quant",
                        hint="plan with quant='none' on CPU")
    ref = inp.reference
    if inp.method in ONLINE:  # alignkit.train.ppo: LoRA only, reference = the adapter switched off
        if inp.lora_r == 0:
            raise UserError(f"{inp.method} needs LoRA: its reference is the policy with the adapter switched off",
                            where="plan input lora_r", hint="plan with lora_r > 0")
        if ref not in ("auto", "adapter"):
            raise UserError(f"{inp.method} samples its completions online and takes its reference from the policy "
                            f"with the LoRA adapter switched off; reference {ref!r} is not built",
                            where="plan input reference", hint="use 'adapter' (or 'auto')")
    if inp.method not in _NEEDS_REF:
        ref = "none"
    elif ref == "auto":
        ref = "adapter" if inp.lora_r > 0 else "precomputed"
    elif ref == "none":
        raise UserError(f"{inp.method} needs a reference model", where="plan input reference",
                        hint="use 'adapter' (LoRA), 'copy' or 'precomputed'")
    if ref == "adapter" and inp.lora_r == 0:
        raise UserError("the adapter-disabled reference needs LoRA", where="plan input reference",
                        hint="use reference 'copy' or 'precomputed' with full fine-tuning")
    return replace(inp, dtype=dtype, reference=ref, device=hw.kind)


def _tokens(inp: PlanInput) -> tuple[int, int, int]:
    """(sequences, positions per sequence, LM-head positions) of one micro-batch's training forward."""
    b, s, p = inp.micro_batch, inp.seq_len, inp.prompt_len
    if inp.method in ONLINE:  # one row per rollout; the LM head at its completion positions only
        return b, s, b * (s - p)
    if inp.method in _PAIRED and inp.prefix_sharing:
        seqs, length = b, 2 * s - p  # prompt once, then chosen and rejected: one sequence per pair
    elif inp.method in _PAIRED:
        seqs, length = 2 * b, s  # chosen and rejected both in the forward pass
    else:
        seqs, length = b, s
    head_positions = seqs * ((2 * (s - p) if inp.prefix_sharing and inp.method in _PAIRED else s - p)
                             if inp.completion_only_logits else length)
    return seqs, length, head_positions


def _logits(inp: PlanInput, positions: int, per_elem: int, c: Calibration) -> int:
    # chunked, recomputed log-softmax: one chunk alive at a time (not in the online methods' forward)
    if inp.completion_only_logits and inp.method not in ONLINE:
        positions = min(positions, c.logit_chunk_tokens)
    return positions * inp.arch.vocab * per_elem


def estimate(inp: PlanInput, hardware: Hardware | str = "t4", calib: Calibration = CALIBRATION) -> Plan:
    """Predict the peak memory of `inp` on `hardware`, broken down by component."""
    hw = get_hardware(hardware)
    inp = resolve(inp, hw)
    arch, a, c = inp.arch, DTYPE_BYTES[inp.dtype], calib
    plan = Plan(inp, hw)
    lora = inp.lora_r > 0
    online = inp.method in ONLINE
    scalar_head = inp.method == "reward"
    base = weight_bytes(arch, inp.quant, a, inp.double_quant, scalar_head=scalar_head)
    n_trainable = arch.n_params if not lora else lora_params(arch, inp.lora_r, inp.targets)
    if scalar_head and lora:
        n_trainable += arch.hidden  # the score head is trained too (modules_to_save)
    n_head = 0  # PPO's value head: trained beside the adapters
    plan.add("policy weights", base)
    if inp.method == "ppo":  # the value model is a linear head on the policy's hidden states (+ bias)
        plan.add("value head (fp32)", 4 * (arch.hidden + 1))
        n_head = arch.hidden + 1
    if online and inp.reward_model == "model":  # a reward run: a frozen copy of the base, scalar head
        # alignkit.judges.reward_model loads it merged, unquantized, in fp32, on the CPU
        built = weight_bytes(arch, "none", 4, scalar_head=True)
        if hw.kind == "gpu":
            built = weight_bytes(arch, inp.quant, a, inp.double_quant, scalar_head=True)
            plan.notes.append(f"the reward model is counted on the GPU at the policy's precision; today the judge "
                              f"loads it on the CPU in fp32 ({gib(weight_bytes(arch, 'none', 4, scalar_head=True))} "
                              "of host RAM) and scores there")
        plan.add("reward model weights", built)
    if inp.reference == "copy":
        plan.add("reference weights", weight_bytes(arch, inp.quant, a, inp.double_quant))
    if lora:
        plan.add("LoRA adapters (fp32)", 4 * n_trainable)  # peft keeps adapters in fp32
        n_trainable += n_head
        plan.add("gradients (fp32)", 4 * n_trainable)
    else:
        plan.add("gradients", (4 if a == 2 else a) * n_trainable)  # of the fp32 master weights
        if a == 2:
            plan.add("master weights (fp32)", 4 * n_trainable)
    opt = 8.0 if inp.optimizer == "adamw" else 2.0 + 8 / 2048  # m and v; 8-bit: + a fp32 scale per 2048
    plan.add(f"optimizer states ({inp.optimizer})", opt * n_trainable)
    plan.add("CUDA context" if hw.kind == "gpu" else "Python + torch baseline",
             c.cuda_context if hw.kind == "gpu" else c.cpu_baseline)

    # train phase: saved activations (+ one recomputed layer with checkpointing) and the logits' backward
    scale = c.activation_scale_gpu if hw.kind == "gpu" else c.activation_scale_cpu
    targets = inp.targets if lora else None
    seqs, length, head_pos = _tokens(inp)
    per_tok_layer = activation_bytes(arch, a, targets, inp.lora_dropout, mask_bytes=1 if hw.kind == "gpu" else 4)
    tokens = seqs * length
    # alignkit.train.ppo never calls gradient_checkpointing_enable (only the 4-bit/8-bit preparation
    # does), and it keeps the policy in eval mode, where transformers does not checkpoint anyway.
    ckpt = inp.grad_ckpt and not online
    if inp.grad_ckpt and online:
        plan.notes.append(f"{inp.method}: the online loop does not checkpoint (no gradient_checkpointing_enable; "
                          "the policy stays in eval mode, where transformers skips it): activations planned in full")
    if ckpt:  # each block keeps only its input; backward recomputes one block at a time
        act = tokens * (arch.layers * a * arch.hidden + per_tok_layer)
    else:
        act = tokens * arch.layers * per_tok_layer
    if inp.prefix_sharing and inp.method in _PAIRED:
        act += seqs * length * length * a  # the 2-D attention mask that keeps chosen and rejected apart
    plan.add("activations" + (" (checkpointed)" if ckpt else ""), scale * act, "train")
    if hw.kind == "cpu" and inp.cpu_allocator == "glibc":
        reused = sum(b for n, b in plan.components.items() if n.startswith(("gradients", "optimizer states")))
        plan.add("freed activations kept in the heap (glibc)",
                 max(0.0, c.cpu_heap_retention * scale * act - reused), "train")
    if not scalar_head:
        plan.add("logits", _logits(inp, head_pos, c.logit_bytes_train, c), "train")

    # no-grad forwards: one block's intermediates + the logits of that forward
    nograd_elem = c.logit_bytes_nograd + (a if a < 4 else 0)
    frozen = activation_bytes(arch, a, None, 0.0, frozen=True)
    nograd_act = tokens * frozen
    if inp.reference in ("adapter", "copy") and not online:
        plan.add("reference forward (no grad)", nograd_act + _logits(inp, head_pos, nograd_elem, c), "nograd")
    if online:
        _online_transients(plan, inp, a, frozen, nograd_elem, head_pos)
    if inp.method == "kto":
        plan.notes.append("KTO's KL batch is a no-grad forward: it costs time, not peak memory.")
    if hw.count > 1:
        plan.notes.append(multi_gpu_note(hw))
    return plan


def _online_transients(plan: Plan, inp: PlanInput, a: int, frozen: int, nograd_elem: int, head_pos: int) -> None:
    """A step of alignkit.train.ppo: rollouts (generate), the judge, then the old and reference
    log-probs (nograd), then the update (the train phase, counted by `estimate`)."""
    arch = inp.arch
    rollouts = inp.rollout_prompts * inp.num_generations  # `sample` decodes them in one batch
    plan.add("generation KV cache", 2 * arch.layers * arch.kv_dim * a * rollouts * inp.seq_len, "generate")
    # the prefill: every rollout's prompt at once, one block's intermediates, the last position's logits
    plan.add("generation forward (no grad)", rollouts * (inp.prompt_len * frozen + arch.vocab * nograd_elem),
             "generate")
    # policy, then reference (adapter off), micro-batch by micro-batch; the log-softmax also gives the
    # entropy (one more fp32 N x V); the reward model's own batches run before, on their own
    scoring = inp.micro_batch * inp.seq_len * frozen + head_pos * arch.vocab * (nograd_elem + 4)
    if inp.reward_model == "model":
        scoring = max(scoring, min(_JUDGE_BATCH, rollouts) * inp.seq_len * frozen)
    plan.add("scoring forwards (no grad)", scoring, "nograd")


def plan_from_args(model: str | Arch = "default", method: str = "dpo", *, gpu: str | Hardware = "t4",
                   ram: str | None = None, **settings) -> Plan:
    """One call for the CLI: ``plan_from_args("7b", "dpo", gpu="t4", quant="4bit", lora_r=16, ...)``.

    `settings` are `PlanInput` fields (lora_r, lora_targets, quant, dtype, micro_batch, seq_len,
    prompt_len, grad_ckpt, optimizer, reference, prefix_sharing, completion_only_logits, and for the
    online methods rollout_prompts, num_generations, reward_model).
    """
    hw = get_hardware(gpu, ram=ram) if not isinstance(gpu, Hardware) else gpu
    return estimate(PlanInput(arch=load_arch(model), method=method, **settings), hw)


_CONFIG_DTYPES = {"auto": None, "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def plan_input_from_config(cfg, arch: Arch | str | None = None) -> PlanInput:
    """A `PlanInput` from an `alignkit.config.RunConfig` (duck-typed: only its fields are read)."""
    m, d, t = cfg.model, cfg.data, cfg.train
    lora = m.lora
    seq_len, prompt_len, reference, online = d.max_length, min(d.max_prompt_length, d.max_length - 1), t.reference, {}
    if cfg.method in ONLINE:  # prompts cut to max_prompt_length, answers to max_new_tokens
        seq_len, prompt_len = d.max_prompt_length + t.max_new_tokens, d.max_prompt_length
        reference = "adapter"  # alignkit.train.ppo's only reference; it does not read train.reference
        online = dict(rollout_prompts=t.rollout_prompts, num_generations=t.num_generations,
                      reward_model=_reward_kind(t.reward_model))
    return PlanInput(
        arch=load_arch(arch if arch is not None else m.name_or_path), method=cfg.method,
        lora_r=lora.r if lora.enabled else 0, lora_targets=tuple(lora.target_modules or ()) or "all-linear",
        lora_dropout=lora.dropout, quant=m.quantization, dtype=_CONFIG_DTYPES.get(m.dtype),
        micro_batch=t.micro_batch_size, grad_accum=t.gradient_accumulation_steps, seq_len=seq_len,
        prompt_len=prompt_len, grad_ckpt=m.gradient_checkpointing,
        reference=reference, prefix_sharing=t.prefix_sharing, completion_only_logits=True,
        # the allocator policy of the environment the run starts in (see Calibration.cpu_heap_retention)
        cpu_allocator="mmap" if os.environ.get("MALLOC_MMAP_THRESHOLD_") else "glibc", **online,
    )


def _reward_kind(spec: str | None) -> str:
    """``"judge"`` for a spec `alignkit.judges.load_judge` reads as a programmatic judge (a registered
    name, ``package.module:function``), else ``"model"``: a reward run's directory, finished or not yet."""
    from alignkit.judges import registered_judges
    from alignkit.judges.function import looks_like_function_spec

    if not spec or not spec.strip():
        return "model"  # the trainer refuses a run without a reward; plan the larger case
    spec = spec.strip()
    if spec in registered_judges() or (not Path(spec).expanduser().is_dir() and looks_like_function_spec(spec)):
        return "judge"
    return "model"


def gib(nbytes: float) -> str:
    return f"{nbytes / GiB:.2f} GiB"


def plan_to_dict(plan: Plan) -> dict:
    """A JSON-ready view: settings, components (bytes and phase), peak, verdict."""
    settings = {k: v for k, v in asdict(plan.input).items() if k != "arch"}
    return {
        "model": plan.input.arch.name, "n_params": plan.input.arch.n_params, "settings": settings,
        "hardware": {"name": plan.hardware.name, "memory": plan.hardware.memory, "count": plan.hardware.count},
        "components": {n: {"bytes": b, "phase": plan.phases[n]} for n, b in plan.components.items()},
        "peak_phase": plan.peak_phase, "total": plan.total, "headroom": plan.headroom,
        "fits": plan.fits, "verdict": plan.verdict, "notes": list(plan.notes),
    }


def format_table(plan: Plan) -> str:
    """The plan as a text table (rich), one row per component, then the peak and the verdict."""
    import io

    from rich.console import Console
    from rich.table import Table

    inp = plan.input
    hw = plan.hardware
    device = f"{hw.name} ({gib(hw.memory)})" if hw.count == 1 else f"{hw.count} x {hw.name} ({gib(hw.memory)} each)"
    header = (f"{inp.method} on {inp.arch.name} ({inp.arch.n_params / 1e9:.2f}B params), {device}"
              f"{', per GPU' if hw.count > 1 else ''}\n{inp.dtype}, quant {inp.quant}, "
              f"{'LoRA r=' + str(inp.lora_r) if inp.lora_r else 'full fine-tuning'}, micro-batch {inp.micro_batch} x "
              f"{inp.seq_len} tokens, grad ckpt {'on' if inp.grad_ckpt else 'off'}, reference {inp.reference}\n")
    if inp.method in ONLINE:
        header += (f"rollouts {inp.rollout_prompts} prompts x {inp.num_generations} answers of {inp.prompt_len} + "
                   f"{inp.seq_len - inp.prompt_len} tokens, reward "
                   f"{'a reward model' if inp.reward_model == 'model' else 'a programmatic judge (no weights)'}\n")
    table = Table()
    table.add_column("component")
    table.add_column("phase")
    table.add_column("memory", justify="right")
    for name, nbytes in plan.components.items():
        phase = plan.phases[name]
        style = "dim" if phase not in ("persistent", plan.peak_phase) else None
        table.add_row(name, phase, gib(nbytes), style=style)
    table.add_section()
    table.add_row(f"peak = persistent + {plan.peak_phase}", "", gib(plan.total), style="bold")
    table.add_row(f"{plan.verdict}", "headroom", gib(plan.headroom), style="bold green" if plan.fits else "bold red")
    out = io.StringIO()
    Console(file=out, width=120, no_color=True).print(table)
    return header + out.getvalue() + "".join(f"note: {n}\n" for n in plan.notes)


def worked_examples() -> str:
    """The answers quoted in docs/PLANNER.md: ``python -m alignkit.plan.memory``."""
    qlora = dict(lora_r=16, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"), quant="4bit", grad_ckpt=True)
    plain = dict(prefix_sharing=False, completion_only_logits=False)  # separate forwards, full logits (TRL)
    lines = ["(a) 7B (Llama-2-7b shape) DPO, QLoRA r=16 on q,k,v,o, fp16, grad ckpt, T4 (15.0 GiB)",
             "    reference  forward            micro_batch x seq_len: predicted peak"]
    for ref in ("adapter", "copy"):
        for label, fwd in (("plain", plain), ("alignkit", {})):
            for mb, s in ((1, 512), (2, 1024), (4, 1024), (2, 2048), (8, 1024)):
                p = plan_from_args("7b", "dpo", gpu="t4", reference=ref, micro_batch=mb, seq_len=s, **qlora, **fwd)
                lines.append(f"    {ref:9s}  {label:17s}  {mb} x {s:4d}: {gib(p.total):>10s}  {p.verdict}")
    lines.append(format_table(plan_from_args("7b", "dpo", gpu="t4", micro_batch=2, seq_len=1024, **qlora, **plain)))
    lines.append("(b) 7B PPO on a T4: policy (QLoRA) + value head, reference = adapter off, 8 x 4 rollouts, "
                 "a reward model (4-bit) or a programmatic judge")
    for reward in ("model", "judge"):
        for mb, s in ((1, 512), (4, 512), (4, 1024), (8, 1024)):
            p = plan_from_args("7b", "ppo", gpu="t4", reward_model=reward, micro_batch=mb, seq_len=s, **qlora, **plain)
            lines.append(f"    reward {reward:5s} {mb} x {s:4d}: {gib(p.total):>10s}  {p.verdict}")
    lines.append(format_table(plan_from_args("7b", "ppo", gpu="t4", micro_batch=4, seq_len=512, **qlora, **plain)))
    return "\n".join(lines)


if __name__ == "__main__":
    print(worked_examples())
