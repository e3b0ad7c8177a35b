"""Physical base backups: the data directory, copied while the server runs, restorable with archived WAL.

Two methods:

* ``local`` (default, the fast path) for a server whose data directory this host can read: the non-exclusive
  low-level API (``pg_backup_start`` / ``pg_backup_stop``) holds the backup open on one session while workers
  read the files, checksum each one, and stream them into compressed tar bundles in parallel. The
  ``backup_label`` and ``tablespace_map`` that ``pg_backup_stop`` returns are stored with the backup. If anything
  fails, or the process is killed, the session closes and the server ends the backup by itself.
* ``stream`` for a remote server: ``pg_basebackup -Ft -D - -X none`` over the replication protocol, its tar output
  streamed into the repository.

Both rely on WAL archiving (``pgrecovery wal-push`` as archive_command) for the WAL between start and stop.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Final, Literal

import attrs

from .. import pgtools
from .._pgdb import invalid_indexes_by_database, merge_index_records, now_utc, server_info
from .._stream import fd_reader, pump, widen_pipe
from .._version import __version__
from ..catalog import abandon_backup, claim_backup_id, data_key, finish_backup, gone
from ..codec import SUFFIX, Codec, check_codec, check_level, compressor
from ..errors import BackupError, ConfigurationError, DatabaseError, ToolFailed
from ..manifest import BackupManifest, FileEntry, MemberEntry, PhysicalInfo
from ..progress import Meter, ProgressCallback
from ..repository import Repository
from ..storage.repository import CHUNK

Method = Literal["local", "stream"]
_SEGMENT_SIZE: Final = "(select setting::int from pg_settings where name = 'wal_segment_size')"

# Directories whose contents a base backup leaves out (they are rebuilt or meaningless on restore), and files.
SKIP_CONTENTS: Final = frozenset(
    {"pg_wal", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_stat_tmp", "pg_subtrans"}
)
SKIP_FILES: Final = frozenset(
    {"postmaster.pid", "postmaster.opts", "backup_label", "tablespace_map", "pg_internal.init", "backup_manifest"}
)
SKIP_TOP: Final = frozenset({"pgrecovery_spool", "recovery.signal", "standby.signal"})


def _at_least_one(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    """attrs validator: a count of 1 or more (`ConfigurationError` otherwise, like every bad input)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{attribute.name} must be a whole number of 1 or more, not {value!r}")


@attrs.frozen
class _File:
    rel: str  # path in the backup (relative; tablespaces under tblspc/<oid>/)
    abspath: str
    size: int


