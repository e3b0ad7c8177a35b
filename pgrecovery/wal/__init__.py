"""WAL archiving: `WalArchiver` (push, fetch, verify, cleanup), the archive_command / restore_command strings, and
how archived objects are named.

Its names load on first use (PEP 562): the package mixes layers (naming and the index below the catalog, the
archiver above it), and importing one piece must not import the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_LAZY = {
    "ArchiverStatus": "archiver",
    "PushResult": "archiver",
    "WalArchiver": "archiver",
    "WalConflict": "archiver",
    "WalObject": "archiver",
    "WalVerifyReport": "archiver",
    "archive_command": "archiver",
    "archiver_status": "archiver",
    "create_restore_point": "archiver",
    "object_key": "archiver",
    "parse_object_name": "archiver",
    "restore_command": "archiver",
    "timeline_dir": "archiver",
}

if TYPE_CHECKING:
    from .archiver import (
        ArchiverStatus,
        PushResult,
        WalArchiver,
        WalConflict,
        WalObject,
        WalVerifyReport,
        archive_command,
        archiver_status,
        create_restore_point,
        object_key,
        parse_object_name,
        restore_command,
        timeline_dir,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pgrecovery.wal' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "ArchiverStatus",
    "PushResult",
    "WalArchiver",
    "WalConflict",
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
