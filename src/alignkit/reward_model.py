"""Reward models: a scalar head on a causal LM's backbone, read at the answer's end-of-turn token.

A reward model here is a transformers `*ForSequenceClassification` model with `num_labels=1`
(backbone + `score` linear head, no bias), built from the causal LM a run starts from (the SFT
model, or the embedded default). Using that class, rather than a head of our own, means LoRA
(`task_type="SEQ_CLS"` keeps `score` trainable) and export (`AutoModelForSequenceClassification`)
are the well-kept peft/transformers pieces.

The forward is ours: the backbone runs on the prefix-shared pair layout (`alignkit.data.collate`:
one row `[prompt, chosen, rejected]` per pair) and the head reads the hidden state of each
segment's last token, its EOS / end-of-turn token (OpenRLHF's convention; TRL reads the last
non-pad token, which for SmolLM2 - whose pad token *is* its EOS - is the token before the EOS).

After training, rewards are shifted by an offset so that they average 0 on the training answers
(N+ implementation details, Huang et al. 2024, sec. 4.2); the offset lives in `final/reward.json`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from alignkit.data.collate import Batch, collate_single
from alignkit.errors import UserError
from alignkit.logprobs import decoder_mask

REWARD_FILE = "reward.json"


def to_reward_model(causal, init_std: float | None = None):
    """A `*ForSequenceClassification` (num_labels=1) sharing `causal`'s backbone weights.

    The head starts at N(0, 1/sqrt(hidden+1)) (Stiennon et al. 2020 code; N+ details), so initial
    rewards are O(1). `causal` itself is left untouched; the backbone tensors are copied.
    """
    from transformers import AutoModelForSequenceClassification

    cfg = causal.config.__class__.from_dict(causal.config.to_dict())
    cfg.num_labels = 1
    cfg.architectures = None
    if cfg.pad_token_id is None:
        cfg.pad_token_id = cfg.eos_token_id if isinstance(cfg.eos_token_id, int) else None
    dtype = next(causal.parameters()).dtype
    try:
        rm = AutoModelForSequenceClassification.from_config(cfg, dtype=dtype)
    except ValueError as e:
        raise UserError(f"this architecture has no sequence-classification head in transformers: {e}",
                        where=f"model {causal.config.model_type}",
                        hint="use a Llama, Qwen2, Mistral, Gemma, Phi-3 or GPT-2 style model") from None
    prefix = rm.base_model_prefix
    missing, unexpected = getattr(rm, prefix).load_state_dict(getattr(causal, prefix).state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"backbone weights do not match: missing {missing}, unexpected {unexpected}")
    head = rm.score if hasattr(rm, "score") else None
    if head is None:
        raise UserError("the sequence-classification model has no `score` head",
                        where=f"model {causal.config.model_type}")
    std = init_std if init_std is not None else 1.0 / math.sqrt(cfg.hidden_size + 1)
    with torch.no_grad():
        head.weight.normal_(0.0, std, generator=torch.Generator().manual_seed(0))
    return rm.to(next(causal.parameters()).device)


def _parts(model):
    """(backbone, score head) through a peft wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix), base.score


def segment_rewards(model, batch: Batch) -> torch.Tensor:
    """(S,) scalar reward of each segment of `batch`, read at the segment's last token."""
    backbone, head = _parts(model)
    dtype = next(head.parameters()).dtype
    hidden = backbone(input_ids=batch.input_ids, position_ids=batch.position_ids,
                      attention_mask=decoder_mask(model, batch, dtype),
                      use_cache=False).last_hidden_state
    return head(hidden[batch.end_rows, batch.end_cols]).squeeze(-1).float()


class RewardForward(torch.nn.Module):
    """`segment_rewards` as a module forward (for accelerate's wrappers, like PolicyForward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> torch.Tensor:
        return segment_rewards(self.model, batch)


@torch.no_grad()
def score_items(model, items, pad_id: int, *, batch_size: int = 16, offset: float = 0.0) -> torch.Tensor:
    """(n,) rewards of items with `prompt_ids` / `completion_ids`, minus `offset`, on the CPU.

    Items are scored in length-sorted batches (little padding) and returned in input order.
    """
    if not items:
        return torch.zeros(0)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(items)), key=lambda i: len(items[i].prompt_ids) + len(items[i].completion_ids))
    out = torch.zeros(len(items))
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            batch = collate_single([items[i] for i in idx], pad_id).to(device)
            out[idx] = segment_rewards(model, batch).cpu() - offset
    finally:
        model.train(was_training)
    return out


def is_reward_run(path: str | Path) -> bool:
    p = Path(path)
    if not (p / "run.json").is_file():
        return False
    return json.loads((p / "run.json").read_text()).get("method") == "reward"


def load_reward_run(run: str | Path, *, device="cpu", dtype: str = "float32", where: str | None = None):
    """(reward model in eval mode, tokenizer, offset) of a finished `method: reward` run."""
    from alignkit.models import is_run_dir, load_model, load_tokenizer

    run = Path(run)
    where = where or str(run)
    if not is_run_dir(run):
        raise UserError(f"not a run directory (no run.json): {run}", where=where,
                        hint="name the output_dir of an `alignkit train` run with method: reward")
    info = json.loads((run / "run.json").read_text())
    if info.get("method") != "reward":
        raise UserError(f"{run} is a {info.get('method')!r} run, not a reward model", where=where,
                        hint="train one first: alignkit train examples/task_api/reward.yaml")
    final = run / "final"
    if not (final / REWARD_FILE).is_file():
        raise UserError(f"the reward run {run} has not finished (no final/{REWARD_FILE})", where=where,
                        hint=f"finish it: alignkit train --resume {run}")
    offset = float(json.loads((final / REWARD_FILE).read_text())["offset"])
    tokenizer = load_tokenizer(str(final))
    if (final / "adapter_config.json").is_file():
        from peft import PeftModel

        base = to_reward_model(load_model(info["base"], dtype=dtype, device=device))
        model = PeftModel.from_pretrained(base, final).merge_and_unload()
    else:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(final, dtype=getattr(torch, dtype),
                                                                   use_safetensors=True).to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer, offset


def write_reward_info(final: Path, offset: float, **extra) -> None:
    (final / REWARD_FILE).write_text(json.dumps({"offset": offset, "score_at": "eos", **extra}, indent=1))


def export_pad_id(tokenizer) -> int | None:
    """A pad id for the exported classifier that is not the EOS id.

    transformers' sequence classifiers read the score at the last token that is *not* the pad id;
    with pad == EOS (SmolLM2) that is the token before the EOS, not the one alignkit scored. Any
    other special token that never ends an answer works as pad; None when there is none.
    """
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos:
        return tokenizer.pad_token_id
    for tid in getattr(tokenizer, "all_special_ids", []):
        if tid != eos:
            return int(tid)
    return None
