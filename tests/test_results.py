"""Results files: confined paths, the result schema, atomic JSON, csv rows and never-overwriting moves."""

import ctypes
import errno
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import csv_rows

from core import files, protocol
from core.errors import UnsafePath
from worker import results_files as results

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("relative", ["/etc/passwd", "../x.png", "a/../../x.png", "a//b.png", "./a.png", "",
                                      "a\\..\\b.png", "nul\x00.png"])
def test_unsafe_relative_paths_are_refused(tmp_path, relative):
    with pytest.raises(UnsafePath):
        results.confined(tmp_path, relative)


def test_symlink_leaving_the_folder_is_refused_and_one_inside_is_allowed(tmp_path):
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir(), outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    (inbox / "inside.png").write_bytes(b"x")
    (inbox / "leak.png").symlink_to(outside / "secret.png")
    (inbox / "linkdir").symlink_to(outside)
    (inbox / "alias.png").symlink_to(inbox / "inside.png")
    for relative in ("leak.png", "linkdir/secret.png"):
        with pytest.raises(UnsafePath):
            results.confined(inbox, relative)
    assert results.confined(inbox, "alias.png") == inbox / "alias.png"
    assert results.result_path(tmp_path / "results", "2026/scan 7.png") == tmp_path / "results/2026/scan 7.png.json"


def test_the_result_object_joins_numbers_and_pages_and_takes_the_lowest_confidence():
    first = protocol.digit_details(np.array([[0.01, 0.9, 0.09] + [0.0] * 8, [0.0, 0.0, 0.7, 0.3] + [0.0] * 7]),
                                   [(1, 2, 3, 4), (5, 6, 7, 8)], page=0)
    printed = protocol.digit_details(np.array([[0.05] + [0.0] * 9 + [0.95]]), [(9, 2, 12, 8)], page=0)
    second = protocol.digit_details(np.array([[0.0] * 9 + [0.99, 0.01]]), [(0, 0, 9, 9)], page=0)
    numbers = [protocol.number_result(first + printed, review_below=0.9),
               protocol.number_result(second, review_below=0.9)]
    assert protocol.number_result(printed, review_below=0.9) is None  # "not a digit" only: no number
    pages = [protocol.page_result(0, numbers), protocol.page_result(1, [])]
    result = protocol.result("a.tif", pages=pages, model="v1", sha256="ab", worker="w@h", job="j")
    assert result["status"] == "ok" and result["digits"] == "12 9" and result["confidence"] == 0.7
    assert set(result) == set(protocol.RESULT_FIELDS)
    (page, _) = result["pages"]
    assert [number["digits"] for number in page["numbers"]] == ["12", "9"]
    assert page["numbers"][0]["box"] == [1, 2, 7, 8] and page["numbers"][0]["review"]  # 0.7 < 0.9
    assert not page["numbers"][1]["review"] and result["review"]
    assert result["details"][0]["top"] == [["1", 0.9], ["2", 0.09], ["0", 0.01]]
    assert result["details"][1]["box"] == [5, 6, 7, 8] and result["details"][1]["page"] == 0
    empty = protocol.result("b.png", pages=[protocol.page_result(0, [])], model="v1", sha256="cd", worker="w")
    assert (empty["status"], empty["digits"], empty["confidence"], empty["review"]) == ("no_digit", "", 0.0, False)
    error = protocol.result("c.png", error="NotAnImage: junk", model="v1", sha256=None, worker="w")
    assert error["status"] == "error" and error["error"] == "NotAnImage: junk" and error["digits"] == ""
    assert set(error) == set(protocol.RESULT_FIELDS)


def test_a_glyph_left_out_that_was_nearly_a_digit_flags_its_number():
    details = protocol.digit_details(np.array([[0.0, 0.99] + [0.0] * 8 + [0.01],
                                               [0.0, 0.0, 0.4] + [0.0] * 7 + [0.6]]), [(0, 0, 5, 9), (6, 0, 11, 9)],
                                     page=0)
    number = protocol.number_result(details, review_below=0.9)
    assert number["digits"] == "1" and number["review"]


