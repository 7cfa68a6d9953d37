"""Fix ranking on fixed inputs, and the method advisor's decision tree, one test per branch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from alignkit.errors import UserError
from alignkit.plan.advisor import FIX_ORDER, data_stats, detect_format, fixes, learning_rate, recommend
from alignkit.plan.architectures import load_arch
from alignkit.plan.memory import PlanInput, estimate

ROOT = Path(__file__).resolve().parents[2]


def test_no_fixes_when_it_fits():
    assert fixes(PlanInput(load_arch("default"), "dpo"), "t4") == []


def test_single_fixes_ranked_by_disruption():
    # 7B QLoRA DPO, plain forward, micro-batch 4 x 512 without checkpointing: 39.9 GiB on a T4
    inp = PlanInput(load_arch("7b"), "dpo", quant="4bit", micro_batch=4, seq_len=512, grad_ckpt=False,
                    prefix_sharing=False, completion_only_logits=False)
    found = fixes(inp, "t4")
    assert [f.name for f in found] == ["grad_ckpt", "micro_batch", "seq_len"]
    assert all(f.fits for f in found) and [f.rank for f in found] == sorted(f.rank for f in found)
    mb = found[1]
    assert mb.changes == {"micro_batch": 1, "grad_accum": 4}  # the effective batch of 4 is kept
    for f in found:
        assert f.total == estimate(PlanInput(**{**inp.__dict__, **f.changes}), "t4").total


def test_greedy_combination_when_no_single_fix_suffices():
    # full fine-tuning of a 7B model on a T4 (~140 GiB): no single change is enough
    inp = PlanInput(load_arch("7b"), "dpo", lora_r=0, reference="copy", micro_batch=4, seq_len=1024)
    (combo,) = fixes(inp, "t4")
    parts = combo.name.split(" + ")
    assert combo.fits and "lora" in parts and combo.changes["lora_r"] == 16
    order = [n for n, _ in FIX_ORDER]
    assert parts == sorted(parts, key=order.index)
    assert combo.total == estimate(PlanInput(**{**inp.__dict__, **combo.changes}), "t4").total


def _write(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


PAIRS = [{"prompt": "Add a task " * 10, "chosen": "Done. " * 40, "rejected": "No. " * 20}] * 200


def test_detect_format():
    assert detect_format(PAIRS) == "paired"
    assert detect_format([{"prompt": "p", "completion": "c", "label": True}]) == "unpaired"
    assert detect_format([{"messages": [{"role": "user", "content": "hi"}]}]) == "sft"
    assert detect_format([{"prompt": "p", "completion": "c"}]) == "sft"
    assert detect_format([{"text": "t"}]) == "unlabelled"


def test_paired_on_a_chat_model_is_dpo_and_validates(tmp_path):
    rec = recommend(_write(tmp_path, PAIRS), "default", "t4")
    assert rec.method == "dpo"
    assert rec.config["train"]["reference"] == "adapter" and rec.config["model"]["dtype"] == "float16"
    assert yaml.safe_load(rec.yaml) == rec.config  # the comments are comments only
    assert rec.plan.total <= 0.9 * rec.plan.hardware.memory
    config = pytest.importorskip("alignkit.config")
    config.RunConfig.model_validate(rec.config)


def test_recommended_config_names_its_data_absolute_so_it_can_be_saved_anywhere(tmp_path, monkeypatch):
    name = _write(tmp_path, PAIRS).name
    monkeypatch.chdir(tmp_path)
    rec = recommend(name, "default", "t4", eval_path=name)
    assert rec.config["data"]["train"] == rec.config["data"]["eval"] == str(tmp_path / name)
    saved = tmp_path / "configs" / "dpo.yaml"  # `alignkit recommend ... > configs/dpo.yaml`
    saved.parent.mkdir()
    saved.write_text(rec.yaml)
    from alignkit.config import load_config

    assert load_config(saved).data.train == str(tmp_path / name)


def test_paired_on_a_base_model_is_orpo(tmp_path):
    rec = recommend(_write(tmp_path, PAIRS), "qwen2.5-0.5b", "l4", sft_model=False)
    assert rec.method == "orpo" and "beta" not in rec.config["train"] and rec.config["model"]["dtype"] == "bfloat16"


def test_labels_only_is_kto(tmp_path):
    rows = [{"prompt": "p", "completion": "c", "label": i % 2 == 0} for i in range(50)]
    assert recommend(_write(tmp_path, rows), "default", "t4").method == "kto"


def test_demonstrations_only_is_sft(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 20
    assert recommend(_write(tmp_path, rows), "default", "t4").method == "sft"


def test_nothing_labelled_is_advice_not_a_config(tmp_path):
    with pytest.raises(UserError, match="collect preferences"):
        recommend(_write(tmp_path, [{"text": "hello"}] * 5), "default", "t4")


def test_online_feedback_is_ppo_only_when_it_fits(tmp_path):
    path = _write(tmp_path, PAIRS)
    assert recommend(path, "7b", "a100-80gb", online_feedback=True).method == "ppo"
    rec = recommend(path, "gemma-2-9b", "t4", online_feedback=True)
    assert rec.method == "dpo" and any("does not fit" in r for r in rec.reasons)


def test_sizing_follows_the_data_and_the_gpu(tmp_path):
    stats = data_stats(_write(tmp_path, PAIRS))
    # chars/4 + 16: prompt 110 chars -> 44; chosen 240 chars -> 76; total 120
    assert stats.rows == 200 and stats.prompt[98] == 44 and stats.total[98] == 120
    rec = recommend(stats, "7b", "t4")
    assert rec.config["data"]["max_length"] == 128 and rec.config["data"]["max_prompt_length"] == 64
    assert rec.config["model"]["quantization"] == "4bit"  # 13.5 GB of fp16 weights do not fit a T4
    assert recommend(stats, "7b", "a100-80gb").config["model"]["quantization"] == "none"


def test_cpu_allocator_fix_only_on_cpu():
    """On CPU a LoRA run that misses by less than its heap retention is fixed by the allocator
    policy alone (same results, listed in rank order with the others); a GPU never gets that fix."""
    from alignkit.plan.hardware import get_hardware

    inp = PlanInput(load_arch("default"), "dpo", micro_batch=4, seq_len=512)
    p = estimate(inp, get_hardware("cpu", ram="64gb"))
    kept = p.components["freed activations kept in the heap (glibc)"]
    ram = f"{(p.total - kept // 2) / 2**30:.3f}gb"  # between the mmap plan and the glibc plan
    found = fixes(inp, get_hardware("cpu", ram=ram))
    (fix,) = [f for f in found if f.name == "cpu_allocator"]
    assert fix.changes == {"cpu_allocator": "mmap"} and fix.total == p.total - kept and fix.fits
    assert [f.rank for f in found] == sorted(f.rank for f in found)
    gpu = fixes(PlanInput(load_arch("7b"), "dpo", quant="4bit", micro_batch=4, seq_len=512, grad_ckpt=False), "t4")
    assert all("cpu_allocator" not in f.name for f in gpu)


def _annotated(text: str) -> dict[str, tuple[object, str]]:
    """`dotted.key -> (value, comment)` for every commented scalar line of the advisor's YAML."""
    out, stack = {}, []
    for line in text.splitlines():
        indent = (len(line) - len(line.lstrip())) // 2
        body, _, comment = line.strip().partition("  # ")
        key, _, value = body.partition(":")
        stack[indent:] = [key]
        if value.strip():
            out[".".join(stack)] = (yaml.safe_load(value), comment)
    return out


