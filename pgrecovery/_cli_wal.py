"""CLI verbs for WAL archiving (wal-push, wal-fetch, wal-verify, archiver-status, restore-point).

Kept apart from cli.py so that archive_command and restore_command start with the standard library only.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_verbs(verbs: Any, common: argparse.ArgumentParser) -> None:
    """Register the WAL verbs on the main parser's subparsers."""


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError(args.verb)
