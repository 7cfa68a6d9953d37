"""`alignkit train` on a user's own data, from an empty folder outside the repository (issue 13/15).

Before: the defaults pointed into examples/task_api/, so outside the repo the run failed on missing
example files (the last one only after training, with `final/` written and run.json `done`), and
inside it a gardening run was trained with the Task API system prompt and scored on its probes. Now
the run uses only what its config names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from tinymodels import save_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]

ROWS = [
    ("When should I plant garlic?", "In autumn, a few weeks before the ground freezes.", "Whenever."),
    ("How often should I water tomatoes?", "Deeply, about twice a week; more during heat waves.", "Every hour."),
    ("Why are my basil leaves turning yellow?", "Usually overwatering: let the soil dry between waterings.", "Bad luck."),
    ("Can I compost citrus peels?", "Yes, in moderation; chop them so they break down faster.", "Never."),
    ("What vegetables grow in partial shade?", "Lettuce, spinach, kale and chard cope well with shade.", "None do."),
    ("How deep do I sow carrot seeds?", "About 1 cm deep, in loose, stone-free soil.", "A metre deep."),
    ("When do I prune roses?", "In late winter or early spring, as the buds begin to swell.", "In a storm."),
    ("How do I keep slugs off lettuce?", "Beer traps, copper tape, and watering in the morning.", "Salt the soil."),
    ("Should I mulch strawberries?", "Yes, straw mulch keeps the fruit clean and the soil moist.", "Mulch is bad."),
    ("How much sun do peppers need?", "Six to eight hours of direct sun a day.", "Peppers like caves."),
    ("When are potatoes ready to dig?", "Two to three weeks after the foliage dies back.", "After a week."),
    ("Can I grow mint in a pot?", "Yes, and a pot keeps it from spreading through the bed.", "Mint dies in pots."),
]


def test_train_on_own_data_outside_the_repo_uses_no_example_file(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "tiny-model")
    work = tmp_path / "work"  # the user's empty folder, far from the repository
    work.mkdir()
    (work / "garden.jsonl").write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n"
                                               for p, c, r in ROWS))
    (work / "cfg.yaml").write_text(yaml.safe_dump({
        "method": "dpo", "output_dir": "runs/garden",
        "model": {"name_or_path": str(ckpt), "lora": {"r": 4, "alpha": 8}},
        "data": {"train": "garden.jsonl", "eval_fraction": 0.25, "max_length": 96, "max_prompt_length": 64},
        "train": {"max_steps": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 1},
        "eval": {"max_new_tokens": 4, "kl_samples": 0}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "alignkit.cli", "train", "cfg.yaml"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = work / "runs" / "garden"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and (run / "final" / "adapter_model.safetensors").is_file()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["train"] == str(work / "garden.jsonl")
    assert config["data"]["eval"] is None and config["data"]["system_prompt_file"] is None
    assert config["eval"]["probes"] is None and config["eval"]["task"] == "none"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["examples"] == [] and metrics["after"]["refusal_rate/harmful"] is None
    assert metrics["after"]["task_valid/benign"] is None and metrics["after"]["n/pairs"] == 3  # 25% of 12 prompts
    saved = "\n".join([(run / "config.yaml").read_text(), (run / "run.json").read_text(),
                       (run / "metrics.json").read_text(), proc.stdout, proc.stderr])
    for needle in ("examples/", "task_api", "system_prompt.txt", "probes.jsonl", str(ROOT)):
        assert needle not in saved, needle
    assert "eval: 3 rows split off train" in proc.stdout
