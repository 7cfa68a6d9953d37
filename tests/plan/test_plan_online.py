"""The planner for `reward`, `ppo`, `rloo` and `grpo` as alignkit builds them: which components each
plan holds, the online terms' formulas, configs read the way the trainer reads them, and the CLI."""

from __future__ import annotations

import pytest

from alignkit.errors import UserError
from alignkit.plan.architectures import load_arch, lora_params, weight_bytes
from alignkit.plan.hardware import get_hardware
from alignkit.plan.memory import CALIBRATION, PlanInput, estimate, plan_input_from_config

SMOL = load_arch("smollm2-135m")
CPU, GPU = get_hardware("cpu", ram="64gb"), get_hardware("a100-80gb")
COMMON = {"policy weights", "LoRA adapters (fp32)", "gradients (fp32)", "optimizer states (adamw)",
          "Python + torch baseline", "activations", "freed activations kept in the heap (glibc)"}
ONLINE_TERMS = {"logits", "generation KV cache", "generation forward (no grad)", "scoring forwards (no grad)"}


def _plan(method, hw=CPU, **kw):
    kw = {"micro_batch": 8, "seq_len": 208, "prompt_len": 160, **kw}  # the Task API examples: 160 + 48
    return estimate(PlanInput(SMOL, method, **kw), hw)


def test_reward_is_one_scalar_head_model_without_reference_or_lm_head_logits():
    p = _plan("reward", seq_len=256)
    assert set(p.components) == COMMON  # no reference weights or forward, no logits, no rollouts
    assert p.input.reference == "none"
    n = lora_params(SMOL, 16, SMOL.lora_targets()) + SMOL.hidden  # + the trained score head
    assert p.components["gradients (fp32)"] == 4 * n
    assert p.components["policy weights"] == weight_bytes(SMOL, "none", 4, scalar_head=True)
    # pairs like DPO: one prefix-shared row of 2s - p tokens per pair, and the same saved activations
    dpo = _plan("dpo", seq_len=256)
    assert p.components["activations"] == dpo.components["activations"]


def test_ppo_with_a_programmatic_judge_has_no_reward_model_weights():
    p = _plan("ppo", reward_model="judge")
    assert set(p.components) == COMMON | ONLINE_TERMS | {"value head (fp32)"}
    assert p.input.reference == "adapter"  # the policy with its adapter switched off: no copy, no forward of its own
    assert p.components["value head (fp32)"] == 4 * (SMOL.hidden + 1)
    n = lora_params(SMOL, 16, SMOL.lora_targets())
    assert p.components["LoRA adapters (fp32)"] == 4 * n
    assert p.components["gradients (fp32)"] == 4 * (n + SMOL.hidden + 1)  # the value head trains too


def test_ppo_with_a_reward_run_holds_a_frozen_copy_of_the_base():
    judge, model = _plan("ppo", reward_model="judge"), _plan("ppo", reward_model="model")
    rm = weight_bytes(SMOL, "none", 4, scalar_head=True)  # fp32, unquantized, on the CPU: as the judge loads it
    assert model.components["reward model weights"] == rm
    assert model.total - judge.total == rm
    on_gpu = _plan("ppo", GPU, reward_model="model")
    assert on_gpu.components["reward model weights"] == weight_bytes(SMOL, "none", 2, scalar_head=True)
    assert any("host RAM" in n for n in on_gpu.notes)


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_rloo_and_grpo_are_ppo_without_the_value_head(method):
    p = _plan(method, reward_model="judge")
    assert set(p.components) == COMMON | ONLINE_TERMS
    ppo = _plan("ppo", GPU, reward_model="judge")
    # value head weights 4 + gradients 4 + AdamW 8 bytes per parameter (on a GPU: no heap reuse term)
    assert ppo.total - _plan(method, GPU, reward_model="judge").total == 16 * (SMOL.hidden + 1)


def test_online_terms_follow_the_rollout_and_the_update_shapes():
    p = _plan("grpo", micro_batch=32, seq_len=224, prompt_len=160, rollout_prompts=4, num_generations=4)
    # all 16 rollouts in one batch: keys and values of 30 layers x 192 wide, fp32, 224 positions each
    assert p.components["generation KV cache"] == 2 * 30 * 192 * 4 * 16 * 224
    # the update's LM head on every completion position at once (32 x 64 > one 1024-position chunk)
    assert p.components["logits"] == 32 * 64 * SMOL.vocab * CALIBRATION.logit_bytes_train
    bigger = _plan("grpo", micro_batch=32, seq_len=224, prompt_len=160, rollout_prompts=8, num_generations=4)
    assert bigger.components["generation KV cache"] == 2 * p.components["generation KV cache"]
    assert bigger.components["activations"] == p.components["activations"]  # the update does not grow


def test_online_methods_need_lora_take_the_adapter_reference_and_never_checkpoint():
    for ref in ("copy", "precomputed", "none"):
        with pytest.raises(UserError, match="online"):
            _plan("ppo", reference=ref)
    with pytest.raises(UserError, match="needs LoRA"):
        _plan("rloo", lora_r=0)
    plain, ckpt = _plan("ppo"), _plan("ppo", grad_ckpt=True)
    assert ckpt.total == plain.total and "activations" in ckpt.components
    assert any("checkpoint" in n for n in ckpt.notes)
    with pytest.raises(UserError):
        PlanInput(SMOL, "grpo", reward_model="gold")


def test_online_config_is_read_as_the_trainer_reads_it(tmp_path):
    config = pytest.importorskip("alignkit.config")

    def inp(**train):
        cfg = config.RunConfig.model_validate({
            "method": train.pop("method", "ppo"), "data": {"max_length": 384, "max_prompt_length": 160},
            "train": {"rollout_prompts": 4, "num_generations": 4, "max_new_tokens": 48, "micro_batch_size": 8,
                      **train}})
        return plan_input_from_config(cfg, arch="default")

    p = inp(reward_model="task_api", reference="copy")
    assert (p.seq_len, p.prompt_len) == (208, 160)  # prompt cut to max_prompt_length, + max_new_tokens
    assert (p.rollout_prompts, p.num_generations, p.micro_batch) == (4, 4, 8)
    assert p.reward_model == "judge" and p.reference == "adapter"  # train.reference is not read online
    assert inp(reward_model="tinymodels:word_share_reward").reward_model == "judge"
    assert inp(reward_model="runs/reward-not-trained-yet").reward_model == "model"
    assert inp(reward_model=str(tmp_path)).reward_model == "model"
    rloo = estimate(inp(method="rloo", reward_model="task_api"), CPU)
    assert "value head (fp32)" not in rloo.components and "reward model weights" not in rloo.components
    reward = config.RunConfig.model_validate({"method": "reward"})
    r = plan_input_from_config(reward, arch="default")
    assert r.seq_len == reward.data.max_length and "logits" not in estimate(r, CPU).components


@pytest.mark.parametrize("method", ["reward", "ppo", "rloo", "grpo"])
def test_cli_plans_the_new_methods(method, capsys):
    from alignkit.cli import main

    assert main(["plan", "--method", method, "--model", "default", "--gpu", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"{method} on HuggingFaceTB/SmolLM2-135M-Instruct" in out and "peak = persistent" in out
    assert ("generation KV cache" in out) == (method != "reward")
    assert ("value head" in out) == (method == "ppo")
