"""`alignkit export`: a run as a checkpoint that loads with transformers alone.

A reward run (`method: reward`) exports as a `*ForSequenceClassification` checkpoint with
`num_labels=1` that `AutoModelForSequenceClassification` loads alone. Its logits are the raw
reward; `config.reward_offset` is what alignkit subtracts to centre it. Its pad token is set to a
special token other than the EOS, because transformers reads the score at the last non-pad token
and alignkit reads it at the EOS: score `[prompt, answer, EOS]`, right-padded with that pad id.

With `--merge`, the run's adapter and those of every earlier stage it started from (SFT -> DPO)
are merged into the weights, giving a plain `AutoModelForCausalLM.from_pretrained(DIR)` checkpoint
with its tokenizer and chat template. Without it, the adapter is copied as it is (peft format) and
`base_model.txt` names what it applies to. That is refused when the run started from another run's
LoRA adapter (SFT -> DPO): its `adapter_config.json` names the root model, onto which
`PeftModel.from_pretrained` would load it without a word, giving a model that was never trained;
only `--merge` writes what that chain produced.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from alignkit.errors import UserError
from alignkit.models import base_of, is_run_dir, load_model, load_tokenizer
from alignkit.reward_model import export_pad_id, is_reward_run, load_reward_run


def export(run: Path, out: Path, *, merge: bool = True) -> Path:
    if not is_run_dir(run):
        raise UserError("not a run directory (no run.json)", where=str(run))
    if not (run / "final").is_dir():
        raise UserError("the run has not finished (no final/)", where=str(run),
                        hint=f"finish it first: alignkit train --resume {run}")
    if not merge:
        _check_unmerged(run)
    if out.exists() and any(out.iterdir()):
        raise UserError("the output directory is not empty", where=str(out), hint="choose a new directory")
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    if merge and is_reward_run(run):
        _export_reward(run, tmp)
    elif merge:
        model = load_model(str(run), dtype="float32")
        model.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(str(run)).save_pretrained(tmp)
    else:
        shutil.copytree(run / "final", tmp)
        info = json.loads((run / "run.json").read_text())
        (tmp / "base_model.txt").write_text(f"{info['base']}\n(root model: {base_of(str(run))})\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def _check_unmerged(run: Path) -> None:
    """Refuse an adapter-only export whose adapter sits on an earlier stage's adapter.

    The adapter's `base_model_name_or_path` is the model it was trained on as transformers saw it:
    for a base run with its own adapter that is the root model (the earlier adapter was merged into
    it in memory), so the adapter alone cannot be loaded onto the right weights. A base run that was
    fully fine-tuned is fine: its `final/` is a plain checkpoint, and that is the path named.
    """
    if not (run / "final" / "adapter_config.json").is_file():
        return  # full fine-tuning: final/ is the whole model
    base = Path(json.loads((run / "run.json").read_text())["base"])
    if is_run_dir(base) and (base / "final" / "adapter_config.json").is_file():
        raise UserError(f"this run's adapter was trained on top of the run {base}, itself an adapter on "
                        f"{base_of(str(base))}; exported alone it would load onto {base_of(str(base))} "
                        "and give another model than the one trained", where=str(run),
                        hint=f"pass --merge: alignkit export {run} --merge --out DIR writes every stage's "
                             "adapter merged into one plain checkpoint")


def _export_reward(run: Path, out: Path) -> None:
    model, tokenizer, offset = load_reward_run(run)
    pad = export_pad_id(tokenizer)
    if pad is not None:
        model.config.pad_token_id = pad
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    model.config.reward_offset = offset
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
