"""`alignkit chat` on a tiny model with SmolLM2's tokenizer and chat template, with scripted input.

Checked: slash commands stay local (/help never reaches the model), a plain checkpoint directory
works (no config.yaml needed), the system prompt (given, from a file, or a run's own) reaches the
sampler through the chat template, and the temperature picks greedy or sampling.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tinymodels import save_tiny_checkpoint

from alignkit.cli import main
from alignkit.errors import UserError
from alignkit.eval.chat import chat
from alignkit.models import load_tokenizer
from alignkit.sample import encode_prompts, sample


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tok(ckpt):
    return load_tokenizer(str(ckpt))


class Recorder:
    """The real sampler, remembering the prompt ids and options of every call."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, model, prompt_ids, **kw):
        self.calls.append({"prompt_ids": [list(p) for p in prompt_ids], **kw})
        return sample(model, prompt_ids, **kw)


def script(*lines: str):
    it = iter(lines)

    def read(_prompt: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


def _ids(tok, messages) -> list[int]:
    return encode_prompts(tok, [messages])[0]


def test_slash_commands_stay_local_and_a_checkpoint_dir_works(ckpt, tok):
    assert not (ckpt / "config.yaml").exists()  # a plain transformers checkpoint, not a run
    rec, out = Recorder(), []
    history = chat(str(ckpt), read=script("/help", "hello", "/bogus", "/reset", "hi there", "//etc", "/quit",
                                          "never read"),
                   write=out.append, sampler=rec, max_new_tokens=3)
    assert len(rec.calls) == 3  # hello, hi there, /etc: no command reached the model
    decoded = [tok.decode(c["prompt_ids"][0]) for c in rec.calls]
    assert not any("/help" in d or "/bogus" in d or "/reset" in d for d in decoded)
    assert any("/reset" in line and "/system" in line for line in out)  # the help text
    assert any("unknown command /bogus" in line for line in out)
    # /reset forgot "hello": the second prompt is exactly the one-turn conversation
    assert rec.calls[1]["prompt_ids"][0] == _ids(tok, [{"role": "user", "content": "hi there"}])
    assert history[-2] == {"role": "user", "content": "/etc"}  # '//' escapes a leading slash
    assert all(c["do_sample"] is False and c["max_new_tokens"] == 3 for c in rec.calls)  # greedy by default


def test_system_prompt_reaches_the_sampler_through_the_chat_template(ckpt, tok):
    rec = Recorder()
    chat(str(ckpt), system_prompt="You are GardenBot.", read=script("How do I prune roses?", "/system Be brief.",
                                                                     "And tomatoes?"),
         write=lambda _: None, sampler=rec, max_new_tokens=2)
    first = rec.calls[0]["prompt_ids"][0]
    assert first == _ids(tok, [{"role": "system", "content": "You are GardenBot."},
                               {"role": "user", "content": "How do I prune roses?"}])
    assert "<|im_start|>system\nYou are GardenBot.<|im_end|>" in tok.decode(first)
    second = tok.decode(rec.calls[1]["prompt_ids"][0])
    assert "<|im_start|>system\nBe brief.<|im_end|>" in second and "GardenBot" not in second
    assert "How do I prune roses?" in second  # the conversation goes on under the new system prompt


def test_a_run_chats_with_its_own_system_prompt(tmp_path, ckpt, tok):
    run = tmp_path / "run"
    shutil.copytree(ckpt, run / "final")  # a full fine-tuning run: final/ is the model
    (tmp_path / "system.txt").write_text("You are the run's own assistant.\n")
    (run / "run.json").write_text(json.dumps({"base": str(ckpt), "status": "done"}))
    (run / "config.yaml").write_text(f"method: sft\nmodel:\n  name_or_path: {ckpt}\n"
                                     f"data:\n  system_prompt_file: {tmp_path / 'system.txt'}\n")
    rec = Recorder()
    chat(str(run), read=script("hi"), write=lambda _: None, sampler=rec, max_new_tokens=2)
    assert rec.calls[0]["prompt_ids"][0] == _ids(tok, [{"role": "system", "content": "You are the run's own assistant."},
                                                       {"role": "user", "content": "hi"}])
    rec = Recorder()
    chat(str(run), system_prompt="", read=script("hi"), write=lambda _: None, sampler=rec, max_new_tokens=2)
    assert rec.calls[0]["prompt_ids"][0] == _ids(tok, [{"role": "user", "content": "hi"}])  # "" turns it off


def test_cli_options_system_prompt_file_temperature_and_model(tmp_path, ckpt, tok, monkeypatch, capsys):
    rec = Recorder()
    monkeypatch.setattr("alignkit.sample.sample", rec)
    monkeypatch.setattr("builtins.input", script("/help", "hello"))
    (tmp_path / "sys.txt").write_text("Answer in French.\n")
    code = main(["chat", "--model", str(ckpt), "--system-prompt-file", str(tmp_path / "sys.txt"),
                 "--temperature", "0.7", "--max-new-tokens", "2"])
    assert code == 0 and len(rec.calls) == 1
    call = rec.calls[0]
    assert call["do_sample"] is True and call["temperature"] == 0.7 and call["max_new_tokens"] == 2
    assert call["prompt_ids"][0] == _ids(tok, [{"role": "system", "content": "Answer in French."},
                                               {"role": "user", "content": "hello"}])
    assert "/system TEXT" in capsys.readouterr().out


def test_bad_targets_are_user_errors(tmp_path, ckpt):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        chat(str(tmp_path / "empty"), read=script())
    bare = tmp_path / "bare"
    shutil.copytree(ckpt, bare)
    for f in bare.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(UserError, match="no tokenizer"):
        chat(str(bare), read=script())
    with pytest.raises(UserError, match="not both"):
        chat(str(ckpt), model=str(ckpt), read=script())
    with pytest.raises(UserError, match="temperature"):
        chat(str(ckpt), temperature=-1, read=script())
