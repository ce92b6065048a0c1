"""Images per second per core on realistic scans: decoding alone against decoding plus normalising.

    python -m bench.normalise                                  # today's normalisation against decoding
    python -m bench.normalise --baseline cd130c0:digits/normalise.py   # ... and against an earlier one

Decoding, today's and the baseline's normalisation take turns scan by scan; the ratio quoted is the
median of the runs' own ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from trainer.scans import Scan, numbers, single_digits
from worker.normalise import normalise


def decode(data: bytes) -> int:
    """What any reader of the file must do at least: open it and decode every page at full size."""
    image = Image.open(io.BytesIO(data))
    pages = getattr(image, "n_frames", 1)
    for index in range(pages):
        image.seek(index)
        image.load()
    return pages


def cpu_seconds(works: list, scans: list[Scan]) -> list[float]:
    """CPU seconds of each work over all scans, the works taking turns scan by scan, so that a busy moment
    of the machine hits them alike. CPU time of this one process: images per CPU second is images per
    second per core, and other work on a shared machine does not count against it."""
    totals = [0.0] * len(works)
    for scan in scans:
        for index, work in enumerate(works):
            started = time.process_time()
            work(scan.data)
            totals[index] += time.process_time() - started
    return totals


def baseline_normalise(spec: str):
    """`normalise` of an earlier version of the module, read from git (REVISION:PATH), for a same-run ratio."""
    source = subprocess.run(["git", "show", spec], capture_output=True, text=True, check=True).stdout
    source = source.replace("from digits.errors import", "from core.errors import")  # the module's old home
    folder = Path(tempfile.mkdtemp(prefix="baseline-normalise-"))
    path = folder / "baseline_normalise.py"
    path.write_text(source)
    module_spec = importlib.util.spec_from_file_location("baseline_normalise", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # its dataclasses look themselves up there
    module_spec.loader.exec_module(module)
    return module.normalise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--singles", type=int, default=240, help="single-digit scans in the set")
    parser.add_argument("--numbers", type=int, default=80, help="scans of numbers of 2 to 5 digits in the set")
    parser.add_argument("--runs", type=int, default=7, help="timed passes over the set; medians are shown")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--baseline", default=None, metavar="REVISION:PATH",
                        help="also time this earlier normalisation module from git, in the same run")
    options = parser.parse_args(argv)
    baseline = baseline_normalise(options.baseline) if options.baseline else None

    scans = single_digits(options.singles, seed=options.seed) + numbers(options.numbers, seed=options.seed + 1)
    pages = sum(decode(scan.data) for scan in scans)
    pixels = []
    for scan in scans:
        with Image.open(io.BytesIO(scan.data)) as image:
            pixels.append(image.size[0] * image.size[1])
    for scan in scans:  # warm caches and imports before timing
        normalise(scan.data)
        if baseline:
            baseline(scan.data)
    decoding, normalising, before = [], [], []
    for _ in range(options.runs):
        times = cpu_seconds([decode, normalise] + ([baseline] if baseline else []), scans)
        decoding.append(times[0])
        normalising.append(times[1])
        before.extend(times[2:])
    decode_time, total_time = statistics.median(decoding), statistics.median(normalising)
    cost = total_time - decode_time
    print(f"{len(scans)} files, {pages} pages, median {statistics.median(pixels):,.0f} pixels; "
          f"medians of {options.runs} runs, CPU time of one process")
    for title, seconds in (("decode only", decode_time), ("decode + normalise", total_time)):
        print(f"{title:<26}{pages / seconds:>9.0f} images/s per core  {seconds / pages * 1000:6.2f} ms/image")
    print(f"{'normalise alone':<26}{'':>9}{'':>20}  {cost / pages * 1000:6.2f} ms/image")
    print(f"normalising costs {cost / decode_time:.2f} times what decoding costs")
    if baseline:
        earlier = statistics.median(before) - decode_time
        print(f"{'baseline normalise alone':<26}{'':>9}{'':>20}  {earlier / pages * 1000:6.2f} ms/image")
        # Each run's ratio compares passes made moments apart, so a busy spell of the machine cancels out.
        ratios = sorted((today - decoded) / (then - decoded)
                        for decoded, today, then in zip(decoding, normalising, before))
        print(f"today's normalisation costs {statistics.median(ratios):.2f} times the baseline's ({options.baseline}; "
              f"median of {len(ratios)} runs' ratios, {ratios[0]:.2f} to {ratios[-1]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
