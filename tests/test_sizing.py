"""Threads and processes sized to the machine: the cores shared out among worker processes, never fought over."""

from __future__ import annotations

import pytest
from conftest import printed_by

from core import settings as settings_module
from core.settings import Settings


@pytest.mark.fast
@pytest.mark.parametrize("cores, workers, processes, tf_threads", [
    (2, 0, 2, 1),    # this VM: two worker processes, one TensorFlow thread each
    (16, 0, 4, 4),   # a 16-core GPU box: four processes (the default cap), four threads each
    (16, 2, 2, 8),   # two processes asked for: they share the 16 cores
    (1, 0, 1, 1),
    (3, 2, 2, 1),    # never more threads than cores in all
])
def test_tensorflow_threads_share_the_cores_among_worker_processes(monkeypatch, cores, workers, processes,
                                                                    tf_threads):
    monkeypatch.setattr(settings_module, "cpu_cores", lambda: cores)
    chosen = Settings(workers=workers)
    assert (chosen.worker_processes, chosen.model_threads) == (processes, tf_threads)
    assert chosen.worker_processes * chosen.model_threads <= max(cores, processes)
    assert Settings(workers=workers, tf_threads=3).model_threads == 3  # DIGITS_TF_THREADS wins


def test_the_worker_runtime_gives_tensorflow_that_many_threads():
    assert printed_by("from core.device import configure, import_tensorflow\n"
                      "configure('cpu', threads=1)\n"
                      "tf = import_tensorflow()\n"
                      "print(tf.config.threading.get_intra_op_parallelism_threads(),"
                      " tf.config.threading.get_inter_op_parallelism_threads())\n") == ["1", "1"]


def test_a_tensorflow_worker_does_not_load_jax_yet_jax_still_imports():
    # TensorFlow's TFLite helpers import JAX wherever it is installed: 130 MiB more in each worker.
    assert printed_by("import sys\n"
                      "from core.device import configure\n"
                      "configure('cpu', threads=1, backend_name='tensorflow')\n"
                      "import keras\n"
                      "print('jax' in sys.modules)\n"
                      "import jax\n"
                      "print(jax.numpy.add(1, 2))\n") == ["False", "3"]
