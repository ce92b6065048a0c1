"""End-to-end throughput, latency, memory and start-up of the local pipeline, against the in-process limit.

    python -m bench.end_to_end [--files 2000] [--runs 3] [--workers 2] [--latency 20] [--sample 40]
    python -m bench.end_to_end --burst [--files 10000]

Starts the pipeline the way `digits up` does (embedded Redis, worker processes, a watcher) on folders
in a temporary directory, drops realistic scans (trainer/scans.py, single digits, every format) into the
inbox at once (written beside it, then renamed in), and waits for every result. Each run also measures,
on the same files, the in-process limit (decode + normalise + batched model calls in this process,
threaded like a worker, no queue; half of the files just before the burst, half just after) and, on a
sample, the original approach (plain resize, one model.predict per image). Figures are medians of the
runs; ratios are taken run by run.
--burst drops 10,000 files once and checks each was processed exactly once, with bounded memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.pipeline import MemorySampler, Pipeline, cpu_seconds, machine_busy_seconds, resident_kib, wait_for
from core import protocol

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "digits" / "bench-scans"


def scan_pool(count: int, *, seed: int) -> list[tuple[str, bytes, int]]:
    """Distinct generated single-digit scans (name, bytes, pages), cached on disk: generating is slow."""
    folder = CACHE / f"single-{seed}-{count}"
    index = folder / "index.json"
    if index.exists():
        entries = json.loads(index.read_text())
        return [(name, (folder / name).read_bytes(), pages) for name, pages in entries]
    from trainer.scans import single_digits

    print(f"generating {count} scans (cached in {folder}) ...", flush=True)
    scans = single_digits(count, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    for scan in scans:
        (folder / scan.name).write_bytes(scan.data)
    index.write_text(json.dumps([(scan.name, len(scan.labels)) for scan in scans]))
    return [(scan.name, scan.data, len(scan.labels)) for scan in scans]


def files_for(pool: list[tuple[str, bytes, int]], count: int, *, prefix: str) -> list[tuple[str, bytes, int]]:
    """count files cycling through the pool, each under its own name."""
    return [(f"{prefix}-{index:05d}-{pool[index % len(pool)][0]}", pool[index % len(pool)][1],
             pool[index % len(pool)][2]) for index in range(count)]


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:  # --latency 0
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def start_with_probe(pipeline: Pipeline, probe: tuple[str, bytes, int]) -> float:
    """Redis and watcher first, a file waiting on the queue, then the workers: seconds to that first result."""
    pipeline.start_redis()
    pipeline.start_watcher()
    names = pipeline.stage([(f"probe-{probe[0]}", probe[1])])
    pipeline.drop(names)
    wait_for(lambda: pipeline.client.llen(protocol.QUEUE) > 0, timeout=30, what="the probe job on the queue")
    started = time.monotonic()
    for _ in range(pipeline.worker_count):
        pipeline.start_worker()
    finished = pipeline.wait_done(1, timeout=300)
    pipeline.wait_workers_ready()
    return finished - started


def throughput_run(pipeline: Pipeline, files: list[tuple[str, bytes, int]]
                   ) -> tuple[float, dict[str, float], float, dict[str, float]]:
    """Drop files at once, wait for every result; images/s, each process's CPU ms per image, the share
    of the machine's cores kept busy meanwhile, and the workers' model calls (and the GPU's load, where
    nvidia-smi answers) during the burst."""
    names = pipeline.stage([(name, data) for name, data, _ in files])
    images = sum(pages for _, _, pages in files)
    before = pipeline.done()
    pids = pipeline.pids(redis=True)
    calls_before = model_calls(pipeline)
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    busy_before, total_before = machine_busy_seconds()
    with GpuSampler() as gpu:
        started = time.monotonic()
        pipeline.drop(names)
        finished = pipeline.wait_done(before + len(files), timeout=3600)
    busy_after, total_after = machine_busy_seconds()
    cpu = {name: (cpu_seconds(pid) - cpu_before[name]) * 1000 / images for name, pid in pids.items()}
    cpu["service"] = sum(cpu.values())
    batches, glyphs, seconds = (after - earlier for after, earlier in zip(model_calls(pipeline), calls_before))
    model = {"batch_ms": 1000 * seconds / max(1, batches), "batch_images": glyphs / max(1, batches), **gpu.figures()}
    return (images / (finished - started), cpu, (busy_after - busy_before) / max(1e-9, total_after - total_before),
            model)


def model_calls(pipeline: Pipeline) -> tuple[int, int, float]:
    """(batches, images, seconds spent in model calls) of all workers so far, from their digits_info."""
    from core.status import workers

    batches = images = 0
    seconds = 0.0
    for entry in workers(pipeline.settings.broker_url, timeout=5.0, limit=pipeline.worker_count):
        count = int(entry.get("batches") or 0)
        batches += count
        images += int(entry.get("images") or 0)
        seconds += float(entry.get("average_compute_ms") or 0.0) * count / 1000
    return batches, images, seconds


class GpuSampler:
    """The GPU's utilisation and memory in use, every 200 ms while a burst runs, from nvidia-smi (nothing
    where it is not installed)."""

    def __enter__(self) -> "GpuSampler":
        self.samples: list[tuple[float, float]] = []
        self.process = None
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                             "--format=csv,noheader,nounits", "-lms", "200"],
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.process is None:
            return
        self.process.terminate()
        output, _ = self.process.communicate(timeout=10)
        for line in output.splitlines():
            try:
                utilisation, memory = (float(value) for value in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((utilisation, memory))

    def figures(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {"gpu_busy": statistics.mean(value for value, _ in self.samples) / 100,
                "gpu_memory_mib": max(memory for _, memory in self.samples)}


def latencies(pipeline: Pipeline, files: list[tuple[str, bytes, int]], *, pause: float) -> list[float]:
    """Single files into an idle service, one at a time: seconds from the drop to its results file."""
    measured = []
    for name, data, _ in files:
        pipeline.stage([(name, data)])
        result = pipeline.settings.results / f"{name}.json"
        time.sleep(pause)  # idle: the previous file's work (move, ledger) is over
        started = time.monotonic()
        pipeline.drop([name])
        while not result.exists():
            time.sleep(0.001)
        measured.append(time.monotonic() - started)
    return measured


def wait_for_empty_inbox(pipeline: Pipeline) -> None:
    """Until every original has left the inbox (they move just after their result). Nothing is deleted
    between runs: see wait_after_last_cleanup."""
    wait_for(lambda: not any(os.scandir(pipeline.settings.inbox)), timeout=120, what="an empty inbox")


# ext4 without a journal (as on some VMs) passes over inodes freed in the last minute (five while their
# inode table block is unwritten) each time it creates a file: right after thousands of files were
# deleted, every results file the workers create cost them up to 0.4 ms more CPU (`perf record -a`:
# recently_deleted and find_get_block in the kernel). The benchmark deletes its files only when it ends,
# and a benchmark started soon after another one's clean-up waits until that no longer counts.
CLEANED_MARK = CACHE.parent / "bench-cleaned"
QUIET_AFTER_CLEANUP = 90.0


def wait_after_last_cleanup() -> None:
    try:
        waited = time.time() - CLEANED_MARK.stat().st_mtime
    except FileNotFoundError:
        return
    if 0 <= waited < QUIET_AFTER_CLEANUP:
        print(f"waiting {QUIET_AFTER_CLEANUP - waited:.0f} s: files the last benchmark deleted would make this "
              "one's file creation dearer on some filesystems", flush=True)
        time.sleep(QUIET_AFTER_CLEANUP - waited)


def cleanup(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    CLEANED_MARK.parent.mkdir(parents=True, exist_ok=True)
    CLEANED_MARK.touch()


def in_process(datas: list[bytes], *, predictor, settings) -> tuple[float, int, float]:
    """(seconds, images, CPU seconds of this process) of the in-process limit on these files."""
    from bench.limit import in_process_rate

    started = time.process_time()
    rate, images = in_process_rate(datas, predictor=predictor, settings=settings)
    return images / rate, images, time.process_time() - started


def load_models(settings):
    """The worker's predictor (for the in-process limit) and the plain Keras model (for the original approach)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from core import weights as weights_store
    from core.device import configure
    from worker.holder import compile_predictor, settle_garbage_collector

    configure(settings.device, threads=settings.model_threads)  # as each worker process is configured
    model, version = weights_store.load(settings.weights)
    predictor = compile_predictor(model, version)
    settle_garbage_collector()  # as each worker does once its model is loaded
    return predictor, model, version


