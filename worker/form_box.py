"""A form field's printed box, found in the region its digits are read from (shifted, turned by a few
degrees, written over, broken by the scan), and everything but its inside painted paper: the box's own
sides and the printed labels around it never reach the field's digits."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

TURNS = np.radians(np.linspace(-3.0, 3.0, 25))  # boxes are looked for turned by up to 3 degrees either way
ANALYSIS_PIXELS = 200_000  # a region is searched at about this size
INK = 0.45  # ink is darker than the paper by this share of the region's darkest ink at least
MIN_CONTRAST = 24.0  # grey levels of 255: less than this is blank paper
SIDE_INKED = 0.7  # each side of a box inks at least this share of its length (writing crosses it, scans break it)
SIZE_SLACK = 0.12  # the box found is the template's box in size, within this share of it
THICK = 0.5  # a side's thickness: the rows (columns) about it covering at least this share of its length


def inside(region: Image.Image, box: tuple[float, float, float, float], paper) -> Image.Image:
    """`region` with all but the inside of the printed box near `box` ((left, top, right, bottom) in the
    region's pixels: where the template puts it) painted `paper`; `region` itself when no box is there
    (a field without a printed box is read from its whole region)."""
    width, height = region.size
    factor = max(1, math.ceil(math.sqrt(width * height / ANALYSIS_PIXELS)))
    small = np.asarray((region.reduce(factor) if factor > 1 else region).convert("L"), np.float32)
    found = _find(small, [side / factor for side in box])
    if found is None:
        return region
    turn, top, bottom, left, right = found
    # The inside, at full size, in the box's own (turned) coordinates.
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) / factor
    across, along = _turned(ys - small.shape[0] / 2, xs - small.shape[1] / 2, turn)
    keep = (across > top) & (across < bottom) & (along > left) & (along < right)
    mask = Image.fromarray(keep.astype(np.uint8) * 255)
    return Image.composite(region, Image.new(region.mode, region.size, paper), mask)


def _turned(ys: np.ndarray, xs: np.ndarray, turn: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates turned by `turn` radians: (across the box's rows, along them)."""
    cos, sin = math.cos(turn), math.sin(turn)
    return ys * cos - xs * sin, xs * cos + ys * sin


def _find(grey: np.ndarray, box: list[float]) -> tuple[float, float, float, float, float] | None:
    """(turn, and the inside's top, bottom, left and right in turned coordinates about the centre) of the
    box near `box`, or None: four straight sides, each inked along most of its length, as far apart as the
    template's box is wide and tall. A side is where ink covers the most positions along a straight line
    (not where it is heaviest: a thick 1 holds more ink than a thin side of a box)."""
    signal = np.median(grey) - grey
    contrast = float(np.percentile(signal, 99.5))
    if contrast < MIN_CONTRAST:
        return None
    ys, xs = np.nonzero(signal > INK * contrast)
    ys = ys.astype(np.float32) - grey.shape[0] / 2
    xs = xs.astype(np.float32) - grey.shape[1] / 2
    reach = math.ceil(math.hypot(*grey.shape) / 2) + 2  # turned coordinates lie within this of the centre
    middle_row = round((box[1] + box[3]) / 2 - grey.shape[0] / 2) + reach
    middle_column = round((box[0] + box[2]) / 2 - grey.shape[1] / 2) + reach
    best = None
    for turn in TURNS.tolist():
        across, along = (np.rint(values).astype(np.int64) + reach for values in _turned(ys, xs, turn))
        grid = np.zeros((2 * reach + 1, 2 * reach + 1), bool)
        grid[across, along] = True
        # What each line three positions thick covers along it: rows (horizontal sides), columns (vertical).
        rows = (grid[:-2] | grid[1:-1] | grid[2:]).sum(axis=1)
        columns = (grid[:, :-2] | grid[:, 1:-1] | grid[:, 2:]).sum(axis=0)
        top, bottom = int(np.argmax(rows[:middle_row])), middle_row + int(np.argmax(rows[middle_row:]))
        left, right = int(np.argmax(columns[:middle_column])), middle_column + int(np.argmax(columns[middle_column:]))
        score = int(rows[top] + rows[bottom] + columns[left] + columns[right])
        # Of turns that cover as much, the one whose sides lie straightest along single rows and columns.
        single_rows, single_columns = grid.sum(axis=1), grid.sum(axis=0)
        straight = int(single_rows[top:top + 3].max() + single_rows[bottom:bottom + 3].max()
                       + single_columns[left:left + 3].max() + single_columns[right:right + 3].max())
        if best is None or (score, straight) > best[0]:
            best = ((score, straight), turn, (top + 1, bottom + 1, left + 1, right + 1), single_rows, single_columns,
                    (rows, columns))
    _, turn, (top, bottom, left, right), single_rows, single_columns, (rows, columns) = best
    wide, tall = box[2] - box[0], box[3] - box[1]
    if abs((right - left) - wide) > SIZE_SLACK * wide or abs((bottom - top) - tall) > SIZE_SLACK * tall:
        return None
    if min(rows[top - 1], rows[bottom - 1]) < SIDE_INKED * wide or min(columns[left - 1], columns[right - 1]) < SIDE_INKED * tall:
        return None
    # Each side's thickness: the rows (columns) about it inked along most of its length.
    top_band, bottom_band = _band(single_rows, top, THICK * wide), _band(single_rows, bottom, THICK * wide)
    left_band, right_band = _band(single_columns, left, THICK * tall), _band(single_columns, right, THICK * tall)
    # The inside begins a pixel past each side's ink, in coordinates about the centre.
    return (turn, top_band[1] + 1.5 - reach, bottom_band[0] - 1.5 - reach,
            left_band[1] + 1.5 - reach, right_band[0] - 1.5 - reach)


def _band(cover: np.ndarray, middle: int, least: float) -> tuple[int, int]:
    """The positions about a side's middle covering at least `least` of its length: the side's thickness
    (the three about its middle at least)."""
    low, high = middle - 1, middle + 1
    while low > 0 and cover[low - 1] >= least:
        low -= 1
    while high < cover.size - 1 and cover[high + 1] >= least:
        high += 1
    return low, high