def scan_data_directory(pgdata: str, tablespaces: dict[str, str]) -> tuple[list[str], list[_File]]:
    """(directories, files) to back up from a data directory and its tablespaces."""
    dirs: list[str] = []
    files: list[_File] = []

    def walk(root: str, prefix: str, top: bool) -> None:
        for here, subdirs, names in os.walk(root):
            rel_here = os.path.relpath(here, root)
            rel_here = "" if rel_here == "." else rel_here
            base = f"{prefix}{rel_here}".rstrip("/")
            if top and rel_here == "":
                subdirs[:] = [d for d in subdirs if d not in SKIP_TOP and d != "pg_tblspc"]
                names = [n for n in names if n not in SKIP_TOP]
                dirs.append("pg_tblspc")
            subdirs[:] = [d for d in subdirs if not d.startswith("pgsql_tmp")]
            if base:
                dirs.append(base)
            if top and rel_here in SKIP_CONTENTS:
                subdirs[:] = ["archive_status"] if rel_here == "pg_wal" else []
                continue
            if top and rel_here == "pg_wal/archive_status":
                continue
            for name in names:
                if name in SKIP_FILES or name.startswith("pgsql_tmp"):
                    continue
                path = os.path.join(here, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue  # dropped while we looked
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                files.append(_File(f"{base}/{name}" if base else name, path, st.st_size))

    walk(pgdata, "", True)
    for oid, location in tablespaces.items():
        walk(location, f"tblspc/{oid}/", False)
    return dirs, files


def assign(files: Sequence[_File], workers: int) -> list[list[_File]]:
    """Spread files over ``workers`` bundles, biggest first onto the lightest, so that they finish together."""
    bundles: list[list[_File]] = [[] for _ in range(max(1, workers))]
    loads = [0] * len(bundles)
    for f in sorted(files, key=lambda f: -f.size):
        i = loads.index(min(loads))
        bundles[i].append(f)
        loads[i] += f.size + 512
    return [b for b in bundles if b] or [[]]


class _HashingFile:
    """Reads exactly ``size`` bytes of a file that may change meanwhile (zero-padded if it shrank), hashing them.

    A server that writes during the backup is expected: WAL replay from the backup's start repairs such pages.
    """

    def __init__(self, f: IO[bytes], size: int) -> None:
        import hashlib

        self._f, self._left, self.hash = f, size, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        if len(data) < n:
            data += bytes(n - len(data))
        self._left -= len(data)
        self.hash.update(data)
        return data


class _CompressingSink:
    """A write-only file object for tarfile: compresses into a repository writer."""

    def __init__(self, writer: Any, codec: Codec, level: int | None, meter: Meter | None, threads: int = 1) -> None:
        self._writer, self._comp, self._meter = writer, compressor(codec, level, threads=threads), meter
        self.raw = 0

    def write(self, data: bytes) -> int:
        self.raw += len(data)
        out = self._comp.compress(bytes(data))
        if out:
            self._writer.write(out)
        if self._meter is not None:
            self._meter.add(len(data))
        return len(data)

    def finish(self) -> None:
        self._writer.write(self._comp.flush())


@attrs.frozen(kw_only=True)
class BaseBackup:
    """A physical backup of a whole cluster.

    ``dbname`` connects to the server (for ``stream``, a role with REPLICATION). ``pgdata`` is the data directory
    for the ``local`` method (default: the server's ``data_directory``). ``workers`` bundles are written in
    parallel, each compressed with ``compression`` at ``level`` (zstd with ``threads`` native threads per bundle,
    0 = one per core: libzstd's own threads compress outside Python's global lock, which measured 1.5x faster
    than one synchronous compressor per bundle). ``parent`` (a base backup id or ``"latest"``)
    makes the backup incremental: files whose size and sha256 match the parent's are referenced, not stored again
    (local method).
    """

    dbname: str = ""
    method: Method = attrs.field(default="local", validator=attrs.validators.in_(("local", "stream")))
    pgdata: str | None = None
    compression: Literal["zstd", "gzip", "lz4", "none"] = "zstd"
    level: int | None = 1
    workers: int = attrs.field(default=2, validator=_at_least_one)
    fast_checkpoint: bool = True
    label: str = "pgrecovery"
    parent: str | None = None
    archive_timeout: float = 600.0
    threads: int = 0

    def __attrs_post_init__(self) -> None:
        check_level(check_codec(self.compression), self.level)

    def run(self, repo: Repository, *, progress: ProgressCallback | None = None) -> BackupManifest:
        """Take the backup; return its manifest once it is complete (and the WAL it needs is archived)."""
        info = server_info(self.dbname)
        started = now_utc()
        self._check_archiving()
        parent = self._parent(repo)
        needs: list[str] = []
        if parent is not None and parent.physical is not None:
            needs = sorted({parent.id} | {x.source for x in parent.physical.members})
        backup_id = claim_backup_id(repo, "base", started, needs=needs)  # expire and delete keep what it needs
        try:
            if self.method == "local":
                files, physical, invalid = self._local(repo, backup_id, Meter("backup", progress), parent)
                tool = f"PostgreSQL {info.version} (pg_backup_start/pg_backup_stop)"
            else:  # pg_basebackup stops the backup by itself: record the invalid indexes on both sides of it
                before = invalid_indexes_by_database(self.dbname)
                files, physical, tool = self._stream(repo, backup_id, Meter("backup", progress))
                invalid = merge_index_records(before, invalid_indexes_by_database(self.dbname))
            manifest = BackupManifest(
                id=backup_id,
                kind="base",
                started_at=started,
                finished_at=now_utc(),
                format="tar",
                compression=self.compression,
                compression_level=self.level,
                files=files,
                source=pgtools.public_conninfo(self.dbname),
                server_version=info.version,
                tool_version=tool,
                options={"method": self.method, "workers": self.workers, "fast_checkpoint": self.fast_checkpoint},
                physical=physical,
                pgrecovery_version=__version__,
                invalid_indexes=invalid,
            )
            missing = gone(repo, needs)
            if missing:  # an expire or delete that began before our claim was visible
                raise BackupError(
                    f"base backup {backup_id} takes files from backup {missing[0]}, which was deleted or expired "
                    "while it ran: take it again (on another parent, or a full backup)"
                )
            manifest = finish_backup(repo, manifest)
        except BaseException as e:
            abandon_backup(repo, backup_id)
            if isinstance(e, ToolFailed):
                raise BackupError(f"base backup {backup_id} failed: {e}") from None
            raise
        return manifest

    def _parent(self, repo: Repository) -> BackupManifest | None:
        if self.parent is None:
            return None
        if self.method != "local":
            raise ConfigurationError("incremental backups (parent=...) need method='local'")
        m = repo.get(self.parent, "base")
        if m.physical is None or m.physical.method != "local":
            raise ConfigurationError(f"backup {m.id} cannot be a parent: only local-method base backups can")
        return m

    def _check_archiving(self) -> None:
        import psycopg

        with psycopg.connect(self.dbname, autocommit=True) as conn:
            mode, command = conn.execute(
                "select current_setting('archive_mode'), current_setting('archive_command')"
            ).fetchone() or ("off", "")
        if mode == "off" or not command:
            raise ConfigurationError(
                "base backups need WAL archiving: set archive_mode = on and archive_command to "
                "'pgrecovery --repo URL wal-push %p' (see docs/wal.md), then restart the server"
            )

    # -- local method ----------------------------------------------------------------------------------------
    def _local(
        self, repo: Repository, backup_id: str, meter: Meter, parent: BackupManifest | None
    ) -> tuple[list[FileEntry], PhysicalInfo, dict[str, tuple[str, ...]] | None]:
        import psycopg

        try:
            conn = psycopg.connect(self.dbname, autocommit=True)
        except psycopg.Error as e:
            raise DatabaseError(f"cannot connect to {pgtools.describe(self.dbname)}: {e}") from None
        with conn:
            version = conn.info.server_version
            start_fn = "pg_backup_start(%s, %s)" if version >= 150000 else "pg_start_backup(%s, %s, false)"
            row = conn.execute(f"select {start_fn}::text", (self.label, self.fast_checkpoint)).fetchone()
            start_lsn = str(row[0]) if row else ""
            facts = conn.execute(
                "select current_setting('data_directory'), (select timeline_id from pg_control_checkpoint()), "
                "(select system_identifier from pg_control_system())::text, current_setting('data_checksums'), "
                f"{_SEGMENT_SIZE}, pg_walfile_name(%s::pg_lsn)",
                (start_lsn,),
            ).fetchone()
            assert facts is not None
            data_dir, timeline, sysid, checksums, seg_size, start_wal = facts
            known: dict[str, MemberEntry] = {}
            if parent is not None:
                assert parent.physical is not None
                if parent.physical.system_identifier != str(sysid):
                    raise ConfigurationError(
                        f"backup {parent.id} is of another cluster (system identifier "
                        f"{parent.physical.system_identifier}, this one {sysid}): it cannot be the parent"
                    )
                known = {m.path: m for m in parent.physical.members}
            pgdata = self.pgdata or str(data_dir)
            if not os.path.isfile(os.path.join(pgdata, "PG_VERSION")):
                raise ConfigurationError(
                    f"{pgdata} is not readable as the server's data directory from this host: use method='stream'"
                )
            spaces = {
                str(oid): str(loc)
                for oid, loc in conn.execute(
                    "select oid, pg_tablespace_location(oid) from pg_tablespace "
                    "where spcname not in ('pg_default', 'pg_global')"
                ).fetchall()
            }
            dirs, found = scan_data_directory(pgdata, spaces)
            meter.total = sum(f.size for f in found)
            files, members = self._write_bundles(repo, backup_id, assign(found, self.workers), meter, known)
            # The catalog as the restored copy will have it is the one at the stop: invalid indexes now are there
            invalid = invalid_indexes_by_database(self.dbname)
            # Stop without the server's own wait (it polls the archiver once a second); we wait below for the last
            # segment to be in *this* repository, which is the guarantee that matters.
            stop_fn = "pg_backup_stop(false)" if version >= 150000 else "pg_stop_backup(false, false)"
            stop = conn.execute(f"select lsn::text, labelfile, spcmapfile from {stop_fn}").fetchone()
            assert stop is not None
            stop_lsn, labelfile, spcmap = stop
            tail = conn.execute(
                "select pg_walfile_name(%s::pg_lsn), pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
                (stop_lsn,),
            ).fetchone()
            assert tail is not None
            self._wait_archived(repo, conn, str(tail[0]))
        files.append(_small_file(repo, backup_id, "backup_label", str(labelfile).encode()))
        if spcmap:
            files.append(_small_file(repo, backup_id, "tablespace_map", str(spcmap).encode()))
        meter.finish()
        physical = PhysicalInfo(
            method="local",
            label=self.label,
            start_lsn=start_lsn,
            stop_lsn=str(stop_lsn),
            timeline=int(timeline),
            start_wal=str(start_wal),
            stop_wal=str(tail[0]),
            system_identifier=str(sysid),
            data_checksums=checksums == "on",
            wal_segment_size=int(seg_size),
            next_xid=int(tail[1]),
            parent=parent.id if parent is not None else None,
            tablespaces=spaces,
            directories=dirs,
            members=members,
        )
        return files, physical, invalid

    def _wait_archived(self, repo: Repository, conn: Any, wal: str) -> None:
        """Wait until WAL file ``wal`` (the last one the backup needs) is stored in ``repo``."""
        from ..wal.archiver import WalArchiver

        archiver = WalArchiver(repo)
        deadline = time.monotonic() + self.archive_timeout
        delay = 0.02
        while archiver.find(wal) is None:
            if time.monotonic() > deadline:
                row = conn.execute("select last_archived_wal, last_failed_wal from pg_stat_archiver").fetchone()
                raise BackupError(
                    f"WAL file {wal}, which the backup needs, did not reach {repo.display_url} within "
                    f"{self.archive_timeout:.0f} s (last archived: {row[0] if row else '?'}, last failed: "
                    f"{row[1] if row else '?'}): check that archive_command pushes to this repository"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def _write_bundles(
        self,
        repo: Repository,
        backup_id: str,
        bundles: list[list[_File]],
        meter: Meter,
        known: dict[str, MemberEntry],
    ) -> tuple[list[FileEntry], list[MemberEntry]]:
        codec = check_codec(self.compression)

        def one(index: int) -> tuple[FileEntry, list[MemberEntry]]:
            role = f"bundle-{index}"
            name = f"{role}.tar{SUFFIX[codec]}"
            writer = repo.writer(data_key(backup_id, name))
            members: list[MemberEntry] = []
            try:
                sink = _CompressingSink(writer, codec, self.level, meter, self.threads)
                with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK) as tar:  # type: ignore[call-overload]
                    tar.copybufsize = CHUNK
                    for f in bundles[index]:
                        member = _unchanged(f, known.get(f.rel), meter) or _add_file(tar, f, role, backup_id)
                        if member is not None:
                            members.append(member)
                sink.finish()
            except BaseException:
                writer.abort()
                raise
            obj = writer.commit()
            entry = FileEntry(
                path=f"data/{name}", size=obj.size, sha256=obj.sha256, codec=codec, raw_size=sink.raw, role=role
            )
            return entry, members

        with ThreadPoolExecutor(max_workers=len(bundles)) as pool:
            results = list(pool.map(one, range(len(bundles))))
        return [r[0] for r in results], sorted((m for r in results for m in r[1]), key=lambda m: m.path)

    # -- stream method ---------------------------------------------------------------------------------------
    def _stream(self, repo: Repository, backup_id: str, meter: Meter) -> tuple[list[FileEntry], PhysicalInfo, str]:
        info = server_info(self.dbname)
        tool = pgtools.find_tool("pg_basebackup", min_major=info.major)
        conninfo, env = pgtools.split_secret(self.dbname)
        cmd = pgtools.pg_basebackup_command(tool, conninfo, fast=self.fast_checkpoint, label=self.label)
        codec = check_codec(self.compression)
        name = f"base.tar{SUFFIX[codec]}"
        writer = repo.writer(data_key(backup_id, name))
        try:
            with pgtools.Spawned(cmd, env=env, stdout=subprocess.PIPE, what="pg_basebackup") as proc:
                assert proc.proc.stdout is not None
                fd = proc.proc.stdout.fileno()
                widen_pipe(fd)
                tail = _Tail()
                raw, _ = pump(
                    fd_reader(fd), writer, codec, level=self.level, threads=self.workers, meter=meter, inspect=tail
                )
                proc.check()
        except BaseException:
            writer.abort()
            raise
        obj = writer.commit()
        meter.finish()
        timeline, start_lsn, stop_lsn = tail.wal_range()
        import psycopg

        with psycopg.connect(self.dbname, autocommit=True) as conn:
            row = conn.execute(
                "select (select system_identifier from pg_control_system())::text, current_setting('data_checksums'),"
                f" {_SEGMENT_SIZE}, pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
            ).fetchone()
        assert row is not None
        seg = int(row[2])
        physical = PhysicalInfo(
            method="stream",
            label=self.label,
            start_lsn=start_lsn,
            stop_lsn=stop_lsn,
            timeline=timeline,
            start_wal=wal_file_name(timeline, start_lsn, seg),
            stop_wal=wal_file_name(timeline, stop_lsn, seg),
            system_identifier=str(row[0]),
            data_checksums=row[1] == "on",
            wal_segment_size=seg,
            next_xid=int(row[3]),
        )
        entry = FileEntry(path=f"data/{name}", size=obj.size, sha256=obj.sha256, codec=codec, raw_size=raw, role="base")
        return [entry], physical, tool.version


class _Tail:
    """Keeps the end of pg_basebackup's tar stream, where its backup_manifest (with the WAL range) is."""

    KEEP: Final = 64 << 20

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0

    def __call__(self, chunk: bytes) -> None:
        self._chunks.append(bytes(chunk))
        self._size += len(chunk)
        while self._size - len(self._chunks[0]) >= self.KEEP:
            self._size -= len(self._chunks.pop(0))

    def wal_range(self) -> tuple[int, str, str]:
        """(timeline, start LSN, end LSN) from the backup manifest at the end of the stream."""
        import json

        data = b"".join(self._chunks)
        at = data.rfind(b'{ "PostgreSQL-Backup-Manifest-Version"')
        if at < 0:
            raise BackupError("pg_basebackup's output has no backup_manifest: cannot tell which WAL the backup needs")
        manifest, _ = json.JSONDecoder().raw_decode(data[at:].rstrip(b"\0").decode())
        ranges = manifest["WAL-Ranges"]
        return int(ranges[-1]["Timeline"]), str(ranges[0]["Start-LSN"]), str(ranges[-1]["End-LSN"])


def _unchanged(f: _File, before: MemberEntry | None, meter: Meter) -> MemberEntry | None:
    """The parent's entry for ``f`` when the file still has the same size and sha256 (then it is not stored)."""
    if before is None or before.size != f.size:
        return None
    try:
        with open(f.abspath, "rb", buffering=0) as handle:
            reader = _HashingFile(handle, f.size)
            while chunk := reader.read(CHUNK):
                meter.add(len(chunk))
    except FileNotFoundError:
        return None
    return before if reader.hash.hexdigest() == before.sha256 else None


def _add_file(tar: tarfile.TarFile, f: _File, role: str, backup_id: str) -> MemberEntry | None:
    try:
        handle = open(f.abspath, "rb", buffering=0)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return None  # a relation dropped during the backup: replay removes it anyway
    with handle:
        st = os.fstat(handle.fileno())
        info = tarfile.TarInfo(f.rel)
        info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o600
        reader = _HashingFile(handle, st.st_size)
        tar.addfile(info, reader)
    return MemberEntry(
        path=f.rel,
        size=st.st_size,
        mtime=int(st.st_mtime),
        sha256=reader.hash.hexdigest(),
        bundle=role,
        source=backup_id,
    )


def _small_file(repo: Repository, backup_id: str, role: str, data: bytes) -> FileEntry:
    obj = repo.put_bytes(data_key(backup_id, role), data)
    return FileEntry(path=f"data/{role}", size=obj.size, sha256=obj.sha256, codec="none", raw_size=len(data), role=role)


def wal_file_name(timeline: int, lsn: str, segment_size: int) -> str:
    """The WAL file holding ``lsn`` ("X/Y") on ``timeline``."""
    hi, lo = (int(x, 16) for x in lsn.split("/"))
    pos = (hi << 32) | lo
    segno = pos // segment_size
    per_id = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def lsn_value(lsn: str) -> int:
    hi, lo = (int(x, 16) for x in lsn.split("/"))
    return (hi << 32) | lo


# -- restoring the files ---------------------------------------------------------------------------------------


def _safe_target(root: Path, rel: str) -> Path:
    """``root / rel``, refusing absolute paths, ``..`` and anything that would land outside ``root``."""
    if not rel or rel.startswith("/") or any(part in ("", "..") for part in rel.split("/")):
        raise BackupError(f"refusing to restore {rel!r}: the path escapes the target directory")
    target = (root / rel).resolve()
    if target != root.resolve() and root.resolve() not in target.parents:
        raise BackupError(f"refusing to restore {rel!r}: the path escapes the target directory")
    return target


def restore_files(
    repo: Repository,
    manifest: BackupManifest,
    pgdata: Path,
    *,
    tablespace_map: dict[str, str] | None = None,
    delta: bool = False,
    progress: ProgressCallback | None = None,
) -> int:
    """Write a base backup's files into ``pgdata`` (bundles extracted in parallel, every file checked).

    ``pgdata`` must be empty, unless ``delta``: then files that already have the backup's size and sha256 are
    kept, only the others are written, and files the backup does not have are removed. Returns how many files
    were written.
    """
    from .._stream import open_entry

    phys = manifest.physical
    if phys is None:
        raise ConfigurationError(f"backup {manifest.id} is a {manifest.kind} backup, not a base backup")
    odd = [oid for oid in phys.tablespaces if not oid.isdigit()]
    if odd:  # it names a link under pg_tblspc: anything but an OID could point it elsewhere
        raise BackupError(f"backup {manifest.id}: tablespace {odd[0]!r} is not an OID: the manifest is not as written")
    spaces = {oid: Path((tablespace_map or {}).get(oid, loc)) for oid, loc in phys.tablespaces.items()}
    for loc in spaces.values():
        if not delta and loc.exists() and any(loc.iterdir()):
            raise ConfigurationError(f"tablespace directory {loc} is not empty: remap it or empty it first")
    small = _read_small_files(repo, manifest)  # checked before anything is written
    roots = {"": pgdata, **{f"tblspc/{oid}/": loc for oid, loc in spaces.items()}}
    expected = {m.path: m for m in phys.members}
    meter = Meter("restore", progress, total=manifest.raw_size)

    def place(rel: str) -> Path:
        for prefix, root in roots.items():
            if prefix and rel.startswith(prefix):
                return _safe_target(root, rel[len(prefix) :])
        return _safe_target(pgdata, rel)

    for d in phys.directories:
        if d.startswith("tblspc/") and d.count("/") == 1:
            continue
        place(d).mkdir(parents=True, exist_ok=True, mode=0o700)
    for loc in spaces.values():
        loc.mkdir(parents=True, exist_ok=True, mode=0o700)
    for oid, loc in spaces.items():
        link = pgdata / "pg_tblspc" / oid
        if not link.is_symlink():
            os.symlink(loc, link)
    keep: set[str] = set()
    if delta:
        keep = _delta_prepare(pgdata, roots, phys, place)
    written = [0]

    def extract(source: BackupManifest, entry: FileEntry) -> None:
        key = f"backups/{source.id}/{entry.path}"
        with open_entry(repo, key, entry) as src, tarfile.open(fileobj=src, mode="r|") as tar:
            for info in tar:
                if info.isdir():
                    place(info.name.rstrip("/")).mkdir(parents=True, exist_ok=True, mode=0o700)
                    continue
                if not info.isfile():
                    raise BackupError(f"{key}: refusing member {info.name!r}: only files and directories are restored")
                want = expected.get(info.name) if expected else None
                if expected and (want is None or want.source != source.id or want.bundle != entry.role):
                    continue  # a file this backup took from elsewhere (or dropped): not from this bundle
                if info.name in keep:
                    continue  # delta: already identical on disk
                dest = place(info.name)
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                _extract_one(tar, info, dest, want, key, meter)
                written[0] += 1

    chain = {manifest.id: manifest}
    for m in phys.members:
        if m.source not in chain:
            chain[m.source] = repo.get(m.source, "base")
    needed = {(m.source, m.bundle) for m in phys.members if m.path not in keep}
    jobs = [
        (chain[source_id], f)
        for source_id in chain
        for f in chain[source_id].files
        if (f.role == "base" and source_id == manifest.id) or (source_id, f.role) in needed
    ]
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), 4))) as pool:
        for fut in [pool.submit(extract, source, f) for source, f in jobs]:
            fut.result()
    for role, data in small.items():
        if role == "tablespace_map":  # the server recreates pg_tblspc links from it: give it the new places
            lines = [ln.split(" ", 1) for ln in data.decode().splitlines() if ln.strip()]
            data = "".join(f"{oid} {spaces.get(oid, Path(old))}\n" for oid, old in lines).encode()
        (pgdata / role).write_bytes(data)
    meter.finish()
    return written[0]


