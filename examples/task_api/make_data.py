"""Regenerate the Task API data files next to this script (deterministic: same bytes every run)."""

from pathlib import Path

from alignkit.data.task_api import write_task_api

if __name__ == "__main__":
    paths = write_task_api(Path(__file__).parent / "data", n_train=1500, n_eval=200, n_probes=90, seed=0)
    for name, path in paths.items():
        print(f"{name}: {path} ({sum(1 for _ in path.open(encoding='utf-8'))} rows)")
