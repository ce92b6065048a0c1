"""`digits use VERSION` / `digits use --previous`: make a published version current; running workers follow."""

from __future__ import annotations

import argparse

from core import weights as weights_store
from core.errors import ConfigError, WeightsError
from core.settings import Settings, add_flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", nargs="?", help="the version to make current (see `digits versions`)")
    parser.add_argument("--previous", action="store_true", help="go back to the version that was current before")
    add_flags(parser, "weights", "log_level")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if bool(args.version) == args.previous:
        raise ConfigError("give either a VERSION or --previous")
    current = weights_store.current_version(settings.weights)
    version = args.version
    if args.previous:
        version = weights_store.previous_version(settings.weights)
        if version is None:
            raise WeightsError(f"no earlier current version recorded in {settings.weights / weights_store.HISTORY}")
    if version == current:
        print(f"{version} is already current")
        return 0
    weights_store.point_to(settings.weights, version)
    print(f"{version} is now current (was {current or 'none'}); running workers switch within their reload interval")
    return 0
