"""The command line's own surface: `train --help` lists every config field with its real default and
meaning, every option has help, `--version`, the progress line's ETA, and the quiet CLI entry
(no weight-loading progress bars, no known-harmless FutureWarnings, offline unless opted in)."""

from __future__ import annotations

import argparse
import os
import warnings

import pytest

import alignkit
import alignkit.cli as cli


def test_fields_help_shows_factory_defaults_and_meanings():
    text = cli._fields_help()
    assert "PydanticUndefined" not in text
    assert "  train.trackers = []  -- Report metrics through accelerate's trackers as well as log.jsonl" in text
    assert "  model.lora.r = 16  -- Adapter rank" in text
    assert "  train.beta = 0.1  -- KL strength for DPO-family losses" in text
    # the first sentence, not the first physical line of a wrapped docstring, and not cut at "e.g."
    assert "a hub id already in the local cache, or another run's directory" in text
    assert "never trained on (e.g. `task_api`)" in text
    fields = [ln for ln in text.splitlines() if ln.startswith("  ")]
    assert fields and all(" -- " in ln for ln in fields), [ln for ln in fields if " -- " not in ln]


def test_every_option_has_help():
    parser = cli.build_parser()
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += [f"{name} {a.option_strings or a.dest}" for a in sub._actions if not a.help]
        elif not action.help:
            missing.append(str(action.option_strings))
    assert missing == []


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"alignkit {alignkit.__version__}"


def test_eta_is_unknown_until_a_step_has_been_timed(monkeypatch, capsys):
    import time

    clock = iter([100.0, 102.0, 106.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    show = cli._progress()
    for step in (1, 2, 3):
        show(step, 10, {"loss": 0.5, "tokens_per_s": 10.0})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("ETA ?")  # one step done: no rate yet (it said "ETA 0s")
    assert lines[1].endswith("ETA 16s")  # step 2 took 2 s, 8 to go
    assert lines[2].endswith("ETA 21s")  # 6 s for steps 2-3, 7 to go


def test_cli_entry_silences_progress_bars_and_harmless_warnings_only(monkeypatch):
    from transformers.utils import logging as hf_logging

    for var in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS", "ALIGNKIT_ALLOW_DOWNLOAD"):
        monkeypatch.setenv(var, "x")  # recorded, so the test leaves the environment as it found it
        monkeypatch.delenv(var)
    was = hf_logging.is_progress_bar_enabled()
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            cli._quiet_libraries()
            warn = warnings.warn
            warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1)
            warn("a real problem", FutureWarning, stacklevel=1)
            warn("`is_gradient_checkpointing` is deprecated", UserWarning, stacklevel=1)  # other categories stay
        assert [str(w.message) for w in seen] == ["a real problem", "`is_gradient_checkpointing` is deprecated"]
        assert not hf_logging.is_progress_bar_enabled()
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    finally:
        if was:
            hf_logging.enable_progress_bar()


def test_cli_entry_stays_online_when_downloads_are_allowed(monkeypatch):
    from transformers.utils import logging as hf_logging

    for var in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(var, "x")
        monkeypatch.delenv(var)
    monkeypatch.setenv("ALIGNKIT_ALLOW_DOWNLOAD", "1")
    was = hf_logging.is_progress_bar_enabled()
    try:
        with warnings.catch_warnings():
            cli._quiet_libraries()
        assert "HF_HUB_OFFLINE" not in os.environ
    finally:
        if was:
            hf_logging.enable_progress_bar()