def _read_small_files(repo: Repository, manifest: BackupManifest) -> dict[str, bytes]:
    """The backup's backup_label and tablespace_map, checked against the manifest (size and sha256)."""
    import hashlib

    from ..errors import ChecksumMismatch

    out = {}
    for role in ("backup_label", "tablespace_map"):
        entry = next((f for f in manifest.files if f.role == role), None)
        if entry is None:
            continue
        key = f"backups/{manifest.id}/{entry.path}"
        data = repo.read_bytes(key)
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ChecksumMismatch(
                f"{key} is corrupt: {len(data)} bytes with another sha256 than the manifest's ({entry.size} bytes); "
                "restore from another backup or repository copy"
            )
        out[role] = data
    return out


def _delta_prepare(pgdata: Path, roots: dict[str, Path], phys: PhysicalInfo, place: Callable[[str], Path]) -> set[str]:
    """For a delta restore: the member paths already identical on disk; files the backup lacks are removed."""
    import hashlib

    if not phys.members:
        raise ConfigurationError("a delta restore needs a local-method base backup (one with a per-file manifest)")
    if (pgdata / "postmaster.pid").exists():
        raise ConfigurationError(f"{pgdata} has a postmaster.pid: stop the server (and remove a stale pid file) first")
    keep: set[str] = set()
    for m in phys.members:
        path = place(m.path)
        try:
            if path.stat().st_size != m.size:
                continue
            h = hashlib.sha256()
            with open(path, "rb", buffering=0) as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if h.hexdigest() == m.sha256:
            keep.add(m.path)
    wanted = {str(place(m.path)) for m in phys.members}
    for root in roots.values():
        for here, _dirs, files in os.walk(root):
            for name in files:
                p = os.path.join(here, name)
                if p not in wanted:
                    os.unlink(p)  # not in the backup: a stray file, a WAL segment, a stale pid or signal file
    return keep


