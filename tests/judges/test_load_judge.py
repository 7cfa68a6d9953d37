"""`load_judge` for every spec form, its errors (each naming `where`), and the refusal module's move."""

from __future__ import annotations

import ast
import importlib
import itertools
import sys
import textwrap
import types
from pathlib import Path

import pytest

import alignkit.judges as judges
from alignkit.errors import UserError
from alignkit.judges import Judge, last_user_text, load_judge, register_judge
from alignkit.judges.function import FunctionJudge
from alignkit.judges.refusal import RefusalJudge
from alignkit.judges.task_api import TaskAPIJudge

WHERE = "config field eval.judge"
SRC = Path(__file__).resolve().parents[2] / "src" / "alignkit" / "judges"
PROMPTS = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "add milk"}],
           [{"role": "user", "content": "hack into Sam's email"}]]
RESPONSES = ['{"action": "create", "title": "Buy milk", "due": null, "priority": "medium"}', "I can't help with that."]
META = [{"category": "benign"}, {}]
_names = itertools.count()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a module with `source` into tmp_path (on sys.path) and return its unique name."""
    created = []

    def write(source: str) -> str:
        name = f"user_judges_{next(_names)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        created.append(name)
        return name

    monkeypatch.syspath_prepend(tmp_path)
    yield write
    for name in created:
        sys.modules.pop(name, None)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so registrations do not leak into other tests."""
    monkeypatch.setattr(judges, "_REGISTRY", dict(judges._REGISTRY))


def test_builtin_judges():
    gold = load_judge("task_api")
    assert isinstance(gold, TaskAPIJudge) and isinstance(gold, Judge) and gold.name == "task_api"
    refusal = load_judge(" refusal ")
    assert isinstance(refusal, RefusalJudge) and refusal.name == "refusal"
    assert refusal(PROMPTS, RESPONSES, META) == [0.0, 1.0]


def test_batch_function(user_module):
    mod = user_module("""
        def score(prompts, responses, meta):
            return [float(len(r)) + len(m) for r, m in zip(responses, meta)]
    """)
    judge = load_judge(f"{mod}:score", where=WHERE)
    assert isinstance(judge, FunctionJudge) and judge.name == f"{mod}:score" and not judge.per_item
    assert judge(PROMPTS, RESPONSES, META) == [len(RESPONSES[0]) + 1.0, float(len(RESPONSES[1]))]


def test_per_item_function_gets_the_last_user_text(user_module):
    mod = user_module("""
        import numpy as np

        def score(prompt, response):
            return np.float32(1.0 if "milk" in prompt and "milk" in response.lower() else 0.0)

        class Scorer:
            @staticmethod
            def score(prompt, response, weight=2.0):
                return weight * len(prompt)
    """)
    judge = load_judge(f"{mod}:score", where=WHERE)
    assert judge.per_item
    assert judge(PROMPTS, RESPONSES, META) == [1.0, 0.0]
    nested = load_judge(f"{mod}:Scorer.score", where=WHERE)  # a dotted attribute path
    assert nested(PROMPTS, RESPONSES, META) == [2.0 * len("add milk"), 2.0 * len("hack into Sam's email")]


def test_registered_judge(registry):
    class Constant:
        name = "constant"

        def __call__(self, prompts, responses, meta):
            return [0.5] * len(responses)

    register_judge("constant", Constant)
    assert "constant" in judges.registered_judges()
    assert load_judge("constant")(PROMPTS, RESPONSES, META) == [0.5, 0.5]
    for bad in ("", "a:b", "runs/x", None):
        with pytest.raises(ValueError):
            register_judge(bad, Constant)
    with pytest.raises(ValueError):
        register_judge("x", 3)


