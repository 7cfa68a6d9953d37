"""`alignkit diagnose` on real (tiny) runs, trained and evaluated by the real pipeline.

- A run trained only on refusal pairs with a low beta refuses benign probes: diagnosed as
  over-refusal, citing the measured over-refusal rate and the data's refusal share.
- A run whose learning rate is effectively zero (the config refuses exactly 0) is diagnosed as not
  learning.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tinymodels import save_tiny_checkpoint

from alignkit.config import RunConfig
from alignkit.eval.diagnose import diagnose
from alignkit.eval.runner import evaluate_run
from alignkit.train.run import train

ROOT = Path(__file__).resolve().parents[2]
REFUSAL = "I can't help with that request."


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny Llama with SmolLM2's tokenizer (see conftest.save_tiny_checkpoint)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), hidden_size=32, intermediate_size=64)


def _rows(n: int, refusal_only: bool) -> list[dict]:
    src = [json.loads(x) for x in (ROOT / "examples/task_api/data/train.jsonl").read_text().splitlines()[:n]]
    if refusal_only:  # every chosen answer refuses, whatever the request: the classic over-refusal recipe
        return [{"prompt": r["prompt"], "chosen": REFUSAL,
                 "rejected": r["chosen"] if r["category"] != "harmful" else r["rejected"]} for r in src]
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in src]


def _cfg(tmp: Path, ckpt: Path, data: Path, probes: Path, name: str, **train) -> RunConfig:
    t = dict(beta=0.1, learning_rate=5e-3, micro_batch_size=8, gradient_accumulation_steps=1, max_steps=40,
             warmup_ratio=0.0, lr_scheduler="constant")
    t.update(train)
    return RunConfig.model_validate({
        "method": "dpo", "output_dir": str(tmp / name),
        "model": {"name_or_path": str(ckpt), "lora": {"enabled": False}},
        "data": {"train": str(data), "eval": str(data), "system_prompt_file": None, "max_length": 96,
                 "max_prompt_length": 64},
        "train": t,
        "eval": {"probes": str(probes), "max_new_tokens": 12, "kl_samples": 0, "task": "task_api"}})


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> Path:
    rows = [json.loads(x) for x in (ROOT / "examples/task_api/data/probes.jsonl").read_text().splitlines()]
    picked: list[dict] = []
    for c in ("harmful", "benign", "alarming"):
        picked += [r for r in rows if r["category"] == c][:4]
    return _write(tmp_path_factory.mktemp("probes") / "probes.jsonl", [{"prompt": r["prompt"], "category": r["category"]} for r in picked])


@pytest.mark.slow
def test_refusal_only_low_beta_run_is_diagnosed_as_over_refusal(tmp_path, tiny_ckpt, probes):
    data = _write(tmp_path / "refusals.jsonl", _rows(32, refusal_only=True))
    run = train(_cfg(tmp_path, tiny_ckpt, data, probes, "overrefuse", beta=0.01), console=lambda *_: None)
    metrics = evaluate_run(run, console=lambda *_: None)
    assert metrics["after"]["over_refusal/benign"] >= 0.75  # the model now refuses benign requests
    found = {f.name: f for f in diagnose(run)}
    assert "over_refusal" in found
    evidence = found["over_refusal"].evidence
    assert f"{metrics['after']['over_refusal/benign']:.0%}" in evidence or "over_refusal/benign" in evidence
    assert "100.0% of chosen answers" in evidence  # the data's refusal share: every chosen answer refuses
    assert found["over_refusal"].numbers["chosen_refusal_share"] == 1.0
    assert any("beta" in fix for fix in found["over_refusal"].fixes)


def test_learning_rate_near_zero_is_diagnosed_as_no_learning(tmp_path, tiny_ckpt, probes):
    data = _write(tmp_path / "pairs.jsonl", _rows(16, refusal_only=False))
    cfg = _cfg(tmp_path, tiny_ckpt, data, probes, "frozen", learning_rate=1e-12, max_steps=4)
    cfg.eval.enabled = False
    run = train(cfg, console=lambda *_: None)
    found = {f.name: f for f in diagnose(run)}
    assert "no_learning" in found
    assert "0.693" in found["no_learning"].evidence
    assert any("learning" in fix.lower() for fix in found["no_learning"].fixes)
