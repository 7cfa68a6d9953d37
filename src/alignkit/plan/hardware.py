"""Hardware catalog for the memory planner: how much memory a device really offers, and which precisions.

Capacities are what the driver reports as total memory (``nvidia-smi`` MiB), not the marketing
number: a "16 GB" T4 shows 15360 MiB = 15.0 GiB. What the CUDA context takes out of that is a planner
component (`alignkit.plan.memory.CALIBRATION`), not hidden here, so every byte is visible in the table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from alignkit.errors import UserError

GiB = 1024**3
MiB = 1024**2


@dataclass(frozen=True)
class Hardware:
    """One device the run must fit on.

    Attributes:
        name: catalog key or description (``"t4"``, ``"cpu (23.5 GiB)"``, ``"custom 24gb"``).
        memory: bytes the device offers in total (driver-reported, or RAM).
        kind: ``"gpu"`` or ``"cpu"``.
        bf16: bf16 compute is supported (Ampere and newer); a T4 (Turing) has fp16 only.
        nominal: the marketing size, for display (``"16 GB"``).
        count: how many such devices (``"2xh100"``: 2). ``memory`` is per device: with DDP every GPU holds
            a full replica, so the per-GPU plan is the one-GPU plan; sharding (FSDP/ZeRO-3) is not modelled.
    """

    name: str
    memory: int
    kind: str = "gpu"
    bf16: bool = True
    nominal: str = ""
    count: int = 1

    @property
    def default_dtype(self) -> str:
        """The precision a run should use here: fp32 on CPU, fp16 without bf16, else bf16."""
        if self.kind == "cpu":
            return "fp32"
        return "bf16" if self.bf16 else "fp16"

    @property
    def supports_quantization(self) -> bool:
        """bitsandbytes 4-bit/8-bit kernels are GPU kernels; the planner refuses them on CPU."""
        return self.kind == "gpu"


def _gpu(name: str, mib: int, bf16: bool, nominal: str) -> Hardware:
    return Hardware(name, mib * MiB, "gpu", bf16, nominal)


CATALOG: dict[str, Hardware] = {
    "t4": _gpu("t4", 15360, False, "16 GB"),
    "l4": _gpu("l4", 23034, True, "24 GB"),
    "a10g": _gpu("a10g", 23028, True, "24 GB"),
    "rtx3090": _gpu("rtx3090", 24576, True, "24 GB"),
    "rtx4090": _gpu("rtx4090", 24564, True, "24 GB"),
    "a100-40gb": _gpu("a100-40gb", 40960, True, "40 GB"),
    "a100-80gb": _gpu("a100-80gb", 81920, True, "80 GB"),
    "h100": _gpu("h100", 81559, True, "80 GB"),
    "h200": _gpu("h200", 143771, True, "141 GB"),
}
_ALIASES = {"a100-40g": "a100-40gb", "a100-80g": "a100-80gb", "3090": "rtx3090",
            "4090": "rtx4090", "h100-80gb": "h100", "colab": "t4", "tesla-t4": "t4"}
# Names that stand for more than one card: refused, naming the choices (a guess is a 2x error).
AMBIGUOUS = {"a100": ("a100-40gb", "a100-80gb")}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(g|gb|gib)$")
_COUNT = re.compile(r"^(\d+)\s*[x*]\s*(.+)$")


def parse_size(text: str) -> int:
    """Bytes from ``"24gb"``, ``"24 GiB"``, ``"15.5g"``: read as GiB, the unit tools report memory in."""
    m = _SIZE.match(str(text).strip().lower())
    if not m:
        raise UserError(f"cannot read the memory size {text!r}", hint="write it like '24gb' or '15.5gb'")
    return int(float(m.group(1)) * GiB)


def cpu(ram: str | int | None = None) -> Hardware:
    """This machine's RAM (psutil), or `ram` bytes / a size string like ``"32gb"``."""
    if ram is None:
        import psutil

        memory = int(psutil.virtual_memory().total)
    else:
        memory = parse_size(ram) if isinstance(ram, str) else int(ram)
    return Hardware("cpu", memory, "cpu", bf16=True, nominal=f"{memory / GiB:.0f} GiB RAM")


def detect() -> Hardware:
    """The first CUDA device of this machine if there is one, else its CPU."""
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return Hardware(props.name, int(props.total_memory), "gpu", torch.cuda.is_bf16_supported(),
                            f"{props.total_memory / GiB:.0f} GiB")
    except Exception:  # a broken driver means "no GPU" to a planner
        pass
    return cpu()


def get_hardware(spec: str | Hardware | None = "t4", *, ram: str | int | None = None) -> Hardware:
    """Resolve ``"t4"``, ``"a100-80gb"``, ``"cpu"``, ``"auto"``, a custom GPU size ``"24gb"``, or any
    of these GPUs with a count, ``"2xh100"`` / ``"4 x a100-80gb"`` (memory stays per device).

    A custom size is a GPU with bf16 (any GPU sold with that much memory since 2020 has it); use a
    catalog name for a T4-class card. An ambiguous name (``"a100"``: 40 or 80 GB) is refused.
    """
    if isinstance(spec, Hardware):
        return spec
    key = (spec or "t4").strip().lower().replace("_", "-").replace(" ", "")
    m = _COUNT.match(key)
    if m and not _SIZE.match(key):
        count = int(m.group(1))
        if count < 1:
            raise UserError(f"cannot plan for {count} GPUs", where=f"--gpu {spec}", hint="e.g. --gpu 2xh100")
        one = get_hardware(m.group(2), ram=ram)
        if one.kind != "gpu":
            raise UserError("a device count needs a GPU", where=f"--gpu {spec}", hint="e.g. --gpu 2xh100")
        return replace(one, count=count)
    key = _ALIASES.get(key, key)
    if key in AMBIGUOUS:
        raise UserError(f"{spec!r} is ambiguous: it comes as {' or '.join(AMBIGUOUS[key])}", where=f"--gpu {spec}",
                        hint=f"name the card: {', '.join(AMBIGUOUS[key])}")
    if key in CATALOG:
        return CATALOG[key]
    if key == "cpu":
        return cpu(ram)
    if key == "auto":
        return detect()
    if _SIZE.match(key):
        memory = parse_size(key)
        return Hardware(f"custom {key}", memory, "gpu", True, key)
    raise UserError(f"unknown hardware {spec!r}",
                    hint=f"use one of {', '.join(CATALOG)}, 'cpu', 'auto', or a GPU size like '24gb', "
                         f"optionally with a count: '2xh100'")


def multi_gpu_note(hw: Hardware) -> str | None:
    """What a plan for `hw.count` > 1 GPUs does and does not say."""
    if hw.count <= 1:
        return None
    return (f"{hw.count} GPUs: every number here is per GPU. With DDP (`accelerate launch`) each GPU holds a full "
            f"replica, so each needs this plan and the effective batch is micro-batch x accumulation x {hw.count}. "
            f"FSDP / DeepSpeed ZeRO-3 sharding would need less per GPU; the planner does not model it.")
