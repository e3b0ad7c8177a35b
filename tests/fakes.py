"""A fake backup in a repository, for tests that need a catalog but no server (importable from every test directory).

`put_backup` writes a complete backup (claimed id, data objects, manifest written last) through the same skeleton
real backups use (`pgrecovery.catalog.writing_backup`); the other functions are the shapes the unit tests of the
catalog, copies, monitoring and the policy runner ask for, written on top of it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timedelta

from pgrecovery import BackupManifest, FileEntry, Repository
from pgrecovery.catalog import data_key, writing_backup
from pgrecovery.codec import Codec
from pgrecovery.manifest import BackupKind


def put_backup(
    repo: Repository,
    started: datetime,
    *,
    kind: BackupKind = "logical",
    payloads: Sequence[bytes] = (b"payload",),
    finished: datetime | None = None,
    codec: Codec = "none",
    raw_size: int | None = None,
    role: str = "dump",
    database: str | None = None,
) -> BackupManifest:
    """A complete backup of ``kind`` started at ``started``: one stored file per payload (``data/dump`` for one,
    ``data/part<i>`` for several; the bytes are stored as they are, whatever ``codec`` says)."""
    with writing_backup(repo, kind, started) as backup:
        entries = []
        for i, payload in enumerate(payloads):
            name = "dump" if len(payloads) == 1 else f"part{i}"
            obj = repo.put_bytes(data_key(backup.id, name), payload)
            entries.append(
                FileEntry(
                    path=f"data/{name}", size=obj.size, sha256=obj.sha256, codec=codec, raw_size=raw_size, role=role
                )
            )
        return backup.finish(
            BackupManifest(
                id=backup.id,
                kind=kind,
                started_at=started,
                finished_at=finished or started + timedelta(seconds=1),
                format="custom",
                compression=codec,
                files=entries,
                database=database,
            )
        )


def complete(repo: Repository, when: datetime, kind: BackupKind = "logical") -> BackupManifest:
    """A small complete backup (one file, ``b"payload"``) started at ``when``."""
    return put_backup(repo, when, kind=kind)


def backup_with_parts(repo: Repository, when: datetime, files: int = 3, kind: BackupKind = "logical") -> BackupManifest:
    """A complete backup of ``files`` random parts of about 3 kB, started at ``when``."""
    return put_backup(repo, when, kind=kind, payloads=[os.urandom(3000 + i) for i in range(files)])


def finished_backup(
    repo: Repository, finished: datetime, kind: BackupKind = "logical", size: int = 3000
) -> BackupManifest:
    """A complete zstd backup of ``size`` random bytes (``size * 3`` before compression) that took ten minutes up to
    ``finished``."""
    return put_backup(
        repo,
        finished - timedelta(minutes=10),
        kind=kind,
        payloads=[os.urandom(size)],
        finished=finished,
        codec="zstd",
        raw_size=size * 3,
        role="data",
    )


def put_logical_backup(repo: Repository, started: datetime, database: str = "shop") -> BackupManifest:
    """A complete (tiny, synthetic) logical backup of ``database`` with a chosen start time."""
    return put_backup(repo, started, payloads=[b"dump"], finished=started + timedelta(minutes=1), database=database)
