"""Thumbnails of the numbers of the latest results on the status page: a flagged number's review crop when
the worker kept one, else cut from the original where it went (the processed folder, or the inbox where
originals are kept); none once the original is gone (deleted after success)."""

from __future__ import annotations

import functools
import io
from pathlib import Path

from core.errors import UnsafePath
from web.review import load_result, number_in
from worker import results_files

MAX_BYTES = 20_000_000


def numbers_of(results: Path, source: str) -> list[dict]:
    """(page, number, digits) of each number a results file holds; [] when it cannot be read."""
    result = load_result(results, source) or {}
    return [{"page": page["page"], "number": index, "digits": number["digits"]}
            for page in result.get("pages", []) for index, number in enumerate(page.get("numbers", []))]


class Thumbnails:
    def __init__(self, results: Path, originals: list[Path], *, pdf_dpi: int, max_pixels: int):
        self.results = results
        self.originals = originals
        self.pdf_dpi = pdf_dpi
        self.max_pixels = max_pixels

    def png(self, source: str, page: int, number: int) -> bytes | None:
        """The thumbnail of one number, PNG; None when there is none to make."""
        try:
            result_file = results_files.result_path(self.results, source)
            stamp = result_file.stat().st_mtime_ns
        except (OSError, UnsafePath):
            return None
        return self._made(source, page, number, stamp)

    @functools.lru_cache(maxsize=256)  # one instance per process: the cache lives as long as the page
    def _made(self, source: str, page: int, number: int, stamp: int) -> bytes | None:
        from core import protocol
        from worker.crops import crop
        from worker.normalise import page_images

        kept = results_files.confined(self.results, protocol.review_crop(source, page, number))
        if kept.is_file():  # the worker's review crop
            return kept.read_bytes()

        found = number_in(load_result(self.results, source) or {}, page, number)
        if found is None:
            return None
        box = found["box"]
        for folder in self.originals:
            try:
                original = results_files.confined(folder, source)
                if not original.is_file() or original.stat().st_size > MAX_BYTES:
                    continue
                pages = page_images(original.read_bytes(), pdf_dpi=self.pdf_dpi, max_pixels=self.max_pixels,
                                    pages={page})
            except Exception:  # a file replaced by another, or unreadable: no thumbnail
                continue
            if page in pages:
                buffer = io.BytesIO()
                crop(pages[page], box).save(buffer, format="PNG")
                return buffer.getvalue()
        return None
