"""A user's own scoring function as a judge: ``"package.module:function"``.

Two shapes are accepted, told apart by the function's signature:

- batch, ``function(prompts, responses, meta) -> sequence of numbers`` (the `Judge` call itself): for
  scorers that are faster on many answers at once;
- per item, ``function(prompt, response) -> number``: any function whose signature requires exactly
  two positional arguments. ``prompt`` is then the text of the last user message (a string, the
  simple case this shape is for), and the function is called once per answer.

The scores are checked on every call (count, and each one a finite number), because a reward that is
silently NaN or misaligned with its answers trains garbage without failing.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable, Sequence

from alignkit.errors import UserError
from alignkit.judges import last_user_text

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def looks_like_function_spec(spec: str) -> bool:
    """True for ``module.path:attr.path`` (a dotted module, a colon, a dotted attribute)."""
    return bool(_SPEC.match(spec))


def _per_item(fn: Callable) -> bool:
    """True if ``fn`` takes (prompt, response): exactly two required positional arguments."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False  # builtins without a signature: assume the batch form
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    return len(required) == 2


def _resolve(spec: str, where: str) -> Callable:
    module_name, _, attr_path = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):  # the module itself (or a parent package) is missing
            raise UserError(f"cannot import module {module_name!r} for judge {spec!r}", where=where,
                            hint="check the spelling, and that the module's directory is on PYTHONPATH "
                                 "(or run from the directory that holds it)") from e
        raise UserError(f"module {module_name!r} for judge {spec!r} failed to import: {e}", where=where,
                        hint="install what it needs") from e
    except ImportError as e:
        raise UserError(f"module {module_name!r} for judge {spec!r} failed to import: {e}", where=where) from e
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise UserError(f"module {module_name!r} has no {attr_path!r} for judge {spec!r}", where=where,
                            hint=f"define {attr_path}(prompts, responses, meta) or {attr_path}(prompt, "
                                 f"response) in {module_name}, or fix the name after the ':'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{spec!r} is a {type(obj).__name__}, not a function", where=where,
                        hint="a judge spec must name a function (or another callable)")
    return obj


def _as_score(value, i: int, spec: str, where: str) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        score = None
    if score is None or not math.isfinite(score):
        raise UserError(f"judge {spec!r} returned {value!r} for answer {i}; scores must be finite numbers",
                        where=where, hint="return a float per answer (no None, NaN or inf)")
    return score


class FunctionJudge:
    """A `Judge` that calls the function ``spec`` names (see the module docstring for its shapes).

    Args:
        spec: ``"package.module:function"``; the module is imported at construction, so a missing
            module or function fails before any training starts.
        where: the config field (or other place) the spec came from, named in every error.
    """

    def __init__(self, spec: str, *, where: str = "config field train.reward_model"):
        self.name, self.where = spec, where
        self.fn = _resolve(spec, where)
        self.per_item = _per_item(self.fn)

    def __call__(self, prompts: Sequence, responses: Sequence[str], meta: Sequence[dict]) -> list[float]:
        if self.per_item:
            raw = [self.fn(last_user_text(p), r) for p, r in zip(prompts, responses, strict=True)]
        else:
            raw = self.fn(prompts, responses, meta)
        if isinstance(raw, str | bytes | dict) or not hasattr(raw, "__iter__"):
            raise UserError(f"judge {self.name!r} returned a {type(raw).__name__}, not one score per answer",
                            where=self.where, hint="return a list of floats, as long as `responses`")
        raw = list(raw)
        if len(raw) != len(responses):
            raise UserError(f"judge {self.name!r} returned {len(raw)} scores for {len(responses)} answers",
                            where=self.where, hint="return exactly one score per response, in order")
        return [_as_score(v, i, self.name, self.where) for i, v in enumerate(raw)]
