"""The cDAL benchmark scripts run in their tiny mode and print their ratio line (no timing is asserted).

They run in this process (:func:`conftest.load_benchmark`), on the CPU and on the worker's one thread.
"""
from __future__ import annotations

import re

import pytest

from conftest import load_benchmark


@pytest.fixture
def run_script(capsys, monkeypatch):
    """``run_script(name, *args)``: the benchmark's ``main(args)`` on the CPU; returns what it printed."""
    monkeypatch.setenv("DIFFSEG_DEVICE", "cpu")

    def run(script: str, *args: str) -> str:
        module = load_benchmark(script)
        capsys.readouterr()
        status = module.main(list(args))
        out = capsys.readouterr().out
        assert status in (None, 0) or isinstance(status, list), out
        return out

    return run


def test_train_step_benchmark_tiny_mode(run_script):
    out = run_script("train_step.py", "--preset", "smoke", "--repeats", "1", "--warmup", "0")
    m = re.search(r"ratio smoke: cDAL step / U-Net step = ([0-9.]+)", out)
    assert m and float(m.group(1)) > 0, out


def test_sampling_benchmark_tiny_mode(run_script):
    out = run_script("sampling.py", "--preset", "smoke", "--ddpm-steps", "8", "--samples", "2", "--repeats", "1")
    m = re.search(r"ratio DDPM/cDAL: ([0-9.]+)x measured, ([0-9.]+)x in network evaluations", out)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) == 2.0, out


def test_inference_benchmark_tiny_mode(run_script):
    """The before/after benchmark runs its baseline (the first implementation) and today's path on one image."""
    out = run_script("cdal_inference.py", "--tiny")
    m = re.search(r"cpu: default plan ([0-9.]+) s per image \(([0-9.]+) images/s\) vs baseline ([0-9.]+) s: "
                  r"speed-up ([0-9.]+)x wall, ([0-9.]+)x CPU seconds", out)
    assert m and all(float(g) > 0 for g in m.groups()), out
    assert "baseline (first implementation)" in out and "peak RSS" in out
    d = re.search(r"Dice ([0-9.]+) vs ([0-9.]+) \(\|diff\| ([0-9.]+)\)", out)
    assert d and float(d.group(3)) <= 0.002, out          # fp32: the same predictions up to float rounding
    b = re.search(r"convolutions ([0-9.]+) s \(([0-9]+)%\), the rest ([0-9.]+) s", out)
    assert b and float(b.group(1)) > 0 and 0 < int(b.group(2)) <= 100, out   # the breakdown (a lower bound)
