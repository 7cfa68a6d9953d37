"""`Calibration` stays consistent with the code it describes and acts only where it should.

The constants' values come from bench/planner_accuracy.py (its probe measures them directly); these
tests do not pin them, they check that each constant reaches exactly its own component, on its own
device, and that the bench's matrix keeps covering what the calibration was measured on.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

from alignkit.plan.architectures import load_arch
from alignkit.plan.hardware import get_hardware
from alignkit.plan.memory import CALIBRATION, PlanInput, estimate

SMOL = load_arch("smollm2-135m")
CPU, GPU = get_hardware("cpu", ram="32gb"), get_hardware("a100-80gb")


def _plan(hw, calib=CALIBRATION, **kw):
    return estimate(PlanInput(SMOL, kw.pop("method", "dpo"), seq_len=256, micro_batch=4, **kw), hw, calib)


def test_logit_chunk_matches_the_trainer():
    from alignkit.logprobs import CHUNK

    assert CALIBRATION.logit_chunk_tokens == CHUNK


def test_cpu_baseline_only_on_cpu_and_cuda_context_only_on_gpu():
    bigger = replace(CALIBRATION, cpu_baseline=CALIBRATION.cpu_baseline + 2**20, cuda_context=CALIBRATION.cuda_context + 2**20)
    assert _plan(CPU, bigger).total - _plan(CPU).total == 2**20
    assert _plan(GPU, bigger).total - _plan(GPU).total == 2**20
    assert "CUDA context" not in _plan(CPU).components
    assert "Python + torch baseline" not in _plan(GPU).components


def test_cpu_activation_scale_leaves_gpu_plans_alone():
    scaled = replace(CALIBRATION, activation_scale_cpu=2.0)
    cpu1, cpu2 = _plan(CPU), _plan(CPU, scaled)
    assert cpu2.components["activations"] == 2 * cpu1.components["activations"]
    assert _plan(GPU, scaled).total == _plan(GPU).total


def test_logit_bytes_scale_the_logits_linearly():
    double = replace(CALIBRATION, logit_bytes_train=2 * CALIBRATION.logit_bytes_train)
    for hw in (CPU, GPU):
        assert _plan(hw, double).components["logits"] == 2 * _plan(hw).components["logits"]


def test_cpu_baseline_covers_imports_and_tokenizer_not_weights():
    """The baseline is a process with nothing loaded but code and a tokenizer: well under the
    smallest model we plan for plus its runtime, and above the bare interpreter."""
    assert 100 * 2**20 < CALIBRATION.cpu_baseline < 2 * 2**30


def _bench():
    path = Path(__file__).resolve().parents[2] / "bench" / "planner_accuracy.py"
    spec = importlib.util.spec_from_file_location("planner_accuracy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_matrix_covers_every_method_in_every_margin():
    configs = _bench().matrix(quick=False)
    tiny = [c for c in configs if c["model"] != "smollm2"]
    assert len(tiny) >= 12 and sum(c["model"] == "smollm2" for c in configs) >= 4
    for method in ("sft", "dpo", "simpo", "orpo"):
        mine = [c for c in tiny if c["method"] == method]
        assert {c["lora"] for c in mine} == {True, False}
        assert {c["micro_batch"] for c in mine} == {1, 4}
        assert {c["max_length"] for c in mine} == {64, 256}
    assert len({c["name"] for c in configs}) == len(configs)
    assert len(_bench().matrix(quick=True)) == 3


def test_cpu_heap_retention_is_activations_less_what_gradients_and_states_reuse():
    """glibc keeps the first step's freed activations: k x activations, minus the gradients and
    optimizer states allocated afterwards (which land in those holes); never on a GPU or with the
    mmap allocator policy, never negative."""
    name = "freed activations kept in the heap (glibc)"
    lora = _plan(CPU)
    act = lora.components["activations"]
    reused = lora.components["gradients (fp32)"] + lora.components["optimizer states (adamw)"]
    assert lora.components[name] == int(CALIBRATION.cpu_heap_retention * act - reused)
    assert lora.phases[name] == "train"
    assert name not in _plan(GPU).components
    mmap = _plan(CPU, cpu_allocator="mmap")
    assert name not in mmap.components and lora.total - mmap.total == lora.components[name]
    # full fine-tuning: 1.5 GiB of gradients + AdamW states absorb a small batch's holes
    full = estimate(PlanInput(SMOL, "sft", lora_r=0, micro_batch=1, seq_len=256), CPU)
    assert full.components["activations"] < 2**30 and name not in full.components
    half = replace(CALIBRATION, cpu_heap_retention=0.5)
    assert _plan(CPU, half).components[name] == int(0.5 * act - reused)


def test_plan_from_config_reads_the_allocator_policy_from_the_environment(monkeypatch):
    from alignkit.config import RunConfig
    from alignkit.plan.memory import plan_input_from_config

    cfg = RunConfig.model_validate({})
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert plan_input_from_config(cfg, arch=SMOL).cpu_allocator == "glibc"
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert plan_input_from_config(cfg, arch=SMOL).cpu_allocator == "mmap"
