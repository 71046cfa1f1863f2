"""bench/gpu_check.py is run by hand on GPU machines only; here its CPU dry run (gloo) proves that
the script itself (feeder, relay, DDP loop, figures) works, so a lent GPU's minutes are not spent
on a broken script."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(240)
def test_gpu_check_script_dry_run_on_cpu(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu",
                        "--sims", "4", "--steps", "20", "--batches", "30", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=200, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    fig = json.loads(p.stdout.strip().splitlines()[-1])
    assert fig["device"] == "cpu (gloo)" and fig["gpus"] == 1
    assert fig["feeder"] == ["simulate exit 0, relay exit 0"]
    assert fig["samples_per_s_trained"] > 0 and fig["samples_per_s_received"] > 0
    assert fig["val_mse"] is not None and fig["val_mse"] == fig["val_mse"]  # a number, not NaN
    assert (tmp_path / "metrics.jsonl").exists()