def benchmark(options: argparse.Namespace, pool, root: Path) -> int:
    from bench.limit import original_rate

    pipeline = Pipeline(root, workers=options.workers)
    try:
        startup = start_with_probe(pipeline, pool[0])
        settings = pipeline.settings
        predictor, model, version = load_models(settings)
        print(f"machine: {machine()}\nmodel {version}; {options.workers} worker process(es), "
              f"concurrency {settings.concurrency} threads, batch {settings.batch_size}, "
              f"queue_batch {settings.queue_batch}, ready_delay {settings.ready_delay}s")
        print(f"worker start-up to first result: {startup:.2f} s")
        rows = []
        with MemorySampler(pipeline.pids()) as sampler:
            for run in range(1, options.runs + 1):
                files = files_for(pool, options.files, prefix=f"r{run}")
                # The in-process limit on half of the files just before the burst and half just after:
                # a machine whose speed drifts (a VM beside other work) weighs on both sides alike.
                datas = [data for _, data, _ in files]
                before = in_process(datas[0::2], predictor=predictor, settings=settings)
                end_to_end, cpu, busy, calls = throughput_run(pipeline, files)
                wait_for_empty_inbox(pipeline)
                after = in_process(datas[1::2], predictor=predictor, settings=settings)
                seconds, images, cpu_seconds_used = (one + other for one, other in zip(before, after))
                limit = images / seconds
                cpu["in-process"] = cpu_seconds_used * 1000 / images
                sample = files[:options.sample]
                original, _ = original_rate([data for _, data, _ in sample], model=model)
                waits = latencies(pipeline, files_for(pool, options.latency, prefix=f"l{run}"), pause=0.5)
                wait_for_empty_inbox(pipeline)
                rows.append({"end_to_end": end_to_end, "limit": limit, "original": original,
                             "p50": percentile(waits, 0.5) * 1000, "p95": percentile(waits, 0.95) * 1000,
                             "service_cpu": cpu["service"], "in_process_cpu": cpu["in-process"], "busy": busy,
                             **calls})
                row = rows[-1]
                print(f"run {run}: end-to-end {end_to_end:7.1f} images/s | in-process limit {limit:7.1f} | "
                      f"ratio {end_to_end / limit:.2f} | original {original:5.1f} images/s "
                      f"(x{end_to_end / original:.0f}) | latency p50 {row['p50']:.0f} ms, p95 {row['p95']:.0f} ms",
                      flush=True)
                print("       CPU ms per image: " + ", ".join(f"{name} {value:.2f}" for name, value in cpu.items())
                      + f" | service / in-process {cpu['service'] / cpu['in-process']:.2f} | cores busy "
                      f"{busy:.0%}", flush=True)
                print(f"       model calls: {calls['batch_ms']:.2f} ms per batch of {calls['batch_images']:.1f} "
                      "images on average" + (f" | GPU busy {calls['gpu_busy']:.0%}, {calls['gpu_memory_mib']:.0f} "
                                             "MiB in use" if "gpu_busy" in calls else ""), flush=True)
        report(rows, sampler=sampler, pipeline=pipeline, options=options, startup=startup)
    finally:
        pipeline.stop()
    return 0


