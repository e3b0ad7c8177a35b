"""The ``pgrecovery`` command: parse, call the public API, print, exit. Nothing else lives here.

The parser is built in ``_parser``; each verb runs in the module of its group (``_logical``, ``_physical``,
``_catalog``, and the modules of `EXTENSION_VERBS`). Exit codes come from `pgrecovery.cli.exitcodes`, the one table.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ..errors import ConfigurationError, PgRecoveryError
from . import _catalog, _logical, _physical
from ._common import Parser as _Parser
from ._common import common_options as _common
from ._common import encryption_key, recorded, recovery_target, status_options
from ._parser import EXTENSION_VERBS, build_parser, extension
from .exitcodes import EXIT_FAILED, EXIT_FATAL, EXIT_INTERRUPTED, EXIT_MISS, EXIT_OK, EXIT_USAGE, exit_code_for


def _backup(args: argparse.Namespace) -> int:
    return _physical.backup(args) if args.kind == "base" else _logical.backup(args)


def _restore(args: argparse.Namespace) -> int:
    return _physical.restore(args) if args.kind == "base" else _logical.restore(args)


_VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "backup": _backup,
    "restore": _restore,
    "list": _catalog.list_backups,
    "show": _catalog.show,
    "contents": _logical.contents,
    "verify": _catalog.verify,
    "delete": _catalog.delete,
    "clean": _catalog.clean,
    "demo": _catalog.demo,
}


def _configure_logging(args: argparse.Namespace) -> None:
    from ..logs import configure_logging

    log_format = getattr(args, "log_format", None) or os.environ.get("PGRECOVERY_LOG_FORMAT") or "text"
    if log_format not in ("text", "json"):
        raise ConfigurationError(f"PGRECOVERY_LOG_FORMAT={log_format!r}: use text or json")
    configure_logging(logging.INFO if getattr(args, "verbose", False) else logging.WARNING, log_format == "json")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (argparse's own --help and usage errors included)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else EXIT_USAGE
        words = sys.argv[1:] if argv is None else list(argv)
        if code and "wal-fetch" in words:
            return EXIT_FATAL  # as restore_command: a usage error must stop recovery, not look like "not archived"
        return code
    code = _run(args)
    if args.verb == "wal-fetch" and code not in (EXIT_OK, EXIT_MISS):
        return EXIT_FATAL  # as restore_command, anything but a delivery or a confirmed miss stops recovery
    return code


def _run(args: argparse.Namespace) -> int:
    try:
        _configure_logging(args)
    except ConfigurationError as e:
        sys.stderr.write(f"pgrecovery: {e}\n")
        return EXIT_USAGE
    try:
        if args.verb in _VERBS:
            return _VERBS[args.verb](args)
        module: Any = extension(EXTENSION_VERBS[args.verb])
        return int(module.run(args))
    except PgRecoveryError as e:
        sys.stderr.write(f"pgrecovery: {e}\n")
        return exit_code_for(e)
    except KeyboardInterrupt:
        sys.stderr.write("pgrecovery: interrupted\n")
        return EXIT_INTERRUPTED


def run() -> NoReturn:
    sys.exit(main())


# What callers imported from here before the split keeps working (the parser's private names too).
__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "_Parser",
    "_common",
    "build_parser",
    "encryption_key",
    "main",
    "recorded",
    "recovery_target",
    "run",
    "status_options",
]

if __name__ == "__main__":
    run()
