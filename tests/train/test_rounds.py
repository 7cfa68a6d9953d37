"""Iterative on-policy rounds (`train.rounds`) on a tiny random model with a known judge.

Checked: each round samples from the previous round's model (round 1 from the config's), trains a
run that starts from it, and the pairs are the model's own answers ordered by the judge; the table
across rounds carries each round's sampled-answer score; --resume keeps finished rounds; configs
that cannot run stop before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tinymodels
from tinymodels import save_small_vocab_checkpoint

from alignkit.config import RunConfig
from alignkit.errors import UserError
from alignkit.train.run import train

ROOT = Path(__file__).resolve().parents[2]
JUDGE = "tinymodels:word_share_reward"
REF = "aaaaaab aaaaaab aaaaaab"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_small_vocab_checkpoint(tmp_path_factory.mktemp("tiny-rounds"))


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    rows = [json.loads(x) for x in (ROOT / "examples/task_api/data/probes.jsonl").read_text().splitlines()[:16]]
    # A reference the judge likes: a prompt whose sampled answers all fail to end still gets a pair
    # (the reference over the model's worst answer); the tiny random model rarely ends an answer.
    out.write_text("".join(json.dumps({"prompt": r["prompt"], "category": r["category"], "reference": REF}) + "\n"
                           for r in rows))
    return out


def _cfg(tmp: Path, ckpt: Path, prompts: Path, name: str, **train_kw) -> RunConfig:
    t = dict(learning_rate=5e-4, micro_batch_size=4, gradient_accumulation_steps=1, max_steps=2, warmup_ratio=0.0,
             lr_scheduler="constant", rounds=2, reward_model=JUDGE, num_generations=4, max_new_tokens=48)
    t.update(train_kw)
    return RunConfig.model_validate({
        "method": "dpo", "output_dir": str(tmp / name),
        "model": {"name_or_path": str(ckpt), "lora": {"r": 8, "alpha": 16}},
        "data": {"train": str(prompts), "eval": str(ROOT / "examples/task_api/data/eval.jsonl"), "max_eval_rows": 4,
                 "eval_fraction": 0.0, "max_length": 128, "max_prompt_length": 96, "system_prompt_file": None},
        "train": t, "eval": {"enabled": False}})


def test_each_round_samples_from_the_last_and_trains_on_its_own_answers(tmp_path, tiny_ckpt, prompts_file):
    root = train(_cfg(tmp_path, tiny_ckpt, prompts_file, "rounds"), console=lambda *_: None)
    assert root == tmp_path / "rounds"
    table = json.loads((root / "rounds.json").read_text())["rounds"]
    assert [row["round"] for row in table] == [1, 2]
    for r, starts_from in ((1, str(tiny_ckpt)), (2, str(root / "round-1"))):
        run = root / f"round-{r}"
        info = json.loads((run / "run.json").read_text())
        assert info["status"] == "done" and (run / "final" / "adapter_model.safetensors").is_file()
        stats = json.loads((root / f"pairs-round-{r}.stats.json").read_text())
        assert stats["settings"]["model"] == starts_from  # sampled from the model the round trains
        cfg_text = (run / "config.yaml").read_text()
        assert f"name_or_path: {starts_from}" in cfg_text and f"pairs-round-{r}.jsonl" in cfg_text
        assert table[r - 1]["sample_score"] == pytest.approx(stats["mean_score"])
        log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        assert "loss" not in log[-1]  # the held-out row comes last: the table must skip it
        assert table[r - 1]["loss"] == pytest.approx(log[-2]["loss"]) and table[r - 1]["steps"] == 2
        pairs = [json.loads(x) for x in (root / f"pairs-round-{r}.jsonl").read_text().splitlines()]
        assert pairs and len(pairs) == stats["pairs"] == table[r - 1]["pairs"]
        for p in pairs:  # the rejected side is the model's own answer, scored below the chosen one
            chosen, rejected = (x if isinstance(x, str) else x[-1]["content"] for x in (p["chosen"], p["rejected"]))
            c, rj = tinymodels.word_share_reward(None, [chosen, rejected], None)
            assert c > rj and rejected != REF
        assert stats["chosen_policy"] + stats["chosen_reference"] == stats["pairs"]
    assert "| 1 |" in (root / "rounds.md").read_text() and "| 2 |" in (root / "rounds.md").read_text()


def test_resume_keeps_finished_rounds(tmp_path, tiny_ckpt, prompts_file):
    cfg = _cfg(tmp_path, tiny_ckpt, prompts_file, "resume", rounds=1)
    cfg.train.rounds = 2
    root = train(cfg, console=lambda *_: None)
    final = root / "round-1" / "final" / "adapter_model.safetensors"
    stamp = final.stat().st_mtime_ns
    (root / "round-2" / "run.json").unlink()  # round 2 unfinished: it is redone, round 1 kept
    said = []
    train(cfg, resume=True, console=said.append)
    assert final.stat().st_mtime_ns == stamp and any("round 1/2: finished earlier, kept" in s for s in said)
    assert json.loads((root / "round-2" / "run.json").read_text())["status"] == "done"
    with pytest.raises(UserError, match="already holds rounds"):
        train(cfg, console=lambda *_: None)


@pytest.mark.parametrize("change, field", [({"reward_model": None}, "train.reward_model"),
                                           ({"num_generations": 1}, "train.num_generations")])
def test_configs_that_cannot_run_stop_first(tmp_path, tiny_ckpt, prompts_file, change, field):
    cfg = _cfg(tmp_path, tiny_ckpt, prompts_file, "bad", **change)
    with pytest.raises(UserError) as e:
        train(cfg, console=lambda *_: None)
    assert field in str(e.value) and not (tmp_path / "bad").exists()
    cfg = _cfg(tmp_path, tiny_ckpt, prompts_file, "bad2")
    cfg.method = "kto"
    with pytest.raises(UserError, match="train.rounds"):
        train(cfg, console=lambda *_: None)
    assert not (tmp_path / "bad2").exists()
