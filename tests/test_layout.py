"""The layout keeps its promises: who may import whom, each protocol name defined once, no TensorFlow notices."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT, run_digits

PACKAGES = ("core", "digits", "trainer", "watcher", "web", "worker")
# Which of the project's packages each one may import. core is the shared core; digits is the command
# line, the one composition root, which nothing imports; the services import core, and the trainer
# also reads scans the way the worker does (worker.normalise) to judge a model on them.
ALLOWED = {
    "core": set(),
    "watcher": {"core"},
    "web": {"core", "worker"},
    "worker": {"core"},
    "trainer": {"core", "worker"},
    "digits": {"core", "trainer", "watcher", "web", "worker"},
}


def imports_of(package: str) -> dict[str, set[str]]:
    """module path -> the project packages it imports (at module level or inside functions)."""
    found = {}
    for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(PROJECT_ROOT))] = {name for name in names if name in PACKAGES} - {package}
    return found


@pytest.mark.fast
@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_it_may(package):
    for module, imported in imports_of(package).items():
        assert imported <= ALLOWED[package], f"{module} imports {sorted(imported - ALLOWED[package])}"


@pytest.mark.fast
def test_the_package_graph_has_no_cycle():
    edges = {package: set().union(*imports_of(package).values()) for package in PACKAGES}

    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(step == goal or (step not in seen and reaches(step, goal, seen | {step}))
                   for step in edges[start])

    assert not [package for package in PACKAGES if reaches(package, package)], edges


@pytest.mark.fast
def test_each_protocol_name_is_written_once_in_the_code():
    """Queue, task names and Redis keys appear as literals only in core/protocol.py."""
    names = re.compile(r"""["'](digits\.recognize|digits\.process_files|digits_info|digits:[a-z]*)["']"""
                       r"""|(QUEUE\s*=|queues?\s*=|llen\(|lpush\(|"--queues",)\s*["']digits["']""")
    offenders = []
    for package in PACKAGES + ("bench",):
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            if path == PROJECT_ROOT / "core" / "protocol.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if names.search(line.split("#", 1)[0]):
                    offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.fast
def test_importing_the_services_does_no_work():
    """No settings read, no Celery configured, no TensorFlow loaded by importing any module of a service."""
    script = (
        "import os, sys\n"
        "os.environ['DIGITS_CONCURRENCY'] = 'not a number'\n"  # reading the settings would raise here
        "import worker.celery_app, worker.tasks, worker.main, watcher.service, watcher.main, digits.cli\n"
        "import digits.local.up, digits.status, digits.submit, trainer.train, trainer.evaluate\n"
        "from worker.celery_app import app\n"
        "heavy = sorted(name for name in sys.modules if name.split('.')[0] in ('tensorflow', 'keras'))\n"
        "print(app.configured, heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "False []", done.stderr


@pytest.mark.parametrize("arguments, code, message", [
    (["train", "--data", "/nonexistent/mnist.npz"], 4, "digits train: error: data path /nonexistent/mnist.npz"),
    (["train", "--arch", "resnet-9000"], 3, "digits train: error: unknown architecture 'resnet-9000'"),
    (["train", "--epochs", "0"], 3, "digits train: error: --epochs must be at least 1"),
    (["eval", "--version", "no-such-version"], 5, "digits eval: error: weights version no-such-version is not"),
    (["eval", "--data", "/nonexistent/mnist.npz"], 4, "digits eval: error: data path /nonexistent/mnist.npz"),
])
@pytest.mark.fast
def test_a_bad_argument_gives_exactly_one_line_on_stderr(tmp_path, arguments, code, message):
    """In a fresh process with TensorFlow free to print its notices (TF_CPP_MIN_LOG_LEVEL unset)."""
    done = run_digits(*arguments, "--weights", str(PROJECT_ROOT / "weights"), env={"TF_CPP_MIN_LOG_LEVEL": ""},
                      cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith(message), done.stderr


def test_loading_tensorflow_prints_no_notice():
    """What the worker and `digits train`/`eval` do first: TensorFlow loads, and none of its loading notices
    reaches stderr (whatever else a TensorFlow version prints is not this test's business)."""
    from core.device import _LOAD_NOTICE

    script = ("import sys\nfrom core.device import configure\nprint(configure('cpu'))\n"
              "import tensorflow as tf\nprint(tf.reduce_sum(tf.ones((3, 3))).numpy())\n")
    environment = {key: value for key, value in __import__("os").environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300, env=environment)
    assert done.returncode == 0 and done.stdout.split() == ["CPU", "9.0"], done.stderr
    assert not [line for line in done.stderr.splitlines() if _LOAD_NOTICE.match(line)], done.stderr


@pytest.mark.fast
def test_tensorflow_s_loading_notices_are_kept_off_stderr_and_its_errors_are_not(tmp_path):
    """The filter itself, on a stand-in `tensorflow` whose native loading writes notices and an error to fd 2."""
    package = tmp_path / "tensorflow"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import os\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n'\n"
        "            b'I0000 00:00:1764500000.000000   12 cpu_feature_guard.cc:227] This TensorFlow binary...\\n'\n"
        "            b'To enable the following instructions: AVX2 AVX512F FMA, rebuild TensorFlow.\\n'\n"
        "            b'W0000 00:00:1764500000.000001   12 something.cc:1] a notice\\n'\n"
        "            b'E0000 00:00:1764500000.000002   12 loader.cc:9] libcuda.so.1: cannot open\\n'\n"
        "            b'a plain line from a library\\n')\n")
    script = "from core.device import import_tensorflow\nprint(import_tensorflow().__name__)\n"
    environment = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{PROJECT_ROOT}"}
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=60, env=environment)
    assert done.returncode == 0 and done.stdout.split() == ["tensorflow"], done.stderr
    assert done.stderr.splitlines() == ["E0000 00:00:1764500000.000002   12 loader.cc:9] libcuda.so.1: cannot open",
                                        "a plain line from a library"]
