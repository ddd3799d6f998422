"""`scripts/gpu_check.sh --dry-run`: the GPU checks' three steps run on the CPU at toy sizes and store nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from space.decoding.row_cost import STORED_CURVES
from space.io import shipped

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_stores_no_curve(tmp_path):
    stored = shipped(*STORED_CURVES)
    before = stored.read_bytes() if stored.is_file() else None
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(tmp_path)],
                         env=dict(os.environ, SPACE_PYTHON=sys.executable), capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert " passed" in (tmp_path / "tests.log").read_text()
    assert "cpu/float32" in json.loads((tmp_path / "roofline.json").read_text())["cost_curves"]
    rows = json.loads((tmp_path / "bench_batch.json").read_text())["rows"]
    assert {(row["batch_size"], row["method"]) for row in rows} == {(1, "ar"), (1, "tree"), (2, "ar"), (2, "tree")}
    assert all(row["identical_rows"] == "3/3" for row in rows)
    assert (stored.read_bytes() if stored.is_file() else None) == before


def test_without_a_gpu_the_real_run_says_so_in_one_line(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is here: the real run would start")
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                         env=dict(os.environ, SPACE_PYTHON=sys.executable, OUT=str(tmp_path)), timeout=120)
    assert run.returncode != 0 and run.stderr.strip().splitlines()[-1] == "no CUDA device: use --dry-run"
