"""Images per second per core on realistic scans: decoding alone against decoding plus normalising."""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time

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


def cpu_seconds(work, scans: list[Scan]) -> float:
    # CPU time of this one process: images per CPU second is images per second per core,
    # and other work on a shared machine does not count against it.
    started = time.process_time()
    for scan in scans:
        work(scan.data)
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--singles", type=int, default=240, help="single-digit scans in the set")
    parser.add_argument("--numbers", type=int, default=80, help="scans of numbers of 2 to 5 digits in the set")
    parser.add_argument("--runs", type=int, default=7, help="timed passes over the set; medians are shown")
    parser.add_argument("--seed", type=int, default=2026)
    options = parser.parse_args(argv)

    scans = single_digits(options.singles, seed=options.seed) + numbers(options.numbers, seed=options.seed + 1)
    pages = sum(decode(scan.data) for scan in scans)
    pixels = []
    for scan in scans:
        with Image.open(io.BytesIO(scan.data)) as image:
            pixels.append(image.size[0] * image.size[1])
    for scan in scans:  # warm caches and imports before timing
        normalise(scan.data)
    decoding, normalising = [], []
    for _ in range(options.runs):  # interleaved, so a busy moment on the machine hits both alike
        decoding.append(cpu_seconds(decode, scans))
        normalising.append(cpu_seconds(normalise, scans))
    decode_time, total_time = statistics.median(decoding), statistics.median(normalising)
    cost = total_time - decode_time
    print(f"{len(scans)} files, {pages} pages, median {statistics.median(pixels):,.0f} pixels; "
          f"medians of {options.runs} runs, CPU time of one process")
    for title, seconds in (("decode only", decode_time), ("decode + normalise", total_time)):
        print(f"{title:<26}{pages / seconds:>9.0f} images/s per core  {seconds / pages * 1000:6.2f} ms/image")
    print(f"{'normalise alone':<26}{'':>9}{'':>20}  {cost / pages * 1000:6.2f} ms/image")
    print(f"normalising costs {cost / decode_time:.2f} times what decoding costs (target: at most 1.00)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
