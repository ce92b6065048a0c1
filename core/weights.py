"""The weights store: published versions in a folder, the pointer file CURRENT, load and publish a version."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from core.errors import WeightsError
from core.protocol import DIGIT_CLASSES

INPUT_SHAPE = (28, 28, 1)  # a published model maps float32 (N, 28, 28, 1) in 0..1 to (N, 10) digit
GLYPH_SHAPE = INPUT_SHAPE[:2]
OUTPUTS = (DIGIT_CLASSES, DIGIT_CLASSES + 1)  # probabilities, or (N, 11) with "not a digit" last
POINTER = "CURRENT"
HISTORY = "HISTORY"  # one line per change of CURRENT: "<UTC time> <version>", oldest first
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


def temperature(weights: Path, version: str) -> float:
    """The calibration temperature a version's card records (1.0 for versions calibrated before cards held it)."""
    try:
        return float(read_card(weights, version).get("calibration", {}).get("temperature", 1.0))
    except (WeightsError, TypeError, ValueError):
        return 1.0


def load(weights: Path, version: str | None = None):
    """(keras model, version) for a version, by default the current one."""
    from core.device import import_keras

    keras = import_keras()

    version = version or current_version(weights)
    if version is None:
        raise WeightsError(f"no weights published in {weights} (train with `digits train`)")
    path = version_dir(weights, version) / MODEL_FILE
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many kinds for a bad file; all mean "cannot serve this"
        raise WeightsError(f"cannot load weights version {version}: {type(error).__name__}: {error}") from None
    if tuple(model.input_shape[1:]) != INPUT_SHAPE or tuple(model.output_shape[1:]) not in [(n,) for n in OUTPUTS]:
        raise WeightsError(f"weights version {version} has input {model.input_shape} and output "
                           f"{model.output_shape}, expected (N, {', '.join(map(str, INPUT_SHAPE))}) -> (N, "
                           f"{OUTPUTS[0]}) or (N, {OUTPUTS[1]})")
    return model, version


def check_writable(weights: Path) -> None:
    """Fail before a long training run rather than after it."""
    try:
        weights.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(prefix=".probe-", dir=weights)
        probe.close()
    except OSError as error:
        raise WeightsError(f"weights folder {weights} is not writable: {error}") from None


def publish(weights: Path, version: str, write: Callable[[Path], None], *, make_current: bool = True) -> Path:
    """Write a version into a temporary folder, rename it into place, then (by default) flip CURRENT atomically.

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
        check_complete(staging, version)
        _fsync_tree(staging)
        if target.exists():
            raise WeightsError(f"version {version} already exists in {weights}")
        os.rename(staging, target)
        if make_current:
            point_to(weights, version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("published weights version %s in %s", version, weights)
    return target


def check_complete(folder: Path, version: str) -> dict[str, Any]:
    """The card of a version folder holding a model file and a readable card; WeightsError otherwise."""
    if not folder.is_dir():
        raise WeightsError(f"version {version} does not exist")
    model = folder / MODEL_FILE
    if not model.is_file() or model.stat().st_size == 0:
        raise WeightsError(f"version {version} has no {MODEL_FILE}")
    try:
        card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise WeightsError(f"version {version} has no readable {CARD_FILE} ({error})") from None
    if not isinstance(card, dict):
        raise WeightsError(f"version {version}: {CARD_FILE} is not a JSON object")
    return card


def point_to(weights: Path, version: str) -> None:
    """Make a complete version current: CURRENT flipped atomically (temporary file, fsync, rename), and the
    change appended to HISTORY. Running workers follow within their reload interval."""
    check_complete(version_dir(weights, version), version)
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
    with open(weights / HISTORY, "a", encoding="utf-8") as history:
        history.write(f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} {version}\n")


def history(weights: Path) -> list[tuple[str, str]]:
    """(UTC time, version) of each change of CURRENT, oldest first."""
    try:
        lines = (weights / HISTORY).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [tuple(line.split(" ", 1)) for line in lines if " " in line]


def previous_version(weights: Path) -> str | None:
    """The version that was current before the current one (and still exists), or None."""
    current = current_version(weights)
    for _, version in reversed(history(weights)):
        if version != current and (version_dir(weights, version) / MODEL_FILE).is_file():
            return version
    return None


@dataclass(frozen=True)
class VersionInfo:
    """One published version as `digits versions` lists it."""

    version: str
    created: str
    architecture: str
    mnist_test: float | None
    scans: float | None
    size_bytes: int
    current: bool
    complete: bool
    problem: str | None


def list_versions(weights: Path) -> list[VersionInfo]:
    """Every version folder, oldest first (by the card's creation time, else the folder's)."""
    current = current_version(weights) if weights.is_dir() else None
    found = []
    for folder in sorted(weights.iterdir()) if weights.is_dir() else []:
        if not folder.is_dir() or folder.name.startswith(".") or not VERSION_PATTERN.match(folder.name):
            continue
        try:
            card, problem = check_complete(folder, folder.name), None
        except WeightsError as error:
            card, problem = {}, str(error)
        evaluation = card.get("evaluation") or {}
        created = card.get("created") or datetime.fromtimestamp(folder.stat().st_mtime, timezone.utc).isoformat(
            timespec="seconds")
        found.append(VersionInfo(
            version=folder.name, created=created, architecture=str(card.get("architecture", "?")),
            mnist_test=evaluation.get("mnist_test", card.get("test_accuracy")), scans=evaluation.get("scans"),
            size_bytes=sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()),
            current=folder.name == current, complete=problem is None, problem=problem))
    return sorted(found, key=lambda info: (info.created, info.version))


def prune(weights: Path, keep: int) -> list[str]:
    """Remove all but the newest `keep` versions, never the current one or the one before it; returns the removed."""
    if keep < 1:
        raise WeightsError("--prune keeps at least 1 version")
    protected = {current_version(weights), previous_version(weights)}
    versions = list_versions(weights)
    removed = []
    for info in versions[:max(0, len(versions) - keep)]:
        if info.version in protected:
            continue
        shutil.rmtree(version_dir(weights, info.version))
        removed.append(info.version)
    return removed


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
