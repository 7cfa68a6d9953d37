"""Reward models on a tiny random model with SmolLM2's real tokenizer.

Checked: the reward is read at each answer's EOS token (equal to transformers' own sequence
classifier on that exact sequence); padding and prefix sharing change no reward; a reward run
learns a planted preference (held-out accuracy > 0.9) and centres its rewards on the training
answers; the export loads with `AutoModelForSequenceClassification` alone and gives the same
scores; a resumed reward run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tinymodels import save_tiny_checkpoint

from alignkit.config import RunConfig
from alignkit.data.collate import collate_pairs, collate_single
from alignkit.data.tokenize import TokenizedPair, TokenizedSFT
from alignkit.errors import UserError
from alignkit.models import load_model
from alignkit.reward_model import load_reward_run, score_items, segment_rewards, to_reward_model
from alignkit.train.run import train

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = str(ROOT / "examples/task_api/system_prompt.txt")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-rm"), hidden_size=32, intermediate_size=64)


def _planted(path: Path, n: int, seed: int) -> Path:
    """Pairs whose chosen answer always says 'yes, done' and rejected 'no' (in random wording),
    so the preference is learnable from the answer alone."""
    rng = random.Random(seed)
    topics = ["the report", "the dentist", "groceries", "the invoice", "the backup", "my taxes", "the car"]
    rows = []
    for _ in range(n):
        t = rng.choice(topics)
        rows.append({"prompt": f"Please handle {t} {rng.randint(1, 99)}.",
                     "chosen": f"Yes, done: {t} is scheduled.",
                     "rejected": f"No. I will not touch {t}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(tmp: Path, ckpt: Path, train_file: Path, eval_file: Path | None, name: str, **train_kw) -> RunConfig:
    t = dict(learning_rate=3e-3, micro_batch_size=8, gradient_accumulation_steps=1, max_steps=30,
             warmup_ratio=0.0, lr_scheduler="constant", center_rewards_coefficient=0.01)
    t.update(train_kw)
    return RunConfig.model_validate({
        "method": "reward", "output_dir": str(tmp / name),
        "model": {"name_or_path": str(ckpt), "lora": {"r": 8, "alpha": 16}},
        "data": {"train": str(train_file), "eval": str(eval_file) if eval_file else None, "eval_fraction": 0.0,
                 "max_length": 96, "max_prompt_length": 64, "system_prompt_file": SYSTEM},
        "train": t, "eval": {"enabled": False}})


def _random_pairs(seed=0, n=3, vocab=100):
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return torch.randint(3, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
    return [TokenizedPair(ids(3, 9), ids(1, 6) + [2], ids(1, 8) + [2], False, f"r{i}") for i in range(n)]


@torch.no_grad()
def test_reward_is_read_at_the_eos_token_and_ignores_padding_and_sharing(tiny_ckpt):
    rm = to_reward_model(load_model(str(tiny_ckpt))).eval()
    pairs = _random_pairs()
    shared = segment_rewards(rm, collate_pairs(pairs, pad_id=0, shared=True))
    separate = segment_rewards(rm, collate_pairs(pairs, pad_id=0, shared=False))
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=1e-5)
    # transformers' own classifier on exactly [prompt, answer] reads the last non-pad token: with
    # SmolLM2's pad == EOS that is the token *before* the EOS, so give it a pad id that never occurs.
    assert rm.config.pad_token_id == 2
    rm.config.pad_token_id = 0
    for i, p in enumerate(pairs):
        for j, ans in enumerate((p.chosen_ids, p.rejected_ids)):
            ids = torch.tensor([p.prompt_ids + ans])
            assert ids[0, -1] == 2  # the last token is the EOS
            want = rm(input_ids=ids).logits[0, 0]
            assert shared[2 * i + j] == pytest.approx(float(want), abs=1e-5)
    # padding: the same answers scored alone and in a padded batch
    items = [TokenizedSFT(p.prompt_ids, p.chosen_ids, False, "") for p in pairs]
    alone = torch.stack([segment_rewards(rm, collate_single([it], pad_id=0))[0] for it in items])
    torch.testing.assert_close(segment_rewards(rm, collate_single(items, pad_id=0)), alone, atol=1e-5, rtol=1e-5)


def test_reward_run_learns_a_planted_preference_and_exports(tmp_path, tiny_ckpt):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignkit.export import export

    tr = _planted(tmp_path / "train.jsonl", 64, seed=1)
    ev = _planted(tmp_path / "eval.jsonl", 24, seed=2)
    run = train(_cfg(tmp_path, tiny_ckpt, tr, ev, "rm"), console=lambda *_: None)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval"]["accuracy"] > 0.9
    assert metrics["eval"]["margin"] > 0
    # centred on the training answers: their mean reward after the offset is ~0
    t = metrics["train"]
    assert (t["chosen_mean"] + t["rejected_mean"]) / 2 == pytest.approx(0.0, abs=1e-4)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["reward"]["offset"] == pytest.approx(metrics["offset"])

    model, tok, offset = load_reward_run(run)
    assert offset == pytest.approx(metrics["offset"])
    # `alignkit score` writes one row per pair with both scores, and agrees with the run's metrics
    from alignkit.cli import main

    scores_out = tmp_path / "scores.jsonl"
    assert main(["score", "--reward", str(run), "--data", str(ev), "--out", str(scores_out)]) == 0
    rows = [json.loads(x) for x in scores_out.read_text().splitlines()]
    assert len(rows) == 24 and rows[0]["source"].endswith("eval.jsonl:1")
    acc = sum(r["chosen_score"] > r["rejected_score"] for r in rows) / len(rows)
    assert acc == pytest.approx(metrics["eval"]["accuracy"])
    out = export(run, tmp_path / "exported")
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf.config.num_labels == 1 and hf.config.pad_token_id != hf_tok.eos_token_id
    assert hf.config.reward_offset == pytest.approx(offset)
    pairs = _random_pairs(seed=3, n=4, vocab=len(tok))
    items = [TokenizedSFT(p.prompt_ids, p.chosen_ids, False, "") for p in pairs]
    ours = score_items(model, items, pad_id=0, offset=offset)
    # right-padded batch with the exported pad id: transformers finds the EOS as the last non-pad token
    width = max(len(it.prompt_ids) + len(it.completion_ids) for it in items)
    ids = torch.full((len(items), width), hf.config.pad_token_id)
    mask = torch.zeros_like(ids)
    for r, it in enumerate(items):
        seq = it.prompt_ids + it.completion_ids
        ids[r, :len(seq)] = torch.tensor(seq)
        mask[r, :len(seq)] = 1
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits[:, 0] - hf.config.reward_offset
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_reward_resume_equals_uninterrupted(tmp_path, tiny_ckpt):
    from safetensors.torch import load_file

    tr = _planted(tmp_path / "train.jsonl", 32, seed=1)
    full = train(_cfg(tmp_path, tiny_ckpt, tr, None, "full", max_steps=4, save_every=2), console=lambda *_: None)

    def crash_at_3(step, total, row):
        if step == 3:
            raise KeyboardInterrupt("simulated crash after the step-2 checkpoint")

    cfg = _cfg(tmp_path, tiny_ckpt, tr, None, "cut", max_steps=4, save_every=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, console=lambda *_: None, progress=crash_at_3)
    assert not (Path(cfg.output_dir) / "final").exists()
    resumed = train(cfg, resume=True, console=lambda *_: None)
    a, b = load_file(full / "final/adapter_model.safetensors"), load_file(resumed / "final/adapter_model.safetensors")
    assert a.keys() == b.keys() and any("score" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    fa = json.loads((full / "final/reward.json").read_text())["offset"]
    fb = json.loads((resumed / "final/reward.json").read_text())["offset"]
    assert fa == pytest.approx(fb, abs=1e-5)


def test_a_policy_run_is_not_a_reward_model(tmp_path):
    run = tmp_path / "dpo-run"
    (run / "final").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"method": "dpo", "base": "default"}))
    with pytest.raises(UserError, match="not a reward model"):
        load_reward_run(run, where="config field train.reward_model")
