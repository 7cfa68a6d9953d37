"""The memory model: component formulas on hand-checked cases, phases, reference strategies, errors."""

from __future__ import annotations

import json

import pytest

from alignkit.errors import UserError
from alignkit.plan.architectures import load_arch, lora_params
from alignkit.plan.hardware import GiB, get_hardware
from alignkit.plan.memory import (
    CALIBRATION,
    PlanInput,
    estimate,
    format_table,
    plan_from_args,
    plan_input_from_config,
    plan_to_dict,
)

A100 = get_hardware("a100-80gb")
SMOL = load_arch("smollm2-135m")


def test_adamw_is_8_bytes_per_trainable_param_and_lora_in_fp32():
    p = estimate(PlanInput(SMOL, "sft", lora_r=8, lora_targets=("q_proj", "v_proj")), A100)
    n = lora_params(SMOL, 8, ("q_proj", "v_proj"))  # 30 * 8 * ((576+576) + (576+192)) = 460,800
    assert n == 460_800
    assert p.components["optimizer states (adamw)"] == 8 * n
    assert p.components["LoRA adapters (fp32)"] == 4 * n
    assert p.components["gradients (fp32)"] == 4 * n
    p8 = estimate(PlanInput(SMOL, "sft", lora_r=8, lora_targets=("q_proj", "v_proj"), optimizer="adamw8bit"), A100)
    assert p8.components["optimizer states (adamw8bit)"] == pytest.approx(2 * n, rel=0.01)


def test_full_finetuning_mixed_precision_is_18_bytes_per_param():
    """bf16 working weights 2 + fp32 master 4 + fp32 gradients 4 + AdamW m, v 8 = 18 bytes/param."""
    p = estimate(PlanInput(SMOL, "sft", lora_r=0, dtype="bf16"), A100)
    per_param = sum(p.components[k] for k in ("policy weights", "master weights (fp32)", "gradients",
                                               "optimizer states (adamw)")) / SMOL.n_params
    assert per_param == pytest.approx(18)
    p32 = estimate(PlanInput(SMOL, "sft", lora_r=0, dtype="fp32"), A100)
    assert "master weights (fp32)" not in p32.components  # fp32 weights are their own master: 16 bytes
    assert p32.components["gradients"] == 4 * SMOL.n_params


def test_total_is_persistent_plus_largest_transient_phase():
    p = estimate(PlanInput(SMOL, "dpo", lora_r=0, reference="copy"), A100)
    persistent = sum(b for n, b in p.components.items() if p.phases[n] == "persistent")
    assert p.total == persistent + max(p.phase_total(ph) for ph in ("train", "nograd", "generate"))
    assert p.components["reference weights"] == 2 * SMOL.n_params  # a bf16 copy


def test_reference_strategies():
    def ref_total(ref, lora_r=16):
        return estimate(PlanInput(SMOL, "dpo", lora_r=lora_r, reference=ref), A100)

    adapter, copy, pre = ref_total("adapter"), ref_total("copy"), ref_total("precomputed")
    assert copy.total - adapter.total == pytest.approx(2 * SMOL.n_params, rel=1e-6)
    assert "reference forward (no grad)" not in pre.components
    assert ref_total("auto").input.reference == "adapter"
    assert ref_total("auto", lora_r=0).input.reference == "precomputed"  # alignkit.config's `auto` rule
    with pytest.raises(UserError, match="needs LoRA"):
        ref_total("adapter", lora_r=0)


def test_methods_without_reference_and_reward_head():
    simpo = estimate(PlanInput(SMOL, "simpo", reference="copy"), A100)
    assert simpo.input.reference == "none" and "reference weights" not in simpo.components
    reward = estimate(PlanInput(SMOL, "reward"), A100)
    assert "logits" not in reward.components  # a scalar head: no vocabulary-sized output
    kto = estimate(PlanInput(SMOL, "kto"), A100)
    assert kto.notes and "reference forward (no grad)" in kto.components


