"""Batched CPU inference throughput of strided-bn (default) and keras-example, through the worker's predictor.

    python -m bench.inference [--batch-size 64] [--images 4096] [--runs 7] [--device cpu]

Models are built fresh with random weights: throughput does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _predictor(arch: str):
    from trainer.architectures import build, multiply_adds
    from worker.holder import compile_predictor

    model, _ = build(arch)
    return compile_predictor(model, arch), multiply_adds(model)


def _rate(predictor, data: np.ndarray, batch_size: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(data), batch_size):
        predictor.predict(data[start:start + batch_size])
    return len(data) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64, help="images per model call (the worker's default)")
    parser.add_argument("--images", type=int, default=4096, help="images per run")
    parser.add_argument("--runs", type=int, default=7, help="runs; medians are reported")
    parser.add_argument("--device", default="cpu", help="cpu, gpu or auto")
    args = parser.parse_args(argv)

    from core.device import configure
    from core.weights import GLYPH_SHAPE

    device = configure(args.device)
    print(f"device {device}, batch size {args.batch_size}, {args.images} images x {args.runs} runs, "
          f"the two models interleaved run by run (medians; ratio = median of the per-run ratios)")
    architectures = ("strided-bn", "keras-example")
    predictors = {arch: _predictor(arch) for arch in architectures}
    data = np.random.default_rng(0).random((args.images, *GLYPH_SHAPE), dtype=np.float32)
    for predictor, _ in predictors.values():
        predictor.predict(data[:args.batch_size])  # the first full batch traces the function
    rates: dict[str, list[float]] = {arch: [] for arch in architectures}
    for _ in range(args.runs):
        for arch in architectures:
            rates[arch].append(_rate(predictors[arch][0], data, args.batch_size))
    for arch in architectures:
        print(f"{arch:14s} {statistics.median(rates[arch]):10,.0f} images/s   "
              f"{predictors[arch][1] / 1e6:5.1f}M multiply-adds per image")
    ratios = [fast / slow for fast, slow in zip(rates["strided-bn"], rates["keras-example"])]
    print(f"strided-bn / keras-example throughput ratio: {statistics.median(ratios):.2f} "
          f"(per run: {', '.join(f'{ratio:.2f}' for ratio in ratios)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
