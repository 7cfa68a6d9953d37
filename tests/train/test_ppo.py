"""PPO, RLOO and GRPO end to end on a tiny random model with SmolLM2's tokenizer and chat template.

The policy is a random 2-layer model over a ~50-word vocabulary with SmolLM2's chat template
(`tinymodels.save_small_vocab_checkpoint`) and the reward a known function (`tinymodels.word_share_reward`:
the share of one word in the answer), so learning is visible in ten steps. Checked: at step 0 the policy is the reference (KL exactly 0:
LoRA B starts at 0) and the first minibatch's ratio is 1 with no clipping; the mean reward rises
while the adaptive KL coefficient holds the KL near its target; a resumed run equals an uninterrupted
one; bad input stops before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tinymodels import save_small_vocab_checkpoint

from alignkit.config import RunConfig
from alignkit.errors import UserError
from alignkit.train.run import train

ROOT = Path(__file__).resolve().parents[2]
REWARD = "tinymodels:word_share_reward"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_small_vocab_checkpoint(tmp_path_factory.mktemp("tiny-ppo"))


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    rows = [json.loads(x) for x in (ROOT / "examples/task_api/data/probes.jsonl").read_text().splitlines()[:24]]
    out.write_text("".join(json.dumps({"prompt": r["prompt"], "category": r["category"]}) + "\n" for r in rows))
    return out


def _cfg(tmp: Path, ckpt: Path, prompts: Path, name: str, method: str = "ppo", **train_kw) -> RunConfig:
    t = dict(learning_rate=3e-3, micro_batch_size=8, max_steps=2, warmup_ratio=0.0, lr_scheduler="constant",
             reward_model=REWARD, rollout_prompts=4, num_generations=4,
             max_new_tokens=12, temperature=1.0, ppo_epochs=2, num_minibatches=2, kl_coef=0.05)
    t.update(train_kw)
    return RunConfig.model_validate({
        "method": method, "output_dir": str(tmp / name),
        "model": {"name_or_path": str(ckpt), "lora": {"r": 8, "alpha": 16}},
        "data": {"train": str(prompts), "eval": None, "max_length": 128, "max_prompt_length": 96,
                 "system_prompt_file": None},
        "train": t, "eval": {"enabled": False}})


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]


@pytest.mark.parametrize("method", ["ppo", "rloo", "grpo"])
def test_step_zero_policy_is_the_reference_and_ratio_is_one(tmp_path, tiny_ckpt, prompts_file, method):
    run = train(_cfg(tmp_path, tiny_ckpt, prompts_file, method, method, max_steps=1, ppo_epochs=1,
                     num_minibatches=1), console=lambda *_: None)
    row = _log(run)[0]
    assert row["kl"] == 0.0  # LoRA B = 0: the policy is exactly the adapter-off reference
    assert row["ratio"] == pytest.approx(1.0, abs=1e-5)
    assert row["ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert row["clipfrac"] == 0.0
    assert 0 < row["response_length"] <= 12 and 0 <= row["eos_rate"] <= 1
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and (run / "final" / "adapter_config.json").is_file()
    assert (run / "final" / "value_head.safetensors").is_file() == (method == "ppo")


def test_under_bf16_old_log_probs_are_scored_at_the_updates_precision(tmp_path, tiny_ckpt, prompts_file):
    """bf16 autocast: rollouts decode from a bf16 copy, old and reference log-probs are scored under
    the same autocast as the update's forward, so step 1 still has KL 0, ratio 1 and no clipping."""
    run = train(_cfg(tmp_path, tiny_ckpt, prompts_file, "bf16", "ppo", max_steps=1, ppo_epochs=1,
                     num_minibatches=1, mixed_precision="bf16"), console=lambda *_: None)
    row = _log(run)[0]
    assert json.loads((run / "run.json").read_text())["mixed_precision"] == "bf16"
    assert row["kl"] == 0.0
    assert row["ratio"] == pytest.approx(1.0, abs=1e-5) and row["clipfrac"] == 0.0


