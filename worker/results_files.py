"""Results files: paths confined to their folders, atomic JSON files, results.csv rows, originals moved aside."""

from __future__ import annotations

import contextlib
import csv
import ctypes
import errno
import fcntl
import functools
import io
import itertools
import json
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

from core.errors import UnsafePath

CSV_NAME = "results.csv"
CSV_COLUMNS = ("processed_at", "source", "status", "digits", "confidence", "model", "sha256", "error",
               "worker", "job", "review")


# --- paths -------------------------------------------------------------------------------------


def check_relative(relative: str) -> PurePosixPath:
    """A relative path made of ordinary names only; raises UnsafePath for anything that could leave a folder."""
    if not isinstance(relative, str) or not relative or "\x00" in relative or "\\" in relative:
        raise UnsafePath(f"path {relative!r} is empty or has forbidden characters")
    path = PurePosixPath(relative)
    if path.is_absolute() or relative.startswith("/"):
        raise UnsafePath(f"path {relative!r} is absolute")
    if any(part in ("..", ".", "") for part in relative.split("/")):
        raise UnsafePath(f"path {relative!r} contains '..', '.' or an empty part")
    return path


def confined(root: Path, relative: str) -> Path:
    """root/relative, refusing absolute paths, '..' and symlinks whose target lies outside root."""
    check_relative(relative)
    base = _real_folder(str(root))
    candidate = base.joinpath(*relative.split("/"))
    if "/" not in relative:
        # A plain name directly in root leaves it only as a symlink: one lstat instead of realpath's walk.
        try:
            if not stat.S_ISLNK(os.lstat(candidate).st_mode):
                return candidate
        except FileNotFoundError:
            return candidate
        except OSError:
            pass
    resolved = Path(os.path.realpath(candidate))
    if resolved == base or base not in resolved.parents:
        raise UnsafePath(f"path {relative!r} leads outside {root}")
    return candidate


@functools.lru_cache(maxsize=64)
def _real_folder(root: str) -> Path:
    # A service's folders stay put; resolving them once saves a system call per path component per file.
    # Should one be swapped for a symlink later, its files resolve elsewhere and are refused, never let out.
    return Path(os.path.realpath(root))


def result_path(results: Path, relative: str) -> Path:
    """RESULTS/<relative>.json, confined to the results folder."""
    return confined(results, relative + ".json")


# --- files -------------------------------------------------------------------------------------


