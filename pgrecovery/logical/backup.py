"""Logical backups: pg_dump streamed into the repository, and restores of all or part of it.

>>> repo = Repository("file:///var/backups/pg")                                         # doctest: +SKIP
>>> m = LogicalBackup(dbname="host=db1 dbname=shop").run(repo)                          # doctest: +SKIP
>>> LogicalRestore(repo, m.id).run("host=db2 dbname=shop_copy", create=True)             # doctest: +SKIP

By default pg_dump runs uncompressed (``-Z0``) and its output is compressed with multi-threaded zstd as it
streams; ``compression="pg_dump"`` keeps pg_dump's own compression for a file that pg_restore reads directly.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import attrs

from .. import pgtools
from .._pgdb import ServerInfo, connect, invalid_indexes_by_database, merge_index_records, now_utc, server_info
from .._stream import fd_reader, pump, upload_file, widen_pipe
from .._version import __version__
from ..catalog import data_key, writing_backup
from ..codec import SUFFIX, Codec, check_codec, check_level
from ..errors import BackupError, ConfigurationError, ToolFailed
from ..manifest import FORMATS, BackupManifest, Compression, ContentSummary, FileEntry, Format
from ..progress import Meter, ProgressCallback
from ..repository import Repository
from ._archive import read_toc
from ._toc import summarize
from .restore import LogicalRestore, RestoreResult

_BIG_MEMBER: Final = 32 << 20  # directory-format members at least this big are compressed with all cores
_EXT: Final = {"custom": ".pgdump", "plain": ".sql", "tar": ".tar"}


def _at_least_one(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{attribute.name} must be a whole number of 1 or more, not {value!r}")


def _names(value: str | Iterable[str]) -> tuple[str, ...]:
    """A tuple of names; a single string is one name (not its characters)."""
    return (value,) if isinstance(value, str) else tuple(value)


# -- backups ------------------------------------------------------------------------------------------------------


def _resolve_compression(compression: str, level: int | None) -> tuple[Codec, int | None, int]:
    """(codec pgrecovery applies, its level, pg_dump's -Z level)."""
    if compression == "pg_dump":
        if level is not None and not 0 <= level <= 9:
            raise ConfigurationError(f"pg_dump compression level {level} is out of range: use 0..9")
        return "none", None, 6 if level is None else level
    codec = check_codec(compression)
    return codec, check_level(codec, level), 0


_PLAIN_MARKERS: Final = {
    b"; Type: TABLE; Schema: ": "TABLE",
    b"; Type: SCHEMA; Schema: ": "SCHEMA",
    b"\n-- Name: ": "*",
}


class _PlainCounter:
    """Counts object headers in a plain-format dump as it streams (for the manifest's summary)."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(_PLAIN_MARKERS.values(), 0)
        self._tail = b""

    def __call__(self, chunk: bytes) -> None:
        data = self._tail + chunk
        for marker, name in _PLAIN_MARKERS.items():
            # markers wholly inside the carried tail were counted last time
            self.counts[name] += data.count(marker) - self._tail.count(marker)
        self._tail = data[-(max(len(m) for m in _PLAIN_MARKERS) - 1) :]

    def summary(self) -> ContentSummary:
        return ContentSummary(
            schemas=self.counts["SCHEMA"],
            tables=self.counts["TABLE"],
            objects=self.counts["*"],
            by_type={"SCHEMA": self.counts["SCHEMA"], "TABLE": self.counts["TABLE"]},
        )


@attrs.frozen(kw_only=True)
class LogicalBackup:
    """A pg_dump of one database, streamed into a repository.

    ``dbname`` is a libpq connection string or URI ("" uses PGHOST, PGDATABASE, ...). ``compression`` is
    ``zstd`` (default, multi-threaded, applied as the dump streams), ``gzip``, ``lz4``, ``none``, or ``pg_dump``
    (pg_dump's own compression at ``level``). ``jobs`` > 1 needs ``format="directory"``.
    """

    dbname: str = ""
    format: Format = attrs.field(default="custom", validator=attrs.validators.in_(FORMATS))
    compression: Compression = "zstd"
    level: int | None = None
    threads: int = 0
    jobs: int = attrs.field(default=1, validator=_at_least_one)
    schemas: Sequence[str] = attrs.field(default=(), converter=_names)
    exclude_schemas: Sequence[str] = attrs.field(default=(), converter=_names)
    tables: Sequence[str] = attrs.field(default=(), converter=_names)
    exclude_tables: Sequence[str] = attrs.field(default=(), converter=_names)
    data_only: bool = False
    schema_only: bool = False
    no_owner: bool = False
    no_privileges: bool = False
    no_comments: bool = False
    clean: bool = False
    if_exists: bool = False
    create: bool = False
    workdir: str | None = None

    def __attrs_post_init__(self) -> None:
        _resolve_compression(self.compression, self.level)
        if self.data_only and self.schema_only:
            raise ConfigurationError("data_only and schema_only cannot both be set")
        if self.jobs > 1 and self.format != "directory":
            raise ConfigurationError("parallel dump (jobs > 1) needs format='directory'")
        if self.if_exists and not self.clean:
            raise ConfigurationError("if_exists needs clean=True")
        if self.compression == "pg_dump" and self.format == "tar":
            raise ConfigurationError("pg_dump cannot compress the tar format: use compression='zstd'")

    def options(self) -> dict[str, Any]:
        """The options as recorded in the manifest (no connection details)."""
        skip = {"dbname", "workdir"}
        return {
            a.name: (list(v) if isinstance(v, tuple) else v)
            for a in attrs.fields(type(self))
            if a.name not in skip and (v := getattr(self, a.name)) not in ((), False, None)
        }

    def run(self, repo: Repository, *, progress: ProgressCallback | None = None) -> BackupManifest:
        """Take the backup; return its manifest once it is complete (manifest written last)."""
        info = server_info(self.dbname)
        pg_dump = pgtools.find_tool("pg_dump", min_major=info.major)
        conninfo, env = pgtools.split_secret(self.dbname)
        started = now_utc()
        with writing_backup(repo, "logical", started, source=pgtools.describe(self.dbname)) as backup:
            backup_id = backup.id
            # pg_dump reads the catalog at its snapshot, between these two records: an index invalid at either
            # is recorded as invalid (a restore drill tells a faithful copy of it from damage)
            invalid_before = invalid_indexes_by_database(self.dbname, [info.database])
            meter = Meter("backup", progress)
            summary: ContentSummary | None
            try:
                if self.format == "directory":
                    files = self._dump_directory(repo, backup_id, pg_dump, conninfo, env, meter)
                    summary = _summary_from_stream(repo, backup_id, files, "directory")
                else:
                    entry, summary = self._dump_stream(repo, backup_id, pg_dump, conninfo, env, meter)
                    files = [entry]
                    if self.format != "plain":
                        summary = _summary_from_stream(repo, backup_id, files, self.format)
            except ToolFailed as e:  # on a hot standby, recovery may cancel a long dump: say what to change
                if "conflict with recovery" in str(e):
                    raise BackupError(RECOVERY_CONFLICT.format(pgtools.describe(self.dbname))) from None
                raise
            meter.finish()
            _, own_level, pg_level = _resolve_compression(self.compression, self.level)
            manifest = BackupManifest(
                id=backup_id,
                kind="logical",
                started_at=started,
                finished_at=now_utc(),
                format=self.format,
                compression=self.compression,
                compression_level=own_level if self.compression != "pg_dump" else pg_level,
                files=files,
                database=info.database,
                source=pgtools.public_conninfo(self.dbname),
                server_version=info.version,
                tool_version=pg_dump.version,
                options=self.options(),
                summary=summary,
                pgrecovery_version=__version__,
                invalid_indexes=merge_index_records(
                    invalid_before, invalid_indexes_by_database(self.dbname, [info.database])
                ),
            )
            manifest = backup.finish(manifest)
        return manifest

    def _command(self, pg_dump: pgtools.PgTool, conninfo: str, fmt: str, output: str | None) -> list[str]:
        _, _, pg_level = _resolve_compression(self.compression, self.level)
        return pgtools.pg_dump_command(
            pg_dump,
            conninfo,
            fmt=fmt,
            output=output,
            compress=pg_level,
            jobs=self.jobs,
            schemas=self.schemas,
            exclude_schemas=self.exclude_schemas,
            tables=self.tables,
            exclude_tables=self.exclude_tables,
            data_only=self.data_only,
            schema_only=self.schema_only,
            no_owner=self.no_owner,
            no_privileges=self.no_privileges,
            no_comments=self.no_comments,
            clean=self.clean,
            if_exists=self.if_exists,
            create=self.create,
        )

    def _dump_stream(
        self,
        repo: Repository,
        backup_id: str,
        pg_dump: pgtools.PgTool,
        conninfo: str,
        env: dict[str, str],
        meter: Meter,
    ) -> tuple[FileEntry, ContentSummary | None]:
        codec, own_level, _ = _resolve_compression(self.compression, self.level)
        stored_codec: Codec = codec
        if self.compression == "pg_dump" and self.format == "plain":
            stored_codec = "gzip"  # pg_dump -Fp -Z writes a gzip stream
        name = f"dump{_EXT[self.format]}{SUFFIX[stored_codec]}"
        counter = _PlainCounter() if self.format == "plain" and stored_codec == codec else None
        return _stream_program(
            repo,
            backup_id,
            name,
            self._command(pg_dump, conninfo, self.format, None),
            env=env,
            codec=codec,
            stored_codec=stored_codec,
            level=own_level,
            threads=self.threads,
            meter=meter,
            role="dump",
            inspect=counter,
            what="pg_dump",
        ), (counter.summary() if counter else None)

    def _dump_directory(
        self,
        repo: Repository,
        backup_id: str,
        pg_dump: pgtools.PgTool,
        conninfo: str,
        env: dict[str, str],
        meter: Meter,
    ) -> list[FileEntry]:
        codec, own_level, _ = _resolve_compression(self.compression, self.level)
        with tempfile.TemporaryDirectory(prefix="pgrecovery-dump-", dir=self.workdir) as tmp:
            out = Path(tmp) / "dump"
            pgtools.run(self._command(pg_dump, conninfo, "directory", str(out)), env=env, what="pg_dump")
            sizes = {p.name: p.stat().st_size for p in out.iterdir()}

            def one(name: str, threads: int = 1) -> FileEntry:
                stored_name = f"dump/{name}{SUFFIX[codec]}"
                obj, raw = upload_file(
                    repo,
                    out / name,
                    data_key(backup_id, stored_name),
                    codec,
                    level=own_level,
                    meter=meter,
                    threads=threads,
                )
                return FileEntry(
                    path=f"data/{stored_name}",
                    size=obj.size,
                    sha256=obj.sha256,
                    codec=codec,
                    raw_size=raw,
                    role=f"dump/{name}",
                )

            # Big members (one per large table) go one at a time with every core compressing, so that one
            # huge table does not leave the other workers idle; the many small ones go side by side.
            big = sorted((n for n, size in sizes.items() if size >= _BIG_MEMBER), key=lambda n: -sizes[n])
            entries = [one(n, threads=self.threads) for n in big]
            with ThreadPoolExecutor(max_workers=max(2, self.jobs)) as pool:
                entries += pool.map(one, sorted(n for n in sizes if n not in big))
            return sorted(entries, key=lambda e: e.path)


RECOVERY_CONFLICT: Final = (
    "pg_dump on the standby {} was cancelled by a conflict with recovery: set hot_standby_feedback = on, or raise "
    "max_standby_streaming_delay (and max_standby_archive_delay) on the standby above the dump's duration (see "
    "docs/recovery.md), or dump from the primary"
)


def _stream_program(
    repo: Repository,
    backup_id: str,
    name: str,
    cmd: list[str],
    *,
    env: dict[str, str],
    codec: Codec,
    stored_codec: Codec,
    level: int | None,
    threads: int,
    meter: Meter | None,
    role: str,
    inspect: Any = None,
    what: str,
) -> FileEntry:
    """Run a program and stream its stdout, compressed, into the backup's ``data/<name>``; commit only if it
    exits 0."""
    writer = repo.writer(data_key(backup_id, name))
    try:
        with pgtools.Spawned(cmd, env=env, stdout=subprocess.PIPE, what=what) as proc:
            assert proc.proc.stdout is not None
            fd = proc.proc.stdout.fileno()
            widen_pipe(fd)
            raw, _ = pump(fd_reader(fd), writer, codec, level=level, threads=threads, meter=meter, inspect=inspect)
            proc.check()
    except BaseException:
        writer.abort()
        raise
    obj = writer.commit()
    return FileEntry(path=f"data/{name}", size=obj.size, sha256=obj.sha256, codec=stored_codec, raw_size=raw, role=role)


def _summary_from_stream(repo: Repository, backup_id: str, files: Sequence[FileEntry], fmt: str) -> ContentSummary:
    return summarize(read_toc(repo, backup_id, files, fmt))


@attrs.frozen(kw_only=True)
class GlobalsBackup:
    """Cluster-wide objects (roles, tablespaces; or roles only) from ``pg_dumpall``, as their own backup kind."""

    dbname: str = ""
    roles_only: bool = False
    no_role_passwords: bool = False
    compression: Codec = "zstd"
    level: int | None = None

    def run(self, repo: Repository, *, progress: ProgressCallback | None = None) -> BackupManifest:
        info = server_info(self.dbname)
        started = now_utc()
        with writing_backup(repo, "globals", started, source=pgtools.describe(self.dbname)) as backup:
            backup_id = backup.id
            meter = Meter("backup", progress)
            entry, tool = _dump_globals(
                repo,
                backup_id,
                self.dbname,
                info,
                self.roles_only,
                self.no_role_passwords,
                check_codec(self.compression),
                self.level,
                meter,
            )
            meter.finish()
            manifest = BackupManifest(
                id=backup_id,
                kind="globals",
                started_at=started,
                finished_at=now_utc(),
                format="plain",
                compression=self.compression,
                compression_level=self.level,
                files=[entry],
                source=pgtools.public_conninfo(self.dbname),
                server_version=info.version,
                tool_version=tool.version,
                options={k: v for k, v in attrs.asdict(self).items() if k != "dbname" and v},
                pgrecovery_version=__version__,
            )
            manifest = backup.finish(manifest)
        return manifest


def _dump_globals(
    repo: Repository,
    backup_id: str,
    dbname: str,
    info: ServerInfo,
    roles_only: bool,
    no_role_passwords: bool,
    codec: Codec,
    level: int | None,
    meter: Meter | None,
) -> tuple[FileEntry, pgtools.PgTool]:
    tool = pgtools.find_tool("pg_dumpall", min_major=info.major)
    conninfo, env = pgtools.split_secret(dbname)
    cmd = pgtools.pg_dumpall_command(tool, conninfo, roles_only=roles_only)
    if no_role_passwords:
        cmd.append("--no-role-passwords")
    name = f"globals.sql{SUFFIX[codec]}"
    entry = _stream_program(
        repo,
        backup_id,
        name,
        cmd,
        env=env,
        codec=codec,
        stored_codec=codec,
        level=level,
        threads=1,
        meter=meter,
        role="globals",
        what="pg_dumpall",
    )
    return entry, tool


@attrs.frozen(kw_only=True)
class ClusterBackup:
    """The whole cluster, logically: globals plus a custom-format dump of every database that accepts connections."""

    dbname: str = ""
    compression: Codec = "zstd"
    level: int | None = None
    threads: int = 0
    exclude_databases: Sequence[str] = attrs.field(default=(), converter=_names)

    def run(self, repo: Repository, *, progress: ProgressCallback | None = None) -> BackupManifest:
        info = server_info(self.dbname)
        with connect(self.dbname) as conn:
            names = [
                r[0]
                for r in conn.execute(
                    "select datname from pg_database where datallowconn and not datistemplate order by datname"
                )
                if r[0] not in self.exclude_databases
            ]
        codec = check_codec(self.compression)
        pg_dump = pgtools.find_tool("pg_dump", min_major=info.major)
        started = now_utc()
        with writing_backup(repo, "cluster", started, source=pgtools.describe(self.dbname)) as backup:
            backup_id = backup.id
            meter = Meter("backup", progress)
            files = [_dump_globals(repo, backup_id, self.dbname, info, False, False, codec, self.level, meter)[0]]
            for i, name in enumerate(names):
                conninfo, env = pgtools.split_secret(pgtools.with_dbname(self.dbname, name))
                cmd = pgtools.pg_dump_command(pg_dump, conninfo, fmt="custom", compress=0)
                stored = f"db-{i:04d}.pgdump{SUFFIX[codec]}"
                files.append(
                    _stream_program(
                        repo,
                        backup_id,
                        stored,
                        cmd,
                        env=env,
                        codec=codec,
                        stored_codec=codec,
                        level=self.level,
                        threads=self.threads,
                        meter=meter,
                        role=f"database:{name}",
                        what=f"pg_dump of {name}",
                    )
                )
            meter.finish()
            manifest = BackupManifest(
                id=backup_id,
                kind="cluster",
                started_at=started,
                finished_at=now_utc(),
                format="custom",
                compression=self.compression,
                compression_level=self.level,
                files=files,
                databases=names,
                source=pgtools.public_conninfo(self.dbname),
                server_version=info.version,
                tool_version=pg_dump.version,
                options={"exclude_databases": list(self.exclude_databases)} if self.exclude_databases else {},
                pgrecovery_version=__version__,
            )
            manifest = backup.finish(manifest)
        return manifest


# re-exported: restores live in restore.py, the closed sets in the manifest
__all__ = [
    "FORMATS",
    "ClusterBackup",
    "Compression",
    "Format",
    "GlobalsBackup",
    "LogicalBackup",
    "LogicalRestore",
    "RestoreResult",
]
