"""bench/online_rl.py end to end on a tiny checkpoint: one step of PPO and GRPO and the plain-generate
baseline, each in its own subprocess, and a JSON with every number the table prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tinymodels import save_small_vocab_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_online_rl_bench_on_a_tiny_checkpoint(tmp_path):
    ckpt = save_small_vocab_checkpoint(tmp_path / "tiny")
    probes = (ROOT / "examples/task_api/data/probes.jsonl").read_text().splitlines()[:8]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": json.loads(x)["prompt"]}) + "\n" for x in probes))
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench/online_rl.py"), "--model", str(ckpt), "--steps", "1",
         "--reward", "tinymodels:word_share_reward", "--prompts", str(prompts), "--system-prompt", "",
         "--out", str(tmp_path / "runs"), "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rollouts must not be slower than plain generate" in proc.stdout
    res = json.loads(out.read_text())
    assert set(res) == {"ppo", "grpo", "generate", "meta"}
    for method in ("ppo", "grpo"):
        r = res[method]
        for key in ("generation_s", "update_s", "step_s", "rollout_tokens", "rollout_tokens_per_s",
                    "vs_generate", "peak_rss_mb", "generation_share", "update_share", "response_length"):
            assert r[key] > 0, (method, key, r[key])
        assert r["scoring_s"] >= 0  # a word count: under the log's millisecond rounding
        assert abs(sum(r[f"{t}_share"] for t in ("generation", "scoring", "update")) - 1) < 1e-9
        assert r["measured_steps"] == 1 and len(r["steps"]) == 1
        assert r["vs_generate"] == r["rollout_tokens_per_s"] / res["generate"]["tokens_per_s"]
        assert (tmp_path / "runs" / method / "log.jsonl").is_file()  # each method in its own run directory
    g = res["generate"]
    assert g["tokens"] > 0 and g["tokens"] <= 16 * 48 and g["tokens_per_s"] > 0 and g["peak_rss_mb"] > 0
    assert g["rows_per_batch"] == 16 and g["batches"] == 1
    assert res["meta"]["reward"] == "tinymodels:word_share_reward" and res["meta"]["max_new_tokens"] == 48
