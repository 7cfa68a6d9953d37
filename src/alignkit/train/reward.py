"""`method: reward`: train a Bradley-Terry reward model on preference pairs.

The objective plugs into the offline loop (`alignkit.train.loop`) like any paired method: one
prefix-shared forward per pair, the reward read at each answer's EOS token, the loss from
`alignkit.losses.reward.bradley_terry_loss`. After training, `finish_reward_run` computes the offset
that centres rewards on the training answers and the held-out metrics.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from alignkit.data.collate import Batch, PromptCompletion
from alignkit.losses.reward import bradley_terry_loss
from alignkit.reward_model import RewardForward, score_items, write_reward_info
from alignkit.train.objectives import PairBatches


class RewardObjective(PairBatches):
    """Bradley-Terry loss with an optional margin and a reward-centering term."""

    kind = "reward"
    make_forward = RewardForward  # rewards at each answer's EOS, not completion log-probs

    def __init__(self, pad_id: int, *, margin: float = 0.0, center_rewards_coefficient: float = 0.0,
                 shared: bool = True):
        self.pad_id = pad_id
        self.margin = margin
        self.center = center_rewards_coefficient
        self.shared = shared

    def loss(self, forward, model, batch: Batch, ids: list[int]):
        rewards = forward(batch)  # (2b,): chosen at even, rejected at odd segments
        c, r = rewards[0::2], rewards[1::2]
        out = bradley_terry_loss(c, r, margin=self.margin or None, center_rewards_coefficient=self.center)
        c, r = c.detach(), r.detach()
        return out.losses.sum(), {
            "loss": out.losses.detach().sum(), "rewards/chosen": c.sum(), "rewards/rejected": r.sum(),
            "rewards/margins": (c - r).sum(), "rewards/accuracies": (c > r).float().sum(),
        }


def answers(pairs) -> list[PromptCompletion]:
    """Each pair as two (prompt, answer) items: chosen at even, rejected at odd indices."""
    out = []
    for p in pairs:
        out += [PromptCompletion(p.prompt_ids, p.chosen_ids), PromptCompletion(p.prompt_ids, p.rejected_ids)]
    return out


def pair_reward_metrics(chosen: torch.Tensor, rejected: torch.Tensor, chosen_len, rejected_len) -> dict:
    """Held-out reward-model metrics: accuracy, margin, means, and the correlation of reward with
    answer length (a reward model that mostly counts tokens shows |corr| near 1)."""
    r = torch.cat([chosen, rejected]).double()
    n = torch.tensor(list(chosen_len) + list(rejected_len), dtype=torch.float64)
    corr = float(torch.corrcoef(torch.stack([r, n]))[0, 1]) if len(r) > 2 and r.std() > 0 and n.std() > 0 else None
    return {
        "accuracy": float((chosen > rejected).float().mean()),
        "margin": float((chosen - rejected).mean()),
        "chosen_mean": float(chosen.mean()), "rejected_mean": float(rejected.mean()),
        "reward_std": float(r.std()) if len(r) > 1 else 0.0,
        "length_correlation": None if corr is None or math.isnan(corr) else corr,
        "pairs": len(chosen),
    }


def evaluate_pairs(model, pairs, pad_id: int, *, batch_size: int, offset: float = 0.0) -> dict:
    scores = score_items(model, answers(pairs), pad_id, batch_size=batch_size, offset=offset)
    return pair_reward_metrics(scores[0::2], scores[1::2], [len(p.chosen_ids) for p in pairs],
                               [len(p.rejected_ids) for p in pairs])


def finish_reward_run(model, train_pairs, eval_pairs, pad_id: int, final: Path, *, batch_size: int,
                      max_offset_pairs: int = 512) -> dict:
    """Offset (mean reward on up to `max_offset_pairs` training pairs' answers) -> final/reward.json;
    returns the metrics on held-out pairs after centring (`metrics.json` of a reward run)."""
    subset = train_pairs[:max_offset_pairs]
    raw = score_items(model, answers(subset), pad_id, batch_size=batch_size)
    offset = float(raw.mean()) if len(raw) else 0.0
    train_metrics = pair_reward_metrics(raw[0::2] - offset, raw[1::2] - offset,
                                        [len(p.chosen_ids) for p in subset], [len(p.rejected_ids) for p in subset])
    held = evaluate_pairs(model, eval_pairs, pad_id, batch_size=batch_size, offset=offset) if eval_pairs else {}
    write_reward_info(final, offset, offset_pairs=len(subset))
    return {"offset": offset, "train": train_metrics, "eval": held}


def score_file(reward_run: str, data: str, out: Path, *, system_prompt_file: str | None = None,
               batch_size: int = 16) -> dict:
    """`alignkit score`: per-row rewards of a preference file (both answers) or of prompt/completion
    rows, written to `out` as JSONL (written to a temporary file and renamed: never half a file)."""
    import json as _json

    from alignkit.config import load_config
    from alignkit.data import formats, tokenize
    from alignkit.errors import UserError
    from alignkit.reward_model import load_reward_run

    model, tokenizer, offset = load_reward_run(reward_run, where="--reward")
    cfg = load_config(Path(reward_run) / "config.yaml", paths_from_file=False)
    spf = system_prompt_file or cfg.data.system_prompt_file
    system = Path(spf).read_text(encoding="utf-8").strip() if spf and Path(spf).is_file() else None
    kw = dict(max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length)
    try:
        rows, _ = formats.load_preferences(data, system=system)
        paired = True
    except UserError:
        rows, _ = formats.load_sft(data, system=system)
        paired = False
    if paired:
        pairs, _ = tokenize.tokenize_pairs(tokenizer, rows, **kw)
        scores = score_items(model, answers(pairs), tokenizer.pad_token_id, batch_size=batch_size, offset=offset)
        records = [{"source": p.source, "chosen_score": float(scores[2 * i]), "rejected_score": float(scores[2 * i + 1])}
                   for i, p in enumerate(pairs)]
        summary = evaluate_pairs(model, pairs, tokenizer.pad_token_id, batch_size=batch_size, offset=offset)
    else:
        items, _ = tokenize.tokenize_sft_rows(tokenizer, rows, **kw)
        scores = score_items(model, items, tokenizer.pad_token_id, batch_size=batch_size, offset=offset)
        records = [{"source": it.source, "score": float(s)} for it, s in zip(items, scores, strict=True)]
        summary = {"accuracy": None}
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(_json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp.replace(out)
    return {"rows": len(records), **summary}
