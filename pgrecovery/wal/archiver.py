"""`WalArchiver`: WAL archiving (archive_command), restore (restore_command) and the archive's index.

Repository layout (see docs/wal.md)::

    wal/<timeline, 8 hex>/<file name>-<sha256 of the raw file>.<codec suffix>

The raw content's sha256 is part of the object name, so a push needs one existence check: the same name already
stored means identical content (success); another digest for the same file name means different content
(`WalConflict`, never an overwrite). A fetch finds the object by listing its timeline's directory and verifies the
digest of what it delivers.

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
import shlex
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

from .. import _spool, _walnames
from .._walnames import DEFAULT_SEGMENT_SIZE, HistoryEntry
from ..codec import SUFFIX, Codec, check_codec, check_level
from ..errors import (
    AlreadyExists,
    ChecksumMismatch,
    ConfigurationError,
    DatabaseError,
    PgRecoveryError,
    StorageError,
)

if TYPE_CHECKING:
    from ..repository import Repository

log = logging.getLogger(__package__)  # one logger per area, whichever module of it logs

WAL_PREFIX: Final = "wal"
_CHUNK: Final = 1 << 20
_CODEC_OF_SUFFIX: Final[dict[str, Codec]] = {suffix: codec for codec, suffix in SUFFIX.items()}


class WalConflict(StorageError):
    """A WAL file of that name is already archived with different content; it was not overwritten."""


# -- object names ----------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class WalObject:
    """One archived WAL file: its name, where it is stored and what its raw content hashes to."""

    name: str
    key: str
    sha256: str
    codec: Codec

    @property
    def timeline(self) -> int:
        return _walnames.timeline_of(self.name)


def timeline_dir(timeline: int) -> str:
    """The repository prefix holding a timeline's files: ``wal/0000000T``."""
    return f"{WAL_PREFIX}/{timeline:08X}"


def object_key(name: str, sha256: str, codec: Codec) -> str:
    """``wal/<timeline>/<name>-<sha256><suffix>``."""
    return f"{timeline_dir(_walnames.timeline_of(name))}/{name}-{sha256}{SUFFIX[codec]}"


def parse_object_name(object_name: str) -> tuple[str, str, Codec] | None:
    """(WAL file name, sha256, codec) of a stored object's base name, or None for anything else."""
    name, sep, rest = object_name.partition("-")
    if not sep or not _walnames.is_wal_file(name) or len(rest) < 64:
        return None
    digest, suffix = rest[:64], rest[64:]
    codec = _CODEC_OF_SUFFIX.get(suffix)
    if codec is None or any(c not in "0123456789abcdef" for c in digest):
        return None
    return name, digest, codec


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


@attrs.frozen(kw_only=True)
class WalVerifyReport:
    """Continuity of the archive from ``first`` to ``last`` along ``timeline``'s history."""

    first: str
    last: str
    timeline: int
    timelines: tuple[int, ...]
    count: int
    missing: tuple[str, ...]
    corrupt: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt

    def to_dict(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "last": self.last,
            "timeline": self.timeline,
            "timelines": list(self.timelines),
            "count": self.count,
            "missing": list(self.missing),
            "corrupt": list(self.corrupt),
            "ok": self.ok,
        }