def report(rows, *, sampler: MemorySampler, pipeline: Pipeline, options, startup: float) -> None:
    def median(key):
        return statistics.median(row[key] for row in rows)

    ratio = statistics.median(row["end_to_end"] / row["limit"] for row in rows)
    speedup = statistics.median(row["end_to_end"] / row["original"] for row in rows)
    images = sum(pages for _, _, pages in files_for(options.pool, options.files, prefix=""))
    print(f"\nmedians of {len(rows)} runs, {options.files} files ({images} images) per run:")
    print(f"  end-to-end throughput        {median('end_to_end'):8.1f} images/s")
    print(f"  in-process limit             {median('limit'):8.1f} images/s")
    print(f"  end-to-end / limit           {ratio:8.2f}      (target >= 0.80)")
    print(f"  original approach            {median('original'):8.1f} images/s (sample of {options.sample} files)")
    print(f"  end-to-end / original        {speedup:8.1f} x    (target >= 25)")
    cpu_ratio = statistics.median(row["service_cpu"] / row["in_process_cpu"] for row in rows)
    print(f"  service CPU per image        {median('service_cpu'):8.2f} ms (workers, watcher and Redis together)")
    print(f"  in-process CPU per image     {median('in_process_cpu'):8.2f} ms")
    print(f"  service / in-process CPU     {cpu_ratio:8.2f}      (target <= 1.25)")
    print(f"  cores kept busy in the burst {median('busy'):8.0%}")
    print(f"  model call (batch of {median('batch_images'):.0f})  {median('batch_ms'):8.2f} ms "
          "(wall time in the workers' batchers)")
    if all("gpu_busy" in row for row in rows):
        print(f"  GPU busy in the burst        {median('gpu_busy'):8.0%}      (nvidia-smi utilisation, every 200 ms)")
        print(f"  GPU memory in use (peak)     {max(row['gpu_memory_mib'] for row in rows):8.0f} MiB")
    print(f"  single image, idle: p50      {median('p50'):8.0f} ms        (target <= 50)")
    print(f"  single image, idle: p95      {median('p95'):8.0f} ms")
    print(f"  worker start-up to first result {startup:5.2f} s")
    for name, pid in pipeline.pids().items():
        print(f"  peak memory {name:<10}       {sampler.peak_mib(name):8.0f} MiB (VmHWM {resident_kib(pid, 'VmHWM') / 1024:.0f})")


