"""The CNN architectures, and the weights folder: publish a version, read the current one, load it."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from digits.errors import ConfigError, WeightsError

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
POINTER = "CURRENT"
MODEL_FILE = "model.keras"
CARD_FILE = "model.json"
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

log = logging.getLogger(__name__)


def build_keras_example():
    """The seed's mnist_cnn.py, layer for layer, with Adadelta's original learning rate of 1.0."""
    import keras
    from keras import layers

    model = keras.Sequential(
        [
            keras.Input(INPUT_SHAPE),
            layers.Conv2D(32, 3, activation="relu"),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.25),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="keras_example",
    )
    # Today's Keras defaults Adadelta to 0.001 (keras#13815); the seed trained with 1.0.
    optimizer = keras.optimizers.Adadelta(learning_rate=1.0, rho=0.95, epsilon=1e-7)
    return model, optimizer


def _conv_block(x, filters: int, *, strides: int = 1, padding: str = "same"):
    from keras import layers

    x = layers.Conv2D(filters, 3, strides=strides, padding=padding, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def build_strided_bn(*, steps_per_epoch: int = 390, epochs: int = 30):
    """The team's model: five 3x3 conv blocks with batch norm, downsampling by stride, ~9.3M multiply-adds."""
    import keras
    from keras import layers

    inputs = keras.Input(INPUT_SHAPE)
    x = _conv_block(inputs, 32)
    x = _conv_block(x, 32, strides=2)
    x = _conv_block(x, 64)
    x = _conv_block(x, 64, strides=2)
    x = _conv_block(x, 128, padding="valid")
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="strided_bn")
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=3e-3, warmup_steps=steps_per_epoch,
        decay_steps=max(1, steps_per_epoch * (epochs - 1)), alpha=0.01)
    return model, keras.optimizers.Adam(learning_rate=schedule)


ARCHITECTURES: dict[str, Callable[..., Any]] = {
    "strided-bn": build_strided_bn,
    "keras-example": build_keras_example,
}
DEFAULT_ARCHITECTURE = "strided-bn"
DEFAULT_EPOCHS = {"strided-bn": 30, "keras-example": 12}
AUGMENTED = {"strided-bn"}


BATCH_SIZE = 128


def check_architecture(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def build(arch: str, *, steps_per_epoch: int = 390, epochs: int = 30):
    """(model, optimizer) for an architecture name."""
    check_architecture(arch)
    if arch in AUGMENTED:
        return ARCHITECTURES[arch](steps_per_epoch=steps_per_epoch, epochs=epochs)
    return ARCHITECTURES[arch]()


def multiply_adds(model) -> int:
    """Multiply-adds per image of the conv and dense layers (what bounds inference cost)."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            kernel = layer.kernel.shape  # (kh, kw, in, out)
            out_h, out_w = layer.output.shape[1:3]
            total += out_h * out_w * kernel[0] * kernel[1] * kernel[2] * kernel[3]
        elif kind == "Dense":
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)


def for_inference(model):
    """The same function with each batch norm (and a ReLU after it) folded into the convolution before it.

    At inference a batch norm is a per-channel scale and shift, so it can live in the convolution's
    weights and bias; that saves a full pass over every activation map (most of the default model's
    cost on a CPU at small batches). Models without that pattern come back unchanged.
    """
    import keras
    import numpy as np

    layers = model.layers[1:] if type(model.layers[0]).__name__ == "InputLayer" else model.layers
    if not any(type(layer).__name__ == "BatchNormalization" for layer in layers):
        return model
    folded, index = [keras.Input(INPUT_SHAPE)], 0
    while index < len(layers):
        layer, following = layers[index], layers[index + 1] if index + 1 < len(layers) else None
        kind = type(layer).__name__
        if kind == "Conv2D" and type(following).__name__ == "BatchNormalization":
            kernel = layer.kernel.numpy()
            bias = layer.bias.numpy() if layer.use_bias else np.zeros(kernel.shape[-1], np.float32)
            gamma, beta, mean, variance = (weight.numpy() for weight in following.weights)
            scale = gamma / np.sqrt(variance + following.epsilon)
            after = layers[index + 2] if index + 2 < len(layers) else None
            plain_relu = type(after).__name__ == "ReLU" and after.get_config().get("max_value") is None
            config = {**layer.get_config(), "use_bias": True, "name": layer.name,
                      **({"activation": "relu"} if plain_relu else {})}
            convolution = keras.layers.Conv2D.from_config(config)
            convolution.build((None, None, None, kernel.shape[2]))
            convolution.set_weights([kernel * scale, (bias - mean) * scale + beta])
            folded.append(convolution)
            index += 3 if plain_relu else 2
            continue
        if kind == "BatchNormalization" or kind == "Dropout":
            if kind == "BatchNormalization":
                return model  # a batch norm without a convolution before it: leave the model as it is
            index += 1
            continue
        folded.append(layer)
        index += 1
    return keras.Sequential(folded, name=f"{model.name}_inference")


# --- the weights folder ------------------------------------------------------------------------


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


def read_card(weights: Path, version: str) -> dict[str, Any]:
    path = version_dir(weights, version) / CARD_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise WeightsError(f"cannot read model card {path}: {error}") from None


def load(weights: Path, version: str | None = None):
    """(keras model, version) for a version, by default the current one."""
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
