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

From a hot standby (``dbname`` names a server in recovery) both methods work: the WAL comes from the primary's
archive in the same repository (or the standby's own, with ``archive_mode = always``). A standby cannot end its
WAL segment, so the backup waits until the primary has archived the segment holding the backup's end: ``primary``
(a conninfo) lets it ask the primary for a switch (``pg_switch_wal()``); without it the wait ends when the primary
switches by itself (``archive_timeout`` on the primary bounds it), or at ``archive_timeout`` here with one line
saying so.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, Final, Literal

import attrs

from .. import pgtools
from .._pgdb import connect, first_line, invalid_indexes_by_database, merge_index_records, now_utc, server_info
from .._stream import fd_reader, pump, widen_pipe
from .._version import __version__
from .._walnames import segment_for_lsn
from ..catalog import data_key, writing_backup
from ..codec import SUFFIX, Codec, check_codec, check_level
from ..errors import BackupError, ConfigurationError
from ..manifest import BackupManifest, FileEntry, PhysicalInfo
from ..progress import Meter, ProgressCallback
from ..repository import Repository
from ._bundles import SKIP_CONTENTS, SKIP_FILES, SKIP_TOP, assign, scan_data_directory, small_file, write_bundles
from ._delta import INCREMENTAL_METHODS, Incremental, plan_incremental
from .restore import chown_tree, restore_files

# re-exported: restoring files lives in restore.py, the bundles in _bundles.py
__all__ = [
    "SKIP_CONTENTS",
    "SKIP_FILES",
    "SKIP_TOP",
    "BaseBackup",
    "Method",
    "assign",
    "chown_tree",
    "restore_files",
    "scan_data_directory",
]

Method = Literal["local", "stream"]
_SEGMENT_SIZE: Final = "(select setting::int from pg_settings where name = 'wal_segment_size')"
_ARCHIVING_SQL: Final = (
    "select current_setting('archive_mode'), current_setting('archive_command'), pg_is_in_recovery(), "
    "(select system_identifier from pg_control_system())::text"
)
# The timeline a WAL position is on: pg_walfile_name() fails during recovery, so a standby's is its replay timeline
# (pg_backup_stop on a standby ends the backup at the minimum recovery point, on that point's timeline). The last
# segment a standby's backup needs is the one holding the stop LSN itself, even at a segment boundary: recovery
# needs a record there to see that it is consistent (pg_walfile_name() would name the segment before).
_STOP_TIMELINE: Final = "(select min_recovery_end_timeline from pg_control_recovery())"


def _at_least_one(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    """attrs validator: a count of 1 or more (`ConfigurationError` otherwise, like every bad input)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{attribute.name} must be a whole number of 1 or more, not {value!r}")


@attrs.frozen(kw_only=True)
class BaseBackup:
    """A physical backup of a whole cluster.

    ``dbname`` connects to the server (for ``stream``, a role with REPLICATION). ``pgdata`` is the data directory
    for the ``local`` method (default: the server's ``data_directory``). ``workers`` bundles are written in
    parallel, each compressed with ``compression`` at ``level`` (zstd with ``threads`` native threads per bundle,
    0 = one per core: libzstd's own threads compress outside Python's global lock, which measured 1.5x faster
    than one synchronous compressor per bundle). ``parent`` (a base backup id or ``"latest"``)
    makes the backup incremental (local method): files unchanged since the parent are referenced, not stored
    again, and of a changed relation file only the changed blocks are stored. ``incremental`` says how changes are
    found: ``"auto"`` (WAL summaries on PostgreSQL 17+ with ``summarize_wal = on``, which read only the changed
    blocks; else page LSNs, which read every relation page; a 17+ server without usable summaries logs one
    warning), ``"wal-summaries"`` or ``"page-lsn"`` (refused when impossible), ``"file"`` (whole files compared
    by sha256). ``primary``: for a backup from a standby, the primary's conninfo, asked for a WAL switch so the
    backup's last segment is archived without waiting for the primary's own switch.
    """

    dbname: str = ""
    method: Method = attrs.field(default="local", validator=attrs.validators.in_(("local", "stream")))
    pgdata: str | None = None
    compression: Codec = "zstd"
    level: int | None = 1
    workers: int = attrs.field(default=2, validator=_at_least_one)
    fast_checkpoint: bool = True
    label: str = "pgrecovery"
    parent: str | None = None
    archive_timeout: float = 600.0
    threads: int = 0
    primary: str | None = None
    incremental: Incremental = attrs.field(default="auto", validator=attrs.validators.in_(INCREMENTAL_METHODS))

    def __attrs_post_init__(self) -> None:
        check_level(check_codec(self.compression), self.level)

    def run(self, repo: Repository, *, progress: ProgressCallback | None = None) -> BackupManifest:
        """Take the backup; return its manifest once it is complete (and the WAL it needs is archived)."""
        info = server_info(self.dbname)
        started = now_utc()
        standby = self._check_archiving()
        parent = self._parent(repo)
        needs: list[str] = []
        if parent is not None:  # a block-level file needs its versions in every earlier link of the chain
            needs = sorted(_ancestors(repo, parent))
        # the claim records what it needs: expire and delete keep those files while it runs
        with writing_backup(repo, "base", started, needs=needs, title="base backup") as backup:
            if self.method == "local":
                files, physical, invalid = self._local(repo, backup.id, Meter("backup", progress), parent, standby)
                tool = f"PostgreSQL {info.version} (pg_backup_start/pg_backup_stop)"
            else:  # pg_basebackup stops the backup by itself: record the invalid indexes on both sides of it
                before = invalid_indexes_by_database(self.dbname)
                files, physical, tool = self._stream(repo, backup.id, Meter("backup", progress), standby)
                invalid = merge_index_records(before, invalid_indexes_by_database(self.dbname))
            return backup.finish(
                BackupManifest(
                    id=backup.id,
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
            )

    def _parent(self, repo: Repository) -> BackupManifest | None:
        if self.parent is None:
            return None
        if self.method != "local":
            raise ConfigurationError("incremental backups (parent=...) need method='local'")
        m = repo.get(self.parent, "base")
        if m.physical is None or m.physical.method != "local":
            raise ConfigurationError(f"backup {m.id} cannot be a parent: only local-method base backups can")
        return m

    def _check_archiving(self) -> bool:
        """Check that the server archives WAL (on a standby: the primary, when given, or the standby itself with
        ``archive_mode = always``); return whether the server is a standby."""
        with connect(self.dbname) as conn:
            mode, command, standby, sysid = conn.execute(_ARCHIVING_SQL).fetchone() or ("off", "", False, "")
        if standby and self.primary:
            with connect(self.primary, what="connect to the primary") as conn:
                mode, command, on_primary, primary_sysid = conn.execute(_ARCHIVING_SQL).fetchone() or ("", "", 1, "")
            if on_primary or primary_sysid != sysid:
                raise ConfigurationError(
                    f"{pgtools.describe(self.primary)} is not this standby's primary "
                    f"({'in recovery itself' if on_primary else f'system identifier {primary_sysid}, not {sysid}'})"
                )
        elif standby:  # the primary archives; we learn whether into this repository by waiting for the WAL
            return True
        if mode == "off" or not command:
            raise ConfigurationError(
                "base backups need WAL archiving: set archive_mode = on and archive_command to "
                "'pgrecovery --repo URL wal-push %p' (see docs/wal.md), then restart the server"
            )
        return bool(standby)

    # -- local method ----------------------------------------------------------------------------------------
    def _local(
        self, repo: Repository, backup_id: str, meter: Meter, parent: BackupManifest | None, standby: bool
    ) -> tuple[list[FileEntry], PhysicalInfo, dict[str, tuple[str, ...]] | None]:
        with connect(self.dbname) as conn:
            version = conn.info.server_version
            start_fn = "pg_backup_start(%s, %s)" if version >= 150000 else "pg_start_backup(%s, %s, false)"
            row = conn.execute(f"select {start_fn}::text", (self.label, self.fast_checkpoint)).fetchone()
            start_lsn = str(row[0]) if row else ""
            facts = conn.execute(
                "select current_setting('data_directory'), (select timeline_id from pg_control_checkpoint()), "
                "(select system_identifier from pg_control_system())::text, current_setting('data_checksums'), "
                f"{_SEGMENT_SIZE}, current_setting('block_size')::int",
            ).fetchone()
            assert facts is not None
            data_dir, timeline, sysid, checksums, seg_size, block_size = facts
            # the backup starts at the last checkpoint (a standby's: its last restartpoint), on that one's timeline
            start_wal = segment_for_lsn(start_lsn, int(timeline), int(seg_size))
            _check_same_cluster(parent, str(sysid))
            pgdata = self.pgdata or str(data_dir)
            if not os.path.isfile(os.path.join(pgdata, "PG_VERSION")):
                raise ConfigurationError(
                    f"{pgdata} is not readable as the server's data directory from this host: use method='stream'"
                )
            spaces = _tablespaces(conn)
            dirs, found = scan_data_directory(pgdata, spaces)
            meter.total = sum(f.size for f in found)
            planner = None
            if parent is not None:
                planner = plan_incremental(conn, parent, self.incremental, start_lsn, int(timeline), found)
            files, members = write_bundles(
                repo,
                backup_id,
                assign(found, self.workers),
                meter,
                planner,
                codec=check_codec(self.compression),
                level=self.level,
                threads=self.threads,
            )
            # The catalog as the restored copy will have it is the one at the stop: invalid indexes now are there
            invalid = invalid_indexes_by_database(self.dbname)
            # Stop without the server's own wait (it polls the archiver once a second); we wait below for the last
            # segment to be in *this* repository, which is the guarantee that matters.
            stop_fn = "pg_backup_stop(false)" if version >= 150000 else "pg_stop_backup(false, false)"
            stop = conn.execute(f"select lsn::text, labelfile, spcmapfile from {stop_fn}").fetchone()
            assert stop is not None
            stop_lsn, labelfile, spcmap = stop
            stop_wal, next_xid = self._stop_facts(conn, str(stop_lsn), int(seg_size), standby)
            self._wait_archived(repo, conn, stop_wal, standby)
        files.append(small_file(repo, backup_id, "backup_label", str(labelfile).encode()))
        if spcmap:
            files.append(small_file(repo, backup_id, "tablespace_map", str(spcmap).encode()))
        meter.finish()
        physical = PhysicalInfo(
            method="local",
            label=self.label,
            start_lsn=start_lsn,
            stop_lsn=str(stop_lsn),
            timeline=int(timeline),
            start_wal=str(start_wal),
            stop_wal=stop_wal,
            system_identifier=str(sysid),
            data_checksums=checksums == "on",
            wal_segment_size=int(seg_size),
            next_xid=next_xid,
            parent=parent.id if parent is not None else None,
            tablespaces=spaces,
            directories=dirs,
            members=members,
            incremental=planner.method if planner is not None else None,
            block_size=int(block_size),
        )
        return files, physical, invalid

    @staticmethod
    def _stop_facts(conn: Any, stop_lsn: str, seg_size: int, standby: bool) -> tuple[str, int]:
        """The WAL file holding the backup's end (named here: pg_walfile_name() fails during recovery) and the next
        transaction id."""
        timeline = _STOP_TIMELINE if standby else "(select timeline_id from pg_control_checkpoint())"
        name = "null" if standby else "pg_walfile_name(%s::pg_lsn)"
        row = conn.execute(
            f"select {timeline}, pg_snapshot_xmax(pg_current_snapshot())::text::bigint, {name}",
            () if standby else (stop_lsn,),
        ).fetchone()
        assert row is not None
        return str(row[2] or segment_for_lsn(stop_lsn, int(row[0]), seg_size)), int(row[1])

    def _wait_archived(self, repo: Repository, conn: Any, wal: str, standby: bool = False) -> None:
        """Wait until WAL file ``wal`` (the last one the backup needs) is stored in ``repo``. A standby cannot switch
        WAL: the primary is asked to (when ``primary`` is given), else its own switch or archive_timeout ends it."""
        from ..wal.archiver import WalArchiver
        from ..wal.server import read_stat_archiver

        archiver = WalArchiver(repo)
        if standby and self.primary and archiver.find(wal) is None:
            _switch_primary(self.primary)
        deadline = time.monotonic() + self.archive_timeout
        delay = 0.02
        while archiver.find(wal) is None:
            if time.monotonic() > deadline:
                if standby:
                    raise BackupError(_standby_timeout(wal, repo.display_url, self.archive_timeout, self.primary))
                stat = read_stat_archiver(conn)
                raise BackupError(
                    f"WAL file {wal}, which the backup needs, did not reach {repo.display_url} within "
                    f"{self.archive_timeout:.0f} s (last archived: {stat.last_archived_wal}, last failed: "
                    f"{stat.last_failed_wal}): check that archive_command pushes to this repository"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    # -- stream method ---------------------------------------------------------------------------------------
    def _stream(
        self, repo: Repository, backup_id: str, meter: Meter, standby: bool
    ) -> tuple[list[FileEntry], PhysicalInfo, str]:
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
        with connect(self.dbname) as conn:
            row = conn.execute(
                "select (select system_identifier from pg_control_system())::text, current_setting('data_checksums'),"
                f" {_SEGMENT_SIZE}, pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
            ).fetchone()
            assert row is not None
            seg = int(row[2])
            stop_wal = segment_for_lsn(stop_lsn, timeline, seg)
            if standby:  # pg_basebackup on a standby does not wait for the archive: the backup is usable once it is
                self._wait_archived(repo, conn, stop_wal, standby)
        physical = PhysicalInfo(
            method="stream",
            label=self.label,
            start_lsn=start_lsn,
            stop_lsn=stop_lsn,
            timeline=timeline,
            start_wal=segment_for_lsn(start_lsn, timeline, seg),
            stop_wal=stop_wal,
            system_identifier=str(row[0]),
            data_checksums=row[1] == "on",
            wal_segment_size=seg,
            next_xid=int(row[3]),
        )
        entry = FileEntry(path=f"data/{name}", size=obj.size, sha256=obj.sha256, codec=codec, raw_size=raw, role="base")
        return [entry], physical, tool.version


def _switch_primary(primary: str) -> None:
    """Ask the primary to write a record and end its WAL segment, so the archiver sends the one a standby's backup
    ends in. The record matters: a standby's backup may end exactly at a segment boundary (its minimum recovery
    point after a switch), and recovery proves it consistent only by reading a record at or after that point."""
    import psycopg

    with connect(primary, what="connect to the primary") as conn:
        try:
            conn.execute("select pg_logical_emit_message(false, 'pgrecovery', 'standby backup end')")
            conn.execute("select pg_switch_wal()")
        except psycopg.Error as e:
            raise BackupError(
                f"cannot switch WAL on the primary {pgtools.describe(primary)}: {first_line(e)}"
            ) from None


def _standby_timeout(wal: str, where: str, timeout: float, primary: str | None) -> str:
    """The one line a backup from a standby ends with when its last WAL file is not archived in time."""
    ask = (
        "the primary was asked to switch WAL: check that its archive_command pushes to this repository"
        if primary
        else "a standby cannot switch WAL: the wait ends once the primary switches and archives (set archive_timeout "
        "on the primary to bound it, or give the primary's conninfo with --primary-dbname / primary=...), and the "
        "primary's archive_command must push to this repository"
    )
    return (
        f"WAL file {wal}, which this backup from a standby needs, did not reach {where} within {timeout:.0f} s: {ask}"
    )


def _check_same_cluster(parent: BackupManifest | None, system_identifier: str) -> None:
    """A parent must be a backup of this cluster."""
    if parent is not None and parent.physical is not None and parent.physical.system_identifier != system_identifier:
        raise ConfigurationError(
            f"backup {parent.id} is of another cluster (system identifier "
            f"{parent.physical.system_identifier}, this one {system_identifier}): it cannot be the parent"
        )


def _ancestors(repo: Repository, parent: BackupManifest) -> set[str]:
    """``parent``, the backups it takes files from, and its own parents, up to the full backup."""
    out: set[str] = set()
    m: BackupManifest | None = parent
    while m is not None and m.id not in out and m.physical is not None:
        out.add(m.id)
        out.update(x.source for x in m.physical.members)
        m = repo.get(m.physical.parent, "base") if m.physical.parent else None
    return out


def _tablespaces(conn: Any) -> dict[str, str]:
    """The server's own tablespaces (OID -> location)."""
    return {
        str(oid): str(loc)
        for oid, loc in conn.execute(
            "select oid, pg_tablespace_location(oid) from pg_tablespace "
            "where spcname not in ('pg_default', 'pg_global')"
        ).fetchall()
    }


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