def _extract_one(
    tar: tarfile.TarFile, info: tarfile.TarInfo, dest: Path, want: MemberEntry | None, key: str, meter: Meter
) -> None:
    import hashlib

    from ..errors import ChecksumMismatch

    src = tar.extractfile(info)
    assert src is not None
    h = hashlib.sha256()
    tmp = dest.with_name(dest.name + ".pgrecovery-part")
    with open(tmp, "wb") as out:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
            meter.add(len(chunk))
    if want is not None and (h.hexdigest() != want.sha256 or info.size != want.size):
        tmp.unlink()
        raise ChecksumMismatch(f"{info.name} in {key} differs from the manifest: the backup is damaged")
    os.utime(tmp, (info.mtime, info.mtime))
    os.replace(tmp, dest)


def chown_tree(paths: Sequence[Path], user: str | None) -> None:
    """Give ``paths`` (recursively) to ``user`` with private modes: 0700 directories, 0600 files."""
    ids = None
    if user is not None:
        import pwd

        pw = pwd.getpwnam(user)
        ids = (pw.pw_uid, pw.pw_gid) if pw.pw_uid != os.getuid() else None
    for root in paths:
        for here, dirs, files in os.walk(root):
            os.chmod(here, 0o700)
            if ids:
                os.chown(here, *ids)
            for name in files + [d for d in dirs if os.path.islink(os.path.join(here, d))]:
                p = os.path.join(here, name)
                if ids:
                    os.lchown(p, *ids)
                if not os.path.islink(p):
                    os.chmod(p, 0o600)