def test_a_digit_far_smaller_than_the_others_flags_its_number():
    sure = [[0.0] * 3 + [1.0] + [0.0] * 7, [0.0] * 4 + [1.0] + [0.0] * 6]  # a 3 and a 4, each at 1.0
    boxes = [(0, 0, 30, 50), (40, 0, 70, 50), (75, 30, 80, 45), (85, 0, 115, 50)]
    number = protocol.number_result(protocol.digit_details(np.array(sure * 2), boxes, page=0), review_below=0.9)
    assert number["digits"] == "3434" and number["confidence"] == 1.0 and number["review"]  # a 15 px tall "4"
    boxes[2] = (75, 5, 100, 45)
    number = protocol.number_result(protocol.digit_details(np.array(sure * 2), boxes, page=0), review_below=0.9)
    assert not number["review"]


@pytest.fixture(params=["unnamed files", "temporary names"])
def file_creation(request, monkeypatch):
    """Results files both ways: unnamed files named when durable (Linux), or temporary names renamed."""
    monkeypatch.setattr(results, "_unnamed_by_filesystem", {})
    if request.param == "unnamed files":
        if results._linkat() is None:
            pytest.skip("no unnamed files here (O_TMPFILE and /proc/self/fd are Linux's)")
        # On Linux (ext4, xfs, btrfs, tmpfs, overlayfs) the probe itself must succeed: a failure is a bug.
        assert results._try_unnamed(request.getfixturevalue("tmp_path")) is True
    else:
        monkeypatch.setattr(results, "_linkat", lambda: None)
    return request.param


def test_where_unnamed_files_cannot_be_named_results_take_temporary_names(tmp_path, monkeypatch):
    def refusing_linkat(*arguments):  # a /proc of another namespace, or a sandbox, refuses the link
        ctypes.set_errno(errno.EPERM)
        return -1

    monkeypatch.setattr(results, "_unnamed_by_filesystem", {})
    monkeypatch.setattr(results, "_linkat", lambda: refusing_linkat)
    targets = [tmp_path / f"{number}.png.json" for number in range(results.SYNCFS_FILES)]
    results.write_json_files([(target, {"source": target.name}) for target in targets])
    results.write_json_files([(target, {"source": target.name, "again": True}) for target in targets])
    assert [json.loads(target.read_text()) for target in targets] == [
        {"source": target.name, "again": True} for target in targets]
    assert sorted(tmp_path.iterdir()) == sorted(targets)
    assert results._unnamed_by_filesystem == {os.stat(tmp_path).st_dev: False}  # tried once for the filesystem


def test_write_json_is_atomic_and_utf8(tmp_path, file_creation):
    target = tmp_path / "deep" / "scan ü.png.json"
    results.write_json_files([(target, {"source": "scan ü.png"})])
    results.write_json_files([(target, {"source": "scan ü.png", "second": True})])
    assert json.loads(target.read_text(encoding="utf-8")) == {"source": "scan ü.png", "second": True}
    assert [path.name for path in target.parent.iterdir()] == [target.name]


def test_several_results_files_are_written_at_once_without_leftovers(tmp_path, file_creation):
    targets = [tmp_path / "a.png.json", tmp_path / "2026" / "b.png.json", tmp_path / "2026" / "c ü.png.json"]
    results.write_json_files([(target, {"source": target.name}) for target in targets])
    assert [json.loads(target.read_text(encoding="utf-8")) for target in targets] == [
        {"source": target.name} for target in targets]
    assert not [path for path in tmp_path.rglob(".tmp-*")]
    with pytest.raises(TypeError):  # a result that cannot be written leaves no temporary file behind
        results.write_json_files([(tmp_path / "d.json", {"source": "d"}), (tmp_path / "e.json", {"bad": object()})])
    assert not [path for path in tmp_path.rglob(".tmp-*")] and not (tmp_path / "d.json").exists()


def test_a_write_error_when_a_jobs_results_are_made_durable_replaces_nothing(tmp_path, monkeypatch, file_creation):
    targets = [tmp_path / f"{number}.png.json" for number in range(results.SYNCFS_FILES)]
    results.write_json_files([(target, {"source": target.name, "first": True}) for target in targets])
    assert all(json.loads(target.read_text())["first"] for target in targets)
    calls = []

    def failing_syncfs(fd):  # a disk error cannot be had here: syncfs reports one as -1 with EIO
        calls.append(fd)
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(results, "_syncfs", lambda: failing_syncfs)
    with pytest.raises(OSError) as raised:
        results.write_json_files([(target, {"source": target.name, "first": False}) for target in targets])
    assert raised.value.errno == errno.EIO and len(calls) == 1  # one syncfs for the whole job
    assert all(json.loads(target.read_text())["first"] for target in targets)  # the results stand as they were
    assert sorted(tmp_path.iterdir()) == sorted(targets)  # no temporary file left behind
    results.write_json_files([(targets[0], {"source": "alone"})])  # fewer files: each fsynced, no syncfs
    assert len(calls) == 1 and json.loads(targets[0].read_text()) == {"source": "alone"}


