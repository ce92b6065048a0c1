"""`digits train`: train an architecture on MNIST, evaluate it on the test split, publish a version."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import shlex
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core import weights as weights_store
from core.device import configure
from core.errors import WeightsError
from trainer import architectures
from trainer import data as mnist_data
from trainer.evaluate import accuracy_report, calibrate, gate_figures, rejection_report
from trainer.plots import save_confusion_matrix, save_curves

log = logging.getLogger(__name__)


def augment(images, seed_generator):
    """What scans do to a digit: stroke width changes, small rotations, shifts and scale changes."""
    import tensorflow as tf

    batch = tf.shape(images)[0]
    dilated = tf.nn.max_pool2d(images, 3, 1, "SAME")
    eroded = -tf.nn.max_pool2d(-images, 3, 1, "SAME")
    pick = tf.random.stateless_uniform([batch, 1, 1, 1], seed=seed_generator.make_seeds(1)[:, 0])
    strength = tf.random.stateless_uniform([batch, 1, 1, 1], seed=seed_generator.make_seeds(1)[:, 0])
    images = tf.where(pick < 0.2, images + strength * (dilated - images), images)
    images = tf.where(pick > 0.85, images + strength * (eroded - images), images)
    return images


def _geometric_layers(seed: int):
    from keras import layers

    return [
        layers.RandomRotation(12 / 360, fill_mode="constant", seed=seed),
        layers.RandomZoom((-0.15, 0.15), fill_mode="constant", seed=seed + 1),
        layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed + 2),
    ]


class Progress:
    """Logs one line per epoch with accuracy, time per epoch and the time left; stops at the next
    batch after Ctrl-C or SIGTERM (a KeyboardInterrupt raised inside TensorFlow can be lost)."""

    def __init__(self, epochs: int):
        import keras

        self.started = time.monotonic()
        self.stop_requested = threading.Event()

        class _Callback(keras.callbacks.Callback):
            def on_train_begin(inner, logs=None):
                self.started = time.monotonic()

            def on_train_batch_end(inner, batch, logs=None):
                if self.stop_requested.is_set():
                    inner.model.stop_training = True

            def on_epoch_end(inner, epoch, logs=None):
                logs = logs or {}
                elapsed = time.monotonic() - self.started
                per_epoch = elapsed / (epoch + 1)
                left = per_epoch * (epochs - epoch - 1)
                log.info("epoch %d/%d  loss %.4f  accuracy %.2f%%  val_accuracy %.2f%%  %.0fs/epoch  ETA %dm%02ds",
                         epoch + 1, epochs, logs.get("loss", float("nan")), 100 * logs.get("accuracy", 0),
                         100 * logs.get("val_accuracy", 0), per_epoch, left // 60, left % 60)

        self.callback = _Callback()

    @contextlib.contextmanager
    def stopping_on_signals(self):
        """While training, Ctrl-C and SIGTERM ask for a stop; afterwards the run counts as interrupted."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.signal(number, lambda *_: self.stop_requested.set())
                    for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        if self.stop_requested.is_set():
            raise KeyboardInterrupt


@dataclass(frozen=True)
class Outcome:
    """A published version, and whether it became current and why."""

    folder: Path
    promoted: bool
    reason: str


NEGATIVES_SHARE = 0.25  # not-a-digit examples per handwritten digit in training
EXTRA_SHARE = 0.05  # reviewed samples (--extra) are repeated until they make at least this share of training
VALIDATION_NEGATIVES = 3000


