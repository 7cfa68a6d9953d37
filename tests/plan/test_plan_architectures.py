"""Shapes and parameter counts of known models; config.json reading; sizes; the hardware catalog."""

from __future__ import annotations

import json

import pytest

from alignkit.errors import UserError
from alignkit.plan.architectures import BUILTIN, load_arch, lora_params, quant_bytes_per_param, weight_bytes
from alignkit.plan.hardware import GiB, get_hardware, parse_size


@pytest.mark.parametrize("name,expected", [
    ("meta-llama/Llama-2-7b-hf", 6.74e9), ("HuggingFaceTB/SmolLM2-135M-Instruct", 134.5e6),
    ("mistral-7b", 7.24e9), ("llama-3-8b", 8.03e9), ("Qwen/Qwen2.5-0.5B-Instruct", 494e6),
    ("qwen2.5-7b", 7.62e9), ("phi-3-mini", 3.82e9), ("gemma-2-2b", 2.61e9), ("gemma-2-9b", 9.24e9),
])
def test_parameter_counts_from_shapes(name, expected):
    assert load_arch(name).n_params == pytest.approx(expected, rel=0.01)


def test_llama2_count_is_exact():
    # 32 x (4*4096^2 + 3*4096*11008 + 2*4096) + 2*32000*4096 + 4096 (safetensors index: 6,738,415,616)
    assert load_arch("llama-2-7b").n_params == 6_738_415_616


def test_default_is_smollm2_135m_instruct():
    assert load_arch("default") is BUILTIN["smollm2-135m"]
    assert load_arch("default").name == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_local_config_dir_and_file(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True,
           "max_position_embeddings": 8192}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for spec in (tmp_path, tmp_path / "config.json"):
        assert load_arch(spec).n_params == BUILTIN["smollm2-135m"].n_params


def test_sizes_alone():
    assert load_arch("7b").n_params == BUILTIN["llama-2-7b"].n_params
    assert load_arch("135m").n_params == BUILTIN["smollm2-135m"].n_params
    assert load_arch("13b").n_params == pytest.approx(13e9, rel=0.05)  # a synthesized Llama-style shape


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model"):
        load_arch("no-such-org/no-such-model")


def test_nf4_bytes_per_param():
    assert quant_bytes_per_param("4bit", 2, double_quant=False) == 0.5 + 4 / 64
    assert quant_bytes_per_param("4bit", 2, double_quant=True) == pytest.approx(0.5 + 1 / 64 + 4 / (64 * 256))
    assert quant_bytes_per_param("8bit", 2) == 1.0


def test_weight_bytes_quantize_only_block_linears():
    arch = load_arch("llama-2-7b")
    other = arch.n_params - arch.linear_params  # embeddings, LM head, norms stay fp16
    assert weight_bytes(arch, "none", 2) == 2 * arch.n_params
    assert weight_bytes(arch, "4bit", 2, False) == pytest.approx(arch.linear_params * 0.5625 + 2 * other)
    assert weight_bytes(arch, "4bit", 2, True) / 2**30 == pytest.approx(3.60, abs=0.01)


def test_lora_params_r_times_in_plus_out():
    arch = load_arch("llama-2-7b")  # q,v: (4096 -> 4096) each: 16 * 8192 per target per layer
    assert lora_params(arch, 16, ("q_proj", "v_proj")) == 32 * 2 * 16 * (4096 + 4096)
    smol = load_arch("smollm2-135m")  # k_proj: 576 -> 192
    assert lora_params(smol, 8, ("k_proj",)) == 30 * 8 * (576 + 192)


def test_hardware_catalog():
    t4 = get_hardware("t4")
    assert t4.memory / GiB == pytest.approx(15.0) and t4.default_dtype == "fp16" and not t4.bf16
    assert get_hardware("a100-80gb").default_dtype == "bf16"
    assert get_hardware("cpu", ram="32gb").memory == 32 * GiB
    assert get_hardware("cpu", ram="32gb").default_dtype == "fp32"
    assert get_hardware("24gb").memory == 24 * GiB
    assert get_hardware("h200").memory / GiB == pytest.approx(140.4, abs=0.1)
    assert parse_size("15.5 GiB") == int(15.5 * GiB)
    with pytest.raises(UserError):
        get_hardware("tpu-v9")
