"""alignkit: align a fine-tuned language model with preference data, on the hardware you have.

The Python API (`alignkit.api`, see README "Python API"): `load_config`, `train`, `evaluate`,
`plan`, `diagnose`, `Run`, `RunConfig`. Names resolve on first use, so `import alignkit` stays cheap
(no torch, no transformers until a function needs them).
"""

__version__ = "0.1.0"

_API = {"load_config": "alignkit.api", "evaluate": "alignkit.api", "diagnose": "alignkit.api",
        "Run": "alignkit.api", "MemoryPlan": "alignkit.api", "RunConfig": "alignkit.config",
        "UserError": "alignkit.errors"}
__all__ = ["Run", "RunConfig", "UserError", "diagnose", "evaluate", "load_config", "plan", "train"]


def __getattr__(name: str):
    import importlib

    if name in ("train", "plan"):  # the subpackages, callable as the API functions (see _callable_package)
        return importlib.import_module(f"alignkit.{name}")
    if name not in _API:
        raise AttributeError(f"module 'alignkit' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


def _callable_package(module_name: str, function: str) -> None:
    """Make the subpackage `module_name` callable as `alignkit.api.<function>`.

    `alignkit.train` and `alignkit.plan` are packages (`alignkit.train.run`, `alignkit.plan.memory`),
    and importing one of their modules sets `alignkit.train` to the package, so a plain function of
    that name on `alignkit` would be replaced by the module at the first import. The package itself
    is made callable instead: `alignkit.train(cfg, data)` calls `alignkit.api.train`, and
    `alignkit.train.run` still names the module.
    """
    import sys
    import types

    class CallablePackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            from alignkit import api

            return getattr(api, function)(*args, **kwargs)

    CallablePackage.__call__.__doc__ = f"alignkit.api.{function} (see its docstring)"
    sys.modules[module_name].__class__ = CallablePackage
