"""Forms: each template field read from its own region of the page (its box and a margin), then its
length, check digit and sums checked; and the templates folder as the worker keeps it."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core import protocol, templates
from core.protocol import DIGIT_CLASSES
from core.templates import Template, TemplateError

log = logging.getLogger(__name__)

# A scan shifted by up to 3 % of the page, or turned by up to 2 degrees (tan 2° of the page's width up or
# down at its far side), still has a field's writing within this share of the page around its box.
MARGIN = 0.04
RUNNER_UP = 1e-4  # a check digit or sum failing as read is mended by a digit's runner-up at least this likely


def regions(template: Template) -> list[tuple[int, tuple[float, float, float, float], tuple[float, float, float, float]]]:
    """Where each field's ink is taken from, in template order: (page, its box widened by MARGIN, its box)."""
    return [(field.page, (max(0.0, field.box[0] - MARGIN), max(0.0, field.box[1] - MARGIN),
                          min(1.0, field.box[2] + MARGIN), min(1.0, field.box[3] + MARGIN)), field.box)
            for field in template.fields]


def apply(template: Template, result: dict[str, Any]) -> dict[str, Any]:
    """The result object of a form from the result read over its regions (one "page" per field, in template
    order): the numbers of each field on their real pages, the template's name, each field with its
    checks, and the review flag set when any field's is. The details' in-memory choices
    (protocol.CHOICES) are used here and leave them."""
    if result["status"] == protocol.ERROR:
        return {**result, "template": template.name, "fields": {}}
    per_field = [page["numbers"] for page in result["pages"]]
    fields = _checked(template, per_field)
    pages = [protocol.page_result(index, [number for field, numbers in zip(template.fields, per_field)
                                          if field.page == index for number in numbers])
             for index in sorted({field.page for field in template.fields})]
    form = protocol.result(result["source"], pages=pages, model=result["model"], sha256=result["sha256"],
                           worker=result["worker"], job=result["job"])
    form.update(template=template.name, fields=fields,
                review=form["review"] or any(field["review"] for field in fields.values()))
    return form


