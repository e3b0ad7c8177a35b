"""`Repository`: where backups live, on any filesystem fsspec reaches, with the backups it holds.

It is `pgrecovery.storage.Storage` (objects: write, read, list, delete, with each filesystem's guarantees) plus
the catalog's view of them (which backups are complete, the newest of a kind, deleting one with what depends on
it). The catalog layer sits above storage, so storage itself never knows about backups.

>>> repo = Repository("file:///var/backups/pg")                            # doctest: +SKIP
>>> repo = Repository("s3://bucket/prefix", endpoint_url="http://...")     # doctest: +SKIP
>>> repo = Repository(fs=fsspec.filesystem("memory"), root="/r")           # doctest: +SKIP
>>> [m.id for m in repo.backups("base")], repo.get("latest").id            # doctest: +SKIP
"""

from __future__ import annotations

from .catalog import delete_backup, list_backups, resolve
from .manifest import BackupManifest
from .storage.repository import Storage


class Repository(Storage):
    """A place where backups and WAL live: a URL (plus fsspec storage options) or a filesystem and a root.

    See `Storage` for the arguments (storage options, ``retry_policy``, ``part_size``, ``encryption``,
    ``capabilities``) and the write guarantees on each filesystem; copies to another repository are
    `pgrecovery.copy_repository`.
    """

    __slots__ = ()

    def backups(self, kind: str | None = None) -> list[BackupManifest]:
        """Complete backups (those whose manifest is written), oldest first."""
        return list_backups(self, kind)

    def get(self, backup_id: str, kind: str | None = None) -> BackupManifest:
        """The manifest of a complete backup; ``"latest"`` is the newest (of ``kind`` when given)."""
        return resolve(self, backup_id, kind)

    def delete_backup(self, backup_id: str, *, with_dependents: bool = False) -> list[BackupManifest]:
        """Delete a complete backup: its manifest first (so it is never listed half-deleted), then its data.

        A base backup that incremental backups rely on is refused unless ``with_dependents`` (they go too).
        Returns the manifests of what was deleted.
        """
        return delete_backup(self, backup_id, with_dependents=with_dependents)


__all__ = ["Repository"]
