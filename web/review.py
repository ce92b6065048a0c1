"""The review queue: the numbers flagged for review, lowest confidence first, each with its crop, its digits
and their runners-up; a person's decision rewrites its results file (atomically, keeping what was read, who
decided and when), appends a row to RESULTS/corrections.csv and takes the number off the queue."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

from core import protocol, templates
from core.errors import UnsafePath
from worker import results_files

CORRECTIONS = "corrections.csv"
SAMPLES = "samples"  # RESULTS/samples/<digit>/*.png: reviewed digits as labelled 28x28 training samples
COLUMNS = ("reviewed_at", "source", "page", "number", "read", "digits", "action", "by")
ACTIONS = ("accept", "correct", "unreadable")
DIGITS = re.compile(r"^[0-9]{1,64}$")
REVIEWER = re.compile(r"^[\w .@-]{1,64}$")
HOLD_SECONDS = 30  # longest a decision takes to write


class ReviewError(Exception):
    """A decision that cannot be taken: `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def corrections_sheet(results: Path) -> results_files.Sheet:
    return results_files.Sheet(results_files.confined(results, CORRECTIONS), COLUMNS,
                               lambda row: [row[column] for column in COLUMNS])


def pending(client, results: Path, *, limit: int = 20) -> list[dict[str, Any]]:
    """The next flagged numbers and forms, lowest confidence first; items whose results file no longer flags
    them (read again since, or decided elsewhere) leave the queue."""
    found = []
    for raw, score in client.zrange(protocol.REVIEW_QUEUE_KEY, 0, 4 * limit - 1, withscores=True):
        item = raw.decode() if isinstance(raw, bytes) else raw
        entry = _form_entry(results, item, score) or _number_entry(results, item)
        if entry is None:
            client.zrem(protocol.REVIEW_QUEUE_KEY, item)
            continue
        found.append(entry)
        if len(found) == limit:
            break
    return found


def _form_entry(results: Path, item: str, score: float) -> dict[str, Any] | None:
    form = _locate_form(results, item)
    if form is None:
        return None
    source, result = form
    return {"item": item, "source": source, "form": result["template"], "confidence": score,
            "fields": [{"name": name, "digits": field["digits"], "read": field.get("read"),
                        "problems": field.get("problems", []), "review": field.get("review", False),
                        "crop": (results / protocol.field_crop(source, name)).is_file()}
                       for name, field in result["fields"].items()]}


def _number_entry(results: Path, item: str) -> dict[str, Any] | None:
    located = _locate(results, item)
    if located is None:
        return None
    source, page, index, _, number = located
    return {"item": item, "source": source, "page": page, "number": index, "digits": number["digits"],
            "confidence": number["confidence"],
            "per_digit": [{"digit": detail["digit"], "top": detail["top"]} for detail in number["details"]],
            "crop": (results / protocol.review_crop(source, page, index)).is_file()}


def crop_path(results: Path, item: str, field: str = "") -> Path:
    """The crop of a queued number, or of a field of a queued form, confined to the results folder; raises
    ReviewError (404) otherwise."""
    try:
        source, page, index = protocol.parse_review_item(item)
        if page is None:
            if not templates.NAME_PATTERN.match(field):
                raise ValueError(field)
            relative = protocol.field_crop(source, field)
        else:
            relative = protocol.review_crop(source, page, index)
        path = results_files.confined(results, relative)
    except (ValueError, TypeError, UnsafePath):
        raise ReviewError("no such crop", 404) from None
    if not path.is_file():
        raise ReviewError("no such crop", 404)
    return path


def decide(client, results: Path, item: str, *, action: str, digits: str, by: str, at: str) -> dict[str, Any]:
    """Take a person's decision on a queued number: `accept` it as read, `correct` it to `digits`, or mark it
    `unreadable` (its digits become empty). Returns the corrections row."""
    if action not in ACTIONS:
        raise ReviewError(f"action must be one of {', '.join(ACTIONS)}", 400)
    if action == "correct" and not DIGITS.match(digits or ""):
        raise ReviewError("a correction is 1 to 64 digits 0-9", 400)
    if not REVIEWER.match(by or ""):
        raise ReviewError("the reviewer's name: 1 to 64 letters, digits, spaces, '.', '@', '-' or '_'", 400)
    if _locate_form(results, item) is not None:
        raise ReviewError("a form is decided with decide_form", 400)
    with _claimed(client, item):
        located = _locate(results, item)
        if located is None:
            raise ReviewError("this number is no longer waiting for review", 409)
        source, page, index, result, number = located
        read = number["digits"]
        new = {"accept": read, "correct": digits, "unreadable": ""}[action]
        number.update(digits=new, review=False, reviewed={"action": action, "read": read, "by": by, "at": at})
        result["pages"] = [protocol.page_result(entry["page"], entry["numbers"]) for entry in result["pages"]]
        result["digits"] = " ".join(entry["digits"] for entry in result["pages"] if entry["digits"])
        result["review"] = any(entry["review"] for entry in result["pages"])
        row = {"reviewed_at": at, "source": source, "page": page, "number": index, "read": read, "digits": new,
               "action": action, "by": by}
        results_files.write_json_files([(results_files.result_path(results, source), result)])
        results_files.append_rows(corrections_sheet(results), [row])
    if new:
        _keep_samples(results, source, page, index, new, result.get("sha256") or "")
    return row


@contextlib.contextmanager
def _claimed(client, item: str):
    """Hold a queued item while a decision on it is written, then take it off the queue. A second decision
    meanwhile is refused (409); a web process killed meanwhile leaves it queued (the hold expires), and once
    its results file says it was decided, the queue lets it go."""
    lock = protocol.REVIEW_LOCK_PREFIX + item
    if client.zscore(protocol.REVIEW_QUEUE_KEY, item) is None or not client.set(lock, "1", nx=True, ex=HOLD_SECONDS):
        raise ReviewError("this is no longer waiting for review", 409)  # decided, or being decided, by someone else
    try:
        yield
    except BaseException:
        client.delete(lock)
        raise
    pipe = client.pipeline(transaction=True)
    pipe.zrem(protocol.REVIEW_QUEUE_KEY, item)
    pipe.incr(protocol.REVIEWED_COUNTER_KEY)
    pipe.delete(lock)
    pipe.execute()


def _keep_samples(results: Path, source: str, page: int, index: int, digits: str, sha256: str) -> None:
    """Each digit of a number a person accepted or corrected, as the model read it (28x28), saved as a
    labelled sample for `digits train --extra RESULTS/samples`, when the number holds as many digits as it
    was read with (a digit added or dropped cannot be matched to its image)."""
    import numpy as np
    from PIL import Image

    try:
        with open(results_files.confined(results, protocol.review_glyphs(source, page, index)), "rb") as file:
            images = np.load(file, allow_pickle=False)
    except (OSError, ValueError, UnsafePath):
        return
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(digits):
        return
    for position, (digit, image) in enumerate(zip(digits, images)):
        folder = results / SAMPLES / digit
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).save(folder / f"{sha256[:16]}-{page}-{index}-{position}.png")


def decide_form(client, results: Path, template_folder: Path, item: str, *, values: dict[str, str], by: str,
                at: str) -> list[dict[str, Any]]:
    """A person's decision on a queued form: every field's digits as checked (`values`, name -> digits, ""
    for a field left empty). The fields' rules are checked again with the template; a field changed keeps
    what was read. Returns the corrections rows (one per field)."""
    if not REVIEWER.match(by or ""):
        raise ReviewError("the reviewer's name: 1 to 64 letters, digits, spaces, '.', '@', '-' or '_'", 400)
    with _claimed(client, item):
        form = _locate_form(results, item)
        if form is None:
            raise ReviewError("this form is no longer waiting for review", 409)
        source, result = form
        fields = result["fields"]
        if set(values) != set(fields) or not all(value == "" or DIGITS.match(value) for value in values.values()):
            raise ReviewError(f"send the digits of every field: {', '.join(fields)}", 400)
        try:
            problems = templates.problems(templates.load(template_folder, result["template"]), values)
        except templates.TemplateError:
            problems = None  # the template is gone or broken: the fields' problems stay as they were read
        rows = []
        for name, field in fields.items():
            read, new = field["digits"], values[name]
            action = "accept" if new == read else "correct"
            field.update(digits=new, review=False, reviewed={"action": action, "read": read, "by": by, "at": at})
            if problems is not None:
                field.update(problems=problems[name], valid=not problems[name])
            rows.append({"reviewed_at": at, "source": source, "page": "", "number": name, "read": read,
                         "digits": new, "action": action, "by": by})
        result["review"] = False
        results_files.write_json_files([(results_files.result_path(results, source), result)])
        results_files.append_rows(corrections_sheet(results), rows)
    return rows


def load_result(results: Path, source: str) -> dict[str, Any] | None:
    """The results file of an inbox file, confined to the results folder; None when it cannot be read."""
    try:
        return json.loads(results_files.result_path(results, source).read_text(encoding="utf-8"))
    except (ValueError, TypeError, OSError, UnsafePath):
        return None


def number_in(result: dict[str, Any], page: int, index: int) -> dict[str, Any] | None:
    """The number at `index` on page `page` of a result; None when there is none."""
    try:
        return next(entry for entry in result["pages"] if entry["page"] == page)["numbers"][index]
    except (KeyError, IndexError, TypeError, StopIteration):
        return None


def _locate_form(results: Path, item: str):
    """(source, its result) of a queued form whose results file still flags it; None for anything else."""
    try:
        source, page, _ = protocol.parse_review_item(item)
    except (ValueError, TypeError):
        return None
    result = load_result(results, source) if page is None else None
    return (source, result) if result and result.get("template") and result.get("review") and result.get("fields") \
        else None


def _locate(results: Path, item: str):
    """(source, page, place, its result, the number) of a queued item whose results file still flags it."""
    try:
        source, page, index = protocol.parse_review_item(item)
    except (ValueError, TypeError):
        return None
    result = load_result(results, source) if page is not None else None
    number = number_in(result, page, index) if result else None
    return (source, page, index, result, number) if number and number.get("review") else None
