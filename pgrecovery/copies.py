"""Copies of a repository (the 3-2-1 rule): `copy_repository` and `check_321`.

A copy brings another repository up to date with this one: WAL first (so that a backup never arrives without the
WAL it needs to become consistent), then each complete backup, its data before its manifest. Every object is
checked against the checksum the source recorded for it (a backup file's sha256 in its manifest, a WAL file's
sha256 in its object name) before it is committed on the other side, so a corrupt source object is never spread.
Writes are atomic and never overwrite, so a copy can be interrupted at any point and rerun from cron: what
arrived complete is kept, what did not is redone, and a backup is listed on the other side only once its manifest
is there.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import attrs

from .catalog import BACKUPS, MANIFEST, STARTED, gone, manifest_key, needs_of
from .errors import AlreadyExists, ChecksumMismatch, ConfigurationError, StorageError
from .progress import Meter, ProgressCallback
from .storage import PROVIDER_EXTRAS as _PROVIDERS
from .wal._layout import WAL_PREFIX, object_at, verified_chunks

if TYPE_CHECKING:
    from .manifest import BackupManifest
    from .repository import Repository

log = logging.getLogger(__name__)

WAL: Final = WAL_PREFIX
CHUNK: Final = 1 << 20


@attrs.frozen(kw_only=True)
class CopyResult:
    """What `copy_repository` did.

    ``conflicts`` lists objects that differ on the two sides (never overwritten); ``corrupt`` lists source objects
    that do not match their recorded checksum (not copied; the backups holding them were not completed there).
    """

    source: str
    target: str
    backups_copied: tuple[str, ...]
    backups_present: tuple[str, ...]
    wal_copied: int
    wal_present: int
    bytes_copied: int
    seconds: float
    conflicts: tuple[str, ...] = ()
    corrupt: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.conflicts and not self.corrupt

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "ok": self.ok,
            "backups_copied": list(self.backups_copied),
            "backups_present": list(self.backups_present),
            "wal_copied": self.wal_copied,
            "wal_present": self.wal_present,
            "bytes_copied": self.bytes_copied,
            "seconds": round(self.seconds, 3),
            "conflicts": list(self.conflicts),
            "corrupt": list(self.corrupt),
        }


def copy_repository(
    source: Repository,
    target: Repository,
    *,
    workers: int = 4,
    backups: Iterable[str] | None = None,
    wal: bool = True,
    progress: ProgressCallback | None = None,
) -> CopyResult:
    """Copy the backups and WAL that ``target`` lacks from ``source``; see the module's docstring.

    ``backups`` limits the copy to these ids (default: every complete backup); ``wal=False`` skips WAL.
    Objects already on the other side are kept when their size matches what the source recorded, and reported
    in ``conflicts`` otherwise.
    """
    if workers < 1:
        raise ConfigurationError("workers must be at least 1")
    if _same_place(source, target):
        raise ConfigurationError(f"cannot copy {source.display_url} onto itself: give another repository")
    started = time.monotonic()
    job = _Copy(source, target, workers, Meter("copy", progress))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pgrecovery-copy") as pool:
        job.pool = pool
        if wal:
            job.copy_wal()
        listed = source.backups()
        wanted = _with_needs(set(backups), listed) if backups is not None else None
        for m in listed:  # oldest first: what an incremental backup takes files from arrives before it
            if wanted is None or m.id in wanted:
                job.copy_backup(m)
    job.meter.finish()
    return CopyResult(
        source=source.display_url,
        target=target.display_url,
        backups_copied=tuple(job.backups_copied),
        backups_present=tuple(job.backups_present),
        wal_copied=job.wal_copied,
        wal_present=job.wal_present,
        bytes_copied=job.meter.done,
        seconds=time.monotonic() - started,
        conflicts=tuple(job.conflicts),
        corrupt=tuple(job.corrupt),
    )


class _Copy:
    pool: ThreadPoolExecutor

    def __init__(self, source: Repository, target: Repository, workers: int, meter: Meter) -> None:
        self.source, self.target, self.workers, self.meter = source, target, workers, meter
        self.backups_copied: list[str] = []
        self.backups_present: list[str] = []
        self.wal_copied = self.wal_present = 0
        self.conflicts: list[str] = []
        self.corrupt: list[str] = []
        self._lock = threading.Lock()

    # -- WAL -------------------------------------------------------------------------------------------------
    def copy_wal(self) -> None:
        there = set(self.target.list_keys(WAL))
        todo = []
        for key in self.source.list_keys(WAL):
            if key in there:
                self.wal_present += 1
                continue
            todo.append(key)
        done = list(self.pool.map(self._copy_wal_object, todo))
        self.wal_copied += sum(done)

    def _copy_wal_object(self, key: str) -> bool:
        obj = object_at(key)
        if obj is None:  # not one of ours: copied as it is
            return self._copy_object(key, expect_sha256=None, expect_size=None)

        def check(stored: bytes) -> None:
            where, then = (
                f" in {self.source.display_url}",
                " there and was not copied (run `pgrecovery wal-verify` on the source)",
            )
            for _ in verified_chunks(io.BytesIO(stored), obj, where=where, then=then):
                pass

        return self._copy_object(key, expect_sha256=None, expect_size=None, check_whole=check)

    # -- backups ---------------------------------------------------------------------------------------------
    def copy_backup(self, m: BackupManifest) -> None:
        manifest_bytes = self.source.read_bytes(manifest_key(m.id))
        if self.target.exists(manifest_key(m.id)):
            if self.target.read_bytes(manifest_key(m.id)) == manifest_bytes:
                self.backups_present.append(m.id)
            else:
                self._conflict(f"{manifest_key(m.id)}: a different backup with this id is already there")
            return
        if not self._claim(m):
            return
        recorded = {f"{BACKUPS}/{m.id}/{f.path}": f for f in m.files}
        others = [
            k
            for k in self.source.list_keys(f"{BACKUPS}/{m.id}")
            if k not in recorded and k.rsplit("/", 1)[-1] not in (MANIFEST, STARTED)
        ]
        jobs: list[tuple[str, str | None, int | None]] = [(k, f.sha256, f.size) for k, f in recorded.items()]
        jobs += [(k, None, None) for k in others]
        if not all(list(self.pool.map(lambda j: self._copy_object(*j), jobs))):
            log.warning("backup %s not completed in %s (see the errors above)", m.id, self.target.display_url)
            return
        missing = gone(self.target, needs_of(m))
        if missing:
            self._conflict(f"{manifest_key(m.id)}: backup {missing[0]}, which it takes files from, is incomplete there")
            return
        try:
            self.target.put_bytes(manifest_key(m.id), manifest_bytes)
        except AlreadyExists:
            if self.target.read_bytes(manifest_key(m.id)) == manifest_bytes:  # another copy finished it first
                self.backups_present.append(m.id)
                return
            self._conflict(f"{manifest_key(m.id)}: appeared in the target during the copy")
            return
        self.backups_copied.append(m.id)
        log.info("copied backup %s to %s", m.id, self.target.display_url)

    def _claim(self, m: BackupManifest) -> bool:
        """A start marker on the other side, so that `list --incomplete` / `clean` there see a copy in progress."""
        key = f"{BACKUPS}/{m.id}/{STARTED}"
        if self.target.exists(key):
            try:
                info = json.loads(self.target.read_bytes(key))
            except (StorageError, ValueError):
                info = {}
            if "copy_of" not in info:
                # Somebody else's backup with the same id (in progress there): keep out of its way.
                self._conflict(f"{key}: the target has its own backup {m.id} in progress")
                return False
        marker = {
            "kind": m.kind,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": datetime.now(UTC).isoformat(),
            "copy_of": self.source.display_url,
            "needs": needs_of(m),  # expire and delete there keep these while the copy runs
        }
        self.target.put_bytes(key, json.dumps(marker).encode(), overwrite=True)
        return True

    # -- one object ------------------------------------------------------------------------------------------
    def _copy_object(
        self,
        key: str,
        expect_sha256: str | None,
        expect_size: int | None,
        check_whole: Callable[[bytes], None] | None = None,
    ) -> bool:
        """Copy one object unless the target has it; False when it could not be (reported, not raised)."""
        if self.target.exists(key):
            if expect_size is None or self.target.size(key) == expect_size:
                return True
            self._conflict(f"{key}: {self.target.size(key)} bytes in the target, {expect_size} recorded")
            return False
        h, size = hashlib.sha256(), 0
        held: list[bytes] | None = [] if check_whole is not None else None
        try:
            writer = self.target.writer(key)
        except AlreadyExists:  # another copier wrote it since the check above; objects never change
            return True
        try:
            with self.source.open(key) as f:
                while data := f.read(CHUNK):
                    h.update(data)
                    size += len(data)
                    if held is not None:
                        held.append(data)
                    writer.write(data)
                    with self._lock:
                        self.meter.add(len(data))
            if expect_sha256 is not None and (h.hexdigest() != expect_sha256 or size != expect_size):
                raise ChecksumMismatch(
                    f"{key} in {self.source.display_url} does not match its manifest (sha256/size): it is corrupt "
                    "there and was not copied (run `pgrecovery verify` on the source)"
                )
            if held is not None and check_whole is not None:
                check_whole(b"".join(held))
        except ChecksumMismatch as e:
            writer.abort()
            with self._lock:
                self.corrupt.append(key)
            log.error("%s", e)
            return False
        except BaseException:
            writer.abort()
            raise
        try:
            stored = writer.commit()
        except AlreadyExists:
            return True  # another copier got there first; objects are immutable
        if stored.sha256 != h.hexdigest():  # what the target hashed is not what we read
            raise ChecksumMismatch(f"{key}: the bytes written to {self.target.display_url} differ from the source")
        return True

    def _conflict(self, what: str) -> None:
        with self._lock:
            self.conflicts.append(what)
        log.error("copy conflict: %s (left as it is)", what)


def _with_needs(ids: set[str], listed: Sequence[BackupManifest]) -> set[str]:
    """``ids`` and, transitively, every backup they take files from."""
    by_id = {m.id: m for m in listed}
    todo, out = list(ids), set(ids)
    while todo:
        m = by_id.get(todo.pop())
        for dep in needs_of(m) if m is not None else []:
            if dep not in out:
                out.add(dep)
                todo.append(dep)
    return out


def _same_place(a: Repository, b: Repository) -> bool:
    return a.protocol == b.protocol and a.root.rstrip("/") == b.root.rstrip("/") and _endpoint(a) == _endpoint(b)


def _endpoint(repo: Repository) -> str:
    storage_options = getattr(repo.fs, "storage_options", {}) or {}
    return str(storage_options.get("endpoint_url") or storage_options.get("account_name") or "")


# -- the 3-2-1 rule ----------------------------------------------------------------------------------------------

# The kind of storage behind each protocol: local disk, memory, or the provider (whose name is also its extra's).
_KIND: Final[dict[str, str]] = {"file": "disk", "local": "disk", "memory": "memory", **_PROVIDERS}
PRODUCTION_SITE: Final = "production"


@attrs.frozen(kw_only=True)
class CopyStatus:
    """One repository in a 3-2-1 check: its storage kind, its site, and whether it holds the data."""

    repository: str
    kind: str
    site: str
    offsite: bool
    newest_backup: str | None
    holds_data: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class RuleReport:
    """Whether the 3-2-1 rule holds: ``copies`` counts production (when counted) and each repository that holds
    the newest complete backup of the primary repository."""

    holds: bool
    copies: int
    kinds: tuple[str, ...]
    offsite: int
    reference_backup: str | None
    repositories: tuple[CopyStatus, ...]
    missing: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "holds": self.holds,
            "copies": self.copies,
            "kinds": list(self.kinds),
            "offsite": self.offsite,
            "reference_backup": self.reference_backup,
            "repositories": [r.to_dict() for r in self.repositories],
            "missing": list(self.missing),
        }


def storage_kind(repo: Repository) -> str:
    """The kind of storage a repository is on (``disk``, ``s3``, ``gcs``, ``azure``, ...)."""
    return _KIND.get(repo.protocol, repo.protocol)


def default_site(repo: Repository) -> str:
    """Where a repository is, unless configured: local disk is at the production site; an object store is at
    its provider and bucket (and endpoint, when one is given)."""
    kind = storage_kind(repo)
    if kind in ("disk", "memory"):
        return PRODUCTION_SITE
    bucket = repo.root.strip("/").split("/", 1)[0]
    endpoint = _endpoint(repo)
    where = f"{kind}:{bucket}"
    if endpoint:
        host = urlsplit(endpoint).netloc if "://" in endpoint else endpoint
        where += f"@{host}"
    return where


def check_321(
    repositories: Sequence[Repository],
    *,
    sites: Mapping[str, str] | None = None,
    count_production: bool = True,
    production_kind: str = "disk",
    production_site: str = PRODUCTION_SITE,
) -> RuleReport:
    """Check the 3-2-1 rule over ``repositories`` (the first is the primary one, that backups are taken into).

    - 3 copies of the data: production itself (unless ``count_production=False``) plus every repository that
      holds the primary repository's newest complete backup, identical (its manifest byte for byte);
    - 2 kinds of storage among those copies (production counts as ``production_kind``);
    - 1 copy offsite: at a site other than production's. ``sites`` maps a repository's display URL to its
      site name; unconfigured, local disk is at the production site and an object store at its provider and
      bucket (see `default_site`).
    """
    if not repositories:
        raise ConfigurationError("check_321 needs at least one repository (the primary one first)")
    sites = dict(sites or {})
    primary = repositories[0]
    newest = primary.backups()
    reference = newest[-1] if newest else None
    reference_bytes = primary.read_bytes(manifest_key(reference.id)) if reference else None
    statuses = []
    for repo in repositories:
        site = sites.get(repo.display_url) or default_site(repo)
        holds, note, last = False, "", None
        try:
            found = repo.backups()
            last = found[-1].id if found else None
            if reference is None:
                note = "the primary repository has no complete backup"
            elif repo.exists(manifest_key(reference.id)):
                holds = repo.read_bytes(manifest_key(reference.id)) == reference_bytes
                note = "" if holds else f"backup {reference.id} differs from the primary's"
            else:
                note = f"lacks backup {reference.id}: run `pgrecovery copy --to {repo.display_url}`"
        except StorageError as e:
            note = f"unreachable: {e}"
        statuses.append(
            CopyStatus(
                repository=repo.display_url,
                kind=storage_kind(repo),
                site=site,
                offsite=site != production_site,
                newest_backup=last,
                holds_data=holds,
                note=note,
            )
        )
    holding = [s for s in statuses if s.holds_data]
    copies = len(holding) + (1 if count_production else 0)
    kinds = sorted({s.kind for s in holding} | ({production_kind} if count_production else set()))
    offsite = sum(1 for s in holding if s.offsite)
    missing = []
    if reference is None:
        missing.append(f"no complete backup in {primary.display_url}: take one first")
    if copies < 3:
        missing.append(f"{copies} cop{'y' if copies == 1 else 'ies'} of the data, 3 needed: add a repository copy")
    if len(kinds) < 2:
        missing.append(f"only one kind of storage ({', '.join(kinds) or 'none'}): keep a copy on another kind")
    if offsite < 1:
        missing.append("no copy offsite: copy to a repository at another site (another provider, bucket or region)")
    return RuleReport(
        holds=not missing,
        copies=copies,
        kinds=tuple(kinds),
        offsite=offsite,
        reference_backup=reference.id if reference else None,
        repositories=tuple(statuses),
        missing=tuple(missing),
    )
