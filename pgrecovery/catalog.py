"""The catalog of backups in a repository: ids, listing, resolving ``latest``, deleting, cleaning leftovers.

Layout (documented in docs/repository.md)::

    backups/<id>/started.json     claimed first (no clobber): who is writing this backup
    backups/<id>/data/...         the backup's files
    backups/<id>/manifest.json    written last: its presence means "complete"
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs

from ._fsutil import process_alive
from .errors import (
    AlreadyExists,
    BackupError,
    BackupNotFound,
    ConfigurationError,
    EncryptionError,
    ManifestError,
    StorageError,
    TamperedObject,
    ToolFailed,
)
from .manifest import BackupKind, BackupManifest
from .storage.repository import Storage

log = logging.getLogger(__name__)

BACKUPS: Final = "backups"
MANIFEST: Final = "manifest.json"
STARTED: Final = "started.json"
STALE_AFTER: Final = timedelta(hours=24)


def manifest_key(backup_id: str) -> str:
    return f"{BACKUPS}/{backup_id}/{MANIFEST}"


def data_key(backup_id: str, name: str) -> str:
    return f"{BACKUPS}/{backup_id}/data/{name}"


def claim_backup_id(
    repo: Storage, kind: BackupKind, now: datetime | None = None, *, needs: Sequence[str] | None = None
) -> str:
    """A new id that sorts by time (``20261124T101500Z-logical``), claimed by a no-clobber marker.

    ``needs``: the backups this one will take files from (an incremental backup's parent). The marker records
    them, so that `expire` and `delete` leave them alone while this backup is in progress.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    base = f"{now:%Y%m%dT%H%M%SZ}-{kind}"
    info: dict[str, Any] = {"kind": kind, "host": socket.gethostname(), "pid": os.getpid()}
    info["started_at"] = now.isoformat()
    # unique to this call: a write whose answer was lost is confirmed by the bytes found stored, and two threads
    # of one process would otherwise write the same bytes, each taking the other's marker for its own
    info["claim"] = secrets.token_hex(8)
    if needs is not None:
        info["needs"] = list(needs)
    marker = json.dumps(info).encode()
    for n in range(1000):
        backup_id = base if n == 0 else f"{base}-{n}"
        try:
            repo.put_bytes(f"{BACKUPS}/{backup_id}/{STARTED}", marker)
        except AlreadyExists:
            continue
        return backup_id
    raise StorageError(f"cannot find a free backup id for {base} in {repo.display_url}")


def finish_backup(repo: Storage, manifest: BackupManifest) -> BackupManifest:
    """Write the manifest, which makes the backup complete. The started marker stays: it holds the id's claim.

    In an encrypted repository the manifest records which key (its id, never the key) encrypted the backup."""
    if repo.encryption is not None and manifest.encryption is None:
        manifest = attrs.evolve(manifest, encryption=repo.encryption_info())
    repo.put_bytes(manifest_key(manifest.id), manifest.to_json().encode())
    return manifest


@attrs.define
class BackupInProgress:
    """A backup being written: its claimed ``id``, and `finish` to write its manifest (see `writing_backup`)."""

    repo: Storage
    id: str
    kind: BackupKind
    needs: tuple[str, ...] = ()
    manifest: BackupManifest | None = None

    def finish(self, manifest: BackupManifest) -> BackupManifest:
        """Write ``manifest`` (this backup's), which makes the backup complete; return it as written.

        A backup that takes files from others (``needs``) is refused if one of them went meanwhile: an expire or
        delete that began before the claim was visible."""
        if manifest.id != self.id or manifest.kind != self.kind:
            raise ValueError(f"the manifest of {manifest.kind} backup {manifest.id} cannot finish {self.id}")
        missing = gone(self.repo, self.needs)
        if missing:
            raise BackupError(
                f"{self.kind} backup {self.id} takes files from backup {missing[0]}, which was deleted or expired "
                "while it ran: take it again (on another parent, or a full backup)"
            )
        self.manifest = finish_backup(self.repo, manifest)
        return self.manifest


@contextlib.contextmanager
def writing_backup(
    repo: Storage,
    kind: BackupKind,
    started: datetime | None = None,
    *,
    needs: Sequence[str] | None = None,
    title: str = "backup",
    source: str | None = None,
) -> Iterator[BackupInProgress]:
    """The skeleton every backup kind is taken in: claim an id, write the files, `finish` with the manifest.

    >>> with writing_backup(repo, "logical", started) as backup:            # doctest: +SKIP
    ...     files = write_files(backup.id)
    ...     manifest = backup.finish(BackupManifest(id=backup.id, kind="logical", files=files, ...))

    On any failure (or leaving the block without `finish`) the unfinished backup's files are removed; a failing
    PostgreSQL program (`ToolFailed`) becomes `BackupError` naming the backup (``"<title> <id> of <source>
    failed: ..."``). ``needs``: the backups this one takes files from (`claim_backup_id`).
    """
    backup_id = claim_backup_id(repo, kind, started, needs=needs)
    backup = BackupInProgress(repo=repo, id=backup_id, kind=kind, needs=tuple(needs or ()))
    try:
        yield backup
    except BaseException as e:
        abandon_backup(repo, backup_id)
        if isinstance(e, ToolFailed):
            of = f" of {source}" if source else ""
            raise BackupError(f"{title} {backup_id}{of} failed: {e}") from None
        raise
    if backup.manifest is None:
        abandon_backup(repo, backup_id)


def needs_of(m: BackupManifest) -> list[str]:
    """The other backups whose files ``m`` takes (an incremental backup's parent and the ones it takes from)."""
    if m.physical is None:
        return []
    wanted = {x.source for x in m.physical.members}
    if m.physical.parent is not None:
        wanted.add(m.physical.parent)
    wanted.discard(m.id)
    return sorted(wanted)


def gone(repo: Storage, backup_ids: Sequence[str]) -> list[str]:
    """Those of ``backup_ids`` that are no longer complete: manifest deleted, or marked by `expire` (which
    writes ``expired.json`` before it deletes the manifest)."""
    return [
        b
        for b in backup_ids
        if not repo.exists(manifest_key(b)) or repo.exists(f"{BACKUPS}/{b}/expired.json")  # retention.EXPIRED
    ]


def abandon_backup(repo: Storage, backup_id: str) -> None:
    """Best-effort removal of an unfinished backup's files (never raises: the caller is already failing)."""
    try:
        if not repo.exists(manifest_key(backup_id)):
            repo.delete_prefix(f"{BACKUPS}/{backup_id}")
    except Exception:  # noqa: BLE001 - leftovers are unlisted and `clean` removes them later
        log.warning("could not remove unfinished backup %s; `pgrecovery clean` will", backup_id)


def read_manifest(repo: Storage, backup_id: str) -> BackupManifest:
    try:
        text = repo.read_bytes(manifest_key(backup_id))
    except EncryptionError:
        raise  # no key, the wrong key, or a tampered manifest: say that, not "not found"
    except StorageError:
        raise BackupNotFound(
            f"no complete backup {backup_id!r} in {repo.display_url}: run `pgrecovery list` to see the ids"
        ) from None
    try:
        m = BackupManifest.from_json(text)
    except ManifestError as e:
        raise ManifestError(f"backup {backup_id}: {e}") from None
    if m.id != backup_id:  # moved or swapped: its files are another backup's, never silently use them
        raise ManifestError(
            f"{manifest_key(backup_id)} is the manifest of backup {m.id}, not of {backup_id}: it was moved or "
            "swapped; put it back under its own backup (or delete the backup)"
        )
    return m


def list_backups(repo: Storage, kind: str | None = None) -> list[BackupManifest]:
    """Complete backups, oldest first. A manifest that cannot be read is skipped with a warning."""
    out = []
    for backup_id in repo.children(BACKUPS):
        if not repo.exists(manifest_key(backup_id)):
            continue
        try:
            m = read_manifest(repo, backup_id)
        except (ManifestError, TamperedObject) as e:
            log.warning("skipping backup %s: %s", backup_id, e)
            continue
        if kind is None or m.kind == kind:
            out.append(m)
    return sorted(out, key=lambda m: (m.started_at, m.id))


def resolve(repo: Storage, backup_id: str, kind: str | None = None) -> BackupManifest:
    """The manifest for an id, or for ``latest`` (the newest complete backup, of ``kind`` when given)."""
    if backup_id == "latest":
        found = list_backups(repo, kind)
        if not found:
            what = f"{kind} backup" if kind else "backup"
            raise BackupNotFound(f"no complete {what} in {repo.display_url} yet: take one first")
        return found[-1]
    if "/" in backup_id or backup_id in ("", ".", ".."):
        raise BackupNotFound(f"{backup_id!r} is not a backup id: run `pgrecovery list` to see the ids")
    m = read_manifest(repo, backup_id)
    if kind is not None and m.kind != kind:
        raise BackupNotFound(f"backup {backup_id} is a {m.kind} backup, not a {kind} backup")
    return m


def dependents(repo: Storage, backup_id: str) -> list[BackupManifest]:
    """Complete backups that need ``backup_id``'s files (incremental backups built on it), newest first."""
    needed, out = {backup_id}, []
    # transitively (a block-level incremental needs every earlier link of its chain), in one pass: a backup only
    # ever needs backups that started before it
    for m in sorted(list_backups(repo, "base"), key=lambda m: m.started_at):
        if m.physical is not None and m.id != backup_id and needed.intersection(needs_of(m)):
            needed.add(m.id)
            out.append(m)
    return out[::-1]


def delete_backup(repo: Storage, backup_id: str, *, with_dependents: bool = False) -> list[BackupManifest]:
    """Delete a backup (manifest first). A backup that incremental backups rely on is refused unless
    ``with_dependents``, which deletes those first. Returns what was deleted."""
    m = resolve(repo, backup_id)
    needing = dependents(repo, m.id)
    if needing and not with_dependents:
        raise ConfigurationError(
            f"backup {m.id} holds files that incremental backup(s) {', '.join(x.id for x in needing)} rely on: "
            "delete those first, or delete with their dependents (with_dependents=True, CLI --with-dependents)"
        )
    for busy in leftovers(repo):
        used = [v.id for v in [*needing, m] if busy.reason == "in progress" and v.id in (busy.needs or ())]
        if used:
            raise ConfigurationError(
                f"backup {used[0]} holds files that backup {busy.id}, in progress (pid {busy.pid} on {busy.host} "
                f"since {busy.started_at.isoformat() if busy.started_at else '?'}), takes: wait until it has finished"
            )
    deleted = []
    for victim in [*needing, m]:
        repo.delete(manifest_key(victim.id))
        repo.delete_prefix(f"{BACKUPS}/{victim.id}")
        deleted.append(victim)
    return deleted


@attrs.frozen(kw_only=True)
class Leftover:
    """A backup directory without a manifest: a backup in progress, or one that was interrupted."""

    id: str
    host: str | None
    pid: int | None
    started_at: datetime | None
    reason: str
    needs: tuple[str, ...] | None = None  # backups it takes files from (None: not recorded)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "reason": self.reason,
        }


