"""Form templates: named fields at a place on the page, their expected length, check digit and sums.

A template is `TEMPLATES/<name>.json`; files dropped into `INBOX/<name>/` (any depth) are read with it.
Malformed templates are refused with the file, the key and the problem named.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
CHECKS = ("luhn", "mod11", "none")
TEMPLATE_KEYS = {"fields", "sums"}
FIELD_KEYS = {"name", "box", "length", "check", "page"}
SUM_KEYS = {"total", "parts"}
MAX_FIELDS = 100
MAX_LENGTH = 64
MAX_TEMPLATE_BYTES = 1_000_000


class TemplateError(ConfigError):
    """A template that cannot be used: its file, the key and the problem are in the message."""


@dataclass(frozen=True)
class Field:
    name: str
    box: tuple[float, float, float, float]  # left, top, right, bottom as fractions of the page
    length: tuple[int, int]  # fewest and most digits
    check: str = "none"
    page: int = 0


@dataclass(frozen=True)
class Template:
    name: str
    fields: tuple[Field, ...]
    sums: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (total field, its part fields)


# A template's spreadsheet is RESULTS/<name>.csv: these names would be the results log itself.
RESERVED = {"results"}


def path_of(folder: Path, name: str) -> Path:
    if not NAME_PATTERN.match(name) or name.lower() in RESERVED:
        raise TemplateError(f"{name!r} is no template name (letters, digits, '.', '_' and '-', at most 100; "
                            f"not {', '.join(sorted(RESERVED))})")
    return folder / f"{name}.json"


def load(folder: Path, name: str) -> Template:
    """TEMPLATES/<name>.json, checked; raises TemplateError naming the file, the key and the problem."""
    path = path_of(folder, name)
    try:
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise TemplateError(f"{path}: more than {MAX_TEMPLATE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TemplateError(f"{path}: no such template") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TemplateError(f"{path}: cannot be read: {error}") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise TemplateError(f"{path}: not JSON: {error}") from None
    return parse(data, name=name, source=str(path))


def parse(data: Any, *, name: str, source: str) -> Template:
    """A template from its JSON object; every key and value checked."""
    def fail(where: str, problem: str) -> TemplateError:
        return TemplateError(f"{source}: {where}: {problem}")

    _object(data, TEMPLATE_KEYS, fail, where="the template", shape="a JSON object with \"fields\" (and optionally "
            "\"sums\")", keys="")
    raw_fields = data.get("fields")
    if not isinstance(raw_fields, list) or not raw_fields:
        raise fail("key 'fields'", "must be a non-empty list of fields")
    if len(raw_fields) > MAX_FIELDS:
        raise fail("key 'fields'", f"more than {MAX_FIELDS} fields")
    fields, names = [], set()
    for index, raw in enumerate(raw_fields):
        where = f"fields[{index}]"
        _object(raw, FIELD_KEYS, fail, where=where, shape="an object with name, box and length", keys=f"{where} ")
        field_name = raw.get("name")
        if not isinstance(field_name, str) or not NAME_PATTERN.match(field_name):
            raise fail(f"{where} key 'name'", "must be a name of letters, digits, '.', '_' and '-'")
        if field_name in names:
            raise fail(f"{where} key 'name'", f"{field_name!r} is used twice")
        names.add(field_name)
        where = f"field {field_name!r}"
        fields.append(Field(name=field_name, box=_box(raw.get("box"), fail, where),
                            length=_length(raw.get("length"), fail, where), check=_check(raw.get("check", "none"),
                                                                                         fail, where),
                            page=_page(raw.get("page", 0), fail, where)))
    sums = []
    raw_sums = data.get("sums", [])
    if not isinstance(raw_sums, list):
        raise fail("key 'sums'", "must be a list of {\"total\": field, \"parts\": [fields]}")
    for index, raw in enumerate(raw_sums):
        where = f"sums[{index}]"
        _object(raw, SUM_KEYS, fail, where=where, shape="an object with total and parts", keys=f"{where} ")
        total, parts = raw.get("total"), raw.get("parts")
        if total not in names:
            raise fail(f"{where} key 'total'", f"{total!r} is not a field of this template")
        if not isinstance(parts, list) or not parts or any(part not in names for part in parts):
            raise fail(f"{where} key 'parts'", "must be a non-empty list of this template's fields")
        if total in parts:
            raise fail(f"{where} key 'parts'", f"the total {total!r} cannot be one of its parts")
        sums.append((total, tuple(parts)))
    return Template(name=name, fields=tuple(fields), sums=tuple(sums))


def _object(value: Any, allowed: set[str], fail, *, where: str, shape: str, keys: str) -> None:
    """A JSON object holding only the allowed keys; `keys` prefixes the name of an unknown one."""
    if not isinstance(value, dict):
        raise fail(where, f"must be {shape}")
    for key in sorted(set(value) - allowed):
        raise fail(f"{keys}key {key!r}", f"unknown (allowed: {', '.join(sorted(allowed))})")


def _box(value: Any, fail, where: str) -> tuple[float, float, float, float]:
    if (not isinstance(value, list) or len(value) != 4
            or not all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in value)):
        raise fail(f"{where} key 'box'", "must be [left, top, right, bottom], fractions of the page from 0 to 1")
    left, top, right, bottom = (float(item) for item in value)
    if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
        raise fail(f"{where} key 'box'", f"{value} is not inside the page with left < right and top < bottom")
    return left, top, right, bottom


def _length(value: Any, fail, where: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(item, int) and not isinstance(item, bool) for item in value)
            or not 1 <= value[0] <= value[1] <= MAX_LENGTH):
        raise fail(f"{where} key 'length'", f"must be a count of digits or [min, max], from 1 to {MAX_LENGTH}")
    return value[0], value[1]


def _check(value: Any, fail, where: str) -> str:
    if value not in CHECKS:
        raise fail(f"{where} key 'check'", f"{value!r} is not one of {', '.join(CHECKS)}")
    return value


def _page(value: Any, fail, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise fail(f"{where} key 'page'", "must be a page number from 0")
    return value


# --- checks ------------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """The Luhn check (card and account numbers): the last digit checks the others."""
    if not digits.isdigit():
        return False
    total = 0
    for position, character in enumerate(reversed(digits)):
        value = int(character) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def mod11_valid(digits: str) -> bool:
    """ISBN-10 style: weights n..1 from the left, the sum divisible by 11 ('X' is not allowed)."""
    if not digits.isdigit():
        return False
    return sum(int(character) * weight for character, weight in zip(digits, range(len(digits), 0, -1))) % 11 == 0


VALIDATORS = {"luhn": luhn_valid, "mod11": mod11_valid}


def problems_of(field: Field, digits: str) -> list[str]:
    """What is wrong with a field's digits by its own rules (length, check); [] when nothing."""
    if not digits:
        return ["empty: no digits were read in the field"]
    low, high = field.length
    problems = []
    if not low <= len(digits) <= high:
        wanted = str(low) if low == high else f"{low} to {high}"
        problems.append(f"length: {len(digits)} digits where {wanted} are expected")
    if field.check in VALIDATORS and not VALIDATORS[field.check](digits):
        problems.append(f"check: {field.check} check digit does not match")
    return problems