def test_ppo_holds_policy_value_head_reward_model_and_a_rollout_kv_cache():
    """As alignkit.train.ppo builds it: one policy (the reference is its adapter switched off), a value
    head on it, a frozen reward model, and the KV cache of all rollout_prompts x num_generations rows."""
    p = plan_from_args("7b", "ppo", gpu="t4", quant="4bit", micro_batch=4, seq_len=512)
    for name in ("policy weights", "value head (fp32)", "reward model weights", "generation KV cache"):
        assert name in p.components
    assert "value model weights" not in p.components and "reference weights" not in p.components
    arch = load_arch("7b")  # 2 (k, v) x 32 layers x 4096 x fp16 x (8 x 4 rollouts) x 512
    assert p.components["generation KV cache"] == 2 * arch.layers * arch.kv_dim * 2 * 32 * 512
    with pytest.raises(UserError, match="online"):
        plan_from_args("7b", "ppo", gpu="t4", quant="4bit", reference="precomputed")


def test_checkpointing_prefix_sharing_and_completion_logits_reduce_memory():
    base = dict(lora_r=16, micro_batch=4, seq_len=1024, prompt_len=512)
    plain = estimate(PlanInput(SMOL, "dpo", prefix_sharing=False, completion_only_logits=False, **base), A100)
    ckpt = estimate(PlanInput(SMOL, "dpo", prefix_sharing=False, completion_only_logits=False, grad_ckpt=True,
                              **base), A100)
    shared = estimate(PlanInput(SMOL, "dpo", prefix_sharing=True, completion_only_logits=False, **base), A100)
    assert ckpt.components["activations (checkpointed)"] < plain.components["activations"] / 5
    assert shared.components["activations"] < plain.components["activations"]  # 1536 vs 2 x 1024 tokens
    # full logits: 8 sequences x 1024 positions x 49152 x 12 bytes; chunked: one 1024-position chunk
    assert plain.components["logits"] == 8 * 1024 * 49152 * CALIBRATION.logit_bytes_train
    chunked = estimate(PlanInput(SMOL, "dpo", **base), A100)
    assert chunked.components["logits"] == CALIBRATION.logit_chunk_tokens * 49152 * 16


def test_cpu_uses_fp32_and_the_measured_baseline():
    p = plan_from_args("default", "dpo", gpu="cpu", ram="16gb")
    assert p.input.dtype == "fp32" and p.components["Python + torch baseline"] == CALIBRATION.cpu_baseline
    with pytest.raises(UserError, match="CUDA"):
        plan_from_args("default", "dpo", gpu="cpu", quant="4bit")


def test_user_errors_name_the_field():
    with pytest.raises(UserError, match="bf16"):
        plan_from_args("7b", "dpo", gpu="t4", dtype="bf16")
    with pytest.raises(UserError) as exc:
        PlanInput(SMOL, method="dop")
    assert exc.value.where == "plan input method"
    with pytest.raises(UserError, match="not modules"):
        estimate(PlanInput(load_arch("phi-3-mini"), "dpo", lora_targets=("q_proj",)), A100)


def test_worked_example_numbers_are_pinned():
    """docs/PLANNER.md quotes these; a formula change must update the doc."""
    qlora = dict(lora_r=16, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"), quant="4bit", grad_ckpt=True,
                 prefix_sharing=False, completion_only_logits=False)
    dpo = plan_from_args("7b", "dpo", gpu="t4", micro_batch=2, seq_len=1024, **qlora)
    assert dpo.total / GiB == pytest.approx(8.31, abs=0.01) and dpo.fits
    ppo = plan_from_args("7b", "ppo", gpu="t4", micro_batch=4, seq_len=512, **qlora)
    assert ppo.total / GiB == pytest.approx(20.48, abs=0.01) and not ppo.fits  # the online loop never checkpoints
    judge = plan_from_args("7b", "ppo", gpu="t4", micro_batch=1, seq_len=512, reward_model="judge", **qlora)
    assert judge.total / GiB == pytest.approx(13.18, abs=0.01) and judge.fits


def test_table_and_json():
    p = plan_from_args("7b", "dpo", gpu="t4", quant="4bit")
    text = format_table(p)
    assert "policy weights" in text and p.verdict in text
    d = json.loads(json.dumps(plan_to_dict(p)))
    assert d["total"] == p.total and d["components"]["policy weights"]["phase"] == "persistent"


def test_plan_from_run_config():
    config = pytest.importorskip("alignkit.config")
    cfg = config.RunConfig.model_validate({"model": {"quantization": "4bit", "gradient_checkpointing": True}})
    inp = plan_input_from_config(cfg, arch="7b")
    assert inp.quant == "4bit" and inp.seq_len == cfg.data.max_length and inp.micro_batch == cfg.train.micro_batch_size
    assert estimate(inp, "t4").fits
