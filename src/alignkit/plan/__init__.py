"""alignkit.plan: will a run fit, and what should I run? It reads configs and data; it never trains.

- `architectures`: model shapes (config.json, hub cache, built-in table, a size) and byte counts.
- `hardware`: the device catalog (t4 ... h200, cpu, custom sizes).
- `memory`: the memory model (`PlanInput` -> `Plan`), tables and JSON; `python -m alignkit.plan.memory`
  prints the worked examples of docs/PLANNER.md.
- `advisor`: `fixes` (cheapest changes that make a run fit) and `recommend` (method + config from data).

The package is callable: `alignkit.plan(config, gpu="t4")` is `alignkit.api.plan`.
"""
from alignkit import _callable_package

# Names resolve lazily, so that `python -m alignkit.plan.memory` runs without a double import.
_WHERE = {"Fix": "advisor", "Recommendation": "advisor", "fixes": "advisor", "recommend": "advisor",
          "Arch": "architectures", "load_arch": "architectures", "Hardware": "hardware", "get_hardware": "hardware",
          "Plan": "memory", "PlanInput": "memory", "estimate": "memory", "format_table": "memory",
          "plan_from_args": "memory", "plan_to_dict": "memory"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'alignkit.plan' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"alignkit.plan.{_WHERE[name]}"), name)


_callable_package(__name__, "plan")
