"""WAL archiving: `WalArchiver` (push, fetch, verify, cleanup; `archiver`), the archive_command / restore_command
strings (`commands`), what the server reports (`server`), the archive's index and continuity (`index`), and how
archived objects are named (`_layout`), and restore points recorded or found in archived WAL (`restore_points`).

Its names load on first use (PEP 562): the package mixes layers (naming and the index below the catalog, the
archiver above it), and importing one piece must not import the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr

_LAZY = {
    "ArchiverStatus": "server",
    "PushResult": "archiver",
    "RestorePoint": "restore_points",
    "WalArchiver": "archiver",
    "WalConflict": "archiver",
    "WalIndex": "index",
    "WalObject": "_layout",
    "WalVerifyReport": "index",
    "archive_command": "commands",
    "archiver_status": "server",
    "create_restore_point": "server",
    "object_key": "_layout",
    "parse_object_name": "_layout",
    "restore_command": "commands",
    "timeline_dir": "_layout",
}

if TYPE_CHECKING:
    from ._layout import WalObject, object_key, parse_object_name, timeline_dir
    from .archiver import PushResult, WalArchiver, WalConflict
    from .commands import archive_command, restore_command
    from .index import WalIndex, WalVerifyReport
    from .restore_points import RestorePoint
    from .server import ArchiverStatus, archiver_status, create_restore_point


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = [
    "ArchiverStatus",
    "PushResult",
    "RestorePoint",
    "WalArchiver",
    "WalConflict",
    "WalIndex",
    "WalObject",
    "WalVerifyReport",
    "archive_command",
    "archiver_status",
    "create_restore_point",
    "object_key",
    "parse_object_name",
    "restore_command",
    "timeline_dir",
]
