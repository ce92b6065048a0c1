"""The README stays short, every relative link in README.md and docs/ leads somewhere, and the settings
table in docs/settings.md is the generated one."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from core.settings import environment_variables, markdown_table

pytestmark = pytest.mark.fast

PROJECT_ROOT = Path(__file__).resolve().parent.parent
README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
README_MAX_LINES = 200

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks, with inline code removed."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(INLINE_CODE.sub("", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps only its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, numbered like GitHub's when a heading repeats."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    return [target for line in prose_lines(path) for target in LINK.findall(line)
            if not EXTERNAL.match(target)]


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_the_slug_is_githubs():
    assert slug("Everything on one machine: `digits up`") == "everything-on-one-machine-digits-up"
    assert slug("`digits.process_files`") == "digitsprocess_files"
    assert slug("Scaling out on one Redis") == "scaling-out-on-one-redis"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: str(path.relative_to(PROJECT_ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(path):
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor.lower() not in anchors(destination):
            broken.append(f"{target}: no heading with that anchor in {destination.name}")
    assert not broken, f"{path.relative_to(PROJECT_ROOT)}: " + "; ".join(broken)


def test_readme_links_every_docs_page():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)}
    missing = [page.name for page in sorted(DOCS.glob("*.md")) if page.resolve() not in linked]
    assert not missing, f"README.md links no docs page {missing}"


def test_settings_table_is_the_generated_one_and_lists_every_variable():
    text = (DOCS / "settings.md").read_text(encoding="utf-8")
    begin, end = "<!-- settings table: begin -->\n", "\n<!-- settings table: end -->"
    assert begin in text and end in text, "docs/settings.md lost its settings table markers"
    table = text.split(begin, 1)[1].split(end, 1)[0]
    assert table == markdown_table(), "docs/settings.md settings table is stale: paste `python -m core.settings`"
    for variable in environment_variables():
        assert f"| `{variable}` |" in table, f"{variable} is missing from docs/settings.md"
