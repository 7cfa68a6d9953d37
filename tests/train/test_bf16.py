"""bf16 autocast on CPU: what `train.mixed_precision: auto` picks, and that it trains like fp32.

Checked: `auto` is bf16 exactly where the CPU multiplies bf16 natively (detection overridable with
ALIGNKIT_CPU_BF16), fp16 on a CPU is refused; a DPO run under bf16 autocast follows the fp32 run's
loss curve within a stated tolerance while its trainable weights stay fp32; a precomputed reference
is computed under the run's autocast, so the step-0 margins are exactly 0 as with the live one; PPO
under bf16 scores its old log-probs at the update's precision (KL 0 and clip fraction 0 at step 1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tinymodels import dpo_config

from alignkit.config import RunConfig
from alignkit.errors import UserError
from alignkit.models import cpu_has_bf16, resolve_mixed_precision
from alignkit.train.run import train

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp: Path, ckpt: Path, data: Path, name: str, mp: str, **train) -> RunConfig:
    return dpo_config(tmp, ckpt, data, name, **{"gradient_accumulation_steps": 1, "max_steps": 8,
                                                "mixed_precision": mp, **train})


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]


def test_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CPU_BF16", "1")
    assert cpu_has_bf16() and resolve_mixed_precision("auto", "cpu") == "bf16"
    monkeypatch.setenv("ALIGNKIT_CPU_BF16", "0")
    assert not cpu_has_bf16() and resolve_mixed_precision("auto", "cpu") == "no"
    assert resolve_mixed_precision("bf16", "cpu") == "bf16"  # asked by name: emulated where not native
    assert resolve_mixed_precision("no", "cpu") == "no"
    with pytest.raises(UserError, match="train.mixed_precision"):
        resolve_mixed_precision("fp16", "cpu")
    monkeypatch.delenv("ALIGNKIT_CPU_BF16")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert cpu_has_bf16() == native


def test_bf16_follows_the_fp32_loss_curve(tmp_path, tiny_ckpt, pairs_file):
    """12 DPO steps at lr 1e-2 on the same batches: every step's loss within 0.005 of fp32's and the
    margins within 0.02 (measured: <= 0.0006 and 0.001; bf16 keeps 8 mantissa bits, ~0.4% per matmul
    output, and the loss reads differences of log-probs). Both start at exactly log 2 (policy and
    reference run at one precision) and both learn: the last 4 steps' mean loss is below log 2 - 0.02."""
    quiet = dict(console=lambda *_: None)
    a = train(_cfg(tmp_path, tiny_ckpt, pairs_file, "fp32", "no", max_steps=12), **quiet)
    b = train(_cfg(tmp_path, tiny_ckpt, pairs_file, "bf16", "bf16", max_steps=12), **quiet)
    la, lb = _log(a), _log(b)
    assert len(la) == len(lb) == 12
    assert la[0]["loss"] == pytest.approx(0.6931, abs=1e-4) and lb[0]["loss"] == pytest.approx(0.6931, abs=1e-4)
    for ra, rb in zip(la, lb, strict=True):
        assert abs(ra["loss"] - rb["loss"]) < 0.005, (ra["step"], ra["loss"], rb["loss"])
        assert abs(ra["rewards/margins"] - rb["rewards/margins"]) < 0.02
    for log in (la, lb):
        assert sum(r["loss"] for r in log[-4:]) / 4 < 0.6931 - 0.02
    assert json.loads((b / "run.json").read_text())["mixed_precision"] == "bf16"
    assert json.loads((a / "run.json").read_text())["mixed_precision"] == "no"
    weights = load_file(b / "final" / "adapter_model.safetensors")
    assert weights and all(w.dtype == torch.float32 for w in weights.values())  # master weights stay fp32


def test_precomputed_reference_is_computed_under_the_runs_autocast(tmp_path, tiny_ckpt, pairs_file, monkeypatch):
    """Full fine-tuning with a precomputed table under bf16: at step 0 the policy is the reference, so
    its margins are exactly 0 only if the table was computed at the policy's precision."""
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(tmp_path, tiny_ckpt, pairs_file, "full", "bf16", max_steps=1, learning_rate=1e-5,
               reference="precomputed")
    cfg.model.lora.enabled = False
    run = train(cfg, console=lambda *_: None)
    row = _log(run)[0]
    assert row["rewards/chosen"] == 0.0 and row["rewards/rejected"] == 0.0
    assert row["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_eval_decode_dtype(monkeypatch):
    """`eval.decode_dtype`: float32 decodes the model as it is (the default: answers are what is
    exported), bfloat16 a bf16 copy, auto bf16 only where the hardware has it; the evaluation hands
    it to the sampler."""
    from alignkit.config import RunConfig
    from alignkit.eval import runner
    from alignkit.models import resolve_decode_dtype

    assert RunConfig().eval.decode_dtype == "float32"
    assert resolve_decode_dtype("float32", "cpu") is None
    assert resolve_decode_dtype("bfloat16", "cpu") is torch.bfloat16
    monkeypatch.setenv("ALIGNKIT_CPU_BF16", "1")
    assert resolve_decode_dtype("auto", "cpu") is torch.bfloat16
    monkeypatch.setenv("ALIGNKIT_CPU_BF16", "0")
    assert resolve_decode_dtype("auto", "cpu") is None
    seen = []

    def fake_generate(model, tokenizer, convs, **kw):
        seen.append(kw["decode_dtype"])
        return ["ok"] * len(convs)

    monkeypatch.setattr(runner, "generate", fake_generate)
    probes = [{"messages": [{"role": "user", "content": "hi"}], "category": "benign", "prompt": "hi"}]
    model = torch.nn.Linear(2, 2)
    for name, want in (("float32", None), ("bfloat16", torch.bfloat16)):
        ecfg = RunConfig.model_validate({"eval": {"decode_dtype": name}}).eval
        runner._gen_metrics(model, None, probes, ecfg)
        assert seen[-1] is want
