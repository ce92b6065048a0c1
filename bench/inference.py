"""Batched CPU inference throughput of strided-bn (default) and keras-example, through the worker's predictor.

    python -m bench.inference [--batch-size 64] [--images 4096] [--runs 5] [--device cpu]

Models are built fresh with random weights: throughput does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def measure(arch: str, *, batch_size: int, images: int, runs: int) -> tuple[float, int]:
    """Median images/s over runs, and multiply-adds per image."""
    from digits.model import build, multiply_adds
    from worker.holder import compile_predictor

    model, _ = build(arch)
    predictor = compile_predictor(model, arch)
    data = np.random.default_rng(0).random((images, 28, 28), dtype=np.float32)
    predictor.predict(data[:batch_size])  # the first full batch traces the function
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        for start in range(0, images, batch_size):
            predictor.predict(data[start:start + batch_size])
        rates.append(images / (time.perf_counter() - started))
    return statistics.median(rates), multiply_adds(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64, help="images per model call (the worker's default)")
    parser.add_argument("--images", type=int, default=4096, help="images per run")
    parser.add_argument("--runs", type=int, default=5, help="runs; the median is reported")
    parser.add_argument("--device", default="cpu", help="cpu, gpu or auto")
    args = parser.parse_args(argv)

    from digits.device import configure

    device = configure(args.device)
    print(f"device {device}, batch size {args.batch_size}, {args.images} images x {args.runs} runs (median)")
    rates = {}
    for arch in ("strided-bn", "keras-example"):
        rates[arch], multiply_adds = measure(arch, batch_size=args.batch_size, images=args.images, runs=args.runs)
        print(f"{arch:14s} {rates[arch]:10,.0f} images/s   {multiply_adds / 1e6:5.1f}M multiply-adds per image")
    print(f"strided-bn / keras-example throughput ratio: {rates['strided-bn'] / rates['keras-example']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
