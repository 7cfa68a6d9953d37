"""Security defaults: no remote code unless asked, no pickles unless allowed, safe YAML, and checkpoint
state read with `torch.load(weights_only=True)`."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from alignkit.errors import UserError


class _Stop(Exception):
    pass


def _fake_checkpoint(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")  # only looked at by name: from_pretrained is mocked
    return path


def test_trust_remote_code_is_off_by_default_and_passed_through(tmp_path, monkeypatch):
    import alignkit.models as models
    from alignkit.config import RunConfig

    assert RunConfig().model.trust_remote_code is False
    calls = []

    def fake(path, **kwargs):
        calls.append(kwargs)
        return torch.nn.Linear(2, 2)

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", fake)
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", fake)
    ckpt = _fake_checkpoint(tmp_path / "m")
    models.load_model(str(ckpt))
    models.load_model(str(ckpt), trust_remote_code=True)
    assert [c["trust_remote_code"] for c in calls] == [False, True]
    assert calls[0]["use_safetensors"] is True  # and never a pickle unless allow_pickle
    calls.clear()
    with pytest.raises(AttributeError):  # the Linear stand-in has no pad_token_id; the call is what counts
        models.load_tokenizer(str(ckpt))
    assert [c["trust_remote_code"] for c in calls] == [False] and calls[0].get("local_files_only") is True


@pytest.mark.parametrize("trust", [False, True])
def test_train_passes_the_config_value_to_tokenizer_and_model(tmp_path, monkeypatch, trust):
    import alignkit.train.run as run
    from alignkit.config import RunConfig

    seen = {}

    def tokenizer(name, **kwargs):
        seen["tokenizer"] = kwargs
        return object()

    def model(name, **kwargs):
        seen["model"] = kwargs
        raise _Stop

    monkeypatch.setattr(run, "load_tokenizer", tokenizer)
    monkeypatch.setattr(run, "prepare_data", lambda cfg, tok: run.Prepared([], [], ""))
    monkeypatch.setattr(run, "load_model", model)
    (tmp_path / "pairs.jsonl").write_text("{}\n")  # must exist (checked before loading); read by the stub
    cfg = RunConfig.model_validate({"output_dir": str(tmp_path / "out"), "model": {"trust_remote_code": trust},
                                    "data": {"train": str(tmp_path / "pairs.jsonl")}})
    with pytest.raises(_Stop):
        run.train(cfg, console=lambda *_: None)
    assert seen["tokenizer"]["trust_remote_code"] is trust and seen["model"]["trust_remote_code"] is trust
    assert seen["model"]["allow_pickle"] is False


@pytest.fixture
def pickle_ckpt(tmp_path) -> Path:
    """A tiny Llama whose only weights file is a pickle (pytorch_model.bin)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    out = tmp_path / "pickled"
    out.mkdir()
    model.config.save_pretrained(out)
    torch.save(model.state_dict(), out / "pytorch_model.bin")  # transformers 5 only writes safetensors
    return out


def test_pickle_checkpoint_needs_allow_pickle(pickle_ckpt):
    from alignkit.models import load_model

    with pytest.raises(UserError) as err:
        load_model(str(pickle_ckpt))
    assert "allow_pickle" in str(err.value) and str(pickle_ckpt) in str(err.value)
    model = load_model(str(pickle_ckpt), allow_pickle=True)
    want = torch.load(pickle_ckpt / "pytorch_model.bin", weights_only=True)
    torch.testing.assert_close(model.state_dict()["model.embed_tokens.weight"], want["model.embed_tokens.weight"])


@pytest.mark.parametrize("tag", [
    '!!python/object/apply:os.system ["touch {marker}"]',
    '!!python/object/apply:subprocess.check_call [["touch", "{marker}"]]',
    "!!python/name:os.system",
])
def test_yaml_python_tags_are_refused_and_not_run(tmp_path, tag):
    from alignkit.config import load_config

    marker = tmp_path / "executed"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"method: {tag.format(marker=marker)}\n")
    with pytest.raises(UserError) as err:
        load_config(cfg)
    assert str(cfg) in str(err.value)
    with pytest.raises(UserError):
        load_config(None, [f"method={tag.format(marker=marker)}"])
    assert not marker.exists()


class _Evil:
    """Unpickling this runs `Path.touch` on the marker: what a malicious state.pt would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_state_is_read_with_weights_only(tmp_path):
    from alignkit.train.checkpoint import (
        MANIFEST,
        _sha256,
        latest_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpt = save_checkpoint(tmp_path, 1, model, opt, sched, {"step": 1})
    load_checkpoint(ckpt, model, opt, sched)  # the honest checkpoint loads
    marker = tmp_path / "executed"
    state = torch.load(ckpt / "state.pt", weights_only=True)
    torch.save({**state, "extra": _Evil(marker)}, ckpt / "state.pt")
    manifest = json.loads((ckpt / MANIFEST).read_text())  # an attacker rewrites the manifest too
    manifest["files"]["state.pt"] = _sha256(ckpt / "state.pt")
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    assert latest_checkpoint(tmp_path)[0] == ckpt
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(ckpt, model, opt, sched)
    assert not marker.exists()
