"""`--gpu` specs: an ambiguous name is refused with the choices, `2xh100` plans per GPU with the
count (DDP: the one-GPU plan; sharding not modelled, and said so), and a missing `--gpu` is said."""

from __future__ import annotations

import json

import pytest

from alignkit.cli import main
from alignkit.errors import UserError
from alignkit.plan.architectures import load_arch
from alignkit.plan.hardware import get_hardware
from alignkit.plan.memory import PlanInput, estimate, format_table, plan_to_dict


def test_ambiguous_a100_is_refused_naming_the_choices():
    with pytest.raises(UserError) as e:
        get_hardware("a100")
    assert "ambiguous" in str(e.value) and "a100-40gb" in str(e.value) and "a100-80gb" in str(e.value)
    assert get_hardware("a100-40gb").memory < get_hardware("a100-80gb").memory


@pytest.mark.parametrize("spec", ["2xh100", "2 x h100", "2*H100"])
def test_count_prefix_plans_per_gpu(spec):
    many, one = get_hardware(spec), get_hardware("h100")
    assert many.count == 2 and many.memory == one.memory and many.name == "h100"
    inp = PlanInput(arch=load_arch("7b"), method="dpo", lora_r=16, micro_batch=2, seq_len=1024)
    p2, p1 = estimate(inp, many), estimate(inp, one)
    assert p2.total == p1.total and p2.components == p1.components  # DDP: a full replica per GPU
    note = p2.notes[-1]
    assert "per GPU" in note and "not model" in note and "FSDP" in note
    assert not any("GPUs" in n for n in p1.notes)
    assert "2 x h100 (79.65 GiB each), per GPU" in format_table(p2)
    assert plan_to_dict(p2)["hardware"]["count"] == 2


@pytest.mark.parametrize("spec,msg", [("0xh100", "cannot plan for 0 GPUs"), ("2xcpu", "needs a GPU"),
                                      ("2xa100", "ambiguous")])
def test_bad_counts(spec, msg):
    with pytest.raises(UserError, match=msg):
        get_hardware(spec)


def test_plan_without_gpu_says_it_assumes_t4(capsys):
    assert main(["plan", "--model", "7b", "--quant", "4bit", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "no --gpu given: planning for t4" in err
    assert json.loads(out)["hardware"]["name"] == "t4"  # stdout stays JSON
    assert main(["plan", "--model", "7b", "--gpu", "l4"]) == 0
    assert "no --gpu given" not in capsys.readouterr().err
