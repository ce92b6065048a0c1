"""One frozen settings object built from flags, then DIGITS_* variables, then defaults."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_WEIGHTS = PROJECT_ROOT / "weights"

DISPOSITIONS = ("move", "keep", "delete")
DEFAULT_EXTENSIONS = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif", "webp", "pdf")

log = logging.getLogger(__name__)


def _setting(default: Any, help: str, env: bool = True) -> Any:
    return field(default=default, metadata={"help": help, "env": env})


def cpu_cores() -> int:
    """Cores this process may run on (a container's CPU set or taskset), not all the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    """Every setting of every service; each service reads the ones it needs."""

    broker_url: str = _setting("", "Redis URL for broker and results, e.g. redis://:pw@host:6379/0. "
                               "Empty: `digits up` starts a private Redis; other commands use redis://127.0.0.1:6379/0")
    inbox: Path = _setting(Path("inbox"), "Folder watched for scans")
    results: Path = _setting(Path("results"), "Folder receiving <relative path>.json and results.csv")
    processed: Path = _setting(Path("processed"), "Where originals go after success (on_success=move)")
    failed: Path = _setting(Path("failed"), "Where originals go after an error (on_error=move)")
    on_success: str = _setting("move", "What happens to an original after success: move, keep or delete")
    on_error: str = _setting("move", "What happens to an original after an error: move, keep or delete")
    weights: Path = _setting(SHIPPED_WEIGHTS, "Folder of published weights versions (pointer file CURRENT)")
    templates: str = _setting("", "Folder of form templates <name>.json; files in INBOX/<name>/ are read "
                               "with <name>.json. Empty: templates/ beside the weights folder")
    umask: str = _setting("", "Octal umask for results files, results.csv and moved originals, e.g. 002 for a "
                          "results folder shared by a group; empty: the process's own")
    state: Path = _setting(Path(".digits"), "Local state folder (embedded Redis data, logs)")
    device: str = _setting("auto", "auto (GPU when the Keras backend sees one), cpu or gpu")
    max_image_bytes: int = _setting(20_000_000, "Largest accepted image file or payload, in bytes")
    max_pixels: int = _setting(40_000_000, "Largest accepted image or rendered PDF page, in pixels (checked before "
                               "decoding)")
    pdf_dpi: int = _setting(150, "Resolution PDF pages are rendered at, in dots per inch")
    review_below: float = _setting(0.8, "Numbers whose confidence (calibrated, the lowest of their digits) is "
                                   "below this are flagged for review; see the model card's operating points")
    batch_size: int = _setting(64, "Most images the worker recognises in one model call")
    batch_wait_ms: float = _setting(5.0, "Longest the worker waits to fill a batch, in milliseconds")
    queue_batch: int = _setting(32, "Most inbox files the watcher sends in one job")
    queue_wait_ms: float = _setting(20.0, "Longest the watcher waits to fill a job, in milliseconds")
    ready_delay: float = _setting(1.0, "Seconds a file's size and mtime must stay unchanged before it is "
                               "queued (a file renamed or moved into the inbox is queued at once)")
    polling: bool = _setting(False, "Poll the inbox instead of native events (network shares)")
    poll_interval: float = _setting(1.0, "Seconds between polls when polling")
    rescan_interval: float = _setting(60.0, "Seconds between full rescans of the inbox (0: never)")
    extensions: tuple[str, ...] = _setting(DEFAULT_EXTENSIONS, "Comma-separated file extensions the watcher accepts")
    reload_interval: float = _setting(2.0, "Seconds between worker checks for a newly published weights version")
    concurrency: int = _setting(2, "Jobs one worker process handles at once (threads feeding its batcher): two "
                                "keep its core busy, one normalising while the other waits on the model, files or "
                                "Redis; more only fight over Python's GIL")
    workers: int = _setting(0, "Worker processes `digits up` starts, each with the model loaded; 0: one per CPU "
                            "core, at most 4 (one Python process uses about one core)")
    tf_threads: int = _setting(0, "Threads one model call may use in each worker process (TensorFlow's or "
                               "PyTorch's; JAX on the CPU takes 1 or all); 0: the cores this process may use "
                               "divided among the worker processes (DIGITS_WORKERS)")
    visibility_timeout: float = _setting(30.0, "Seconds a job held by a worker that stopped sending heartbeats "
                                         "(killed, frozen, its machine gone) waits before another worker gets it")
    job_retries: int = _setting(10, "Times a job is retried, with backoff up to a minute, after transient trouble "
                                "(Redis away, results folder full or read-only) before its files get error results")
    web_host: str = _setting("127.0.0.1", "Address the web page listens on; any but a loopback address requires "
                             "a token")
    web_port: int = _setting(8800, "Port of the web page (0: any free port)")
    web_token: str = _setting("", "Token the web page requires (Authorization: Bearer, or ?token= once); empty: "
                              "none on a loopback address, else one generated and printed at start")
    log_level: str = _setting("INFO", "Logging level: DEBUG, INFO, WARNING, ERROR")

    def __post_init__(self) -> None:
        if self.on_success not in DISPOSITIONS or self.on_error not in DISPOSITIONS:
            raise ConfigError(f"on_success/on_error must be one of {', '.join(DISPOSITIONS)}")
        if self.device not in ("auto", "cpu", "gpu"):
            raise ConfigError(f"device must be auto, cpu or gpu, not {self.device!r}")
        if self.workers < 0:
            raise ConfigError("workers must not be negative")
        for name in ("max_image_bytes", "max_pixels", "pdf_dpi", "batch_size", "queue_batch", "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in ("batch_wait_ms", "queue_wait_ms", "ready_delay", "poll_interval", "rescan_interval",
                     "reload_interval"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.umask and not (self.umask.isdigit() and set(self.umask) <= set("01234567") and len(self.umask) <= 4):
            raise ConfigError(f"umask must be octal digits such as 002 or 077, not {self.umask!r}")
        if not 0.0 <= self.review_below <= 1.0:
            raise ConfigError("review_below must be between 0 and 1")
        if self.visibility_timeout < 3:
            raise ConfigError("visibility_timeout must be at least 3 seconds")
        if self.tf_threads < 0:
            raise ConfigError("tf_threads must not be negative")
        if not 0 <= self.web_port <= 65535:
            raise ConfigError("web_port must be from 0 to 65535")
        if self.job_retries < 0:
            raise ConfigError("job_retries must not be negative")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"log_level must be DEBUG, INFO, WARNING or ERROR, not {self.log_level!r}")

    @property
    def template_folder(self) -> Path:
        return Path(self.templates) if self.templates else self.weights.parent / "templates"

    @property
    def worker_processes(self) -> int:
        return self.workers or max(1, min(cpu_cores(), 4))

    @property
    def model_threads(self) -> int:
        """TensorFlow's threads per worker process: the cores shared out, so processes do not fight over them."""
        return self.tf_threads or max(1, cpu_cores() // self.worker_processes)

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "redis://127.0.0.1:6379/0"

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> "Settings":
        """Flags (overrides, None meaning unset) win over DIGITS_* variables, which win over defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(env_name(spec.name))
            if raw is not None and raw != "":
                values[spec.name] = _parse(spec, raw)
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = _parse(_field(name), value) if isinstance(value, str) else value
        return cls(**values)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def log_once(self, service: str) -> None:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["broker_url"] = redact_url(self.broker_url)
        shown["web_token"] = "***" if self.web_token else ""
        log.info("%s settings: %s", service, ", ".join(f"{k}={v}" for k, v in shown.items()))


def add_flags(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add --flag-name for each named setting; an absent flag leaves the variable or default in force."""
    for name in names:
        spec = _field(name)
        flag = "--" + name.replace("_", "-")
        help_text = f"{spec.metadata['help']} ({env_name(name)}, default {_shown(spec.default)})"
        if isinstance(spec.default, bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=help_text)


def _shown(default: Any) -> str:
    if isinstance(default, tuple):
        return ",".join(default)
    return str(default) if default != "" else "none"


def env_name(name: str) -> str:
    return "DIGITS_" + name.upper()


def environment_variables() -> list[str]:
    """Every DIGITS_* variable the code reads."""
    return [env_name(f.name) for f in fields(Settings)]


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, help) for every setting, for the table in docs/settings.md."""
    return [(env_name(f.name), _shown(f.default), f.metadata["help"]) for f in fields(Settings)]


def redact_url(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def _field(name: str) -> dataclasses.Field:
    for spec in fields(Settings):
        if spec.name == name:
            return spec
    raise ConfigError(f"unknown setting {name!r}")


def _parse(spec: dataclasses.Field, raw: str) -> Any:
    kind = type(spec.default)
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes", "on")
        if kind is tuple:
            return tuple(part.strip().lower().lstrip(".") for part in raw.split(",") if part.strip())
        if isinstance(spec.default, Path):
            return Path(raw)
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{env_name(spec.name)}={raw!r} is not a valid {kind.__name__}") from None


def markdown_table() -> str:
    """The settings table of docs/settings.md, one row per setting: variable, flag, default, meaning
    (machine paths shown relative to the project). `python -m core.settings` prints it."""
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for variable, default, meaning in describe():
        flag = "--" + variable.removeprefix("DIGITS_").lower().replace("_", "-")
        shown = default.replace(str(PROJECT_ROOT), "<project>")
        meaning = meaning.replace("|", "&#124;").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| `{variable}` | `{flag}` | `{shown}` | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
