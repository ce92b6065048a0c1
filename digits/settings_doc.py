"""The README's settings table, generated from digits.settings.describe(): `python -m digits.settings_doc`."""

from __future__ import annotations

from digits.settings import PROJECT_ROOT, describe


def markdown_table() -> str:
    """One row per setting: variable, flag, default, meaning (machine paths shown relative to the project)."""
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for variable, default, meaning in describe():
        flag = "--" + variable.removeprefix("DIGITS_").lower().replace("_", "-")
        shown = default.replace(str(PROJECT_ROOT), "<project>")
        meaning = meaning.replace("|", "&#124;").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| `{variable}` | `{flag}` | `{shown}` | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
