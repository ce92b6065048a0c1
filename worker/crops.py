"""Small pictures of the numbers flagged for review, cut from their page beside the results file, so the
person reviewing them never needs the original: RESULTS/<relative>.review/<page>-<number>.png; and the
28x28 images the model read of each of its digits, <page>-<number>.npy (uint8, white on black), which a
person's decision turns into labelled training samples."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core import protocol
from worker import results_files

log = logging.getLogger(__name__)

CROP_HEIGHT = 96  # a crop is at most this many pixels tall
MARGIN = 0.25  # of the number's height, around it


def flagged(result: dict[str, Any]) -> list[tuple[int, int, dict[str, Any]]]:
    """(page, place on the page, number) of each number flagged for review; none for a form, whose fields
    are reviewed together (form_fields)."""
    if "template" in result:
        return []
    return [(page["page"], index, number) for page in result.get("pages", [])
            for index, number in enumerate(page.get("numbers", [])) if number.get("review")]


def form_fields(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, field) of a form flagged for review, every field (a person checks them together)."""
    if "template" not in result or not result.get("review"):
        return []
    return list((result.get("fields") or {}).items())


def review_items(result: dict[str, Any]) -> dict[str, float]:
    """The review queue's members a result adds, each with its score (confidence, lowest first): its flagged
    numbers, or a flagged form whole (scored by its least sure field)."""
    fields = form_fields(result)
    if fields:
        return {protocol.review_item(result["source"]): min(field["confidence"] for _, field in fields)}
    return {protocol.review_item(result["source"], page, index): number["confidence"]
            for page, index, number in flagged(result)}


def write(results: Path, relative: str, data: bytes, result: dict[str, Any], glyphs: dict, *, pdf_dpi: int,
          max_pixels: int) -> None:
    """The crops of a result's flagged numbers and their digits' images (`glyphs`: a glyph's box -> its
    28x28 image); a file whose pages cannot be drawn again gets no crops (its review shows the digits
    alone), and nothing here fails the job."""
    from worker.normalise import page_images

    numbers, fields = flagged(result), form_fields(result)
    if not numbers and not fields:
        return
    try:
        for page, index, number in numbers:
            images = [glyphs.get(tuple(detail["box"])) for detail in number["details"]]
            if images and all(image is not None for image in images):
                stacked = np.stack([np.round(255 * image).astype(np.uint8) for image in images])
                _save(results_files.confined(results, protocol.review_glyphs(relative, page, index)),
                      lambda file, stacked=stacked: np.save(file, stacked, allow_pickle=False))
        field_pages = {name: _page_of(result, field) for name, field in fields}
        pages = page_images(data, pdf_dpi=pdf_dpi, max_pixels=max_pixels,
                            pages={page for page, _, _ in numbers} | set(field_pages.values()))
        for page, index, number in numbers:
            if page in pages:
                _save_png(crop(pages[page], number["box"]),
                          results_files.confined(results, protocol.review_crop(relative, page, index)))
        for name, field in fields:
            if field.get("box") and field_pages[name] in pages:
                _save_png(crop(pages[field_pages[name]], field["box"]),
                          results_files.confined(results, protocol.field_crop(relative, name)))
    except Exception as error:  # a crop is a convenience: the result must still be written
        log.warning("no review crops for %s: %s: %s", relative, type(error).__name__, error)


def _page_of(result: dict[str, Any], field: dict[str, Any]) -> int:
    """The page a field's digits were found on: the page holding a number inside its box."""
    box = field.get("box") or [0, 0, 0, 0]
    for page in result.get("pages", []):
        for number in page.get("numbers", []):
            left, top, right, bottom = number["box"]
            if left >= box[0] and top >= box[1] and right <= box[2] and bottom <= box[3]:
                return page["page"]
    return 0


def crop(page: Image.Image, box: list[int]) -> Image.Image:
    """A number's box and a margin around it, grey, at most CROP_HEIGHT tall."""
    left, top, right, bottom = box
    margin = round(MARGIN * (bottom - top))
    cut = page.crop((max(0, left - margin), max(0, top - margin), min(page.width, right + margin),
                     min(page.height, bottom + margin)))
    if cut.height > CROP_HEIGHT:
        cut = cut.resize((max(1, round(cut.width * CROP_HEIGHT / cut.height)), CROP_HEIGHT), Image.Resampling.LANCZOS)
    return cut.convert("L")


def _save_png(picture: Image.Image, path: Path) -> None:
    _save(path, lambda file: picture.save(file, format="PNG", optimize=False))


def _save(path: Path, write) -> None:
    """A file written whole or not at all: write(file) into a temporary file beside it, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as file:
        write(file)
    os.replace(temporary, path)