def test_csv_rows_are_appended_and_found_after_an_offset(tmp_path):
    path = tmp_path / "results.csv"
    result = protocol.result('a "quoted", name.png', error="bad", model="v1", sha256="aa", worker="w", job="job-1")
    offset = results.csv_size(path)
    results.append_rows(path, [result])
    assert results.has_row(path, offset=offset, job="job-1", source='a "quoted", name.png')
    assert not results.has_row(path, offset=path.stat().st_size, job="job-1", source='a "quoted", name.png')
    assert not results.has_row(path, offset=0, job="job-2", source='a "quoted", name.png')
    rows = csv_rows(path)
    assert len(rows) == 1 and rows[0]["source"] == 'a "quoted", name.png' and rows[0]["status"] == "error"


def test_rows_wait_while_another_host_holds_the_csv_lock(tmp_path):
    """Workers on several hosts share results.csv over NFS or SMB by a POSIX lock: while another process
    holds it, an append waits, and once it is released the rows land whole, after the other's."""
    path = tmp_path / "results.csv"
    results.ensure_csv(path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys\n"
         f"fd = os.open({str(path)!r}, os.O_WRONLY | os.O_APPEND)\n"
         "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.readline()\n"
         "os.write(fd, b'the other host row\\n')\nos.fsync(fd)\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = protocol.result("mine.png", error="x", model="v1", sha256="aa", worker="w", job="j")
        appending = threading.Thread(target=results.append_rows, args=(path, [result]))
        appending.start()
        appending.join(timeout=1.0)
        assert appending.is_alive(), "the append did not wait for the lock"
        holder.stdin.write("go\n")
        holder.stdin.flush()
        appending.join(timeout=10)
        assert not appending.is_alive()
    finally:
        holder.kill()
        holder.wait()
    lines = path.read_text().splitlines()
    assert lines[1] == "the other host row" and lines[2].split(",")[1] == "mine.png" and len(lines) == 3


def test_move_aside_never_overwrites(tmp_path):
    inbox, processed = tmp_path / "inbox", tmp_path / "processed"
    (inbox / "sub").mkdir(parents=True)
    first, second = inbox / "sub" / "a.png", inbox / "sub" / "b.png"
    first.write_bytes(b"first")
    assert results.move_aside(first, processed, "sub/a.png") == processed / "sub" / "a.png"
    first.write_bytes(b"again")
    assert results.move_aside(first, processed, "sub/a.png") == processed / "sub" / "a-1.png"
    assert (processed / "sub" / "a.png").read_bytes() == b"first" and not first.exists()
    os.symlink("/etc/hostname", second)
    moved = results.move_aside(second, processed, "sub/b.png")
    assert moved.is_symlink() and not second.exists() and not second.is_symlink()
    with pytest.raises(FileNotFoundError):  # an original gone meanwhile: an error, and no folder made for it
        results.move_aside(inbox / "gone.png", processed, "other/gone.png")
    assert not (processed / "other").exists()


@pytest.mark.parametrize("name", ['=HYPERLINK("http://x","a").png', "+1.png", "-2.png", "@sum.png", "\tx.png"])
def test_a_name_a_spreadsheet_would_run_is_written_as_text(tmp_path, name):
    path = tmp_path / "results.csv"
    result = protocol.result(name, error="bad", model="v1", sha256="aa", worker="w", job="job-1")
    results.append_rows(path, [result])
    (row,) = csv_rows(path)
    assert row["source"] == "'" + name and result["source"] == name
    assert results.has_row(path, offset=0, job="job-1", source=name)


@pytest.mark.parametrize("size", [0, 1, 4096, files.CHUNK_BYTES - 1, files.CHUNK_BYTES, 3 * files.CHUNK_BYTES + 5])
def test_files_are_read_whole_by_their_descriptor(tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "scan.png").write_bytes(data)
    for stated in (size, max(0, size - 10), size + 10):  # its size when looked at; it grew or shrank since
        descriptor = os.open(tmp_path / "scan.png", os.O_RDONLY)
        try:
            chunks = list(files.read_chunks(descriptor, stated))
        finally:
            os.close(descriptor)
        assert b"".join(chunks) == data and all(len(chunk) <= files.CHUNK_BYTES for chunk in chunks)