def sum_problems(template: Template, values: dict[str, str]) -> dict[str, list[str]]:
    """Field name -> the sums it breaks (its total is not the sum of its parts); fields left empty or not
    all digits break no sum (their own problems say so)."""
    broken: dict[str, list[str]] = {}
    for total, parts in template.sums:
        involved = [total, *parts]
        if not all(values.get(name, "").isdigit() for name in involved):
            continue
        expected = sum(int(values[part]) for part in parts)
        if int(values[total]) != expected:
            problem = f"sum: {total} ({values[total]}) is not {' + '.join(parts)} ({expected})"
            for name in involved:
                broken.setdefault(name, []).append(problem)
    return broken


def problems(template: Template, values: dict[str, str]) -> dict[str, list[str]]:
    """Field name -> everything wrong with its digits: its own rules, then the sums it breaks."""
    found = {field.name: problems_of(field, values[field.name]) for field in template.fields}
    for name, broken in sum_problems(template, values).items():
        found[name].extend(broken)
    return found


def mend(template: Template, values: dict[str, str], alternatives: dict[str, list[list[tuple[str, float]]]],
         *, least: float) -> dict[str, tuple[str, str]]:
    """Where a check digit or a sum fails as read, the one digit whose runner-up (at least `least` likely)
    makes every rule of its field and of the fields summed with it hold; the likeliest such digit wins,
    one per field and its sums. `alternatives[name][position]`: (digit, probability) best first.
    Returns field name -> (its mended digits, what was changed)."""
    found = problems(template, values)
    mended: dict[str, tuple[str, str]] = {}
    for field in template.fields:
        if not found[field.name] or field.name in mended:
            continue
        group = {field.name} | {name for total, parts in template.sums if field.name in (total, *parts)
                                for name in (total, *parts)}
        if any(name in mended for name in group):
            continue
        best = None
        for name in sorted(group):
            digits = values[name]
            for position, choices in enumerate(alternatives.get(name, [])[:len(digits)]):
                for digit, probability in choices[1:]:
                    if probability < least or (best is not None and probability <= best[0]):
                        continue
                    trial = {**values, name: digits[:position] + digit + digits[position + 1:]}
                    after = problems(template, trial)
                    if not any(after[other] for other in group):
                        best = (probability, name, trial[name],
                                f"digit {position + 1} read as {digits[position]} ({choices[0][1]:.3g}) "
                                f"taken as {digit} ({probability:.3g})")
        if best is not None:
            _, name, digits, change = best
            mended[name] = (digits, change)
            values = {**values, name: digits}
    return mended
