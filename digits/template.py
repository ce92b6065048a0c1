"""`digits template check`: read a scan with its form template and draw what was read where, so a person
can see at a glance whether the template fits their form."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.settings import Settings, add_flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="draw the template's boxes and what was read in each onto a scan")
    check.add_argument("path", type=Path, help="a scan, e.g. inbox/<template>/scan.png")
    check.add_argument("--template", default=None,
                       help="the template's name (default: the inbox folder the scan is in)")
    add_flags(check, "inbox", "results", "templates", "weights", "device", "review_below", "max_image_bytes",
              "max_pixels", "pdf_dpi", "log_level")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from worker.fields import check_form

    picture, result = check_form(args.path, settings, template_name=args.template)
    print(f"template {result.get('template')}: {args.path}")
    for name, field in result.get("fields", {}).items():
        verdict = "ok" if field["valid"] else "; ".join(field["problems"])
        print(f"  {name:<16} {field['digits'] or '-':<20} {'review ' if field['review'] else ''}{verdict}")
    if result.get("error"):
        print(f"  error: {result['error']}")
    print(f"picture: {picture}")
    return 0
