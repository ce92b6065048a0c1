"""The model kept loaded: one compiled predictor per weights version, hot-swapped when CURRENT changes."""

from __future__ import annotations

import gc
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core import weights as weights_store
from core.errors import WeightsError
from worker.fold import for_inference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Predictor:
    """A loaded, warmed weights version: predict(images (n, 28, 28) float32) -> probabilities (n, 10)."""

    version: str
    predict: Callable[[np.ndarray], np.ndarray]


def compile_predictor(model, version: str, *, temperature: float = 1.0) -> Predictor:
    """Wrap a Keras model (batch norms folded away) in one compiled forward pass on its backend, with its
    calibration applied to what it answers, and warm it up."""
    import keras

    from core.calibration import scale

    forward = FORWARDS[keras.backend.backend()](for_inference(model))

    def predict(images: np.ndarray) -> np.ndarray:
        batch = np.asarray(images, dtype=np.float32).reshape(-1, *weights_store.INPUT_SHAPE)
        return scale(forward(batch), temperature)

    probabilities = predict(np.zeros((1, *weights_store.GLYPH_SHAPE), dtype=np.float32))
    if probabilities.shape[1:] not in [(n,) for n in weights_store.OUTPUTS] or not np.all(np.isfinite(probabilities)):
        raise WeightsError(f"weights version {version} gives output {probabilities.shape} with non-finite values")
    return Predictor(version=version, predict=predict)


def _tensorflow_forward(model) -> Callable[[np.ndarray], np.ndarray]:
    """One tf.function traced once for any batch size."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, *weights_store.INPUT_SHAPE], tf.float32)],
                 reduce_retracing=True)
    def forward(images):
        return model(images, training=False)

    return lambda batch: forward(tf.constant(batch)).numpy()


# jax.jit compiles once per input shape: batches are padded to the next of these sizes (then to a
# multiple of the largest), so a worker compiles a handful of shapes, all at warm-up, never mid-burst.
JAX_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _jax_forward(model) -> Callable[[np.ndarray], np.ndarray]:
    """The model's stateless call under jax.jit, the weights passed in (not baked into the program)."""
    import jax

    trainable = [variable.value for variable in model.trainable_variables]
    non_trainable = [variable.value for variable in model.non_trainable_variables]

    @jax.jit
    def call(trainable, non_trainable, images):
        outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
        return outputs

    def forward(batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        size = next((size for size in JAX_BATCH_SIZES if size >= count), None)
        size = size or -(-count // JAX_BATCH_SIZES[-1]) * JAX_BATCH_SIZES[-1]
        if size != count:
            batch = np.concatenate([batch, np.zeros((size - count, *batch.shape[1:]), batch.dtype)])
        return np.asarray(call(trainable, non_trainable, batch))[:count]

    for size in JAX_BATCH_SIZES:
        forward(np.zeros((size, *weights_store.INPUT_SHAPE), np.float32))
    return forward


def _torch_forward(model) -> Callable[[np.ndarray], np.ndarray]:
    """The model called under torch.inference_mode (no autograd records) on the device Keras chose."""
    import keras
    import torch

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return keras.ops.convert_to_numpy(model(batch, training=False))

    return forward


FORWARDS = {"tensorflow": _tensorflow_forward, "jax": _jax_forward, "torch": _torch_forward}


def load_predictor(weights: Path, version: str | None = None) -> Predictor:
    """Load a published version (the current one by default) and warm it up; raises WeightsError."""
    model, version = weights_store.load(weights, version)
    try:
        return compile_predictor(model, version, temperature=weights_store.temperature(weights, version))
    except WeightsError:
        raise
    except Exception as error:  # TensorFlow raises many kinds for a model that cannot run
        raise WeightsError(f"weights version {version} fails its warm-up inference: {error}") from None


def settle_garbage_collector() -> None:
    """Take what is loaded now (TensorFlow, Keras and the model: some 390,000 objects) out of the reach of
    Python's cyclic garbage collector: a full collection walks them all, 130 ms here during which the
    worker's threads stand still, and each collection of the older generations walks them again for
    nothing. The garbage left from loading is collected first. After a new weights version is taken,
    what was frozen is released and collected once (the old model's cycles go), then frozen anew."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelHolder:
    """Holds the serving Predictor and polls weights/CURRENT, loading a new version beside the old one."""

    def __init__(self, weights: Path, *, reload_interval: float):
        self.weights = weights
        self.reload_interval = reload_interval
        self.refused: set[str] = set()
        self._current: Predictor | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> Predictor:
        """The serving version; reading one attribute is atomic, so a batch never sees half a swap."""
        if self._current is None:
            raise WeightsError("no model loaded yet")
        return self._current

    def load_initial(self) -> Predictor:
        self._current = load_predictor(self.weights)
        settle_garbage_collector()
        return self._current

    def check_once(self) -> bool:
        """Switch to the version CURRENT names if it differs and loads; True when a new version was taken."""
        try:
            version = weights_store.current_version(self.weights)
        except WeightsError as error:
            log.error("%s; keeping version %s", error, self.current.version)
            return False
        if version is None or version == self.current.version or version in self.refused:
            return False
        log.info("weights version %s published; loading it beside %s", version, self.current.version)
        try:
            candidate = load_predictor(self.weights, version)
        except WeightsError as error:
            self.refused.add(version)
            log.error("refused weights version %s (%s); version %s keeps serving", version, error,
                      self.current.version)
            return False
        previous, self._current = self.current.version, candidate
        settle_garbage_collector()
        log.info("now serving weights version %s (was %s)", candidate.version, previous)
        return True

    def start_polling(self) -> None:
        if self.reload_interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, name="digits-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(self.reload_interval):
            try:
                self.check_once()
            except Exception:  # the outermost loop of the reload thread: log, keep serving, keep polling
                log.exception("weights reload check failed; version %s keeps serving", self.current.version)
