"""`WalArchiver`: WAL archiving (archive_command), restore (restore_command) and cleanup of the archive.

Archived objects are named by the sha256 of their raw content (`pgrecovery.wal._layout`), so a push needs one
existence check: the same name already stored means identical content (success); another digest for the same file
name means different content (`WalConflict`, never an overwrite). A fetch finds the object through the archive's
index (`WalIndex`, which `WalArchiver` extends) and verifies the digest of what it delivers.

>>> archiver = WalArchiver(Repository("s3://backups/prod"))             # doctest: +SKIP
>>> archiver.push("pg_wal/000000010000000000000003")                    # doctest: +SKIP
>>> archiver.fetch("000000010000000000000003", "pg_wal/RECOVERYXLOG")   # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .. import _fsutil, _spool, _walnames
from .._walnames import DEFAULT_SEGMENT_SIZE
from ..codec import Codec, check_codec, check_level, compressor
from ..errors import AlreadyExists, ConfigurationError, StorageError
from . import _prefetch
from ._layout import (
    CHUNK,
    WAL_PREFIX,
    WalObject,
    object_key,
    parse_object_name,
    read_and_pack,
    timeline_dir,
    verified_chunks,
)
from .commands import archive_command, restore_command
from .index import WalIndex, WalVerifyReport
from .restore_points import RestorePoint, point_facts, write_record
from .server import ArchiverStatus, archiver_status, create_restore_point

if TYPE_CHECKING:
    from ..repository import Repository

log = logging.getLogger(__package__)  # one logger per area, whichever module of it logs


class WalConflict(StorageError):
    """A WAL file of that name is already archived with different content; it was not overwritten."""


# -- results ---------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PushResult:
    """What `WalArchiver.push` did with one file.

    ``outcome``: ``stored`` (uploaded now), ``already`` (identical content was in the archive) or ``spool``
    (an earlier archive-ahead push recorded this exact file; nothing was read). ``ahead`` names the other files
    archived ahead in the same call.
    """

    name: str
    sha256: str
    outcome: Literal["stored", "already", "spool"]
    key: str | None = None
    size: int | None = None
    stored_size: int | None = None
    ahead: tuple[str, ...] = ()


# -- the archiver ----------------------------------------------------------------------------------------------


class WalArchiver(WalIndex):
    """Push WAL files to a repository, fetch them back, and answer questions about the archive's continuity.

    ``spool_dir``: where archive-ahead markers and prefetched segments live (default: ``pgrecovery_spool``
    beside ``pg_wal``, derived from each path). ``parallel``: threads for archive-ahead and prefetch.
    ``prefetch``: how many segments `fetch` downloads ahead in a background process (0 disables it).
    """

    def __init__(
        self,
        repo: Repository | str,
        *,
        spool_dir: str | os.PathLike[str] | None = None,
        compression: str = "zstd",
        level: int | None = 1,
        parallel: int = 4,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        prefetch: int = 8,
    ) -> None:
        if isinstance(repo, str):
            from ..repository import Repository

            repo = Repository(repo)
        self.spool_dir = os.path.abspath(spool_dir) if spool_dir is not None else None
        self.compression: Codec = check_codec(compression)
        self.level = check_level(self.compression, level)
        if parallel < 1:
            raise ConfigurationError(f"parallel must be at least 1, not {parallel}")
        self.parallel = parallel
        super().__init__(repo, segment_size=segment_size)
        self.repo: Repository = repo
        if prefetch < 0:
            raise ConfigurationError(f"prefetch must be 0 or more, not {prefetch}")
        self.prefetch = prefetch

    @property
    def _tag(self) -> str:
        return _spool.repo_tag(self.repo.url)

    def spool_for(self, wal_path: str | os.PathLike[str]) -> str:
        """The spool directory used for a file in (or destined for) ``wal_path``'s directory."""
        return self.spool_dir or _spool.default_spool(wal_path)

    # -- push ------------------------------------------------------------------------------------------------
    def push(self, path: str | os.PathLike[str]) -> PushResult:
        """Archive one WAL file (``%p``: relative to the data directory, the current directory, or absolute).

        Returns once the file is durable in the repository. Identical content already archived is a success;
        different content under the same name raises `WalConflict`. Files waiting in
        ``pg_wal/archive_status/*.ready`` are archived ahead in parallel and remembered in the spool, so that the
        calls PostgreSQL makes for them next return at once.
        """
        abspath = os.path.abspath(path)
        name = os.path.basename(abspath)
        if not _walnames.is_wal_file(name):
            raise ConfigurationError(f"{name!r} is not a WAL file name: wal-push expects %p (e.g. pg_wal/<segment>)")
        if not os.path.isfile(abspath):
            raise ConfigurationError(f"cannot archive {path}: no such file (run from the data directory, or pass %p)")
        spool = self.spool_for(abspath)
        digest = _spool.pushed_already(abspath, spool, self._tag)
        if digest:
            return PushResult(name=name, sha256=digest, outcome="spool")
        wal_dir = os.path.dirname(abspath)
        ahead = [
            n
            for n in _spool.ready_files(wal_dir)
            if n != name and not _spool.pushed_already(os.path.join(wal_dir, n), spool, self._tag)
        ][: max(0, 2 * self.parallel - 1)]
        listings = _Listings(self)  # one listing per timeline for the whole batch, and only if needed
        if not ahead or self.parallel == 1:
            result = self._push_one(abspath, spool, listings)
            done: list[str] = []
        else:
            with ThreadPoolExecutor(self.parallel, thread_name_prefix="wal-push") as pool:
                main = pool.submit(self._push_one, abspath, spool, listings)
                others = {n: pool.submit(self._push_one, os.path.join(wal_dir, n), spool, listings) for n in ahead}
                done = [n for n, f in others.items() if _prefetch.succeeded(f, n)]
                result = main.result()
        with contextlib.suppress(OSError):
            _spool.sweep_markers(spool, wal_dir)
        return attrs.evolve(result, ahead=tuple(done))

    def _push_one(
        self, abspath: str, spool: str, listings: _Listings, ahead: Callable[[bytearray, int], Any] | None = None
    ) -> PushResult:
        """Push one file (``ahead``: work done on it while it was written, see `read_and_pack`)."""
        name = os.path.basename(abspath)
        try:
            st, size, digest, packed = read_and_pack(abspath, self.compression, self.level, ahead)
        except OSError as e:
            raise StorageError(f"cannot read {abspath}: {e.strerror or e}") from None
        key = object_key(name, digest, self.compression)
        outcome: Literal["stored", "already"] = "already"
        stored_size = None
        # a worker's listing is read once and kept: where the store refuses to overwrite, the write alone suffices
        trusted = listings.kept and (self.repo.capabilities.conditional or self.repo.capabilities.local)
        if trusted or not self.repo.exists(key):
            existing = listings.objects(name)
            same = [o for o in existing if o.sha256 == digest]
            if same:
                key = same[0].key
            elif existing:
                raise WalConflict(
                    f"{name} is already archived with different content ({existing[0].key}, sha256 "
                    f"{existing[0].sha256[:12]}…; this file's is {digest[:12]}…): refusing to overwrite it. "
                    "Is another cluster archiving into the same repository? Give each cluster its own repository."
                )
            else:
                try:
                    stored_size = self._upload(abspath, key, digest) if packed is None else self._store(key, packed)
                    outcome = "stored"
                except AlreadyExists:  # a concurrent push of the same content won the race
                    pass
                listings.note(WalObject(name=name, key=key, sha256=digest, codec=self.compression))
        with contextlib.suppress(OSError):
            now = os.stat(abspath)
            if (now.st_size, now.st_mtime_ns, now.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino):
                _spool.write_marker(spool, abspath, st, digest, self._tag)
        return PushResult(name=name, sha256=digest, outcome=outcome, key=key, size=size, stored_size=stored_size)

    def _store(self, key: str, packed: bytes) -> int:
        writer = self.repo.writer(key, hashed=False)  # named by its raw content's sha256, checked at every read
        try:
            writer.write(packed)
        except BaseException:
            writer.abort()
            raise
        return self._commit(writer, key)

    def _upload(self, abspath: str, key: str, digest: str) -> int:
        writer = self.repo.writer(key)
        try:
            comp = compressor(self.compression, self.level, threads=1)
            h = hashlib.sha256()
            with open(abspath, "rb", buffering=0) as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    writer.write(comp.compress(chunk))
            writer.write(comp.flush())
            if h.hexdigest() != digest:
                raise StorageError(f"{abspath} changed while it was being archived; nothing was stored")
        except OSError as e:
            writer.abort()
            raise StorageError(f"cannot archive {abspath} as {key}: {e.strerror or e}") from None
        except BaseException:
            writer.abort()
            raise
        return self._commit(writer, key)

    def _commit(self, writer: Any, key: str) -> int:
        try:
            return int(writer.commit().size)
        except AlreadyExists:
            raise
        except OSError as e:
            raise StorageError(f"cannot store {key} in {self.repo.display_url}: {e}") from None

    # -- fetch -----------------------------------------------------------------------------------------------
    def fetch(self, name: str, dest: str | os.PathLike[str], *, prefetch: bool = True) -> bool:
        """Deliver archived file ``name`` (``%f``) as ``dest`` (``%p``); False only when it is not archived.

        The file appears under ``dest`` complete and verified (temp file beside it, fsync, rename), or not at all:
        a digest mismatch raises `ChecksumMismatch`. A segment prefetched into the spool is handed over by rename.
        Afterwards a detached process downloads the next ``prefetch`` segments into the spool (at most one runs).
        """
        if not _walnames.is_wal_file(name):
            raise ConfigurationError(f"{name!r} is not a WAL file name: wal-fetch expects %f then %p")
        dest_abs = os.path.abspath(dest)
        spool = self.spool_for(dest_abs)
        with contextlib.suppress(OSError):
            _spool.remove_stale_temps(dest_abs)  # left by a delivery that was killed
        taken = False
        with contextlib.suppress(OSError):
            taken = _spool.take_prefetched(name, dest_abs, spool, self._tag)
        if not taken:
            obj = self.find(name)
            if obj is None:
                if not self.timelines():
                    raise StorageError(
                        f"{self.repo.display_url} holds no WAL archive (no {WAL_PREFIX}/ directory): "
                        "check the repository URL in restore_command"
                    )
                return False
            self._download(obj, dest_abs)
        if prefetch:
            self._start_prefetch(name, spool)
        return True

    def _download(
        self,
        obj: WalObject,
        dest: str,
        *,
        sync_dir: bool = True,
        sync_file: bool = True,
        before_publish: Callable[[str], object] | None = None,
    ) -> None:
        """Deliver ``obj`` as ``dest`` verified: temp file beside it, fsync, rename (then the directory's fsync,
        unless ``sync_dir`` is off: the prefetch queue is a cache; ``sync_file`` off skips the file's fsync too,
        for a queue that a reboot invalidates). ``before_publish``: given the verified file's temporary path
        before it is renamed (the prefetcher stages it in pg_wal first)."""
        atomic = _fsutil.atomic_file(dest, mode=0o600, sync=sync_dir, before_publish=before_publish)
        try:
            with self.repo.open(obj.key) as raw, atomic as out:
                for chunk in verified_chunks(raw, obj, then="; nothing was delivered"):
                    out.write(chunk)
                if sync_file and not sync_dir:  # only the queue's directory entry may be lost
                    out.flush()
                    os.fsync(out.fileno())
        except OSError as e:
            raise StorageError(f"cannot deliver {obj.name} to {dest}: {e.strerror or e}") from None

    def _start_prefetch(self, name: str, spool: str) -> bool:
        if self.prefetch <= 0 or not _walnames.is_segment(name) or self.repo.protocol == "memory":
            return False
        options = dict(getattr(self.repo.fs, "storage_options", {}) or {})
        try:
            json.dumps(options)
        except (TypeError, ValueError):
            log.info("no prefetch: the storage options cannot be passed to another process")
            return False
        try:
            return _spool.after_fetch(
                name,
                spool,
                repo_url=self.repo.url,
                storage_options=options,
                count=self.prefetch,
                parallel=self.parallel,
                segment_size=self.segment_size,
            )
        except OSError as e:
            log.info("no prefetch into %s: %s", spool, e)
            return False

    def run_prefetch(
        self,
        after: str,
        spool_dir: str | os.PathLike[str] | None = None,
        *,
        lock_fd: int | None = None,
        stop: Callable[[], bool] | None = None,
        progress: _prefetch.FillProgress | None = None,
        restoring: bool = False,
    ) -> list[str]:
        """Download the ``prefetch`` segments following ``after`` into the spool, verified (the wal-prefetch job).

        Keeps working ahead of the newest segment restore_command took or asked for, and returns (with the names
        it downloaded) when the archive has no next segment, or recovery took nothing for a while (`_prefetch`),
        or ``stop()`` is true. Returns at once if another prefetch process holds the spool's lock. ``lock_fd``:
        the lock, already taken by the process that started this one (wal-fetch). ``progress``: kept up to date
        with the downloads under way (the WAL worker waits for one rather than download the segment twice).
        ``restoring``: started during the restore of the data directory (`pgrecovery.recovery.run.EarlyWorker`):
        while it runs, only the first segments, staged once recovery is configured.
        """
        spool = os.path.abspath(spool_dir) if spool_dir is not None else self.spool_dir
        if spool is None:
            raise ConfigurationError("run_prefetch needs a spool directory")
        if not _walnames.is_segment(after):
            raise ConfigurationError(f"{after!r} is not a segment name")
        with _spool.spool_lock(spool, fd=lock_fd) as got:
            if not got:
                return []
            sync = _spool.set_source(spool, self._tag)
            return _prefetch.fill(self, after, spool, stop=stop, sync=sync, progress=progress, restoring=restoring)

    def wait_for_prefetch(self, spool_dir: str | os.PathLike[str], timeout: float = 60) -> bool:
        """Wait until no prefetch process runs on ``spool_dir``; False if one still runs after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while _spool.prefetch_running(os.fspath(spool_dir)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def clear_prefetched(self, spool_dir: str | os.PathLike[str], timeout: float = 60) -> list[str]:
        """After recovery: wait for a running prefetcher, then remove every queued segment; returns their names."""
        self.wait_for_prefetch(spool_dir, timeout)
        return [n for n in _spool.clear_prefetched(os.fspath(spool_dir)) if _walnames.is_wal_file(n)]

    # -- cleanup ---------------------------------------------------------------------------------------------
    def cleanup(
        self,
        keep_from_segment: str | None = None,
        timeline: int | None = None,
        *,
        dry_run: bool = False,
        force: bool = False,
    ) -> list[str]:
        """Delete archived segments older than ``keep_from_segment`` on its timeline and older ones.

        Like pg_archivecleanup: ``.partial`` and ``.backup`` files of those older segments go too; history files are
        never deleted. The default ``keep_from_segment`` is the first segment the oldest base backup needs; a later
        one is refused unless ``force`` (it would break recovery from that backup). Returns the removed (with
        ``dry_run``: the removable) file names, sorted.
        """
        oldest = next((m for m in self.repo.backups("base") if m.physical is not None), None)
        if keep_from_segment is None:
            if oldest is None or oldest.physical is None:
                raise ConfigurationError("no base backup in the repository: give the oldest segment to keep")
            keep_from_segment = oldest.physical.start_wal
        if not _walnames.is_segment(keep_from_segment):
            raise ConfigurationError(f"{keep_from_segment!r} is not a segment name (24 hex digits)")
        if oldest is not None and oldest.physical is not None and not force:
            first = oldest.physical.start_wal
            if _walnames.segment_number(keep_from_segment, self.segment_size) > _walnames.segment_number(
                first, self.segment_size
            ):
                raise ConfigurationError(
                    f"keeping only from {keep_from_segment} would delete WAL that base backup {oldest.id} needs "
                    f"(from {first}): delete that backup first, or force"
                )
        limit = timeline if timeline is not None else _walnames.timeline_of(keep_from_segment)
        keep_no = _walnames.segment_number(keep_from_segment, self.segment_size)
        removed = []
        for tli in self.timelines():
            if tli > limit:
                continue
            for name, objs in self.index(tli).items():
                if _walnames.is_history(name):
                    continue
                if _walnames.segment_number(name[:24], self.segment_size) >= keep_no:
                    continue
                if not dry_run:
                    for obj in objs:
                        self.repo.delete(obj.key)
                removed.append(name)
        return sorted(removed)

    # -- the server's side -----------------------------------------------------------------------------------
    def status(self, conninfo: str = "", pgdata: str | os.PathLike[str] | None = None) -> ArchiverStatus:
        """The server's archiver statistics (see `archiver_status`)."""
        return archiver_status(conninfo, pgdata)

    def create_restore_point(self, conninfo: str, name: str) -> str:
        """``pg_create_restore_point(name)`` (see `create_restore_point`), recorded in the repository
        (``wal/restore_points/``: name, LSN, timeline, time, system identifier) so that a recovery to the name
        finds its position without reading WAL; returns its LSN."""
        return self.record_restore_point(conninfo, name).lsn

    def record_restore_point(self, conninfo: str, name: str) -> RestorePoint:
        """As `create_restore_point`, returning the `RestorePoint` recorded."""
        lsn = create_restore_point(conninfo, name)
        point = point_facts(conninfo, name, lsn)
        write_record(self.repo, point)
        return point


# -- helpers ---------------------------------------------------------------------------------------------------


class _Listings:
    """The archive's listing of each timeline, made at most once for a batch of pushes (thread-safe). ``kept``: it
    lives as long as an archiving worker, which notes what it stores, so the listing stands in for existence
    checks."""

    def __init__(self, archiver: WalArchiver, *, kept: bool = False) -> None:
        self._archiver = archiver
        self._lock = threading.Lock()
        self._index: dict[int, dict[str, list[WalObject]]] = {}
        self.kept = kept

    def note(self, obj: WalObject) -> None:
        with self._lock:
            if obj.timeline in self._index:
                self._index[obj.timeline].setdefault(obj.name, []).append(obj)

    def objects(self, name: str, *, fresh: bool = False) -> list[WalObject]:
        """``name``'s objects; ``fresh``: listed again when the name is not known (never a stale negative)."""
        tli = _walnames.timeline_of(name)
        with self._lock:
            if tli not in self._index or (fresh and name not in self._index[tli]):
                self._index[tli] = self._archiver.index(tli)
            return self._index[tli].get(name, [])


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