def write_json_files(files: list[tuple[Path, dict[str, Any]]]) -> None:
    """Write UTF-8 JSON files atomically: each into an unnamed file in its target's folder (a temporary
    name beside it where the filesystem has no unnamed files), made durable, then all given their
    names, then the names made durable too, so a result survives a power cut whole or not at all.

    Made durable: each fsynced, or, for SYNCFS_FILES or more on Linux 5.8 and newer (where syncfs reports
    write errors), all at once by one syncfs of each filesystem they are on. An fsync each cost a busy
    worker more CPU than writing the files; syncfs also flushes whatever else waits to be written to
    that filesystem, which costs time, not safety, where other programs write heavily beside the results.

    An unnamed file (Linux O_TMPFILE) costs less to create than a named one renamed later, most of all
    while other workers create files in the same folder, and a crash while it is written leaves
    nothing behind. Naming it changes its inode (its link count) as well as its folder, so after the
    names both are made durable again (with a journal that costs next to nothing: the names' commit
    holds it). A file whose name is taken (a result written again) takes a temporary name for the
    instant before it is renamed over it.

    Files are created with mode 666 less the process umask (DIGITS_UMASK), so whoever should read the
    results can.
    """
    open_files: list[tuple[int, str | None]] = []  # (descriptor, temporary name or None: unnamed), closed or not
    targets: list[Path] = []
    try:
        devices: dict[Path, int] = {}  # folder -> its filesystem (a folder may be a mount point)
        for path, data in files:
            if path.parent not in devices:
                path.parent.mkdir(parents=True, exist_ok=True)
                devices[path.parent] = os.stat(path.parent).st_dev
            unnamed = _unnamed_files(path.parent, devices[path.parent])
            open_files.append(_create_unnamed(path.parent) if unnamed else _create_temporary(path.parent))
            targets.append(path)
            # One line, without indentation: the C encoder, four times cheaper than pretty-printing, which
            # is a `python -m json.tool` or `jq .` away.
            _write_all(open_files[-1][0], (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")
                       .encode("utf-8"))
        filesystems: dict[int, int] = {}  # filesystem -> one descriptor on it, when syncfs makes them durable
        if len(open_files) >= SYNCFS_FILES and _syncfs() is not None:
            for (fd, _), path in zip(open_files, targets):
                filesystems.setdefault(devices[path.parent], fd)
        _make_durable(open_files, filesystems)
        named = False
        for index, ((fd, temporary), path) in enumerate(zip(open_files, targets)):
            if temporary is None:
                named = True
                if _link_unnamed(fd, path):
                    continue
                temporary = _name_unnamed(fd, path.parent)  # the name is taken: renamed over it below
                open_files[index] = (fd, temporary)
            os.replace(temporary, path)
            open_files[index] = (fd, None)
        if named:
            _make_durable(open_files, filesystems)  # the link counts
        for folder in devices:
            fsync_folder(folder)
    finally:
        for fd, _ in open_files:
            with contextlib.suppress(OSError):
                os.close(fd)
        for _, temporary in open_files:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    Path(temporary).unlink(missing_ok=True)


def _make_durable(open_files: list[tuple[int, str | None]], filesystems: dict[int, int]) -> None:
    """One syncfs of each filesystem given (filesystem -> a descriptor on it), else an fsync of each file."""
    if filesystems:
        for fd in filesystems.values():
            _sync_filesystem(fd)
    else:
        for fd, _ in open_files:
            os.fsync(fd)


SYNCFS_FILES = 4  # a job writing this many results files makes them durable with one syncfs


def _sync_filesystem(fd: int) -> None:
    """syncfs(2) of the filesystem holding fd."""
    if _syncfs()(fd) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


@functools.lru_cache(maxsize=1)
def _syncfs():
    # syncfs reports writeback errors only since Linux 5.8; before, it returned 0 whatever happened.
    if sys.platform.startswith("linux") and _kernel_version() >= (5, 8):
        return _libc_function("syncfs", ctypes.c_int)
    return None


def _kernel_version() -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", os.uname().release)[:2])


def fsync_folder(folder: Path) -> None:
    """Make the names in a folder durable (a rename into it, a new file); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except (OSError, AttributeError):
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and Windows shares) refuse fsync on a folder; the rename itself stands
    finally:
        os.close(fd)


def _create_temporary(folder: Path, suffix: str = ".json") -> tuple[int, str]:
    """A new hidden file in folder, open for writing, mode 666 less the umask (without mkstemp's random names)."""
    while True:
        temporary = os.path.join(folder, f".tmp-{os.getpid()}-{next(_temporary_numbers)}{suffix}")
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), temporary
        except FileExistsError:  # left by an earlier process with the same pid
            continue


_temporary_numbers = itertools.count()
_AT_SYMLINK_FOLLOW = 0x400
_unnamed_by_filesystem: dict[int, bool] = {}


def _unnamed_files(folder: Path, device: int) -> bool:
    """Whether unnamed files can be made and named in this folder's filesystem: tried once per filesystem
    (a filesystem without O_TMPFILE, such as NFS, or a /proc that cannot name them, such as another
    namespace's, get temporary names instead)."""
    known = _unnamed_by_filesystem.get(device)
    if known is None:
        known = _try_unnamed(folder)
        if known is not None:
            _unnamed_by_filesystem[device] = known
    return bool(known)


_UNSUPPORTED = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOSYS, errno.ENOENT, errno.EXDEV, errno.EPERM}


def _try_unnamed(folder: Path) -> bool | None:
    """True when an unnamed file can be made and named in folder, False when its filesystem or this system
    cannot, None when the try failed for another reason (a full disk, say): tried again next time."""
    if _linkat() is None:
        return False
    try:
        fd = _create_unnamed(folder)[0]
    except OSError as error:
        return False if error.errno in _UNSUPPORTED else None
    try:
        Path(_name_unnamed(fd, folder)).unlink(missing_ok=True)
        return True
    except OSError as error:
        return False if error.errno in _UNSUPPORTED else None
    finally:
        os.close(fd)


def _create_unnamed(folder: Path) -> tuple[int, None]:
    """A new unnamed file in folder, open for writing (Linux O_TMPFILE)."""
    return os.open(folder, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o666), None


