"""benchmarks/gpu.py: its refusal on a machine without a GPU, and its timed pieces on a CPU."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def gpu_benchmark(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the benchmark would run")
def test_without_a_gpu_it_says_so_and_writes_nothing(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py"), "--out", str(tmp_path / "gpu")], capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert "needs a CUDA GPU" in done.stderr and "torch.cuda.is_available()" in done.stderr
    assert not (tmp_path / "gpu").exists()


@pytest.mark.parametrize("variant", ["float32"])  # bfloat16 on a CPU without bf16 units: minutes
def test_a_speed_row_times_a_dream_batch_and_a_distillation_epoch(gpu_benchmark, teacher, variant, monkeypatch):
    monkeypatch.setattr(gpu_benchmark, "DREAM_STEPS", 2)
    monkeypatch.setattr(gpu_benchmark, "WARMUP_STEPS", 1)
    monkeypatch.setattr(gpu_benchmark, "DREAM_BATCH", 16)
    monkeypatch.setattr(gpu_benchmark, "DISTILL_IMAGES", 64)
    row = gpu_benchmark.speed_row(teacher, "tiny", torch.device("cpu"), variant)
    assert "error" not in row, row
    assert row["dream_step_ms"] > 0 and row["distill_epoch_s"] > 0
    table = gpu_benchmark.markdown({"machine": "cpu", "command": "c", "budgets": [], "speed": [row]})
    assert f"| tiny | {variant} | {row['dream_step_ms']} |" in table
