"""`alignkit chat`: talk to a model in the terminal.

What it talks to: a run directory (its final model; by default the run's own system prompt), a plain
checkpoint directory (config.json + tokenizer), `default` (the embedded SmolLM2), or `--model M
[--adapter A]`. Lines starting with `/` are commands handled here and never sent to the model
(`/help`, `/reset`, `/system TEXT`, `/quit`); `//text` sends `/text`. Greedy unless a temperature
above 0 is given; the answers are drawn by `alignkit.sample.sample`, the same loop evaluation uses.

`chat_loop` is the loop alone, with the input and output functions and the sampler injectable, so it
runs in tests without a terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alignkit.errors import UserError
from alignkit.models import DEFAULT_MODEL, is_run_dir, load_model, load_tokenizer
from alignkit.sample import encode_prompts, pad_id, stop_ids

HELP = """commands (handled here, never sent to the model):
  /help          this list
  /reset         forget the conversation (the system prompt stays)
  /system TEXT   use TEXT as the system prompt from the next answer on
  /system        show the system prompt;  /system none  removes it
  /quit          leave (Ctrl-D and /exit too)
  //text         send a message that starts with '/'"""


def load_chat_model(target: str | None = None, *, model: str | None = None, adapter: str | None = None):
    """(model, tokenizer, the run's system prompt or None, a display name) for `alignkit chat`."""
    from alignkit.train.run import system_prompt

    if target and model:
        raise UserError("give the model once: as TARGET or as --model, not both", where="--model",
                        hint="alignkit chat runs/dpo   or   alignkit chat --model runs/sft --adapter runs/dpo/final")
    spec = target or model
    if not spec:
        raise UserError("alignkit chat needs a model", hint="alignkit chat RUN_DIR | CHECKPOINT_DIR | default, "
                                                            "or --model M [--adapter A]")
    path = Path(spec)
    system, dtype = None, "auto"
    if spec != DEFAULT_MODEL and is_run_dir(path):
        if (path / "config.yaml").is_file():
            from alignkit.config import load_config

            cfg = load_config(path / "config.yaml", paths_from_file=False)
            dtype = cfg.model.dtype
            try:
                system = system_prompt(cfg)
            except UserError as e:
                raise UserError(f"the run's system prompt file is missing: {cfg.data.system_prompt_file}",
                                where=str(path / "config.yaml"),
                                hint="run from the directory you trained in, or pass --system-prompt TEXT / "
                                     "--system-prompt-file FILE") from e
    elif spec != DEFAULT_MODEL and path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError("not a run directory (no run.json) nor a model checkpoint (no config.json)",
                            where=str(path), hint="pass a run's output_dir, a transformers checkpoint or `default`")
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            raise UserError("the checkpoint has no tokenizer files (tokenizer.json / tokenizer_config.json)",
                            where=str(path), hint="save the tokenizer next to the weights (tokenizer.save_pretrained)")
    lm = load_model(spec, dtype=dtype)
    tok_source = spec
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise UserError("not a LoRA adapter directory (no adapter_config.json)", where=adapter,
                            hint="pass a run's final/ directory or another peft adapter")
        lm = PeftModel.from_pretrained(lm, adapter).merge_and_unload()
        if (Path(adapter) / "tokenizer_config.json").is_file():
            tok_source = adapter
    tokenizer = load_tokenizer(tok_source)
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the tokenizer has no chat template, so a conversation cannot be formatted",
                        where=str(tok_source), hint="chat with an instruct/chat model")
    return lm.eval(), tokenizer, system, spec + (f" + {adapter}" if adapter else "")


def chat_loop(model, tokenizer, *, system: str | None = None, temperature: float = 0.0,
              max_new_tokens: int = 128, read: Callable[[str], str] | None = None,
              write: Callable[[str], None] = print, sampler: Callable | None = None, seed: int = 0) -> list[dict]:
    """Read lines, answer them, until `/quit` or end of input; returns the conversation (without the
    system message).

    Args:
        system: the system message put before the conversation (None: none).
        temperature: 0 = greedy; above 0, plain sampling at this temperature (no top-k/top-p).
        read: ``read(prompt) -> line``, raising EOFError at the end (default: `input`).
        write: prints one message.
        sampler: `alignkit.sample.sample` or a stand-in with its signature (tests record the prompt
            ids it receives).
        seed: the sampling seed of the first answer (the n-th answer uses seed + n).
    """
    if sampler is None:
        from alignkit.sample import sample as sampler
    read = read or input
    history: list[dict] = []
    stops = stop_ids(model, tokenizer)
    turn = 0
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            write("")
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/") and not text.startswith("//"):
            command, _, arg = text.partition(" ")
            command, arg = command.lower(), arg.strip()
            if command in ("/quit", "/exit"):
                break
            if command == "/help":
                write(HELP)
            elif command == "/reset":
                history = []
                write("(conversation forgotten)")
            elif command == "/system" and not arg:
                write(f"system prompt: {system}" if system else "(no system prompt)")
            elif command == "/system":
                system = None if arg.lower() == "none" else arg
                write("(system prompt removed)" if system is None else "(system prompt set)")
            else:
                write(f"unknown command {command}; /help lists the commands (//text sends '/text')")
            continue
        if text.startswith("//"):
            text = text[1:]
        history.append({"role": "user", "content": text})
        conversation = ([{"role": "system", "content": system}] if system else []) + history
        prompt = encode_prompts(tokenizer, [conversation])
        out = sampler(model, prompt, stop_ids=stops, pad_id=pad_id(tokenizer, stops), max_new_tokens=max_new_tokens,
                      do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0,
                      batch_size=1, seed=seed + turn)
        turn += 1
        answer = tokenizer.decode(out.completion_ids[0], skip_special_tokens=True).strip()
        history.append({"role": "assistant", "content": answer})
        write(f"model> {answer}")
    return history


def chat(target: str | Path | None = None, *, model: str | None = None, adapter: str | None = None,
         system_prompt: str | None = None, system_prompt_file: str | None = None, temperature: float = 0.0,
         max_new_tokens: int = 128, read: Callable[[str], str] | None = None, write: Callable[[str], None] = print,
         sampler: Callable | None = None) -> list[dict]:
    """`alignkit chat TARGET | --model M [--adapter A]`: load the model, then `chat_loop`.

    The system prompt is `system_prompt`, else the content of `system_prompt_file`, else (for a run)
    the run's own `data.system_prompt_file`, else none.
    """
    if system_prompt is not None and system_prompt_file is not None:
        raise UserError("give --system-prompt or --system-prompt-file, not both", where="--system-prompt")
    if not temperature >= 0:
        raise UserError(f"the temperature must be 0 (greedy) or more, got {temperature}", where="--temperature")
    if system_prompt_file is not None:
        file = Path(system_prompt_file)
        if not file.is_file():
            raise UserError("system prompt file not found", where=str(file), hint="check the path")
        system_prompt = file.read_text(encoding="utf-8").strip()
    lm, tokenizer, run_system, name = load_chat_model(str(target) if target else None, model=model, adapter=adapter)
    system = system_prompt if system_prompt is not None else run_system
    system = system or None
    write(f"chatting with {name} ({'greedy' if temperature == 0 else f'temperature {temperature:g}'}, "
          f"system prompt: {'none' if system is None else repr(_short(system))}); /help lists the commands, "
          "/quit or Ctrl-D leaves")
    return chat_loop(lm, tokenizer, system=system, temperature=temperature, max_new_tokens=max_new_tokens,
                     read=read, write=write, sampler=sampler)


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
