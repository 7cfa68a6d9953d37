"""Judges: one interface for scoring (prompt, response) pairs.

Evaluation, the PPO/RLOO/GRPO rewards and on-policy pair sampling all ask the same question, "how good
is this answer to this prompt?", so they share one callable shape, `Judge`, and one way to name a
judge in a config, `load_judge(spec)`:

- ``"task_api"``: `alignkit.judges.task_api.TaskAPIJudge`, the Task API scenario's gold judge;
- ``"refusal"``: 1.0 when the answer is a refusal, else 0.0 (`alignkit.judges.refusal.RefusalJudge`);
- any name added with `register_judge` (a scenario or plugin);
- ``"pkg.module:function"``: a user's function (`alignkit.judges.function.FunctionJudge`);
- a directory: a reward-model run, scored by `alignkit.judges.reward_model.RewardModelJudge`.

Layering: judges sit below both `alignkit.eval` and `alignkit.data.doctor` (which import the refusal
classifier from here), so nothing in this package imports `alignkit.eval` or `alignkit.train`, and
this ``__init__`` imports no other alignkit module at all: the judges are imported when a spec names
them, so ``import alignkit.judges.refusal`` stays free of the data package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from alignkit.errors import UserError

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}


@runtime_checkable
class Judge(Protocol):
    """Scores answers: ``judge(prompts, responses, meta) -> list[float]``, one score per response.

    Args (of ``__call__``):
        prompts: conversations, each a list of ``{"role", "content"}`` messages ending with a user turn.
        responses: the decoded assistant answers, ``len(prompts)`` of them.
        meta: the raw data row of each prompt (may hold ``"category"``, ``"reference"``, ``"chosen"``,
            ...; may be ``{}``).
    """

    name: str

    def __call__(self, prompts: Sequence[Sequence[Message]], responses: Sequence[str],
                 meta: Sequence[dict]) -> list[float]: ...


def last_user_text(prompt: Sequence[Message] | str) -> str:
    """The content of the last user message of a conversation (a plain string is returned as is)."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def _task_api() -> Judge:
    from alignkit.judges.task_api import TaskAPIJudge

    return TaskAPIJudge()


def _refusal() -> Judge:
    from alignkit.judges.refusal import RefusalJudge

    return RefusalJudge()


_REGISTRY: dict[str, Callable[[], Judge]] = {"task_api": _task_api, "refusal": _refusal}


def register_judge(name: str, factory: Callable[[], Judge]) -> None:
    """Make ``load_judge(name)`` return ``factory()``; a later registration of a name replaces it.

    ``name`` may not contain ``:``, ``/`` or ``\\``, so it never shadows the function and directory forms.
    """
    if not isinstance(name, str) or not name.strip() or any(c in name for c in ":/\\"):
        raise ValueError(f"a judge name must be a non-empty string without ':', '/' or '\\', got {name!r}")
    if not callable(factory):
        raise ValueError(f"the factory for judge {name!r} must be callable, got {type(factory).__name__}")
    _REGISTRY[name] = factory


def registered_judges() -> list[str]:
    """The names `load_judge` accepts as they are (built-ins and `register_judge` additions)."""
    return sorted(_REGISTRY)


def _forms() -> str:
    names = ", ".join(repr(n) for n in registered_judges())
    return (f"a judge name ({names}), 'package.module:function' for your own scoring function, "
            "or the directory of a trained reward model")


def load_judge(spec: str, *, where: str = "config field train.reward_model") -> Judge:
    """The judge ``spec`` names (see the module docstring for the forms).

    ``where`` names the place the spec came from; every `UserError` raised here, or later by a
    function judge that returns bad scores, carries it.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"a judge must be named by a non-empty string, got {spec!r}", where=where,
                        hint=f"use {_forms()}")
    spec = spec.strip()
    if spec in _REGISTRY:
        return _REGISTRY[spec]()
    path = Path(spec).expanduser()
    if path.is_dir():
        return _reward_model(str(path), where)
    from alignkit.judges.function import FunctionJudge, looks_like_function_spec

    if looks_like_function_spec(spec):
        return FunctionJudge(spec, where=where)
    hint = f"use {_forms()}"
    if "/" in spec or "\\" in spec or spec.startswith("."):
        hint = f"no directory {spec} exists (a reward-model judge is a trained run's directory); or {hint}"
    raise UserError(f"unknown judge {spec!r}", where=where, hint=hint)


def _reward_model(path: str, where: str) -> Judge:
    try:
        # Imported only here: the reward-model judge needs torch and a model, the others do not.
        from alignkit.judges.reward_model import RewardModelJudge
    except ImportError as e:
        raise UserError(f"reward-model judges are unavailable in this installation ({e})", where=where,
                        hint="the error above names what is missing; or name a programmatic judge instead: "
                             "'task_api', 'refusal' or 'package.module:function'") from e
    return RewardModelJudge(path, where=where)
