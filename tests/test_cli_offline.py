"""Hub ids are offline by default: a hub id that is not in the local cache is one UserError naming
`model.name_or_path` and how to provide the files, at once and without touching the network; a cached
one loads; `ALIGNKIT_ALLOW_DOWNLOAD=1` lets transformers download."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import yaml
from tinymodels import save_tiny_checkpoint

from alignkit.cli import main
from alignkit.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
MISSING = "nobody-xyz/not-a-model"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (instead of retrying for a minute)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.delenv("ALIGNKIT_ALLOW_DOWNLOAD", raising=False)


@pytest.mark.parametrize("what", ["tokenizer", "model"])
def test_uncached_hub_id_is_one_user_error(no_network, what):
    from alignkit.models import load_model, load_tokenizer

    t0 = time.perf_counter()
    with pytest.raises(UserError) as e:
        (load_tokenizer if what == "tokenizer" else load_model)(MISSING)
    assert time.perf_counter() - t0 < 5
    text = str(e.value)
    assert f"config field model.name_or_path ({MISSING})" in text
    assert "not in the Hugging Face cache" in text
    assert "huggingface-cli download" in text and "ALIGNKIT_ALLOW_DOWNLOAD=1" in text


def test_train_with_uncached_hub_id_exits_2_naming_the_field(no_network, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"method": "dpo", "output_dir": str(tmp_path / "out"),
                                   "data": {"train": str(ROOT / "examples/task_api/data/train.jsonl")}}))
    t0 = time.perf_counter()
    assert main(["train", str(cfg), f"model.name_or_path={MISSING}", "--no-eval"]) == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err
    assert err.startswith("error: config field model.name_or_path (nobody-xyz/not-a-model)")
    assert "Traceback" not in err and "huggingface-cli download" in err
    assert not (tmp_path / "out").exists()


def test_cached_hub_id_loads_offline(no_network, tmp_path, monkeypatch):
    """A hub id that is in the cache (laid out as huggingface_hub writes it) loads without the network."""
    import huggingface_hub.constants as hc

    from alignkit.models import load_model, load_tokenizer

    repo = tmp_path / "hub" / "models--someone--tiny"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    save_tiny_checkpoint(repo / "snapshots" / commit)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_tokenizer("someone/tiny").eos_token is not None
    assert load_model("someone/tiny").config.num_hidden_layers == 2


def test_download_opt_in_passes_the_hub_id_on(monkeypatch):
    from alignkit import models

    monkeypatch.setenv("ALIGNKIT_ALLOW_DOWNLOAD", "1")
    assert models.downloads_allowed() and models._resolve_path(MISSING) == MISSING
    monkeypatch.setenv("ALIGNKIT_ALLOW_DOWNLOAD", "0")
    assert not models.downloads_allowed()
