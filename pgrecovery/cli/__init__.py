"""The `pgrecovery` command: parse, call one public API function, print, exit with a code from one table."""

from .main import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