def train(*, arch: str, epochs: int, seed: int, device: str, weights: Path, data: Path | None,
          limit: int | None, version: str | None, argv: list[str], promote: bool = False,
          init: str | None = None, extra: Path | None = None) -> Outcome:
    """Train, evaluate, publish, then make the version current only when it passes the promotion gate (or
    `promote` says so). Nothing is published on failure."""
    architectures.check_architecture(arch)
    weights_store.check_writable(weights)
    device_name = configure(device, backend_name="tensorflow")  # training stays on TensorFlow
    import keras
    import tensorflow as tf

    mnist = mnist_data.load(data)
    train_x, train_y = mnist.train_x, mnist.train_y
    if limit:
        train_x, train_y = train_x[:limit], train_y[:limit]
    extra_count = repeat = 0
    if extra is not None:  # reviewed digits (the web page's review): training only, never the test split
        extra_x, extra_y = mnist_data.load_extra(extra)
        extra_count = len(extra_x)
        # A few hundred reviewed digits among tens of thousands would barely count: they are repeated
        # until they make EXTRA_SHARE of the training images.
        repeat = max(1, math.ceil(EXTRA_SHARE * len(train_x) / extra_count))
        train_x = np.concatenate([train_x, *[extra_x] * repeat])
        train_y = np.concatenate([train_y, *[extra_y] * repeat])
        log.info("%d extra samples from %s, each %d times", extra_count, extra, repeat)
    # The eleventh class: printed characters, lines and stains (trainer.negatives), a quarter as many.
    train_x, train_y = _with_negatives(train_x, train_y, count=int(NEGATIVES_SHARE * len(train_x)), seed=seed)
    val_x, val_y = _with_negatives(mnist.val_x, mnist.val_y, count=VALIDATION_NEGATIVES, seed=seed + 1)
    keras.utils.set_random_seed(seed)
    batch_size = architectures.BATCH_SIZE
    steps = int(np.ceil(len(train_x) / batch_size))
    net, optimizer = architectures.build(arch, steps_per_epoch=steps, epochs=epochs, fine_tune=init is not None)
    if init is not None:
        donor, _ = weights_store.load(weights, init)
        log.info("warm start from version %s: %d layers copied", init, architectures.warm_start(net, donor))
    net.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    log.info("training %s (%d parameters, %.1fM multiply-adds per image) on %d images, %d epochs, device %s, "
             "data %s", arch, net.count_params(), architectures.multiply_adds(net) / 1e6, len(train_x), epochs,
             device_name, mnist.source)

    dataset = tf.data.Dataset.from_tensor_slices((train_x, train_y)).shuffle(len(train_x), seed=seed)
    dataset = dataset.batch(batch_size)
    if arch in architectures.AUGMENTED:
        generator = tf.random.Generator.from_seed(seed)
        geometric = keras.Sequential(_geometric_layers(seed))
        # One call at a time: parallel calls would draw from the shared generator in any order,
        # and --seed would no longer reproduce a run.
        dataset = dataset.map(lambda x, y: (geometric(augment(x, generator), training=True), y),
                              num_parallel_calls=1)
    dataset = dataset.prefetch(2)

    progress = Progress(epochs)
    started = time.monotonic()
    with progress.stopping_on_signals():
        history = net.fit(dataset, epochs=epochs, validation_data=(val_x, val_y), verbose=0,
                          shuffle=False, callbacks=[progress.callback])
    training_seconds = time.monotonic() - started

    probabilities = net.predict(mnist.test_x, batch_size=512, verbose=0)
    report = accuracy_report(mnist.test_y, probabilities.argmax(axis=1))
    calibrated = calibrate(net, val_x, val_y)
    rejection = rejection_report(net, mnist.test_x, seed=seed)
    evaluation = gate_figures(net, mnist.test_x, mnist.test_y, temperature=calibrated["temperature"])
    log.info("test accuracy %.2f%% on %d MNIST test images, %.2f%% of %d scan-set pages read right",
             100 * report["accuracy"], len(mnist.test_y), 100 * evaluation["scans"], evaluation["scan_pages"])

    version = version or f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{arch}"
    card = {
        "version": version,
        "architecture": arch,
        "parameters": int(net.count_params()),
        "multiply_adds": architectures.multiply_adds(net),
        "input": {"shape": [None, *weights_store.INPUT_SHAPE], "dtype": "float32", "range": [0, 1],
                  "convention": "white strokes on black, digit fitted in 20x20, centred by mass in 28x28"},
        "data": {"source": mnist.source, "sha256": mnist.sha256, "train_images": int(len(train_x)),
                 "extra_images": extra_count, "extra_repeated": repeat,
                 "extra_source": str(extra) if extra is not None else None,
                 "validation_images": int(len(mnist.val_x)), "test_images": int(len(mnist.test_x))},
        "augmentation": arch in architectures.AUGMENTED,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "device": device_name,
        "libraries": {"python": platform.python_version(), "tensorflow": tf.__version__,
                      "keras": keras.__version__, "numpy": np.__version__},
        "training_seconds": round(training_seconds, 1),
        "seconds_per_epoch": round(training_seconds / epochs, 1),
        "test_accuracy": report["accuracy"],
        "evaluation": evaluation,
        "calibration": calibrated,
        "rejection": rejection,
        "warm_start": init,
        "per_class_accuracy": report["per_class_accuracy"],
        "confusion_matrix": report["confusion_matrix"],
        "history": {key: [float(value) for value in values] for key, values in history.history.items()},
        "command": shlex.join(["digits", "train", *argv]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

    def write(folder: Path) -> None:
        net.save(folder / weights_store.MODEL_FILE)
        (folder / weights_store.CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        save_curves(card["history"], folder / "training_curves.png", title=version)
        save_confusion_matrix(np.array(report["confusion_matrix"]), folder / "confusion_matrix.png",
                              title=f"{version}: {100 * report['accuracy']:.2f}% on MNIST test")

    folder = weights_store.publish(weights, version, write, make_current=False)
    promoted, reason = _gate(weights, version, evaluation, promote=promote, test_x=mnist.test_x,
                             test_y=mnist.test_y)
    if promoted:
        weights_store.point_to(weights, version)
    log.info("version %s %s: %s", version, "is now current" if promoted else "was not made current", reason)
    return Outcome(folder, promoted, reason)


def _with_negatives(images, labels, *, count: int, seed: int):
    from core.calibration import NOT_A_DIGIT
    from trainer.negatives import negatives

    extra = negatives(count, seed=seed)[..., None]
    return (np.concatenate([images, extra]).astype(np.float32),
            np.concatenate([labels, np.full(count, NOT_A_DIGIT, labels.dtype)]))


def _gate(weights: Path, version: str, figures: dict, *, promote: bool, test_x, test_y) -> tuple[bool, str]:
    """Whether a new version may become current: at least as good as the current one on the same evaluation."""
    if promote:
        return True, "promoted as asked (--promote)"
    current = weights_store.current_version(weights)
    if current is None:
        return True, "the first version in this folder"
    try:
        model, _ = weights_store.load(weights, current)
    except WeightsError as error:
        return True, f"the current version {current} cannot be loaded ({error})"
    theirs = gate_figures(model, test_x, test_y, temperature=weights_store.temperature(weights, current))
    compared = (f"MNIST test {100 * figures['mnist_test']:.2f}% vs {100 * theirs['mnist_test']:.2f}%, "
                f"scan set {100 * figures['scans']:.2f}% vs {100 * theirs['scans']:.2f}% for {current}")
    if figures["mnist_test"] >= theirs["mnist_test"] and figures["scans"] >= theirs["scans"]:
        return True, f"at least as good as the current version ({compared})"
    return False, f"worse than the current version ({compared})"