def _link_unnamed(fd: int, path: Path) -> bool:
    """Give an unnamed file its name; False when the name is taken."""
    if _linkat()(_AT_FDCWD, f"/proc/self/fd/{fd}".encode(), _AT_FDCWD, os.fsencode(path), _AT_SYMLINK_FOLLOW) == 0:
        return True
    error = ctypes.get_errno()
    if error == errno.EEXIST:
        return False
    raise OSError(error, os.strerror(error), str(path))


def _name_unnamed(fd: int, folder: Path) -> str:
    """Give an unnamed file a free temporary name in its folder; returns the name."""
    while True:
        temporary = os.path.join(folder, f".tmp-{os.getpid()}-{next(_temporary_numbers)}.json")
        if _link_unnamed(fd, Path(temporary)):
            return temporary


@functools.lru_cache(maxsize=1)
def _linkat():
    # An unnamed file is named through /proc/self/fd (linkat following that link needs no privileges): Linux only.
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return None
    return _libc_function("linkat", ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)


def _write_all(fd: int, data: bytes) -> None:
    written = 0
    while written < len(data):  # a short write (a full disk, a signal) continues where it stopped
        written += os.write(fd, data[written:])


@dataclass(frozen=True)
class Sheet:
    """A spreadsheet the worker appends one row per drop of a file to: results.csv, or a form template's
    RESULTS/<template>.csv (one column per field)."""

    path: Path
    columns: tuple[str, ...]
    cells: Callable[[dict[str, Any]], list[Any]]  # a result's values, in column order
    key: str = ""  # names the sheet's row marks in Redis; "" for results.csv


def results_sheet(results: Path) -> Sheet:
    return _sheet(results / CSV_NAME)


def form_sheet(results: Path, template) -> Sheet:
    """RESULTS/<template>.csv: processed_at, source, each field's digits in template order, review, problems."""
    names = [field.name for field in template.fields]

    def cells(result: dict[str, Any]) -> list[Any]:
        fields = result.get("fields") or {}
        problems = [f"{name}: {problem}" for name in names for problem in fields.get(name, {}).get("problems", [])]
        if result.get("error"):
            problems.insert(0, result["error"])
        return [result.get("processed_at"), result.get("source"),
                *[fields.get(name, {}).get("digits", "") for name in names],
                "true" if result.get("review") or result.get("error") else "false", "; ".join(problems)]

    return Sheet(confined(results, f"{template.name}.csv"), ("processed_at", "source", *names, "review", "problems"),
                 cells, key=f"form:{template.name}")


def _sheet(target: Sheet | Path) -> Sheet:
    """A sheet, or a path to a file in results.csv's format."""
    return target if isinstance(target, Sheet) else Sheet(Path(target), CSV_COLUMNS, _result_cells)


def _result_cells(result: dict[str, Any]) -> list[Any]:
    values = {name: result.get(name) for name in CSV_COLUMNS}
    values["confidence"] = f"{float(result.get('confidence') or 0.0):.6f}"
    values["review"] = "true" if result.get("review") else "false"
    return [values[name] for name in CSV_COLUMNS]


def csv_row(result: dict[str, Any], sheet: Sheet | None = None) -> bytes:
    """One line of a sheet (results.csv by default) for a result, encoded, ending in a newline."""
    cells = (sheet.cells if sheet else _result_cells)(result)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(["" if value is None else _cell(value) for value in cells])
    return buffer.getvalue().encode("utf-8")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula gets a leading apostrophe (OWASP's advice); the
    results file keeps the true text."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def ensure_csv(sheet: Sheet | Path) -> None:
    """Create a sheet with its header unless it exists; safe when several workers race to create it."""
    sheet = _sheet(sheet)
    path = sheet.path
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = _create_temporary(path.parent, ".csv")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerow(sheet.columns)
        try:
            os.link(temporary, path)  # fails if another worker created it first, never overwrites
            fsync_folder(path.parent)
        except FileExistsError:
            pass
    finally:
        Path(temporary).unlink(missing_ok=True)


def csv_size(sheet: Sheet | Path) -> int:
    sheet = _sheet(sheet)
    ensure_csv(sheet)
    return sheet.path.stat().st_size


def append_rows(sheet: Sheet | Path, rows: list[dict[str, Any]]) -> None:
    """Append rows in one write under an exclusive lock on the file, made durable before the lock goes.

    On a local disk one O_APPEND write never interleaves with another; on NFS, O_APPEND is not atomic
    (each client writes at the end it believes in), so workers on several hosts sharing the results
    folder take a POSIX lock (fcntl, which NFSv3's lockd, NFSv4 and SMB3 with POSIX extensions honour):
    taking it makes the NFS client look up the true end of the file, and the fsync before unlocking puts
    the rows on the server before the next host writes.
    """
    sheet = _sheet(sheet)
    ensure_csv(sheet)
    lines = b"".join(csv_row(result, sheet) for result in rows)
    fd = os.open(sheet.path, os.O_WRONLY | os.O_APPEND)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)  # released when the file is closed
        _write_all(fd, lines)
        os.fsync(fd)
    finally:
        os.close(fd)


