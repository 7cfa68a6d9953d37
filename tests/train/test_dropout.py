"""Dropout is off for the methods that compare log-probs of the same weights (policy vs reference):
two training-mode forwards agree exactly, and a DPO run's first step sees policy == reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tinymodels import save_tiny_checkpoint

from alignkit.data.collate import collate_pairs
from alignkit.logprobs import completion_logps
from alignkit.models import disable_dropout

PAIRS = [type("P", (), dict(prompt_ids=[5, 9, 17, 33, 4], chosen_ids=[40, 41, 2], rejected_ids=[50, 7, 8, 2]))()]


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.1,
                     embd_pdrop=0.1, attn_pdrop=0.1, pad_token_id=0, eos_token_id=2)
    cfg._attn_implementation = "eager"
    return GPT2LMHeadModel(cfg)


def _two_forwards(model):
    model.train()  # the training setting: train mode, gradients on
    batch = collate_pairs(PAIRS, 0)
    a, _ = completion_logps(model, batch)
    b, _ = completion_logps(model, batch)
    assert a.requires_grad
    return a.detach(), b.detach()


def test_gpt2_with_dropout_gives_identical_logps_in_train_mode_once_disabled():
    model = _gpt2()
    a, b = _two_forwards(model)
    assert (a - b).abs().max() > 1e-3  # dropout on: the two forwards differ at random
    assert disable_dropout(model) > 0
    a, b = _two_forwards(model)
    assert torch.equal(a, b)
    assert model.config.resid_pdrop == model.config.attn_pdrop == model.config.embd_pdrop == 0.0


def test_attention_dropout_rate_of_llama_style_attention_is_zeroed():
    from tinymodels import tiny_llama

    model = tiny_llama(attn="eager", attention_dropout=0.5)  # a float the attention reads in train mode
    a, b = _two_forwards(model)
    assert (a - b).abs().max() > 1e-3
    disable_dropout(model)
    a, b = _two_forwards(model)
    assert torch.equal(a, b)
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in model.modules())


@pytest.fixture(scope="module")
def dropout_ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("drop"), attention_dropout=0.5, attn_implementation="eager")


def test_dpo_run_first_step_has_policy_equal_reference(tmp_path, dropout_ckpt):
    """LoRA starts at B = 0, so at step 1 the policy is the reference: every reward is exactly 0,
    unless dropout draws different masks for the policy and the adapter-off reference forward."""
    from alignkit.config import RunConfig
    from alignkit.train.run import train

    root = Path(__file__).resolve().parents[2]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join((root / "examples/task_api/data/train.jsonl").read_text().splitlines()[:4]) + "\n")
    cfg = RunConfig.model_validate({
        "method": "dpo", "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(dropout_ckpt), "attn_implementation": "eager", "lora": {"r": 4, "alpha": 8}},
        "data": {"train": str(data), "eval": None, "eval_fraction": 0.0, "max_length": 96, "max_prompt_length": 64},
        "train": dict(micro_batch_size=4, gradient_accumulation_steps=1, max_steps=1, warmup_ratio=0.0,
                      lr_scheduler="constant"),
        "eval": {"enabled": False}})
    run = train(cfg, console=lambda *a: None)
    row = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert row["rewards/chosen"] == 0.0 and row["rewards/rejected"] == 0.0
