"""The cDAL benchmark scripts run in their tiny mode and print their ratio line (no timing is asserted)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIFFSEG_DEVICE": "cpu"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_train_step_benchmark_tiny_mode():
    out = _run("train_step.py", "--preset", "smoke", "--repeats", "1", "--warmup", "0")
    m = re.search(r"ratio smoke: cDAL step / U-Net step = ([0-9.]+)", out)
    assert m and float(m.group(1)) > 0, out


def test_sampling_benchmark_tiny_mode():
    out = _run("sampling.py", "--preset", "smoke", "--ddpm-steps", "8", "--samples", "2", "--repeats", "1")
    m = re.search(r"ratio DDPM/cDAL: ([0-9.]+)x measured, ([0-9.]+)x in network evaluations", out)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) == 2.0, out


def test_inference_benchmark_tiny_mode():
    """The before/after benchmark runs its baseline (the first implementation) and today's path on one image."""
    out = _run("cdal_inference.py", "--tiny")
    m = re.search(r"cpu: default plan ([0-9.]+) s per image \(([0-9.]+) images/s\) vs baseline ([0-9.]+) s: "
                  r"speed-up ([0-9.]+)x wall, ([0-9.]+)x CPU seconds", out)
    assert m and all(float(g) > 0 for g in m.groups()), out
    assert "baseline (first implementation)" in out and "peak RSS" in out
    d = re.search(r"Dice ([0-9.]+) vs ([0-9.]+) \(\|diff\| ([0-9.]+)\)", out)
    assert d and float(d.group(3)) <= 0.002, out          # fp32: the same predictions up to float rounding
    b = re.search(r"convolutions ([0-9.]+) s \(([0-9]+)%\), the rest ([0-9.]+) s", out)
    assert b and float(b.group(1)) > 0 and 0 < int(b.group(2)) <= 100, out   # the breakdown (a lower bound)
