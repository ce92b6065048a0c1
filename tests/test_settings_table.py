"""The README's settings table is the generated one, so it lists every DIGITS_* variable the code reads."""

from __future__ import annotations

from pathlib import Path

from digits.settings_doc import markdown_table

from core.settings import environment_variables

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_settings_table_is_the_generated_one_and_lists_every_variable():
    readme = README.read_text(encoding="utf-8")
    table = readme.split("<!-- settings table: begin -->\n", 1)[1].split("\n<!-- settings table: end -->", 1)[0]
    assert table == markdown_table(), "the README settings table is stale: paste `python -m digits.settings_doc`"
    for variable in environment_variables():
        assert f"| `{variable}` |" in table
