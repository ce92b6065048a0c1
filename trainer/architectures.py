"""The CNN architectures the trainer can build, their training hyper-parameters and their cost."""

from __future__ import annotations

from typing import Any, Callable

from core.errors import ConfigError
from core.protocol import DIGIT_CLASSES
from core.weights import INPUT_SHAPE

# Ten digits and "not a digit" (trainer.negatives): printed text, lines and stains are answered as such.
CLASSES = DIGIT_CLASSES + 1


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
            layers.Dense(CLASSES, activation="softmax"),
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


def build_strided_bn(*, steps_per_epoch: int = 390, epochs: int = 30, peak_learning_rate: float = 3e-3):
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
    outputs = layers.Dense(CLASSES, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="strided_bn")
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=peak_learning_rate, warmup_steps=steps_per_epoch,
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


def build(arch: str, *, steps_per_epoch: int = 390, epochs: int = 30, fine_tune: bool = False):
    """(model, optimizer) for an architecture name; fine_tune: a gentler schedule for a warm start."""
    check_architecture(arch)
    if arch in AUGMENTED:
        return ARCHITECTURES[arch](steps_per_epoch=steps_per_epoch, epochs=epochs,
                                   peak_learning_rate=1e-3 if fine_tune else 3e-3)
    return ARCHITECTURES[arch]()


def warm_start(model, donor) -> int:
    """Copy a published model's weights into a new one layer by layer (in order, where shapes agree); a
    classifier with fewer outputs fills the first columns. Returns how many layers were copied."""
    import numpy as np

    receiving = [layer for layer in model.layers if layer.weights]
    giving = [layer for layer in donor.layers if layer.weights]
    copied = 0
    for layer, source in zip(receiving, giving):
        new, old = layer.get_weights(), source.get_weights()
        if [w.shape for w in new] == [w.shape for w in old]:
            layer.set_weights(old)
        elif type(layer).__name__ == "Dense" and len(new) == len(old) == 2 and new[0].shape[0] == old[0].shape[0]:
            kernel, bias = new[0] * 0.1, np.full_like(new[1], -2.0)  # a new class starts unlikely
            kernel[:, :old[0].shape[1]], bias[:old[1].shape[0]] = old
            layer.set_weights([kernel, bias])
        else:
            continue
        copied += 1
    return copied


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
