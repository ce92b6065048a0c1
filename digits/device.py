"""Choose where TensorFlow runs: the GPU wherever it sees one (memory growth on), else the CPU."""

from __future__ import annotations

import logging

from digits.errors import ConfigError

log = logging.getLogger(__name__)


def configure(device: str = "auto") -> str:
    """Apply the device setting before any TensorFlow op runs; returns a description such as 'GPU:0 (NVIDIA H100)'."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu" or not gpus:
        if device == "gpu":
            raise ConfigError("device=gpu but TensorFlow sees no GPU (check CUDA_VISIBLE_DEVICES and the driver)")
        if gpus:
            tf.config.set_visible_devices([], "GPU")
        return "CPU"
    for gpu in gpus:
        # Without memory growth one process grabs the whole card; growth lets others share it.
        tf.config.experimental.set_memory_growth(gpu, True)
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"GPU:0 ({details.get('device_name', gpus[0].name)})" + (f" +{len(gpus) - 1} more" if len(gpus) > 1 else "")
