"""benchmarks/gpu_check.sh at toy size on the CPU: every step the GPU run takes, so its minutes go to measuring."""

from __future__ import annotations

import os
import subprocess
import sys

from train_fixtures import REPO


def test_gpu_check_toy_runs_every_step(tmp_path):
    env = {
        **os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run([str(REPO / "benchmarks/gpu_check.sh"), "--toy"], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "out/gpu_check.md").read_text()
    assert text in proc.stdout and "failed:" not in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    train = [[c.strip() for c in r] for r in rows if len(r) == 6 and r[1].strip() in {"ours", "TRL + peft"}]
    assert {r[0].split(",")[0] for r in train} == {"Qwen3-8B", "Llama-3.3-70B width"}
    assert len(train) == 4
    for model, trainer, tokens_per_s, padding, peak, plan in train:
        assert float(tokens_per_s) > 0 and padding.endswith("%")
        assert peak == "–"  # torch counts peak memory on a GPU only
        assert float(plan) > 0 if trainer == "ours" else plan == "–"  # the plan is for our trainer's run
    review = [[c.strip() for c in r] for r in rows if len(r) == 6 and r[0].strip() == "Qwen3-8B" and r[1].strip().isdigit()]
    assert [int(r[1]) for r in review] and all(int(r[1]) <= n for r, n in zip(review, (96, 192)))
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in review)
