"""`alignkit chat RUN`: talk to a trained model in the terminal (greedy, the run's system prompt)."""

from __future__ import annotations

from pathlib import Path

from alignkit.config import load_config
from alignkit.eval.generation import generate
from alignkit.models import load_model, load_tokenizer


def chat(run: Path, *, max_new_tokens: int = 128, read=input, write=print) -> None:
    from alignkit.train.run import system_prompt

    cfg = load_config(run / "config.yaml", paths_from_file=False)
    tokenizer = load_tokenizer(str(run))
    model = load_model(str(run), dtype=cfg.model.dtype)
    system = system_prompt(cfg)
    history = [{"role": "system", "content": system}] if system else []
    write(f"chatting with {run} (empty line or Ctrl-D to quit, /reset to forget the conversation)")
    while True:
        try:
            text = read("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        if text == "/reset":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": text})
        answer = generate(model, tokenizer, [history], max_new_tokens=max_new_tokens, batch_size=1)[0]
        history.append({"role": "assistant", "content": answer})
        write(f"model> {answer}")