# issue 15: 98th-percentile prompt 25 + answer 41 = 66 tokens (chars / 4 + 16 each)
SHORT = [{"prompt": "x" * 36, "chosen": "y" * 100, "rejected": "n" * 40}] * 200


def test_every_yaml_comment_states_the_value_it_annotates(tmp_path):
    rec = recommend(_write(tmp_path, SHORT), "default", "cpu")
    notes = _annotated(rec.yaml)
    value, comment = notes["data.max_length"]
    assert value == 128 and "66 tokens" in comment and re.search(r"(=|at) 128\b", comment), comment
    value, comment = notes["data.max_prompt_length"]
    assert value == 64 and re.search(r"(=|at) 64\b", comment), comment
    value, comment = notes["train.learning_rate"]
    assert float(comment.split()[0]) == value
    assert "half-precision" not in rec.yaml and "fp32" in notes["model.quantization"][1]
    # a long prompt is capped to leave room for the answer, and the comment says so
    long_prompt = [{"prompt": "x" * 600, "chosen": "y" * 40, "rejected": "n"}] * 200  # 166 + 26 = 192 tokens
    notes = _annotated(recommend(_write(tmp_path, long_prompt, "long.jsonl"), "default", "t4").yaml)
    assert notes["data.max_length"][0] == 192 and "= 192" in notes["data.max_length"][1]
    value, comment = notes["data.max_prompt_length"]
    assert value == 128 and "166 tokens, capped at 128" in comment
    assert "fp16 (half-precision) base fits" in notes["model.quantization"][1]


def _example_lr(method: str) -> float:
    return yaml.safe_load((ROOT / f"examples/task_api/{method}.yaml").read_text())["train"]["learning_rate"]


def test_learning_rates_are_those_of_the_examples_with_lora_and_recipes_without(tmp_path):
    rec = recommend(_write(tmp_path, PAIRS), "default", "t4")
    assert rec.config["model"]["lora"]["enabled"] and rec.config["train"]["learning_rate"] == 2e-4
    assert rec.config["train"]["learning_rate"] == _example_lr("dpo")
    orpo = recommend(_write(tmp_path, PAIRS), "qwen2.5-0.5b", "l4", sft_model=False)
    assert orpo.config["train"]["learning_rate"] == _example_lr("orpo")
    kto = recommend(_write(tmp_path, [{"prompt": "p", "completion": "c", "label": i % 2 == 0} for i in range(50)],
                           "kto.jsonl"), "default", "t4")
    assert kto.config["train"]["learning_rate"] == _example_lr("kto")
    for method in ("dpo", "kto", "ppo"):
        assert learning_rate(method, lora=True)[0] == _example_lr(method)
    assert learning_rate("dpo", lora=False)[0] == 5e-7 and learning_rate("kto", lora=False)[0] <= 1e-6
    for method in ("dpo", "kto", "orpo", "sft", "ppo"):  # full fine-tuning: far below LoRA
        assert learning_rate(method, lora=False)[0] <= learning_rate(method, lora=True)[0] / 10
