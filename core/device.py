"""Which Keras backend serves (KERAS_BACKEND: tensorflow, jax or torch) and where it runs (the GPU wherever it
sees one, memory taken as needed, else the CPU); TensorFlow's loading notices kept quiet."""

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
    # TensorFlow's TFLite helpers import JAX wherever it is installed (for a converter we never use): 130 MiB
    # more in each TensorFlow process. It is kept out while TensorFlow loads; `import jax` works afterwards.
    keep_out_jax = "jax" not in sys.modules
    if keep_out_jax:
        sys.modules["jax"] = None
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if keep_out_jax and sys.modules.get("jax", False) is None:
                del sys.modules["jax"]
        captured.seek(0)
        kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not _LOAD_NOTICE.match(line)]
    if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()
    return tensorflow


BACKENDS = ("tensorflow", "jax", "torch")


def backend() -> str:
    """The Keras backend this process serves with: KERAS_BACKEND, TensorFlow when unset."""
    name = os.environ.get("KERAS_BACKEND", "tensorflow").strip().lower() or "tensorflow"
    if name not in BACKENDS:
        raise ConfigError(f"KERAS_BACKEND must be one of {', '.join(BACKENDS)}, not {name!r}")
    return name


def import_keras():
    """`import keras` on the chosen backend (TensorFlow's loading notices kept off stderr); refuses a keras
    that was already imported on another backend, which a process cannot change."""
    name = backend()
    os.environ["KERAS_BACKEND"] = name
    if name == "tensorflow":
        import_tensorflow()
    import keras

    if keras.backend.backend() != name:
        raise ConfigError(f"keras is already loaded on {keras.backend.backend()}, not {name}: set KERAS_BACKEND "
                          "before the process starts")
    if name != "tensorflow":
        # Keras checks some objects against TensorFlow's types, importing TensorFlow to do so wherever it is
        # installed: seconds and hundreds of MiB in a JAX or PyTorch worker, for types it never sees there.
        lazy = getattr(getattr(keras.src.utils, "module_utils", None), "tensorflow", None)
        if lazy is not None and getattr(lazy, "module", None) is None:
            lazy._available = False
    return keras


def configure(device: str = "auto", *, threads: int | None = None, backend_name: str | None = None) -> str:
    """Apply the device setting before the backend runs anything; returns a description such as
    'GPU:0 (NVIDIA H100)' or 'CPU'.

    threads: how many threads one model call may use (intra-op), one op at a time (inter-op); None leaves
    the backend's default, a thread per core in each process, which several worker processes fight over.
    backend_name: serve with this backend whatever KERAS_BACKEND says (training always uses TensorFlow).
    """
    if backend_name is not None:
        if "keras" in sys.modules and sys.modules["keras"].backend.backend() != backend_name:
            raise ConfigError(f"keras is already loaded on {sys.modules['keras'].backend.backend()}, "
                              f"not {backend_name}")
        os.environ["KERAS_BACKEND"] = backend_name
    configure_backend = {"tensorflow": _tensorflow, "jax": _jax, "torch": _torch}[backend()]
    return configure_backend(device, threads)


def _no_gpu(device: str, name: str) -> str:
    if device == "gpu":
        raise ConfigError(f"device=gpu but {name} sees no GPU (check CUDA_VISIBLE_DEVICES, the driver and that "
                          f"{name} was installed with GPU support)")
    return "CPU"


def _tensorflow(device: str, threads: int | None) -> str:
    tf = import_tensorflow()
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu" or not gpus:
        if gpus:
            tf.config.set_visible_devices([], "GPU")
        return _no_gpu(device, "TensorFlow")
    for gpu in gpus:
        # Without memory growth one process grabs the whole card; growth lets others share it.
        tf.config.experimental.set_memory_growth(gpu, True)
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"GPU:0 ({details.get('device_name', gpus[0].name)})" + (f" +{len(gpus) - 1} more" if len(gpus) > 1 else "")


def _jax(device: str, threads: int | None) -> str:
    # Read when JAX first starts a device client, so set before anything runs. Without this each process
    # takes 75 % of the card at its first call, and a second worker process sharing the GPU fails.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if threads == 1:
        # XLA's CPU client has no thread count, only this: one thread per call instead of one per core.
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()
    if device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    if device == "cpu":
        jax.config.update("jax_platforms", "cpu")
        return "CPU"
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:  # no GPU plugin, or no GPU it can use
        gpus = []
    if not gpus:
        return _no_gpu(device, "JAX")
    return f"GPU:0 ({gpus[0].device_kind})" + (f" +{len(gpus) - 1} more" if len(gpus) > 1 else "")


def _torch(device: str, threads: int | None) -> str:
    import torch

    if threads:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # only allowed before the first parallel work
            pass
    # Keras reads KERAS_TORCH_DEVICE when it loads (configure comes first); PyTorch's caching allocator
    # takes GPU memory as needed, so processes share the card.
    if device == "cpu" or not torch.cuda.is_available():
        os.environ["KERAS_TORCH_DEVICE"] = "cpu"
        return _no_gpu(device, "PyTorch")
    os.environ.setdefault("KERAS_TORCH_DEVICE", "cuda")
    count = torch.cuda.device_count()
    return f"GPU:0 ({torch.cuda.get_device_name(0)})" + (f" +{count - 1} more" if count > 1 else "")