def burst(options: argparse.Namespace, pool, root: Path) -> int:
    import csv

    from core import ledger
    from worker import results_files as results

    pipeline = Pipeline(root, workers=options.workers)
    try:
        pipeline.start()
        files = files_for(pool, options.files, prefix="b")
        names = pipeline.stage([(name, data) for name, data, _ in files])
        print(f"machine: {machine()}\nburst of {len(files)} files ({len(pool)} distinct scans under distinct "
              f"names), {options.workers} worker process(es)", flush=True)
        depths = []
        with MemorySampler(pipeline.pids()) as sampler:
            before = pipeline.done()
            started = time.monotonic()
            pipeline.drop(names)
            while pipeline.done() < before + len(files):
                depths.append(pipeline.client.llen(protocol.QUEUE))
                if time.monotonic() - started > 3600:
                    raise TimeoutError("the burst did not finish within an hour")
                time.sleep(0.2)
            elapsed = time.monotonic() - started
        time.sleep(1.0)  # the last files' ledger entries are cleared after their results count
        settings = pipeline.settings
        with open(settings.results / results.CSV_NAME, encoding="utf-8", newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row["source"].startswith("b-")]
        sources = [row["source"] for row in rows]
        checks = {
            "one results file each": all((settings.results / f"{name}.json").is_file() for name in names),
            "one csv row each": sorted(sources) == sorted(names),
            "counted once each": pipeline.done() - before == len(files),
            "all moved to processed": len(os.listdir(settings.processed)) >= len(files)
                                      and not any((settings.inbox / name).exists() for name in names),
            "ledger empty": not [path for path in ledger.entries(pipeline.client) if path.startswith("b-")],
        }
        images = sum(pages for _, _, pages in files)
        print(f"{len(files)} files, {images} images in {elapsed:.1f} s: {images / elapsed:.1f} images/s; "
              f"longest queue {max(depths, default=0)} jobs")
        for name, passed in checks.items():
            print(f"  {'ok  ' if passed else 'FAIL'} {name}")
        print("  memory (resident, MiB) at 10%, 25%, 50%, 75% and 100% of the burst's time, and peak:")
        for name in pipeline.pids():
            samples = [value / 1024 for stamp, value in sampler.samples[name] if stamp >= started] or [0]
            shares = [samples[min(len(samples) - 1, int(share * len(samples)))] for share in (0.1, 0.25, 0.5, 0.75, 1)]
            print(f"    {name:<8} " + "  ".join(f"{value:5.0f}" for value in shares)
                  + f"   peak {max(samples):5.0f}")
        return 0 if all(checks.values()) else 1
    finally:
        pipeline.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=None, help="files per run (default 2000; 10000 with --burst)")
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are reported")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: as `digits up`, DIGITS_WORKERS or one per core, at most 4)")
    parser.add_argument("--latency", type=int, default=20, help="single files dropped one at a time, per run")
    parser.add_argument("--sample", type=int, default=40, help="files the original approach reads, per run")
    parser.add_argument("--distinct", type=int, default=480, help="distinct scans generated (then reused)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--burst", action="store_true", help="the 10,000-file exactly-once and memory check")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args(argv)
    options.files = options.files or (10_000 if options.burst else 2000)
    if options.workers is None:
        from core.settings import Settings

        options.workers = Settings.load().worker_processes
    options.pool = pool = scan_pool(options.distinct, seed=options.seed)
    wait_after_last_cleanup()
    root = Path(tempfile.mkdtemp(prefix="digits-bench-"))
    try:
        return (burst if options.burst else benchmark)(options, pool, root)
    finally:
        if options.keep:
            print(f"folders kept in {root}")
        else:
            cleanup(root)


if __name__ == "__main__":
    sys.exit(main())