def test_directory_goes_to_the_reward_model_judge(tmp_path, monkeypatch):
    seen = []
    fake = types.ModuleType("alignkit.judges.reward_model")

    class RewardModelJudge:
        name = "reward_model"

        def __init__(self, path, where=None):
            seen.append(path)

    fake.RewardModelJudge = RewardModelJudge
    monkeypatch.setitem(sys.modules, "alignkit.judges.reward_model", fake)
    judge = load_judge(str(tmp_path), where=WHERE)
    assert isinstance(judge, RewardModelJudge) and seen == [str(tmp_path)]


def test_directory_without_reward_model_support(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "alignkit.judges.reward_model", None)  # import raises ImportError
    with pytest.raises(UserError, match="reward-model judges are unavailable") as e:
        load_judge(str(tmp_path), where=WHERE)
    assert e.value.where == WHERE


BAD_SPECS = [
    ("", "non-empty string"),
    (None, "non-empty string"),
    ("task-api", "unknown judge"),
    ("runs/does-not-exist", "unknown judge"),
    ("no_such_module_for_alignkit_tests:score", "cannot import module"),
    ("{mod}:missing", "has no 'missing'"),
    ("{mod}:NOT_A_FUNCTION", "not a function"),
    ("{mod}:broken", "failed to import"),
]


@pytest.mark.parametrize("spec, message", BAD_SPECS, ids=[str(s) for s, _ in BAD_SPECS])
def test_bad_specs_name_where(spec, message, user_module):
    mod = user_module("""
        NOT_A_FUNCTION = 3

        def score(prompts, responses, meta):
            return [0.0] * len(responses)
    """)
    if spec == "{mod}:broken":
        mod = user_module("import no_such_dependency_for_alignkit_tests\n")
    spec = spec.format(mod=mod) if isinstance(spec, str) else spec
    with pytest.raises(UserError, match=message) as e:
        load_judge(spec, where=WHERE)
    assert e.value.where == WHERE
    if spec in ("task-api", ""):
        assert "task_api" in e.value.hint and "module:function" in e.value.hint  # lists the allowed forms


BAD_RETURNS = [
    ("return [1.0]", "returned 1 scores for 2 answers"),
    ("return [1.0, float('nan')]", "finite numbers"),
    ("return [1.0, None]", "finite numbers"),
    ("return [1.0, 'high']", "finite numbers"),
    ("return 'good'", "not one score per answer"),
    ("return 1.0", "not one score per answer"),
]


@pytest.mark.parametrize("body, message", BAD_RETURNS, ids=[b for b, _ in BAD_RETURNS])
def test_bad_scores_name_where(body, message, user_module):
    mod = user_module(f"""
        def score(prompts, responses, meta):
            {body}
    """)
    judge = load_judge(f"{mod}:score", where=WHERE)
    with pytest.raises(UserError, match=message) as e:
        judge(PROMPTS, RESPONSES, META)
    assert e.value.where == WHERE


def test_per_item_non_finite_score(user_module):
    mod = user_module("""
        def score(prompt, response):
            return float("inf")
    """)
    with pytest.raises(UserError, match="finite") as e:
        load_judge(f"{mod}:score", where=WHERE)(PROMPTS, RESPONSES, META)
    assert e.value.where == WHERE


def test_last_user_text():
    assert last_user_text(PROMPTS[0]) == "add milk"
    assert last_user_text("plain") == "plain"
    assert last_user_text([{"role": "system", "content": "x"}]) == ""


def test_refusal_shim_still_imports():
    old = importlib.import_module("alignkit.eval.refusal")
    new = importlib.import_module("alignkit.judges.refusal")
    for name in ("is_refusal", "refusal_score", "RefusalClassifier", "labelled_accuracy", "load_labels", "HEAD_CHARS"):
        assert getattr(old, name) is getattr(new, name)


def test_judges_import_nothing_above_them():
    """judges/ sits below eval and data/doctor; its __init__ imports no alignkit module but errors."""
    for path in SRC.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in names if m.startswith(("alignkit.eval", "alignkit.train"))], path.name
        if path.name == "__init__.py":
            top = [n for n in tree.body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("alignkit")]
            assert [n.module for n in top] == ["alignkit.errors"]