def leftovers(repo: Storage) -> list[Leftover]:
    """Backup directories that have no manifest, with what is known about who wrote them."""
    out = []
    for backup_id in repo.children(BACKUPS):
        if repo.exists(manifest_key(backup_id)):
            continue
        host = pid = started = needs = None
        try:
            info = json.loads(repo.read_bytes(f"{BACKUPS}/{backup_id}/{STARTED}"))
            host, pid = info.get("host"), info.get("pid")
            if isinstance(info.get("needs"), list):
                needs = tuple(str(x) for x in info["needs"])
            started = datetime.fromisoformat(info["started_at"])
        except (StorageError, ValueError, KeyError, TypeError):
            pass
        why = _why(host, pid, started)
        out.append(Leftover(id=backup_id, host=host, pid=pid, started_at=started, reason=why, needs=needs))
    return out


def _why(host: str | None, pid: int | None, started: datetime | None) -> str:
    if host is None or pid is None or started is None:
        return "interrupted (no start marker)"
    if host == socket.gethostname() and not process_alive(pid):
        return "interrupted (its process is gone)"
    if datetime.now(UTC) - started > STALE_AFTER:
        return "stale (started over 24 hours ago)"
    return "in progress"


def clean_leftovers(repo: Storage, *, include_in_progress: bool = False, dry_run: bool = False) -> list[Leftover]:
    """Delete interrupted backups' files; those that look in progress are kept unless asked. ``dry_run``: only
    the list of what would be deleted."""
    removed = []
    for item in leftovers(repo):
        if item.reason == "in progress" and not include_in_progress:
            continue
        if not dry_run:
            repo.delete_prefix(f"{BACKUPS}/{item.id}")
        removed.append(item)
    return removed
