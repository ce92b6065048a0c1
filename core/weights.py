"""The weights store: published versions in a folder, the pointer file CURRENT, load and publish a version."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from core.errors import WeightsError

INPUT_SHAPE = (28, 28, 1)  # a published model maps float32 (N, 28, 28, 1) in 0..1 ...
NUM_CLASSES = 10           # ... to (N, 10) class probabilities
POINTER = "CURRENT"
MODEL_FILE = "model.keras"
CARD_FILE = "model.json"
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

log = logging.getLogger(__name__)


def current_version(weights: Path) -> str | None:
    """The version CURRENT points at, or None when nothing was published."""
    try:
        version = (weights / POINTER).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not VERSION_PATTERN.match(version):
        raise WeightsError(f"{weights / POINTER} names an invalid version {version!r}")
    return version


def version_dir(weights: Path, version: str) -> Path:
    if not VERSION_PATTERN.match(version):
        raise WeightsError(f"invalid version name {version!r}")
    return weights / version


def check_version(weights: Path, version: str | None) -> str:
    """The version to use (the current one when None), refused at once when its model file is missing."""
    version = version or current_version(weights)
    if version is None:
        raise WeightsError(f"no weights published in {weights} (train with `digits train`)")
    if not (version_dir(weights, version) / MODEL_FILE).is_file():
        raise WeightsError(f"weights version {version} is not in {weights}")
    return version


def read_card(weights: Path, version: str) -> dict[str, Any]:
    path = version_dir(weights, version) / CARD_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise WeightsError(f"cannot read model card {path}: {error}") from None


def load(weights: Path, version: str | None = None):
    """(keras model, version) for a version, by default the current one."""
    from core.device import import_tensorflow

    import_tensorflow()
    import keras

    version = version or current_version(weights)
    if version is None:
        raise WeightsError(f"no weights published in {weights} (train with `digits train`)")
    path = version_dir(weights, version) / MODEL_FILE
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many kinds for a bad file; all mean "cannot serve this"
        raise WeightsError(f"cannot load weights version {version}: {type(error).__name__}: {error}") from None
    if tuple(model.input_shape[1:]) != INPUT_SHAPE or tuple(model.output_shape[1:]) != (NUM_CLASSES,):
        raise WeightsError(f"weights version {version} has input {model.input_shape} and output "
                           f"{model.output_shape}, expected (N, 28, 28, 1) -> (N, 10)")
    return model, version


def check_writable(weights: Path) -> None:
    """Fail before a long training run rather than after it."""
    try:
        weights.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(prefix=".probe-", dir=weights)
        probe.close()
    except OSError as error:
        raise WeightsError(f"weights folder {weights} is not writable: {error}") from None


def publish(weights: Path, version: str, write: Callable[[Path], None]) -> Path:
    """Write a version into a temporary folder, rename it into place, then flip CURRENT atomically.

    A reader sees the old version or the new one, never half of one; if `write` fails or the
    process dies, CURRENT still names the old version and only a hidden temporary folder remains.
    """
    target = version_dir(weights, version)
    try:
        weights.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".publishing-{version}-", dir=weights))
    except OSError as error:
        raise WeightsError(f"weights folder {weights} is not writable: {error}") from None
    try:
        write(staging)
        if not (staging / MODEL_FILE).is_file():
            raise WeightsError(f"version {version} has no {MODEL_FILE}")
        _fsync_tree(staging)
        if target.exists():
            raise WeightsError(f"version {version} already exists in {weights}")
        os.rename(staging, target)
        point_to(weights, version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("published weights version %s in %s", version, weights)
    return target


def point_to(weights: Path, version: str) -> None:
    """Flip CURRENT to a version already in place (temporary file, fsync, rename)."""
    if not (version_dir(weights, version) / MODEL_FILE).is_file():
        raise WeightsError(f"version {version} is not in {weights}")
    fd, temporary = tempfile.mkstemp(prefix=".CURRENT-", dir=weights)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(version + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, weights / POINTER)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
