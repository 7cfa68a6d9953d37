"""Shared fixtures: tiny random models built from a config (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `mixed_precision: auto` turns on bf16 autocast on CPUs with AVX512-BF16/AMX: pin it off, so a test
# computes the same on every machine (subprocesses inherit it); the bf16 tests ask for bf16 by name.
os.environ["ALIGNKIT_CPU_BF16"] = "0"
torch.set_num_threads(min(2, torch.get_num_threads()))

from tinymodels import tiny_llama  # noqa: E402


@pytest.fixture
def tiny_model():
    return tiny_llama()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
