"""End to end on the embedded SmolLM2-135M-Instruct (the real model, CPU): a few seconds of training,
then the same numbers from the run's own report and from a separate `alignkit eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_default_model_is_a_plain_trainable_checkpoint():
    from alignkit.models import count_parameters, default_model_dir, load_model

    path = default_model_dir()
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    model = load_model("default")
    trainable, total = count_parameters(model)
    assert trainable == total and 134_000_000 < total < 136_000_000
    assert model.dtype.is_floating_point and str(model.dtype) == "torch.float32"


def test_train_report_and_separate_eval_agree(tmp_path):
    run = tmp_path / "run"
    small = ["data.max_rows=8", "data.max_eval_rows=8", "train.max_steps=1", "train.micro_batch_size=4",
             "train.gradient_accumulation_steps=2", "eval.max_probes=6", "eval.max_new_tokens=12",
             "eval.kl_samples=0", f"output_dir={run}"]
    assert main(["train", str(ROOT / "examples/task_api/dpo.yaml"), *small]) == 0
    for name in ("config.yaml", "run.json", "log.jsonl", "metrics.json", "report.md", "report.html"):
        assert (run / name).is_file(), name
    assert (run / "final" / "adapter_model.safetensors").is_file()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["peak_memory_mb"] > 0 and info["predicted_memory_mb"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    out = tmp_path / "separate"
    code = main(["eval", "--model", "default", "--adapter", str(run / "final"),
                 "--data", str(_head(ROOT / "examples/task_api/data/eval.jsonl", 8, tmp_path / "eval.jsonl")),
                 "--prompts", str(_head(ROOT / "examples/task_api/data/probes.jsonl", 6, tmp_path / "probes.jsonl")),
                 "--system-prompt-file", str(ROOT / "examples/task_api/system_prompt.txt"),
                 "--max-new-tokens", "12", "--task", "task_api", "--out", str(out)])
    assert code == 0
    separate = json.loads((out / "metrics.json").read_text())
    for key in ("reward_accuracy", "reward_margin"):
        assert separate["after"][key] == pytest.approx(metrics["after"][key], abs=1e-6), key
    for key in ("refusal_rate/harmful", "over_refusal/benign", "over_refusal/alarming", "task_valid/benign",
                "response_length"):
        assert separate["after"][key] == metrics["after"][key], key
        assert separate["before"][key] == metrics["before"][key], key


def _head(src: Path, n: int, dst: Path) -> Path:
    """The first n rows, as the run used them (data.max_eval_rows=8, eval.max_probes=6)."""
    dst.write_text("\n".join(src.read_text().splitlines()[:n]) + "\n")
    return dst
