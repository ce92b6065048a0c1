"""`digits versions`: every published weights version with its date, architecture, figures and size; --prune N."""

from __future__ import annotations

import argparse
import dataclasses
import json

from core import weights as weights_store
from core.settings import Settings, add_flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    parser.add_argument("--prune", type=int, default=None, metavar="N",
                        help="remove all but the newest N versions (never the current one or the one before it)")
    add_flags(parser, "weights", "log_level")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def format_table(versions: list[weights_store.VersionInfo]) -> str:
    rows = [("", "version", "created", "architecture", "MNIST test", "scan set", "size")]
    for info in versions:
        rows.append(("*" if info.current else "", info.version, info.created[:19].replace("T", " "),
                     info.architecture, _percent(info.mnist_test), _percent(info.scans),
                     f"{info.size_bytes / 1e6:.1f} MB" + ("" if info.complete else f"  INCOMPLETE: {info.problem}")))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
                     for row in rows)


def run(args: argparse.Namespace, settings: Settings) -> int:
    removed = weights_store.prune(settings.weights, args.prune) if args.prune is not None else []
    versions = weights_store.list_versions(settings.weights)
    if args.json:
        print(json.dumps({"weights": str(settings.weights), "current": weights_store.current_version(settings.weights),
                          "previous": weights_store.previous_version(settings.weights), "removed": removed,
                          "versions": [dataclasses.asdict(info) for info in versions]}))
    else:
        for version in removed:
            print(f"removed {version}")
        print(format_table(versions) if versions else f"no versions published in {settings.weights}")
    return 0
