"""Where TensorFlow runs (the GPU wherever it sees one, memory growth on, else the CPU), and keeping it quiet."""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile

from core.errors import ConfigError

log = logging.getLogger(__name__)


# Read by TensorFlow's C++ side when it loads, so they must be set before the first `import tensorflow`:
# level 2 hides its INFO and WARNING start-up notices (oneDNN, CPU features), keeping errors.
QUIET_TENSORFLOW = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def quiet_tensorflow() -> None:
    """Keep TensorFlow's start-up notices off the output of this process and its children (a user's own
    TF_CPP_MIN_LOG_LEVEL wins)."""
    for name, value in QUIET_TENSORFLOW.items():
        os.environ.setdefault(name, value)


# What TensorFlow's native libraries print while they load, whatever TF_CPP_MIN_LOG_LEVEL says: absl's
# "log messages before absl::InitializeLog()" line, INFO/WARNING records (oneDNN, CPU features) and the
# second line of the CPU-feature notice. Errors (E..., F...) and anything else still reach stderr.
_LOAD_NOTICE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} \d\d:\d\d:"
                          r"|To enable the following instructions:)")


def import_tensorflow():
    """`import tensorflow`, with the notices its native libraries print on loading kept off stderr."""
    quiet_tensorflow()
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not _LOAD_NOTICE.match(line)]
    if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()
    return tensorflow


def configure(device: str = "auto", *, threads: int | None = None) -> str:
    """Apply the device setting before any TensorFlow op runs; returns a description such as 'GPU:0 (NVIDIA H100)'.

    threads: how many threads one model call may use (intra-op), one op at a time (inter-op); None leaves
    TensorFlow's default, a thread per core in each process, which several worker processes fight over.
    """
    tf = import_tensorflow()
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)

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
