"""The wire protocol: queue and task names, Redis keys, the JSON-only Celery configuration, the result object.

Everything another program relies on to talk to the service is defined here once; the worker, the
watcher and the command line all read it from here.
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime, timezone
from typing import Any, Sequence

# --- names on the broker -----------------------------------------------------------------------

QUEUE = "digits"
TASK_RECOGNIZE = "digits.recognize"
TASK_PROCESS_FILES = "digits.process_files"
TASK_NAMES = (TASK_RECOGNIZE, TASK_PROCESS_FILES)
INFO_COMMAND = "digits_info"  # the Celery inspect command each worker answers (digits status)

# --- Redis keys --------------------------------------------------------------------------------

LEDGER_KEY = "digits:ledger"        # hash: inbox path -> "<state>:<sha256>:<unix time>"
COUNTER_PREFIX = "digits:count:"    # + status: results made, for digits status and digits up
REVIEW_COUNTER_KEY = COUNTER_PREFIX + "review"  # inbox files whose result was flagged for review
REVIEWED_COUNTER_KEY = COUNTER_PREFIX + "reviewed"  # flagged numbers a person has since reviewed
REVIEW_QUEUE_KEY = "digits:review"  # sorted set: review_item(...) of each flagged number -> its confidence
REVIEW_LOCK_PREFIX = "digits:review:lock:"  # + item: held while a person's decision on it is written
ROW_MARK_PREFIX = "digits:row:"     # + drop (or job), sha256, source: results.csv row written once
UNACKED_KEY = "unacked"             # Kombu's Redis transport: jobs delivered to a worker and not yet acknowledged
UNACKED_INDEX_KEY = "unacked_index"  # ... and when each was delivered, or last seen held by a live worker
UNACKED_MUTEX_KEY = "unacked_mutex"  # ... and the lock a worker holds while it puts back a silent worker's jobs

# --- what each worker measures (digits_info), as Prometheus histograms' upper bounds ----------------

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # images per model call
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)  # drop to result, s

# --- the result object -------------------------------------------------------------------------

OK = "ok"
NO_DIGIT = "no_digit"
ERROR = "error"
STALE = "stale"  # process_files only: the file changed or left the inbox; a newer job handles it
WAITING = "waiting"  # process_files only: the file could not be read now; it waits in the inbox and is sent again
STATUSES = (OK, NO_DIGIT, ERROR)
TOP_ALTERNATIVES = 3
DIGIT_CLASSES = 10  # a model's first ten outputs are the digits; an eleventh says "not a digit"
DOUBTFUL_REJECTION = 0.3  # a glyph left out as "not a digit" with a digit this likely flags its number
TALL_REJECTION = 0.75  # ... and so is one left out that is this share of the number's tallest digit or more
SMALL_DIGIT = 0.5  # a digit under this share of the median height of its number's digits (3 or more) flags it
RESULT_FIELDS = ("source", "status", "digits", "confidence", "review", "error", "model", "sha256", "pages", "details",
                 "processed_at", "worker", "job")


def counter_key(status: str) -> str:
    return COUNTER_PREFIX + status


COUNTER_KEYS = {status: counter_key(status) for status in STATUSES}


def json_only(**extra: Any) -> dict[str, Any]:
    """Celery settings that make an app send and accept JSON only (pickle from a reachable Redis runs anyone's code)."""
    return {"task_serializer": "json", "result_serializer": "json", "accept_content": ["json"],
            "result_accept_content": ["json"], "timezone": "UTC", **extra}


def client_app(name: str, url: str, *, results: bool = False, **extra: Any):
    """A bare Celery app for sending jobs by task name (nothing of the worker imported), JSON only."""
    from celery import Celery

    app = Celery(name, broker=url, backend=url if results else None, set_as_current=False)
    app.conf.update(json_only(**extra))
    return app


def review_item(source: str, page: int | None = None, number: int | None = None) -> str:
    """A member of the review queue: a flagged number (its file, page and place among the page's numbers),
    or with no page a form flagged for review, whose fields are reviewed together."""
    return json.dumps([source, page, number] if page is not None else [source, "form"], separators=(",", ":"))


def parse_review_item(item: str) -> tuple[str, int | None, int | None]:
    """(source, page, number) of a review item, (source, None, None) for a form; raises ValueError else."""
    parsed = json.loads(item)
    if isinstance(parsed, list) and len(parsed) == 2 and parsed[1] == "form" and isinstance(parsed[0], str):
        return parsed[0], None, None
    source, page, number = parsed
    if not (isinstance(source, str) and type(page) is int and type(number) is int and page >= 0 and number >= 0):
        raise ValueError(f"not a review item: {item!r}")
    return source, page, number


def review_crop(source: str, page: int, number: int) -> str:
    """Where a flagged number's crop lies, relative to the results folder."""
    return f"{source}.review/{page}-{number}.png"


def field_crop(source: str, field: str) -> str:
    """Where the crop of a flagged form's field lies, relative to the results folder."""
    return f"{source}.review/field-{field}.png"


def review_glyphs(source: str, page: int, number: int) -> str:
    """Where a flagged number's digits, as the model read them (28x28 each), lie in the results folder."""
    return f"{source}.review/{page}-{number}.npy"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


CHOICES = "_choices"  # in memory only (never written): every digit, likeliest first, as (digit, probability)


def digit_details(probabilities, boxes: Sequence[Sequence[int]], *, page: int, choices: bool = False
                  ) -> list[dict[str, Any]]:
    """Per-glyph details from calibrated softmax rows: best digit, its confidence, the top three digits, the
    box, and (for models with the eleventh output) how likely the glyph is not a handwritten digit at all;
    with `choices`, also every digit under CHOICES (a form's checks may take a runner-up)."""
    import numpy as np

    details = []
    for row, box in zip(np.asarray(probabilities, dtype=np.float64), boxes):
        digits = row[:DIGIT_CLASSES]
        ranked = np.argsort(-digits, kind="stable")
        order = ranked[:TOP_ALTERNATIVES]
        details.append({
            "digit": str(int(order[0])),
            "confidence": round(float(digits[order[0]]), 6),
            "top": [[str(int(index)), round(float(digits[index]), 6)] for index in order],
            "not_a_digit": round(float(row[DIGIT_CLASSES]), 6) if len(row) > DIGIT_CLASSES else 0.0,
            "box": [int(value) for value in box],
            "page": page,
        })
        if choices:
            details[-1][CHOICES] = [(str(int(index)), float(digits[index])) for index in ranked]
    return details


def number_result(details: list[dict[str, Any]], *, review_below: float) -> dict[str, Any] | None:
    """A number from its glyphs' details: glyphs more likely "not a digit" than any digit leave it (None when
    none is left). Flagged for review when its confidence (the lowest digit's) is below review_below, or when
    a glyph left out was nearly a digit, stood between its digits or was nearly as tall as they are, or when
    one of its digits is far smaller than the others."""
    kept = [detail for detail in details if detail["confidence"] >= detail["not_a_digit"]]
    if not kept:
        return None
    first, last = details.index(kept[0]), details.index(kept[-1])
    tallest = max(detail["box"][3] - detail["box"][1] for detail in kept)
    # A glyph left out that was nearly a digit, any left out from between the number's digits, and any as
    # tall as its digits (touching digits the model could not take apart).
    doubtful = any(detail["confidence"] >= DOUBTFUL_REJECTION or first < index < last
                   or detail["box"][3] - detail["box"][1] >= TALL_REJECTION * tallest
                   for index, detail in enumerate(details) if detail not in kept)
    # A digit far smaller than the others inside a number is more likely a fragment of a stroke or a speck
    # read as a 1 than a digit (the ends lose such marks before: recognition._without_stray_ends).
    heights = [detail["box"][3] - detail["box"][1] for detail in kept]
    doubtful = doubtful or (len(kept) >= 3 and min(heights) < SMALL_DIGIT * statistics.median(heights))
    confidence = min(detail["confidence"] for detail in kept)
    left, top = min(d["box"][0] for d in kept), min(d["box"][1] for d in kept)
    right, bottom = max(d["box"][2] for d in kept), max(d["box"][3] for d in kept)
    return {"digits": "".join(detail["digit"] for detail in kept), "box": [left, top, right, bottom],
            "confidence": confidence, "review": confidence < review_below or doubtful, "details": kept}


def page_result(index: int, numbers: list[dict[str, Any]]) -> dict[str, Any]:
    """One page: its numbers in reading order joined by one space (a number a person found unreadable has no
    digits and leaves no gap), the lowest confidence (0 when none)."""
    return {
        "page": index,
        "digits": " ".join(number["digits"] for number in numbers if number["digits"]),
        "confidence": min((number["confidence"] for number in numbers), default=0.0),
        "review": any(number["review"] for number in numbers),
        "numbers": numbers,
        "details": [detail for number in numbers for detail in number["details"]],
    }


def result(source: str, *, pages: list[dict[str, Any]] | None = None, error: str | None = None,
           model: str | None = None, sha256: str | None = None, worker: str | None = None,
           job: str | None = None) -> dict[str, Any]:
    """The result object: status ok, no_digit (no page holds a digit) or, with an error message, error."""
    pages = [] if error is not None else (pages or [])
    details = [detail for page in pages for detail in page["details"]]
    return {
        "source": source,
        "status": ERROR if error is not None else (OK if details else NO_DIGIT),
        "digits": " ".join(page["digits"] for page in pages if page["digits"]),
        "confidence": min((page["confidence"] for page in pages if page["digits"]), default=0.0),
        "review": any(page.get("review", False) for page in pages),
        "error": error,
        "model": model,
        "sha256": sha256,
        "pages": pages,
        "details": details,
        "processed_at": now_iso(),
        "worker": worker,
        "job": job,
    }


def summary(source: str, status: str, *, digits: str = "", error: str | None = None) -> dict[str, Any]:
    """What digits.process_files returns per file (the full result lives in the results file)."""
    return {"source": source, "status": status, "digits": digits, "error": error}


def summary_of(full: dict[str, Any]) -> dict[str, Any]:
    return summary(full["source"], full["status"], digits=full["digits"], error=full["error"])
