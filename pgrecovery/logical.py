"""Logical backups: pg_dump streamed into the repository, and restores of all or part of it.

>>> repo = Repository("file:///var/backups/pg")                                         # doctest: +SKIP
>>> m = LogicalBackup(dbname="host=db1 dbname=shop").run(repo)                          # doctest: +SKIP
>>> LogicalRestore(repo, m.id).run("host=db2 dbname=shop_copy", create=True)             # doctest: +SKIP

By default pg_dump runs uncompressed (``-Z0``) and its output is compressed with multi-threaded zstd as it
streams; ``compression="pg_dump"`` keeps pg_dump's own compression for a file that pg_restore reads directly.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal

import attrs

from . import __version__, pgtools
from ._stream import Feeder, Readable, fd_reader, materialise, open_entry, pump, upload_file, widen_pipe
from ._toc import TocEntry, list_file_text, parse_toc, split_sql_blocks, summarize, table_entries
from .catalog import abandon_backup, claim_backup_id, data_key, finish_backup
from .codec import SUFFIX, Codec, check_codec, check_level
from .errors import (
    ChecksumMismatch,
    ConfigurationError,
    DatabaseError,
    PgRecoveryError,
    RestoreError,
    ToolFailed,
)
from .manifest import BackupManifest, ContentSummary, FileEntry
from .progress import Meter, ProgressCallback
from .storage import Repository

Format = Literal["custom", "directory", "plain", "tar"]
FORMATS: Final = ("custom", "directory", "plain", "tar")
Compression = Literal["zstd", "gzip", "lz4", "none", "pg_dump"]
_EXT: Final = {"custom": ".pgdump", "plain": ".sql", "tar": ".tar"}


# -- shared helpers ---------------------------------------------------------------------------------------------


@attrs.frozen
class ServerInfo:
    version_num: int
    version: str
    database: str

    @property
    def major(self) -> int:
        return self.version_num // 10000 if self.version_num >= 100000 else self.version_num // 100


def server_info(conninfo: str) -> ServerInfo:
    """Connect once to learn the server's version and the database name (and fail early and clearly)."""
    import psycopg

    try:
        with psycopg.connect(conninfo, connect_timeout=15, autocommit=True) as conn:
            row = conn.execute("select current_setting('server_version'), current_database()").fetchone()
            assert row is not None
            return ServerInfo(conn.info.server_version, str(row[0]), str(row[1]))
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatabaseError(
            f"cannot connect to {pgtools.describe(conninfo)}: {first}; check --dbname / PGHOST, PGPORT, "
            "PGUSER, PGDATABASE"
        ) from None


def _tool_major(text: str) -> int | None:
    m = re.search(r"\(PostgreSQL\)\s+(\d+)", text)
    return int(m.group(1)) if m else None


def _now() -> datetime:
    return datetime.now(UTC)


def _database_exists(conninfo: str, name: str) -> bool:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


def _maintenance(conninfo: str) -> str:
    return pgtools.with_dbname(conninfo, "postgres")


def create_database(conninfo: str) -> None:
    """CREATE DATABASE named by ``conninfo``'s dbname, connecting to the same server's ``postgres`` database."""
    import psycopg
    from psycopg import sql

    name = pgtools.conninfo_dict(conninfo).get("dbname") or os.environ.get("PGDATABASE")
    if not name:
        raise ConfigurationError("create=True needs a database name in the connection string (dbname=...)")
    admin = _maintenance(conninfo)
    try:
        if _database_exists(admin, name):
            raise RestoreError(
                f"database {name!r} already exists: restore into it without create, or choose a new name"
            )
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as e:
        raise DatabaseError(f"cannot create database {name!r} on {pgtools.describe(admin)}: {e}") from None