def has_row(sheet: Sheet | Path, *, offset: int, job: str, source: str) -> bool:
    """Whether a row for this source (and job, where the sheet has a job column) was appended at or after a
    byte offset of the sheet."""
    sheet = _sheet(sheet)
    try:
        with open(sheet.path, "rb") as handle:
            handle.seek(offset)
            tail = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return False
    source_column = sheet.columns.index("source")
    job_column = sheet.columns.index("job") if "job" in sheet.columns else None
    for row in csv.reader(io.StringIO(tail)):
        if (len(row) == len(sheet.columns) and row[source_column] == _cell(source)
                and (job_column is None or row[job_column] == job)):
            return True
    return False


def move_aside(original: Path, destination_root: Path, relative: str) -> Path:
    """Move an original to destination_root/relative, never overwriting: a taken name gets a -1, -2... suffix."""
    target = confined(destination_root, relative)
    try:
        return _move_to_free_name(original, target)
    except FileNotFoundError:
        if target.parent.is_dir() or not os.path.lexists(original):
            raise
    # Its folder is missing (made only now: looking for it before every move cost more than the move).
    target.parent.mkdir(parents=True, exist_ok=True)
    return _move_to_free_name(original, target)


def _move_to_free_name(original: Path, target: Path) -> Path:
    for candidate in _candidates(target):
        moved = _rename_no_replace(original, candidate)
        if moved:
            return candidate
        if moved is False:
            continue
        try:
            # link() refuses an existing name, unlike rename(); follow_symlinks=False moves a link, not its target.
            os.link(original, candidate, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP):
                raise
            if _copy_exclusive(original, candidate):
                original.unlink()
                return candidate
            continue
        original.unlink()
        return candidate
    raise FileExistsError(f"no free name for {target}")


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _rename_no_replace(original: Path, candidate: Path) -> bool | None:
    """One atomic rename that refuses a taken name (Linux renameat2): True when moved, False when the name
    is taken, None where unsupported (another OS or filesystem, another filesystem's folder)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return None
    if renameat2(_AT_FDCWD, os.fsencode(original), _AT_FDCWD, os.fsencode(candidate), _RENAME_NOREPLACE) == 0:
        return True
    error = ctypes.get_errno()
    if error == errno.EEXIST:
        return False
    if error in (errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.EPERM, errno.ENOTSUP):
        return None
    raise OSError(error, os.strerror(error), str(original))


@functools.lru_cache(maxsize=1)
def _renameat2():
    # One system call and one inotify event (a move) instead of link + unlink (attribute change + delete).
    if sys.platform.startswith("linux"):
        return _libc_function("renameat2", ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                              ctypes.c_uint)
    return None


def _libc_function(name: str, *argument_types):
    """The C library's function `name` (returning an int, errno kept for ctypes.get_errno), or None."""
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argument_types
    function.restype = ctypes.c_int
    return function


def _candidates(target: Path) -> Iterable[Path]:
    yield target
    stem, suffix = target.stem, target.suffix
    for number in range(1, 10_000):
        yield target.with_name(f"{stem}-{number}{suffix}")


def _copy_exclusive(original: Path, candidate: Path) -> bool:
    """Copy across filesystems into a name that must not exist yet; False when it does."""
    try:
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as target, open(original, "rb") as source:
        while chunk := source.read(1 << 20):
            target.write(chunk)
        target.flush()
        os.fsync(target.fileno())
    return True
