"""Fixtures of the training tests: a tiny Llama with SmolLM2's tokenizer, and 16 Task API pairs.
A module that needs another model (the small-vocabulary one of the online-RL tests, a wider reward
model) defines its own `tiny_ckpt`, which takes precedence."""

from __future__ import annotations

from pathlib import Path

import pytest
from tinymodels import save_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny Llama with SmolLM2's tokenizer (see tinymodels.save_tiny_checkpoint)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    lines = (ROOT / "examples/task_api/data/train.jsonl").read_text().splitlines()[:16]
    out.write_text("\n".join(lines) + "\n")
    return out
