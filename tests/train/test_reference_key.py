"""The precomputed reference table's cache key: every input that changes the table changes the key
(one at a time), the same inputs give the same key, and `default` / hub ids resolve to their files."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from tinymodels import tiny_llama

from alignkit.train import reference as refs


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from alignkit.models import default_model_dir

    return AutoTokenizer.from_pretrained(default_model_dir())


def _checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x" * 64)
    return folder


def _key(model, tokenizer, **kw):
    args = dict(name_or_path=kw.pop("name_or_path"), quantization="none", autocast="no", prefix_sharing=True)
    args.update(kw)
    return refs.reference_key(refs.reference_key_parts(model, tokenizer, **args))


def test_same_inputs_same_key_and_each_input_changes_it(tmp_path, tokenizer, monkeypatch):
    import peft  # noqa: F401  (first: importing peft sets transformers.__version__ again)
    import transformers

    ckpt = str(_checkpoint(tmp_path / "ckpt"))
    base = _key(tiny_llama(), tokenizer, name_or_path=ckpt)
    assert _key(tiny_llama(), tokenizer, name_or_path=ckpt) == base  # a fresh load of the same thing
    changed = {
        "quantization": _key(tiny_llama(), tokenizer, name_or_path=ckpt, quantization="4bit"),
        "autocast": _key(tiny_llama(), tokenizer, name_or_path=ckpt, autocast="bf16"),
        "prefix_sharing": _key(tiny_llama(), tokenizer, name_or_path=ckpt, prefix_sharing=False),
        "dtype": _key(tiny_llama().to(torch.bfloat16), tokenizer, name_or_path=ckpt),
        "attention": _key(tiny_llama(attn="eager"), tokenizer, name_or_path=ckpt),
        "model config": _key(tiny_llama(rope_theta=1234.0), tokenizer, name_or_path=ckpt),
        "path": _key(tiny_llama(), tokenizer, name_or_path=str(_checkpoint(tmp_path / "other"))),
    }
    template = tokenizer.chat_template
    tokenizer.chat_template = template + " "
    changed["chat template"] = _key(tiny_llama(), tokenizer, name_or_path=ckpt)
    tokenizer.chat_template = template
    grown = copy.deepcopy(tokenizer)
    grown.add_tokens(["<new-token-h7>"])
    changed["vocabulary"] = _key(tiny_llama(), grown, name_or_path=ckpt)
    with monkeypatch.context() as m:
        m.setattr(transformers, "__version__", "0.0.1")
        changed["transformers version"] = _key(tiny_llama(), tokenizer, name_or_path=ckpt)
    with monkeypatch.context() as m:
        m.setattr(refs, "TABLE_VERSION", refs.TABLE_VERSION + 1)
        changed["alignkit's table version"] = _key(tiny_llama(), tokenizer, name_or_path=ckpt)
    weights = Path(ckpt) / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed["weights mtime"] = refs.model_fingerprint(ckpt)
    weights.write_bytes(b"y" * 65)
    changed["weights size"] = refs.model_fingerprint(ckpt)
    same = [name for name, key in changed.items() if key == base]
    assert not same, f"the key ignores: {same}"
    twins = [(a, b) for a in changed for b in changed if a < b and changed[a] == changed[b]]
    assert not twins


def test_the_loaded_dtype_counts_not_the_string_auto(tmp_path, tokenizer):
    ckpt = str(_checkpoint(tmp_path / "ckpt"))
    parts = refs.reference_key_parts(tiny_llama().to(torch.bfloat16), tokenizer, name_or_path=ckpt,
                                     quantization="none", autocast="no", prefix_sharing=True)
    assert parts["dtype"] == "torch.bfloat16"
    assert set(parts["versions"]) == {"torch", "transformers", "peft", "alignkit"}


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_default_resolves_to_its_imported_files(tmp_path, monkeypatch):
    from alignkit.models import DEFAULT_NAME

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    folder = _checkpoint(tmp_path / "models" / DEFAULT_NAME)  # what default_model_dir() imports to
    before = refs.model_fingerprint("default")
    assert refs.model_fingerprint("default") == before
    _touch(folder / "model.safetensors")  # re-imported weights
    assert refs.model_fingerprint("default") != before


def test_hub_id_resolves_to_its_snapshot_files(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    snap = _checkpoint(repo / "snapshots" / ("a" * 40))
    before = refs.model_fingerprint("org/tiny")
    assert refs.model_fingerprint("org/tiny") == before
    assert refs.model_fingerprint("org/other") != before  # not cached: "unresolved", another name
    _touch(snap / "model.safetensors")
    after_touch = refs.model_fingerprint("org/tiny")
    assert after_touch != before
    _checkpoint(repo / "snapshots" / ("b" * 40))  # a new revision downloaded: refs/main moves
    (repo / "refs" / "main").write_text("b" * 40)
    assert refs.model_fingerprint("org/tiny") not in (before, after_touch)


def test_a_run_chain_on_default_resolves_down_to_the_default_files(tmp_path, monkeypatch):
    from alignkit.models import DEFAULT_NAME

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    folder = _checkpoint(tmp_path / "cache" / "models" / DEFAULT_NAME)
    run = tmp_path / "sft"
    _checkpoint(run / "final")
    (run / "run.json").write_text(json.dumps({"base": "default"}))
    before = refs.model_fingerprint(str(run))
    _touch(folder / "model.safetensors")
    assert refs.model_fingerprint(str(run)) != before
    before = refs.model_fingerprint(str(run))
    _touch(run / "final" / "model.safetensors")
    assert refs.model_fingerprint(str(run)) != before


def test_pairs_fingerprint_covers_max_lengths_and_truncation(tokenizer):
    from alignkit.data.formats import PreferenceRow
    from alignkit.data.tokenize import tokenize_pairs

    rows = [PreferenceRow(prompt=({"role": "user", "content": "word " * 60},), chosen="yes " * 20,
                          rejected="no " * 20, source="t:1")]
    prints = set()
    for max_length, max_prompt in ((256, 128), (64, 32), (64, 16)):
        pairs, _ = tokenize_pairs(tokenizer, rows, max_length=max_length, max_prompt_length=max_prompt)
        prints.add(refs.pairs_fingerprint(pairs))
    assert len(prints) == 3