def _checked(template: Template, per_field: list[list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """field name -> {digits, confidence, box, valid, review, problems}, and "read" where a failed check
    digit or sum was mended by one digit's runner-up (the field then stays invalid and flagged)."""
    found, values, alternatives = {}, {}, {}
    for field, numbers in zip(template.fields, per_field):
        values[field.name] = "".join(number["digits"] for number in numbers)
        alternatives[field.name] = [detail.pop(protocol.CHOICES, [tuple(pair) for pair in detail["top"]])
                                    for number in numbers for detail in number["details"]]
        found[field.name] = {
            "digits": values[field.name],
            "confidence": min((number["confidence"] for number in numbers), default=0.0),
            "box": ([min(n["box"][0] for n in numbers), min(n["box"][1] for n in numbers),
                     max(n["box"][2] for n in numbers), max(n["box"][3] for n in numbers)] if numbers else None),
            "valid": True,
            "review": any(number["review"] for number in numbers),
        }
    for name, problems in templates.problems(template, values).items():
        found[name]["problems"] = problems
    for name, (digits, change) in templates.mend(template, values, alternatives, least=RUNNER_UP).items():
        found[name]["problems"] = [f"mended: {change}; as read, {'; '.join(found[name]['problems'])}"]
        found[name].update(digits=digits, read=values[name])
    for entry in found.values():
        entry["valid"] = not entry["problems"]
        entry["review"] = entry["review"] or not entry["valid"]
    return found


class TemplateShelf:
    """The templates folder as the worker sees it: each template read once and again when its file changes
    (size or time), a malformed one refused with its problem logged once per change."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = threading.Lock()
        self._known: dict[str, tuple[tuple[int, int] | None, Template | TemplateError | None]] = {}

    def check_all(self) -> None:
        """Read every template at start, so a malformed one is reported before any form arrives."""
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                self.get(path.stem)
            except TemplateError:
                pass

    def get(self, name: str) -> Template | None:
        """The template of that name; None when there is no such file; raises TemplateError when malformed."""
        try:
            path = templates.path_of(self.folder, name)
            info = path.stat()
            stamp = (info.st_mtime_ns, info.st_size)
        except TemplateError:
            return None  # not a template name: a plain inbox folder
        except OSError:
            stamp = None
        with self._lock:
            known = self._known.get(name)
            if known is None or known[0] != stamp:
                if stamp is None:
                    loaded = None
                else:
                    try:
                        loaded = templates.load(self.folder, name)
                        log.info("template %s: %d field(s) from %s", name, len(loaded.fields), path)
                    except TemplateError as error:
                        log.error("template refused: %s", error)
                        loaded = error
                known = self._known[name] = (stamp, loaded)
        if isinstance(known[1], TemplateError):
            raise known[1]
        return known[1]

    def for_path(self, relative: str) -> Template | None:
        """The template a file at INBOX/<relative> is read with: the one named by its top folder, if any."""
        name = template_name_of(relative)
        return None if name is None else self.get(name)


def template_name_of(relative: str) -> str | None:
    """The template an inbox file names by its top folder (INBOX/<template>/...); None for a file at the top."""
    top, slash, _ = relative.partition("/")
    return top if slash else None


def read_form(data: bytes, template: Template, predict: Callable[[list[np.ndarray]], np.ndarray], *, source: str,
              model: str | None, review_below: float, max_pixels: int = 40_000_000, max_bytes: int = 20_000_000,
              pdf_dpi: int = 150) -> dict[str, Any]:
    """A file read as a form in this thread, without a worker's batcher (the check picture, benchmarks and
    tests): predict(glyph images) -> their probabilities, as the worker's model gives them."""
    from worker.normalise import normalise
    from worker.recognition import images_of, read

    pages = normalise(data, max_pixels=max_pixels, max_bytes=max_bytes, pdf_dpi=pdf_dpi, regions=regions(template))
    glyphs = images_of(pages)
    probabilities = predict(glyphs) if glyphs else np.zeros((0, DIGIT_CLASSES + 1), np.float32)
    return apply(template, read(pages, probabilities, source=source, model=model, sha256=None, worker=None, job=None,
                                review_below=review_below, lengths=[field.length for field in template.fields]))


# --- the check picture (`digits template check`) ---------------------------------------------

TEMPLATE_COLOUR, REGION_COLOUR = (40, 90, 230), (150, 150, 150)
VALID_COLOUR, INVALID_COLOUR = (20, 150, 60), (210, 30, 30)


def check_form(path: Path, settings, *, template_name: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Read one file as a form the way a worker does, draw the template's boxes and what was read in each
    onto its pages, and write the picture beside the file's result (RESULTS/<relative>.check.png).
    Returns (the picture's path, the result object)."""
    from core.device import configure
    from core.errors import ConfigError
    from worker import results_files
    from worker.holder import load_predictor
    from worker.normalise import _read

    relative = _relative(path, settings.inbox)
    name = template_name or template_name_of(relative)
    if name is None:
        raise ConfigError(f"{path} is not in a template's folder of the inbox ({settings.inbox}/<template>/...): "
                          "name its template with --template")
    template = templates.load(settings.template_folder, name)
    data = _read(str(path), max_bytes=settings.max_image_bytes)
    configure(settings.device)
    predictor = load_predictor(settings.weights)
    result = read_form(data, template, lambda glyphs: predictor.predict(np.stack(glyphs)), source=relative,
                       model=predictor.version, review_below=settings.review_below, max_pixels=settings.max_pixels,
                       max_bytes=settings.max_image_bytes, pdf_dpi=settings.pdf_dpi)
    picture = results_files.confined(settings.results, relative + ".check.png")
    picture.parent.mkdir(parents=True, exist_ok=True)
    _drawn(data, template, result, settings).save(picture)
    return picture, result


def _relative(path: Path, inbox: Path) -> str:
    try:
        return path.resolve().relative_to(inbox.resolve()).as_posix()
    except ValueError:
        return path.name


def _drawn(data: bytes, template: Template, result: dict[str, Any], settings):
    """The pages that hold fields, one under the other, with each field's box (blue), the region it is read
    from (grey), where its digits were found (green when valid, red when not) and what was read."""
    from PIL import Image, ImageDraw, ImageFont

    from worker.normalise import page_images

    wanted = {field.page for field in template.fields}
    sources = page_images(data, pdf_dpi=settings.pdf_dpi, max_pixels=settings.max_pixels, pages=wanted)
    drawn = []
    for page in sorted(wanted):
        if page not in sources:
            continue
        canvas = sources[page]
        draw = ImageDraw.Draw(canvas)
        width, height = canvas.size
        font = ImageFont.load_default(size=max(12, height // 60))
        line = max(2, height // 400)
        for field, (_, region, _) in zip(template.fields, regions(template)):
            if field.page != page:
                continue
            found = result["fields"].get(field.name, {})
            draw.rectangle(_pixels(region, width, height), outline=REGION_COLOUR, width=1)
            box = _pixels(field.box, width, height)
            draw.rectangle(box, outline=TEMPLATE_COLOUR, width=line)
            if found.get("box"):
                draw.rectangle(found["box"], outline=VALID_COLOUR if found.get("valid") else INVALID_COLOUR,
                               width=line)
            verdict = ("ok" if found.get("valid") else f"mended from {found['read']}" if "read" in found
                       else ", ".join(problem.partition(":")[0] for problem in found.get("problems", [])) or "not read")
            text = f"{field.name}: {found.get('digits') or '-'}  {verdict}"
            top = max(0, box[1] - font.size - 2 * line)
            draw.text((box[0], top), text, font=font,
                      fill=VALID_COLOUR if found.get("valid") else INVALID_COLOUR)
        drawn.append(canvas)
    if not drawn:
        return Image.new("RGB", (400, 100), "white")
    sheet = Image.new("RGB", (max(page.width for page in drawn), sum(page.height for page in drawn)), "white")
    top = 0
    for page in drawn:
        sheet.paste(page, (0, top))
        top += page.height
    return sheet


def _pixels(box: tuple[float, float, float, float], width: int, height: int) -> list[int]:
    return [round(box[0] * width), round(box[1] * height), round(box[2] * width), round(box[3] * height)]