@pytest.mark.parametrize("method", ["ppo", "rloo", "grpo"])
def test_online_rl_raises_a_known_reward(tmp_path, tiny_ckpt, prompts_file, method):
    run = train(_cfg(tmp_path, tiny_ckpt, prompts_file, method, method, max_steps=10, kl_coef=0.02),
                console=lambda *_: None)
    scores = [r["score"] for r in _log(run)]
    assert sum(scores[-3:]) / 3 > scores[0] + 0.05, scores  # measured: ~0.07 -> ~0.18


def test_adaptive_kl_coefficient_follows_the_kl_error(tmp_path, tiny_ckpt, prompts_file):
    """Ziegler et al.'s controller: after each step the coefficient rises when that step's KL was above
    the target and falls when below (by at most 20% x answers / horizon)."""
    target = 0.5
    run = train(_cfg(tmp_path, tiny_ckpt, prompts_file, "akl", max_steps=6, kl_coef=0.05, kl_target=target,
                     kl_horizon=64), console=lambda *_: None)
    log = _log(run)
    prev = 0.05
    for row in log:
        change = row["kl_coef"] - prev
        assert (change > 0) == (row["kl"] > target), (row["kl"], prev, row["kl_coef"])
        assert abs(change) <= prev * 0.2 * 16 / 64 + 1e-12
        prev = row["kl_coef"]
    assert any(r["kl"] > target for r in log) and any(r["kl"] < target for r in log)


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_resume_equals_uninterrupted(tmp_path, tiny_ckpt, prompts_file, method):
    from safetensors.torch import load_file

    kw = dict(max_steps=4, save_every=2, kl_target=0.5, kl_horizon=32)
    full = train(_cfg(tmp_path, tiny_ckpt, prompts_file, "full", method, **kw), console=lambda *_: None)

    def crash_at_3(step, total, row):
        if step == 3:
            raise KeyboardInterrupt("simulated crash after the step-2 checkpoint")

    cfg = _cfg(tmp_path, tiny_ckpt, prompts_file, "cut", method, **kw)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, console=lambda *_: None, progress=crash_at_3)
    resumed = train(cfg, resume=True, console=lambda *_: None)
    a, b = load_file(full / "final/adapter_model.safetensors"), load_file(resumed / "final/adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    la, lb = _log(full), _log(resumed)
    assert [r["step"] for r in lb] == [1, 2, 3, 4]
    for ra, rb in zip(la, lb, strict=True):
        for key in ("score", "kl", "kl_coef", "policy_loss", "response_length"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), key


def test_bad_input_is_refused_before_anything_is_written(tmp_path, tiny_ckpt, prompts_file):
    cases = [
        ({"reward_model": None}, "train.reward_model"),
        ({"reward_model": "no_such_module_xyz:f"}, "train.reward_model"),
        ({"reward_model": str(tmp_path)}, "train.reward_model"),  # a directory that is no reward run
    ]
    for i, (kw, field) in enumerate(cases):
        cfg = _cfg(tmp_path, tiny_ckpt, prompts_file, f"bad{i}", **kw)
        with pytest.raises(UserError) as e:
            train(cfg, console=lambda *_: None)
        assert field in str(e.value), str(e.value)
        assert not Path(cfg.output_dir).exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = _cfg(tmp_path, tiny_ckpt, empty, "bad-empty")
    with pytest.raises(UserError, match="empty"):
        train(cfg, console=lambda *_: None)
    assert not Path(cfg.output_dir).exists()
    cfg = _cfg(tmp_path, tiny_ckpt, prompts_file, "bad-k", method="rloo", num_generations=1)
    with pytest.raises(UserError, match="num_generations"):
        train(cfg, console=lambda *_: None)


def test_a_reward_model_with_another_tokenizer_is_refused(tiny_ckpt):
    from transformers import AutoTokenizer

    from alignkit.judges.reward_model import RewardModelJudge

    judge = RewardModelJudge.__new__(RewardModelJudge)  # the check alone, without loading a model
    judge.run = Path("runs/rm")
    judge.tokenizer = AutoTokenizer.from_pretrained(tiny_ckpt)
    other = AutoTokenizer.from_pretrained(tiny_ckpt)
    other.add_tokens(["<brand-new-token>"])
    judge.check_tokenizer(AutoTokenizer.from_pretrained(tiny_ckpt), "config field train.reward_model")
    with pytest.raises(UserError, match="different tokenizer"):
        judge.check_tokenizer(other, "config field train.reward_model")