def drop_database(conninfo: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(_maintenance(conninfo), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _names(value: str | Iterable[str]) -> tuple[str, ...]:
    """A tuple of names; a single string is one name (not its characters)."""
    return (value,) if isinstance(value, str) else tuple(value)


# -- backups ------------------------------------------------------------------------------------------------------


def _resolve_compression(compression: str, level: int | None) -> tuple[Codec, int | None]:
    """(codec pgrecovery applies, level pg_dump gets or None for -Z0)."""
    if compression == "pg_dump":
        return "none", level
    codec = check_codec(compression)
    check_level(codec, level)
    return codec, None


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
    jobs: int = attrs.field(default=1, validator=attrs.validators.ge(1))
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
        started = _now()
        backup_id = claim_backup_id(repo, "logical", started)
        try:
            meter = Meter("backup", progress)
            if self.format == "directory":
                files = self._dump_directory(repo, backup_id, pg_dump, conninfo, env, meter)
                summary = _summary_from_stream(repo, backup_id, files, "directory")
            else:
                entry, plain_summary = self._dump_stream(repo, backup_id, pg_dump, conninfo, env, meter)
                files = [entry]
                summary = plain_summary or _summary_from_stream(repo, backup_id, files, self.format)
            meter.finish()
            codec, _ = _resolve_compression(self.compression, self.level)
            manifest = BackupManifest(
                id=backup_id,
                kind="logical",
                started_at=started,
                finished_at=_now(),
                format=self.format,
                compression=self.compression,
                compression_level=check_level(codec, self.level) if codec != "none" else self.level,
                files=files,
                database=info.database,
                source=pgtools.public_conninfo(self.dbname),
                server_version=info.version,
                tool_version=pg_dump.version,
                options=self.options(),
                summary=summary,
                pgrecovery_version=__version__,
            )
            finish_backup(repo, manifest)
        except BaseException:
            abandon_backup(repo, backup_id)
            raise
        return manifest

    def _command(self, pg_dump: pgtools.PgTool, conninfo: str, fmt: str, output: str | None) -> list[str]:
        _, pg_level = _resolve_compression(self.compression, self.level)
        return pgtools.pg_dump_command(
            pg_dump,
            conninfo,
            fmt=fmt,
            output=output,
            compress=pg_level if self.compression == "pg_dump" else 0,
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
        codec, _ = _resolve_compression(self.compression, self.level)
        stored_codec: Codec = codec
        if self.compression == "pg_dump" and self.format == "plain":
            stored_codec = "gzip"  # pg_dump -Fp -Z writes a gzip stream
        name = f"dump{_EXT[self.format]}{SUFFIX[stored_codec]}"
        counter = _PlainCounter() if self.format == "plain" and stored_codec == codec else None
        return _stream_program(
            repo,
            data_key(backup_id, name),
            self._command(pg_dump, conninfo, self.format, None),
            env=env,
            codec=codec,
            stored_codec=stored_codec,
            level=self.level,
            threads=self.threads,
            meter=meter,
            role="dump",
            path=f"data/{name}",
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
        codec, _ = _resolve_compression(self.compression, self.level)
        with tempfile.TemporaryDirectory(prefix="pgrecovery-dump-", dir=self.workdir) as tmp:
            out = Path(tmp) / "dump"
            pgtools.run(self._command(pg_dump, conninfo, "directory", str(out)), env=env, what="pg_dump")
            names = sorted(p.name for p in out.iterdir())

            def one(name: str) -> FileEntry:
                stored_name = f"dump/{name}{SUFFIX[codec]}"
                obj, raw = upload_file(
                    repo, out / name, data_key(backup_id, stored_name), codec, level=self.level, meter=meter
                )
                return FileEntry(
                    path=f"data/{stored_name}",
                    size=obj.size,
                    sha256=obj.sha256,
                    codec=codec,
                    raw_size=raw,
                    role=f"dump/{name}",
                )

            with ThreadPoolExecutor(max_workers=max(2, self.jobs)) as pool:
                return list(pool.map(one, names))


def _stream_program(
    repo: Repository,
    key: str,
    cmd: list[str],
    *,
    env: dict[str, str],
    codec: Codec,
    stored_codec: Codec,
    level: int | None,
    threads: int,
    meter: Meter | None,
    role: str,
    path: str,
    inspect: Any = None,
    what: str,
) -> FileEntry:
    """Run a program and stream its stdout, compressed, into ``key``; commit only if it exits 0."""
    writer = repo.writer(key)
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
    return FileEntry(path=path, size=obj.size, sha256=obj.sha256, codec=stored_codec, raw_size=raw, role=role)


def _summary_from_stream(repo: Repository, backup_id: str, files: Sequence[FileEntry], fmt: str) -> ContentSummary:
    return summarize(_read_toc(repo, backup_id, files, fmt))


@attrs.frozen(kw_only=True)
class GlobalsBackup:
    """Cluster-wide objects (roles, tablespaces; or roles only) from ``pg_dumpall``, as their own backup kind."""

    dbname: str = ""
    roles_only: bool = False
    no_role_passwords: bool = False
    compression: Literal["zstd", "gzip", "lz4", "none"] = "zstd"
    level: int | None = None

    def run(self, repo: Repository, *, progress: ProgressCallback | None = None) -> BackupManifest:
        info = server_info(self.dbname)
        started = _now()
        backup_id = claim_backup_id(repo, "globals", started)
        try:
            entry, tool = _dump_globals(
                repo,
                backup_id,
                self.dbname,
                info,
                self.roles_only,
                self.no_role_passwords,
                check_codec(self.compression),
                self.level,
                Meter("backup", progress),
            )
            manifest = BackupManifest(
                id=backup_id,
                kind="globals",
                started_at=started,
                finished_at=_now(),
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
            finish_backup(repo, manifest)
        except BaseException:
            abandon_backup(repo, backup_id)
            raise
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
        data_key(backup_id, name),
        cmd,
        env=env,
        codec=codec,
        stored_codec=codec,
        level=level,
        threads=1,
        meter=meter,
        role="globals",
        path=f"data/{name}",
        what="pg_dumpall",
    )
    return entry, tool


@attrs.frozen(kw_only=True)
class ClusterBackup:
    """The whole cluster, logically: globals plus a custom-format dump of every database that accepts connections."""

    dbname: str = ""
    compression: Literal["zstd", "gzip", "lz4", "none"] = "zstd"
    level: int | None = None
    threads: int = 0
    exclude_databases: Sequence[str] = attrs.field(default=(), converter=_names)

    def run(self, repo: Repository, *, progress: ProgressCallback | None = None) -> BackupManifest:
        import psycopg

        info = server_info(self.dbname)
        with psycopg.connect(self.dbname, autocommit=True) as conn:
            names = [
                r[0]
                for r in conn.execute(
                    "select datname from pg_database where datallowconn and not datistemplate order by datname"
                )
                if r[0] not in self.exclude_databases
            ]
        codec = check_codec(self.compression)
        pg_dump = pgtools.find_tool("pg_dump", min_major=info.major)
        started = _now()
        backup_id = claim_backup_id(repo, "cluster", started)
        meter = Meter("backup", progress)
        try:
            files = [_dump_globals(repo, backup_id, self.dbname, info, False, False, codec, self.level, meter)[0]]
            for i, name in enumerate(names):
                conninfo, env = pgtools.split_secret(pgtools.with_dbname(self.dbname, name))
                cmd = pgtools.pg_dump_command(pg_dump, conninfo, fmt="custom", compress=0)
                stored = f"db-{i:04d}.pgdump{SUFFIX[codec]}"
                files.append(
                    _stream_program(
                        repo,
                        data_key(backup_id, stored),
                        cmd,
                        env=env,
                        codec=codec,
                        stored_codec=codec,
                        level=self.level,
                        threads=self.threads,
                        meter=meter,
                        role=f"database:{name}",
                        path=f"data/{stored}",
                        what=f"pg_dump of {name}",
                    )
                )
            meter.finish()
            manifest = BackupManifest(
                id=backup_id,
                kind="cluster",
                started_at=started,
                finished_at=_now(),
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
            finish_backup(repo, manifest)
        except BaseException:
            abandon_backup(repo, backup_id)
            raise
        return manifest


# -- reading archives ----------------------------------------------------------------------------------------------


def _entry_key(backup_id: str, entry: FileEntry) -> str:
    return f"backups/{backup_id}/{entry.path}"


def _pg_restore(min_major: int | None) -> pgtools.PgTool:
    return pgtools.find_tool("pg_restore", min_major=min_major)


@contextlib.contextmanager
def _directory_archive(
    repo: Repository, backup_id: str, files: Sequence[FileEntry], workdir: str | None, only_toc: bool = False
) -> Iterator[Path]:
    """A local copy of a directory-format dump (decompressed, verified), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="pgrecovery-restore-", dir=workdir) as tmp:
        root = Path(tmp) / "dump"
        root.mkdir()
        wanted = [f for f in files if f.role.startswith("dump/") and (not only_toc or f.role == "dump/toc.dat")]

        def one(f: FileEntry) -> None:
            materialise(repo, _entry_key(backup_id, f), f, root / f.role.split("/", 1)[1])

        with ThreadPoolExecutor(max_workers=4) as pool:
            for fut in [pool.submit(one, f) for f in wanted]:
                fut.result()
        yield root


def _run_fed(cmd: list[str], src: Readable, *, env: dict[str, str] | None, what: str, capture: bool) -> bytes:
    """Run ``cmd`` with ``src`` on its stdin; return its stdout when ``capture``."""
    out_file = tempfile.TemporaryFile() if capture else None  # noqa: SIM115 - closed in finally
    try:
        with pgtools.Spawned(
            cmd, env=env, stdin=subprocess.PIPE, stdout=out_file or subprocess.DEVNULL, what=what
        ) as proc:
            assert proc.proc.stdin is not None
            feeder = Feeder(src, proc.proc.stdin)
            feeder.start()
            code = proc.wait()
            feeder.join()
            if feeder.error is not None:
                proc.kill()
                if isinstance(feeder.error, PgRecoveryError):
                    raise feeder.error
                raise RestoreError(f"reading the backup failed: {feeder.error}; the stored object is damaged")
            if code != 0:
                raise ToolFailed(pgtools.failure_text(what, code, proc.stderr_text()))
        if out_file is None:
            return b""
        out_file.seek(0)
        return out_file.read()
    finally:
        if out_file is not None:
            out_file.close()


def _read_toc(repo: Repository, backup_id: str, files: Sequence[FileEntry], fmt: str) -> list[TocEntry]:
    tool = _pg_restore(None)
    if fmt == "plain":
        raise ConfigurationError("a plain-format backup has no table of contents: take a custom-format backup")
    if fmt == "directory":
        with _directory_archive(repo, backup_id, files, None, only_toc=True) as d:
            out = pgtools.run(pgtools.pg_restore_command(tool, list_only=True, fmt="directory", archive=str(d)))
            return parse_toc(out.stdout.decode(errors="replace"))
    entry = next(f for f in files if f.role == "dump")
    with open_entry(repo, _entry_key(backup_id, entry), entry, verify=False) as src:
        out_bytes = _run_fed(
            pgtools.pg_restore_command(tool, list_only=True),
            src,
            env=None,
            what="pg_restore -l",
            capture=True,
        )
    return parse_toc(out_bytes.decode(errors="replace"))


# -- restores -------------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RestoreResult:
    """What a restore did."""

    backup_id: str
    database: str | None
    seconds: float
    entries: int | None = None
    rows: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


class LogicalRestore:
    """Restores from one logical, globals or cluster backup (``"latest"`` resolves to the newest logical one)."""

    def __init__(self, repo: Repository, backup_id: str = "latest", *, workdir: str | None = None) -> None:
        self.repo = repo
        self.manifest = repo.get(backup_id, "logical" if backup_id == "latest" else None)
        self.workdir = workdir
        if self.manifest.kind not in ("logical", "globals", "cluster"):
            raise ConfigurationError(f"backup {self.manifest.id} is a {self.manifest.kind} backup, not a logical one")

    @property
    def _dump_major(self) -> int | None:
        return _tool_major(self.manifest.tool_version)

    def _key(self, entry: FileEntry) -> str:
        return _entry_key(self.manifest.id, entry)

    # -- table of contents --------------------------------------------------------------------------------------
    def contents(self) -> list[TocEntry]:
        """The archive's table of contents as typed entries (``pg_restore -l``)."""
        m = self.manifest
        if m.kind != "logical":
            raise ConfigurationError(f"backup {m.id} is a {m.kind} backup: contents are listed for logical backups")
        return _read_toc(self.repo, m.id, m.files, m.format)

    # -- whole or selective restore -----------------------------------------------------------------------------
    def run(
        self,
        dbname: str = "",
        *,
        create: bool = False,
        schemas: Sequence[str] = (),
        tables: Sequence[str] = (),
        entries: Sequence[TocEntry] | None = None,
        jobs: int = 1,
        clean: bool = False,
        if_exists: bool = False,
        no_owner: bool = False,
        no_privileges: bool = False,
        data_only: bool = False,
        schema_only: bool = False,
        exit_on_error: bool = True,
        single_transaction: bool = False,
        progress: ProgressCallback | None = None,
    ) -> RestoreResult:
        """Restore into the database ``dbname`` names (created first with ``create=True``).

        ``entries`` restores exactly those table-of-contents entries (filter `contents()`); ``schemas`` and
        ``tables`` select like pg_restore's -n / -t. For a cluster backup ``dbname`` names the server and
        every database is created there; for a globals backup the roles are created (existing ones kept).
        """
        m = self.manifest
        t0 = time.monotonic()
        if jobs < 1:
            raise ConfigurationError("jobs must be at least 1")
        if m.kind == "globals":
            self._restore_globals(dbname, progress)
            return RestoreResult(backup_id=m.id, database=None, seconds=time.monotonic() - t0)
        if m.kind == "cluster":
            return self._restore_cluster(dbname, jobs=jobs, progress=progress, t0=t0)
        selective = bool(schemas or tables or entries is not None)
        if m.format == "plain" and (selective or jobs > 1 or data_only or schema_only):
            raise ConfigurationError(
                f"backup {m.id} is plain SQL: it can only be restored whole and serially "
                "(take a custom-format backup for selective or parallel restores)"
            )
        if single_transaction and jobs > 1:
            raise ConfigurationError("single_transaction cannot be combined with parallel jobs")
        if m.format == "tar" and jobs > 1:
            raise ConfigurationError("pg_restore cannot restore the tar format in parallel: use jobs=1")
        if create:
            create_database(dbname)
        else:
            server_info(dbname)  # a clear error now rather than pg_restore's later
        conninfo, env = pgtools.split_secret(dbname)
        meter = Meter("restore", progress, total=m.raw_size)
        try:
            if m.format == "plain":
                self._restore_plain(conninfo, env, meter, single_transaction)
            else:
                self._restore_archive(
                    conninfo,
                    env,
                    meter,
                    entries=entries,
                    jobs=jobs,
                    opts={
                        "schemas": schemas,
                        "tables": tables,
                        "clean": clean,
                        "if_exists": if_exists,
                        "no_owner": no_owner,
                        "no_privileges": no_privileges,
                        "data_only": data_only,
                        "schema_only": schema_only,
                        "exit_on_error": exit_on_error,
                        "single_transaction": single_transaction,
                    },
                )
        except ToolFailed as e:
            raise RestoreError(f"restore of backup {m.id} into {pgtools.describe(dbname)} failed: {e}") from None
        meter.finish()
        name = pgtools.conninfo_dict(dbname).get("dbname") or os.environ.get("PGDATABASE")
        return RestoreResult(
            backup_id=m.id,
            database=name,
            seconds=time.monotonic() - t0,
            entries=len(entries) if entries is not None else None,
        )

    def _restore_plain(self, conninfo: str, env: dict[str, str], meter: Meter, single: bool) -> None:
        psql = pgtools.find_tool("psql")
        entry = self.manifest.file("dump")
        with open_entry(self.repo, self._key(entry), entry) as src:
            _run_fed(
                pgtools.psql_command(psql, conninfo, single_transaction=single),
                _Metered(src, meter),
                env=env,
                what="psql",
                capture=False,
            )

    def _restore_archive(
        self,
        conninfo: str,
        env: dict[str, str],
        meter: Meter,
        *,
        entries: Sequence[TocEntry] | None,
        jobs: int,
        opts: dict[str, Any],
    ) -> None:
        m = self.manifest
        tool = _pg_restore(self._dump_major)
        with contextlib.ExitStack() as stack:
            list_path = None
            if entries is not None:
                if not entries:
                    raise ConfigurationError("the list of entries to restore is empty")
                fd, list_path = tempfile.mkstemp(prefix="pgrecovery-toc-", suffix=".list", dir=self.workdir)
                stack.callback(os.unlink, list_path)
                with os.fdopen(fd, "w") as f:
                    f.write(list_file_text(entries))
            if m.format == "directory":
                d = stack.enter_context(_directory_archive(self.repo, m.id, m.files, self.workdir))
                cmd = pgtools.pg_restore_command(
                    tool,
                    conninfo=conninfo,
                    fmt="directory",
                    archive=str(d),
                    use_list=list_path,
                    jobs=jobs,
                    **opts,
                )
                pgtools.run(cmd, env=env, what="pg_restore")
                return
            entry = m.file("dump")
            if jobs > 1:
                local = self.repo.local_path(self._key(entry)) if entry.codec == "none" else None
                if local is None:
                    tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="pgrecovery-", dir=self.workdir))
                    local = Path(tmpdir) / "dump.pgdump"
                    materialise(self.repo, self._key(entry), entry, local, meter)
                else:
                    self._check_stored(entry)
                cmd = pgtools.pg_restore_command(
                    tool, conninfo=conninfo, archive=str(local), use_list=list_path, jobs=jobs, **opts
                )
                pgtools.run(cmd, env=env, what="pg_restore")
                return
            cmd = pgtools.pg_restore_command(tool, conninfo=conninfo, use_list=list_path, **opts)
            with open_entry(self.repo, self._key(entry), entry) as src:
                _run_fed(cmd, _Metered(src, meter), env=env, what="pg_restore", capture=False)

    def _check_stored(self, entry: FileEntry) -> None:
        size, digest = self.repo.digest(self._key(entry))
        if size != entry.size or digest != entry.sha256:
            raise ChecksumMismatch(f"{self._key(entry)} is corrupt (size or sha256 differs from the manifest)")

    def _restore_globals(self, dbname: str, progress: ProgressCallback | None, entry: FileEntry | None = None) -> None:
        """Run the globals SQL, skipping roles that already exist (a fresh cluster already has its superuser)."""
        entry = entry or self.manifest.file("globals")
        with open_entry(self.repo, self._key(entry), entry) as src:
            text = src.read().decode()
        sql = re.sub(
            r"^CREATE ROLE (.+);$",
            r"DO $pgrecovery$ BEGIN CREATE ROLE \1; EXCEPTION WHEN duplicate_object THEN NULL; END $pgrecovery$;",
            text,
            flags=re.M,
        )
        target = dbname if pgtools.conninfo_dict(dbname).get("dbname") else pgtools.with_dbname(dbname, "postgres")
        conninfo, env = pgtools.split_secret(target)
        psql = pgtools.find_tool("psql")
        try:
            pgtools.run(pgtools.psql_command(psql, conninfo), input=sql.encode(), env=env, what="psql (globals)")
        except ToolFailed as e:
            raise RestoreError(f"restoring globals from {self.manifest.id} failed: {e}") from None

    def _restore_cluster(
        self, dbname: str, *, jobs: int, progress: ProgressCallback | None, t0: float
    ) -> RestoreResult:
        m = self.manifest
        self._restore_globals(dbname, progress, m.file("globals"))
        tool = _pg_restore(self._dump_major)
        for entry in m.files:
            if not entry.role.startswith("database:"):
                continue
            name = entry.role.split(":", 1)[1]
            target = pgtools.with_dbname(dbname, name)
            if not _database_exists(_maintenance(dbname), name):
                create_database(target)
            conninfo, env = pgtools.split_secret(target)
            cmd = pgtools.pg_restore_command(tool, conninfo=conninfo, exit_on_error=False)
            try:
                with open_entry(self.repo, self._key(entry), entry) as src:
                    _run_fed(cmd, src, env=env, what=f"pg_restore of {name}", capture=False)
            except ToolFailed as e:
                raise RestoreError(f"restoring database {name} from {m.id} failed: {e}") from None
        return RestoreResult(backup_id=m.id, database=None, seconds=time.monotonic() - t0)

    # -- table-level recovery -------------------------------------------------------------------------------------
    def _split_table(self, table: str, schema: str | None) -> tuple[str, str]:
        if schema is None:
            schema, _, name = table.rpartition(".")
            return schema or "public", name
        return schema, table

    def table_entries(
        self,
        table: str,
        *,
        schema: str | None = None,
        data: bool = True,
        definition: bool = True,
        extras: bool = True,
        foreign_keys: bool = True,
        toc: Sequence[TocEntry] | None = None,
    ) -> list[TocEntry]:
        """The TOC entries that recreate one table: definition, data, indexes, constraints, defaults, owned
        sequences, triggers, comments and grants."""
        schema, name = self._split_table(table, schema)
        toc = list(toc) if toc is not None else self.contents()
        if not any(e.type == "TABLE" and e.schema == schema and e.name == name for e in toc):
            raise ConfigurationError(f"backup {self.manifest.id} has no table {schema}.{name}")
        candidates = [e for e in toc if e.schema == schema and e.type in ("INDEX", "SEQUENCE", "SEQUENCE OWNED BY")]
        sql = self._entries_sql(candidates, schema_only=True) if candidates and extras else ""
        return table_entries(
            toc,
            schema,
            name,
            definition_sql=split_sql_blocks(sql),
            data=data,
            definition=definition,
            extras=extras,
            foreign_keys=foreign_keys,
        )

    def _entries_sql(self, entries: Sequence[TocEntry], *, schema_only: bool = False) -> str:
        """pg_restore's SQL for exactly ``entries``."""
        m = self.manifest
        tool = _pg_restore(self._dump_major)
        fd, list_path = tempfile.mkstemp(prefix="pgrecovery-toc-", suffix=".list", dir=self.workdir)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(list_file_text(entries))
            if m.format == "directory":
                with _directory_archive(self.repo, m.id, m.files, self.workdir) as d:
                    cmd = pgtools.pg_restore_command(
                        tool,
                        output="-",
                        fmt="directory",
                        archive=str(d),
                        use_list=list_path,
                        schema_only=schema_only,
                    )
                    return pgtools.run(cmd, what="pg_restore").stdout.decode()
            entry = m.file("dump")
            cmd = pgtools.pg_restore_command(tool, output="-", use_list=list_path, schema_only=schema_only)
            with open_entry(self.repo, self._key(entry), entry) as src:
                return _run_fed(cmd, src, env=None, what="pg_restore", capture=True).decode()
        finally:
            os.unlink(list_path)

    def extract_table(
        self, table: str, *, schema: str | None = None, data: bool = True, definition: bool = True
    ) -> str:
        """SQL that recreates one table (definition and/or data) as it was in the backup."""
        return self._entries_sql(self.table_entries(table, schema=schema, data=data, definition=definition))

    def restore_table(
        self,
        table: str,
        dbname: str = "",
        *,
        schema: str | None = None,
        new_name: str | None = None,
        data: bool = True,
        definition: bool = True,
    ) -> RestoreResult:
        """Recreate one table from the backup in a live database, under its own name or ``new_name``.

        Under its own name the table must not exist (it is never overwritten). Under ``new_name`` it is loaded
        through a scratch database on the same server (created and dropped here), so nothing in the target but
        the new table is touched; it carries columns, data, constraints except foreign keys, and indexes.
        """
        import psycopg
        from psycopg import sql

        schema, name = self._split_table(table, schema)
        t0 = time.monotonic()
        final = new_name or name
        try:
            with psycopg.connect(dbname, autocommit=True) as conn:
                row = conn.execute("select to_regclass(%s)", (f'"{schema}"."{final}"',)).fetchone()
        except psycopg.Error as e:
            raise DatabaseError(f"cannot connect to {pgtools.describe(dbname)}: {e}") from None
        if row and row[0] is not None and definition:
            raise RestoreError(
                f"table {schema}.{final} already exists in {pgtools.describe(dbname)}: drop or rename it, or "
                "restore under another name (new_name=...)"
            )
        toc = self.contents()
        if new_name is None or new_name == name:
            picked = self.table_entries(name, schema=schema, data=data, definition=definition, toc=toc)
            self.run(dbname, entries=picked)
        else:
            self._restore_renamed(dbname, schema, name, new_name, toc, data=data)
        with psycopg.connect(dbname, autocommit=True) as conn:
            count = conn.execute(
                sql.SQL("select count(*) from {}.{}").format(sql.Identifier(schema), sql.Identifier(final))
            ).fetchone()
        return RestoreResult(
            backup_id=self.manifest.id,
            database=pgtools.conninfo_dict(dbname).get("dbname"),
            seconds=time.monotonic() - t0,
            rows=int(count[0]) if count else None,
        )

    def _restore_renamed(
        self, dbname: str, schema: str, name: str, new_name: str, toc: Sequence[TocEntry], *, data: bool
    ) -> None:
        import secrets

        import psycopg
        from psycopg import sql

        picked = [
            e
            for e in self.table_entries(name, schema=schema, data=data, foreign_keys=False, toc=toc)
            if e.type in ("TABLE", "TABLE DATA", "CONSTRAINT", "INDEX")
        ]
        scratch = f"pgrecovery_scratch_{secrets.token_hex(4)}"
        scratch_ci = pgtools.with_dbname(dbname, scratch)
        create_database(scratch_ci)
        try:
            with psycopg.connect(scratch_ci, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            self.run(scratch_ci, entries=picked, no_owner=True, no_privileges=True)
            with psycopg.connect(scratch_ci, autocommit=True) as conn:
                indexes = conn.execute(
                    "select i.relname from pg_index x join pg_class i on i.oid = x.indexrelid "
                    "where x.indrelid = to_regclass(%s)",
                    (f'"{schema}"."{name}"',),
                ).fetchall()
                conn.execute(
                    sql.SQL("ALTER TABLE {}.{} RENAME TO {}").format(
                        sql.Identifier(schema), sql.Identifier(name), sql.Identifier(new_name)
                    )
                )
                for (idx,) in indexes:
                    renamed = (new_name + idx[len(name) :]) if idx.startswith(name) else f"{new_name}_{idx}"
                    conn.execute(
                        sql.SQL("ALTER INDEX {}.{} RENAME TO {}").format(
                            sql.Identifier(schema), sql.Identifier(idx), sql.Identifier(renamed[:63])
                        )
                    )
            info = server_info(scratch_ci)
            pg_dump = pgtools.find_tool("pg_dump", min_major=info.major)
            pg_restore = _pg_restore(info.major)
            src_ci, env = pgtools.split_secret(scratch_ci)
            dst_ci, dst_env = pgtools.split_secret(dbname)
            dump = pgtools.pg_dump_command(
                pg_dump, src_ci, fmt="custom", compress=0, tables=[f'"{schema}"."{new_name}"']
            )
            with pgtools.Spawned(dump, env=env, stdout=subprocess.PIPE, what="pg_dump (scratch)") as producer:
                assert producer.proc.stdout is not None
                try:
                    _run_fed(
                        pgtools.pg_restore_command(pg_restore, conninfo=dst_ci, no_owner=True),
                        producer.proc.stdout,
                        env=dst_env,
                        what="pg_restore",
                        capture=False,
                    )
                finally:
                    producer.check()
        except ToolFailed as e:
            raise RestoreError(f"restoring {schema}.{name} as {new_name} failed: {e}") from None
        finally:
            drop_database(dbname, scratch)


class _Metered:
    """A read-through stream that reports progress."""

    def __init__(self, src: BinaryIO, meter: Meter) -> None:
        self.src, self.meter = src, meter

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.meter.add(len(data))
        return data

    def close(self) -> None:
        self.src.close()

    def __enter__(self) -> _Metered:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