@attrs.frozen(kw_only=True)
class ArchiverStatus:
    """``pg_stat_archiver`` plus the number of files waiting in ``pg_wal/archive_status`` (when pgdata is known)."""

    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    ready_count: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        for k in ("last_archived_time", "last_failed_time"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


# -- command lines for postgresql.conf -------------------------------------------------------------------------


def _q(text: str) -> str:
    """Shell-quote ``text`` and protect its ``%`` from PostgreSQL's placeholder substitution."""
    return shlex.quote(text).replace("%", "%%")


def _entry(python: str | None, fast: bool) -> str:
    exe = _q(python or sys.executable)
    if not fast:
        return f"{exe} -m pgrecovery"
    # -S: no site module at start-up (10 ms less); the script loads it itself when the spool cannot answer.
    # the entry script beside the spool (a path, not an import: it belongs to the CLI's layer)
    script = os.path.join(os.path.dirname(os.path.abspath(_spool.__file__)), "_walcmd.py")
    return f"{exe} -S {_q(script)}"


def archive_command(
    repo_url: str,
    python: str | None = None,
    *,
    spool_dir: str | None = None,
    fast: bool = True,
    key_file: str | None = None,
) -> str:
    """The ``archive_command`` setting that archives into ``repo_url`` with this interpreter (``sys.executable``).

    ``key_file``: an encrypted repository's key file (its path goes on the command line, never the key; or set
    ``PGRECOVERY_ENCRYPTION_KEY_FILE`` / ``PGRECOVERY_ENCRYPTION_KEY`` in the server's environment instead).

    With ``fast`` (the default) the command runs ``pgrecovery/_walcmd.py`` under ``python -S``: a file that an
    earlier call already archived ahead costs Python's bare start-up and a stat; anything else is handed to the
    full CLI. ``fast=False`` gives the plainer ``python -m pgrecovery wal-push``. Storage credentials are best
    given through the server's environment (``FSSPEC_*`` variables), not the URL.
    """
    spool = f" --spool {_q(spool_dir)}" if spool_dir else ""
    key = f" --encryption-key-file {_q(key_file)}" if key_file else ""
    return f"{_entry(python, fast)} wal-push --repo {_q(repo_url)}{spool}{key} %p"


def restore_command(
    repo_url: str,
    python: str | None = None,
    *,
    spool_dir: str | None = None,
    prefetch: bool = True,
    fast: bool = True,
    key_file: str | None = None,
) -> str:
    """The ``restore_command`` setting that fetches from ``repo_url`` (exit 1 only when a file is not archived).

    ``fast`` as for `archive_command`: a segment already prefetched is handed over without loading the library.
    """
    spool = f" --spool {_q(spool_dir)}" if spool_dir else ""
    no_prefetch = "" if prefetch else " --no-prefetch"
    key = f" --encryption-key-file {_q(key_file)}" if key_file else ""
    return f"{_entry(python, fast)} wal-fetch --repo {_q(repo_url)}{spool}{no_prefetch}{key} %f %p"


# -- the archiver ----------------------------------------------------------------------------------------------


class WalArchiver:
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
        self.repo = repo
        self.spool_dir = os.path.abspath(spool_dir) if spool_dir is not None else None
        self.compression: Codec = check_codec(compression)
        self.level = check_level(self.compression, level)
        if parallel < 1:
            raise ConfigurationError(f"parallel must be at least 1, not {parallel}")
        self.parallel = parallel
        try:
            self.segment_size = _walnames.check_segment_size(segment_size)
        except ValueError as e:
            raise ConfigurationError(str(e)) from None
        if prefetch < 0:
            raise ConfigurationError(f"prefetch must be 0 or more, not {prefetch}")
        self.prefetch = prefetch

    def __repr__(self) -> str:
        return f"WalArchiver({self.repo!r})"

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
                done = [n for n, f in others.items() if _succeeded(f, n)]
                result = main.result()
        with contextlib.suppress(OSError):
            _spool.sweep_markers(spool, wal_dir)
        return attrs.evolve(result, ahead=tuple(done))

    def _push_one(self, abspath: str, spool: str, listings: _Listings) -> PushResult:
        name = os.path.basename(abspath)
        try:
            st = os.stat(abspath)
            size, digest = _file_digest(abspath)
        except OSError as e:
            raise StorageError(f"cannot read {abspath}: {e.strerror or e}") from None
        key = object_key(name, digest, self.compression)
        outcome: Literal["stored", "already"] = "already"
        stored_size = None
        if not self.repo.exists(key):
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
                    stored_size = self._upload(abspath, key, digest)
                    outcome = "stored"
                except AlreadyExists:  # a concurrent push of the same content won the race
                    pass
        with contextlib.suppress(OSError):
            now = os.stat(abspath)
            if (now.st_size, now.st_mtime_ns, now.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino):
                _spool.write_marker(spool, name, st, digest, self._tag)
        return PushResult(name=name, sha256=digest, outcome=outcome, key=key, size=size, stored_size=stored_size)

    def _upload(self, abspath: str, key: str, digest: str) -> int:
        from ..codec import compressor

        writer = self.repo.writer(key)
        try:
            comp = compressor(self.compression, self.level, threads=1)
            h = hashlib.sha256()
            with open(abspath, "rb", buffering=0) as f:
                while chunk := f.read(_CHUNK):
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
        try:
            return writer.commit().size
        except AlreadyExists:
            raise
        except OSError as e:
            raise StorageError(f"cannot store {key} in {self.repo.display_url}: {e}") from None

    # -- index -----------------------------------------------------------------------------------------------
    def timelines(self) -> list[int]:
        """Timelines that have a directory in the archive, ascending."""
        found = []
        for entry in self.repo.children(WAL_PREFIX):
            if len(entry) == 8 and all(c in "0123456789ABCDEF" for c in entry):
                found.append(int(entry, 16))
        return sorted(found)

    def index(self, timeline: int) -> dict[str, list[WalObject]]:
        """Every archived file of ``timeline`` by WAL file name (normally one object each)."""
        prefix = timeline_dir(timeline)
        result: dict[str, list[WalObject]] = {}
        for entry in self.repo.children(prefix):
            parsed = parse_object_name(entry)
            if parsed is None:
                continue
            name, digest, codec = parsed
            result.setdefault(name, []).append(
                WalObject(name=name, key=f"{prefix}/{entry}", sha256=digest, codec=codec)
            )
        return result

    def objects(self, name: str) -> list[WalObject]:
        """The stored objects for WAL file ``name`` (empty when it is not archived)."""
        return self.index(_walnames.timeline_of(name)).get(name, [])

    def find(self, name: str) -> WalObject | None:
        """The stored object for ``name``, None when it is not archived."""
        found = self.objects(name)
        if len({o.sha256 for o in found}) > 1:
            raise StorageError(
                f"{name} is archived more than once with different content ({', '.join(o.key for o in found)}): "
                "remove the wrong one"
            )
        return found[0] if found else None

    def list_archived(self, timeline: int | None = None) -> dict[int, list[str]]:
        """Archived WAL file names (segments, history, .backup and .partial files) by timeline, sorted."""
        tlis = [timeline] if timeline is not None else self.timelines()
        listing = {t: sorted(self.index(t)) for t in tlis}
        return {t: names for t, names in listing.items() if names or timeline is not None}

    def read(self, name: str) -> bytes:
        """The verified raw content of an archived file (for small files: history, .backup)."""
        obj = self.find(name)
        if obj is None:
            raise StorageError(f"{name} is not in the WAL archive of {self.repo.display_url}")
        return self._read_object(obj)

    def _read_object(self, obj: WalObject) -> bytes:
        from ..codec import decompress_bytes

        raw = self.repo.read_bytes(obj.key)
        try:
            data = decompress_bytes(raw, obj.codec)
        except Exception as e:  # noqa: BLE001 - zstd, gzip and lz4 each have their own error types
            raise ChecksumMismatch(f"archived object {obj.key} cannot be decompressed ({e}): it is corrupt") from None
        if hashlib.sha256(data).hexdigest() != obj.sha256:
            raise ChecksumMismatch(f"archived object {obj.key} does not match the sha256 in its name: it is corrupt")
        return data

    def history(self, timeline: int) -> list[HistoryEntry]:
        """The entries of ``timeline``'s history file, oldest first (empty for timeline 1)."""
        if timeline == 1:
            return []
        name = _walnames.history_name(timeline)
        try:
            text = self.read(name).decode()
        except UnicodeDecodeError:
            raise StorageError(f"{name} in the archive is not a text file") from None
        try:
            return _walnames.parse_history(text)
        except ValueError as e:
            raise StorageError(f"{name} in the archive cannot be parsed: {e}") from None

    def latest_timeline(self, descending_from: int = 1) -> int:
        """The newest archived timeline whose history descends from ``descending_from`` (itself if none)."""
        for tli in reversed(self.timelines()):
            if tli == descending_from:
                return tli
            if (
                tli > descending_from
                and self.objects(_walnames.history_name(tli))
                and descending_from in {e.parent_timeline for e in self.history(tli)}
            ):
                return tli
        return descending_from

    def lineage(self, timeline: int) -> list[tuple[int, int]]:
        """(timeline, first segment number it owns) along ``timeline``'s history, oldest first.

        After a switch at LSN L, the segment that holds L and every later one are read from the new timeline.
        """
        entries = self.history(timeline)
        tlis = [e.parent_timeline for e in entries] + [timeline]
        begins = [0] + [_walnames.parse_lsn(e.switch_lsn) // self.segment_size for e in entries]
        return list(zip(tlis, begins, strict=True))

    @staticmethod
    def _owner(lineage: list[tuple[int, int]], segno: int) -> int:
        owner = lineage[0][0]
        for tli, begin in lineage:
            if begin <= segno:
                owner = tli
        return owner

    def _expected(
        self, first_segment: str, last_segment: str | None, timeline: int | None
    ) -> tuple[int, list[tuple[int, int]], int, int, dict[int, set[str]]]:
        try:
            first_tli = _walnames.timeline_of(first_segment)
            start = _walnames.segment_number(first_segment, self.segment_size)
            end = _walnames.segment_number(last_segment, self.segment_size) if last_segment else None
        except ValueError as e:
            raise ConfigurationError(str(e)) from None
        if not _walnames.is_segment(first_segment) or (last_segment and not _walnames.is_segment(last_segment)):
            raise ConfigurationError("give segment names (24 hex digits) as the first and last segments")
        if timeline is None:
            timeline = _walnames.timeline_of(last_segment) if last_segment else self.latest_timeline(first_tli)
        lineage = self.lineage(timeline)
        if first_tli not in {t for t, _ in lineage}:
            raise ConfigurationError(
                f"timeline {first_tli} (of {first_segment}) is not in the history of timeline {timeline}"
            )
        archived = {t: set(self.index(t)) for t, _ in lineage}
        if end is None:
            end = start
            for i, (tli, begin) in enumerate(lineage):
                until = lineage[i + 1][1] if i + 1 < len(lineage) else None
                for n in archived[tli]:
                    if _walnames.is_segment(n):
                        segno = _walnames.segment_number(n, self.segment_size)
                        if segno >= begin and (until is None or segno < until):
                            end = max(end, segno)
        return timeline, lineage, start, end, archived

    def missing(self, first_segment: str, last_segment: str | None = None, *, timeline: int | None = None) -> list[str]:
        """Segments absent from the archive between two segments (inclusive), following timeline switches.

        ``timeline`` defaults to ``last_segment``'s, or else the newest archived timeline descending from
        ``first_segment``'s; ``last_segment`` defaults to the newest archived segment along that history.
        """
        _, lineage, start, end, archived = self._expected(first_segment, last_segment, timeline)
        result = []
        for segno in range(start, end + 1):
            tli = self._owner(lineage, segno)
            name = _walnames.segment_name(tli, segno, self.segment_size)
            if name not in archived[tli]:
                result.append(name)
        return result

    def verify(
        self, first_segment: str | None = None, timeline: int | None = None, *, check_digests: bool = False
    ) -> WalVerifyReport:
        """Check that every segment from ``first_segment`` to the newest archived one is present.

        ``first_segment`` defaults to the oldest archived segment. With ``check_digests`` each segment is also
        downloaded and checked against its sha256 (reported in ``corrupt``). The history file of every archived
        timeline after the first is expected too (reported in ``missing``).
        """
        if first_segment is None:
            first_segment = self._oldest_segment(timeline)
        tli, lineage, start, end, archived = self._expected(first_segment, None, timeline)
        missing, corrupt, followed, count = [], [], set(), 0
        index_cache: dict[int, dict[str, list[WalObject]]] = {}
        for segno in range(start, end + 1):
            owner = self._owner(lineage, segno)
            followed.add(owner)
            name = _walnames.segment_name(owner, segno, self.segment_size)
            if name not in archived[owner]:
                missing.append(name)
                continue
            count += 1
            if check_digests:
                objs = index_cache.setdefault(owner, self.index(owner))[name]
                for obj in objs:
                    try:
                        self._check_object(obj)
                    except ChecksumMismatch:
                        corrupt.append(name)
                        break
        for other in self.timelines():  # a timeline holding WAL without its history file cannot be followed
            history = _walnames.history_name(other)
            if other > 1 and history not in index_cache.setdefault(other, self.index(other)):
                missing.append(history)
        return WalVerifyReport(
            first=_walnames.segment_name(self._owner(lineage, start), start, self.segment_size),
            last=_walnames.segment_name(self._owner(lineage, end), end, self.segment_size),
            timeline=tli,
            timelines=tuple(sorted(followed)),
            count=count,
            missing=tuple(missing),
            corrupt=tuple(corrupt),
        )

    def _oldest_segment(self, timeline: int | None) -> str:
        for tli in self.timelines():
            if timeline is not None and tli > timeline:
                break
            segments = [n for n in self.index(tli) if _walnames.is_segment(n)]
            if segments:
                return min(segments)
        raise ConfigurationError(f"no WAL segments are archived in {self.repo.display_url}")

    def _check_object(self, obj: WalObject) -> None:
        from ..codec import open_decompressed

        h = hashlib.sha256()
        with self.repo.open(obj.key) as raw:
            stream = open_decompressed(raw, obj.codec)
            while True:
                chunk = _read_decompressed(stream, obj)
                if not chunk:
                    break
                h.update(chunk)
        if h.hexdigest() != obj.sha256:
            raise ChecksumMismatch(f"archived object {obj.key} does not match the sha256 in its name: it is corrupt")

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

    def _download(self, obj: WalObject, dest: str) -> None:
        from ..codec import open_decompressed

        directory = os.path.dirname(dest)
        tmp = os.path.join(directory, f".{os.path.basename(dest)}.{os.urandom(4).hex()}.tmp")
        h = hashlib.sha256()
        try:
            with self.repo.open(obj.key) as raw, open(tmp, "xb") as out:
                stream = open_decompressed(raw, obj.codec)
                while True:
                    chunk = _read_decompressed(stream, obj)
                    if not chunk:
                        break
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                if h.hexdigest() != obj.sha256:
                    raise ChecksumMismatch(
                        f"archived object {obj.key} does not match the sha256 in its name: it is corrupt; "
                        "nothing was delivered"
                    )
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StorageError(f"cannot deliver {obj.name} to {dest}: {e.strerror or e}") from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

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
        self, after: str, spool_dir: str | os.PathLike[str] | None = None, *, lock_fd: int | None = None
    ) -> list[str]:
        """Download the ``prefetch`` segments following ``after`` into the spool, verified (the wal-prefetch job).

        Keeps working ahead of the newest segment restore_command asked for, and returns (with the names it
        downloaded) when the archive has no next segment or the queue is full. Returns at once if another
        prefetch process holds the spool's lock. ``lock_fd``: the lock, already taken by the process that started
        this one (wal-fetch).
        """
        spool = os.path.abspath(spool_dir) if spool_dir is not None else self.spool_dir
        if spool is None:
            raise ConfigurationError("run_prefetch needs a spool directory")
        if not _walnames.is_segment(after):
            raise ConfigurationError(f"{after!r} is not a segment name")
        downloaded: list[str] = []
        with _spool.prefetch_lock(spool, fd=lock_fd) as got:
            if not got:
                return downloaded
            _spool.set_source(spool, self._tag)
            queue = _spool.prefetch_dir(spool)
            while True:
                wanted = _spool.read_wanted(spool) or after
                tli = _walnames.timeline_of(wanted)
                segno = _walnames.segment_number(wanted, self.segment_size)
                self._sweep_queue(spool, segno)
                have = set(_spool.prefetched(spool))
                window = [
                    _walnames.segment_name(tli, segno + i, self.segment_size) for i in range(1, self.prefetch + 1)
                ]
                todo = [n for n in window if n not in have]
                if not todo:
                    break
                index = self.index(tli)
                available = [index[n][0] for n in todo if n in index]
                if not available:
                    break  # the archive has nothing newer yet
                with ThreadPoolExecutor(self.parallel, thread_name_prefix="wal-prefetch") as pool:
                    futures = {o.name: pool.submit(self._download, o, os.path.join(queue, o.name)) for o in available}
                    got_now = [n for n, f in futures.items() if _succeeded(f, n)]
                downloaded += got_now
                if len(got_now) < len(todo):
                    break  # a segment is not archived (yet) or failed: restore_command will fetch it itself
        return downloaded

    def _sweep_queue(self, spool: str, segno: int) -> None:
        """Drop queued segments older than ``segno`` (recovery is past them) and leftovers of interrupted downloads."""
        stale = set()
        for n in _spool.prefetched(spool):
            if _walnames.is_segment(n) and _walnames.segment_number(n, self.segment_size) <= segno:
                stale.add(n)
        keep = set(_spool.prefetched(spool)) - stale
        _spool.clear_prefetched(spool, keep=keep)

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
        """``pg_create_restore_point(name)`` (see `create_restore_point`); returns its LSN."""
        return create_restore_point(conninfo, name)


def archiver_status(conninfo: str = "", pgdata: str | os.PathLike[str] | None = None) -> ArchiverStatus:
    """The server's archiver statistics (``pg_stat_archiver``); ``ready_count`` needs ``pgdata``."""
    row = _query_one(
        conninfo,
        "select archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, "
        "last_failed_time from pg_stat_archiver",
        (),
    )
    ready = None
    if pgdata is not None:
        status_dir = os.path.join(pgdata, "pg_wal", "archive_status")
        try:
            ready = sum(1 for e in os.listdir(status_dir) if e.endswith(".ready"))
        except OSError as e:
            raise ConfigurationError(f"cannot read {status_dir}: {e.strerror or e}") from None
    return ArchiverStatus(
        archived_count=int(row[0]),
        last_archived_wal=row[1],
        last_archived_time=row[2],
        failed_count=int(row[3]),
        last_failed_wal=row[4],
        last_failed_time=row[5],
        ready_count=ready,
    )


def create_restore_point(conninfo: str, name: str) -> str:
    """``pg_create_restore_point(name)``: a named target for recovery (recovery_target_name); returns its LSN."""
    if not name or len(name) >= 64:
        raise ConfigurationError("a restore point name must have 1 to 63 characters")
    row = _query_one(conninfo, "select pg_create_restore_point(%s)::text", (name,))
    return str(row[0])


# -- helpers ---------------------------------------------------------------------------------------------------


class _Listings:
    """The archive's listing of each timeline, made at most once for a batch of pushes (thread-safe)."""

    def __init__(self, archiver: WalArchiver) -> None:
        self._archiver = archiver
        self._lock = threading.Lock()
        self._index: dict[int, dict[str, list[WalObject]]] = {}

    def objects(self, name: str) -> list[WalObject]:
        tli = _walnames.timeline_of(name)
        with self._lock:
            if tli not in self._index:
                self._index[tli] = self._archiver.index(tli)
            return self._index[tli].get(name, [])


def _file_digest(path: str) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _read_decompressed(stream: Any, obj: WalObject) -> bytes:
    """One chunk of decompressed bytes; a codec error is corruption, an OS error a storage failure."""
    import gzip

    try:
        return bytes(stream.read(_CHUNK))
    except PgRecoveryError:
        raise
    except gzip.BadGzipFile as e:
        raise ChecksumMismatch(f"archived object {obj.key} cannot be decompressed ({e}): it is corrupt") from None
    except OSError as e:
        raise StorageError(f"cannot read {obj.key}: {e}") from None
    except Exception as e:  # noqa: BLE001 - zstd, gzip and lz4 each have their own error types
        raise ChecksumMismatch(f"archived object {obj.key} cannot be decompressed ({e}): it is corrupt") from None


def _succeeded(future: Future[Any], name: str) -> bool:
    try:
        future.result()
        return True
    except Exception as e:  # noqa: BLE001 - one failed file ahead must not fail the others
        log.warning("%s: %s", name, e)
        return False


def _query_one(conninfo: str, sql: str, params: Iterable[object]) -> tuple[Any, ...]:
    import psycopg

    from .. import pgtools

    try:
        with psycopg.connect(conninfo, connect_timeout=15, autocommit=True) as conn:
            row = conn.execute(sql, tuple(params)).fetchone()
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatabaseError(f"{pgtools.describe(conninfo)}: {first}") from None
    if row is None:
        raise DatabaseError(f"{pgtools.describe(conninfo)}: the query returned no row")
    return tuple(row)


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
