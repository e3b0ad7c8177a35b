"""Restoring logical backups: whole, selective (schemas, tables, TOC entries), globals, clusters, one table.

>>> r = LogicalRestore(repo, "latest")                                           # doctest: +SKIP
>>> r.run("host=db2 dbname=shop_copy", create=True, jobs=4)                       # doctest: +SKIP
>>> r.restore_table("orders", "host=db1 dbname=shop", new_name="orders_before")   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from .. import pgtools
from .._pgdb import (
    connect,
    create_database,
    database_exists,
    drop_database,
    first_line,
    maintenance,
    refuse_standby,
    server_info,
    tool_major,
)
from .._stream import check_stored, materialise, open_entry
from ..errors import (
    ConfigurationError,
    DatabaseError,
    RestoreError,
    ToolFailed,
)
from ..manifest import BackupManifest, FileEntry
from ..progress import Meter, ProgressCallback
from ..repository import Repository
from ._archive import Metered, directory_archive, entry_key, find_pg_restore, read_toc, run_fed
from ._tables import copy_table, rename_table
from ._toc import TocEntry, list_file_text, schema_entries, split_sql_blocks, table_entries


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
        return tool_major(self.manifest.tool_version)

    def _key(self, entry: FileEntry) -> str:
        return entry_key(self.manifest.id, entry)

    # -- table of contents --------------------------------------------------------------------------------------
    def list_contents(self) -> list[TocEntry]:
        """The archive's table of contents as typed entries (``pg_restore -l``)."""
        m = self.manifest
        if m.kind != "logical":
            raise ConfigurationError(f"backup {m.id} is a {m.kind} backup: contents are listed for logical backups")
        return read_toc(self.repo, m.id, m.files, m.format)

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
        disable_triggers: bool = False,
        exit_on_error: bool = True,
        single_transaction: bool = False,
        verify_first: bool = True,
        progress: ProgressCallback | None = None,
    ) -> RestoreResult:
        """Restore into the database ``dbname`` names (created first with ``create=True``).

        For a logical backup (one database) the connection string must name the database (``dbname=...``, or
        PGDATABASE / a service): one that names none is refused rather than restored into libpq's default
        database. The result's ``database`` is the database restored into.

        ``entries`` restores exactly those table-of-contents entries (filter `list_contents()`); ``schemas`` restores
        whole schemas (created when the target lacks them); ``tables`` selects like pg_restore's -t.
        ``verify_first`` re-reads the stored files and checks them against the manifest before anything is
        written to the database (one extra read; corruption is also caught while streaming, but by then part of
        the dump may be applied). For a cluster backup ``dbname`` names the server and every database is created
        there; for a globals backup the roles are created (existing ones kept). A database created here is
        dropped again if the restore fails.
        """
        m = self.manifest
        t0 = time.monotonic()
        self._preflight(dbname, jobs=jobs, verify_first=verify_first)
        if m.kind == "globals":
            self._restore_globals(dbname, progress)
            return RestoreResult(backup_id=m.id, database=None, seconds=time.monotonic() - t0)
        if m.kind == "cluster":
            return self._restore_cluster(dbname, jobs=jobs, progress=progress, t0=t0)
        whole = not (schemas or tables or entries is not None or data_only or schema_only or disable_triggers)
        _check_options(m, whole=whole, jobs=jobs, single_transaction=single_transaction)
        if create:
            create_database(dbname)
            database = _dbname_of(dbname)
        else:
            database = server_info(dbname).database  # a clear error now rather than pg_restore's later
        with self._undone_on_failure(dbname, create):
            if schemas and entries is None:
                entries = self._schema_entries(dbname, schemas, tables)
                schemas, tables = (), ()
            conninfo, env = pgtools.split_secret(dbname)
            meter = Meter("restore", progress, total=m.raw_size)
            if m.format == "plain":
                self._restore_plain(conninfo, env, meter, single_transaction)
            else:
                opts = {
                    "schemas": schemas,
                    "tables": tables,
                    "clean": clean,
                    "if_exists": if_exists,
                    "no_owner": no_owner,
                    "no_privileges": no_privileges,
                    "data_only": data_only,
                    "schema_only": schema_only,
                    "disable_triggers": disable_triggers,
                    "exit_on_error": exit_on_error,
                    "single_transaction": single_transaction,
                }
                self._restore_archive(conninfo, env, meter, entries=entries, jobs=jobs, opts=opts)
            meter.finish()
        return RestoreResult(
            backup_id=m.id,
            database=database,
            seconds=time.monotonic() - t0,
            entries=len(entries) if entries is not None else None,
        )

    def _preflight(self, dbname: str, *, jobs: int, verify_first: bool) -> None:
        """Refuse what cannot work before anything is written: a bad ``jobs``, a logical backup's target that
        names no database, stored files that no longer match the manifest (``verify_first``)."""
        m = self.manifest
        if jobs < 1:
            raise ConfigurationError("jobs must be at least 1")
        if m.kind == "logical":
            require_dbname(dbname, f"backup {m.id} is a dump of database {m.database!r}")
        refuse_standby(dbname, "restore into its primary")
        if verify_first:
            for f in m.files:
                check_stored(self.repo, self._key(f), f)

    @contextlib.contextmanager
    def _undone_on_failure(self, dbname: str, create: bool) -> Iterator[None]:
        """On failure, drop the database this restore created; a failing program becomes `RestoreError`."""
        try:
            yield
        except BaseException as e:
            created = _dbname_of(dbname) if create else None
            if created:
                with contextlib.suppress(Exception):
                    drop_database(dbname, created)
            if isinstance(e, ToolFailed):
                raise RestoreError(
                    f"restore of backup {self.manifest.id} into {pgtools.describe(dbname)} failed: {e}"
                ) from None
            raise

    def _schema_entries(self, dbname: str, schemas: Sequence[str], tables: Sequence[str]) -> list[TocEntry]:
        """Every entry of ``schemas`` (restricted to ``tables`` when given), plus the schemas themselves when
        the target does not have them yet (pg_restore -n alone would not create them)."""
        with connect(dbname) as conn:
            present = {
                r[0] for r in conn.execute("select nspname from pg_namespace where nspname = any(%s)", (list(schemas),))
            }
        try:
            return schema_entries(self.list_contents(), schemas, tables, present=present)
        except KeyError as e:
            raise ConfigurationError(f"backup {self.manifest.id} has no schema {e.args[0]}") from None

    def _restore_plain(self, conninfo: str, env: dict[str, str], meter: Meter, single: bool) -> None:
        psql = pgtools.find_tool("psql")
        entry = self.manifest.file("dump")
        with open_entry(self.repo, self._key(entry), entry) as src:
            run_fed(
                pgtools.psql_command(psql, conninfo, single_transaction=single),
                Metered(src, meter),
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
        tool = find_pg_restore(self._dump_major)
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
                d = stack.enter_context(directory_archive(self.repo, m.id, m.files, self.workdir))
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
                cmd = pgtools.pg_restore_command(
                    tool, conninfo=conninfo, archive=str(local), use_list=list_path, jobs=jobs, **opts
                )
                pgtools.run(cmd, env=env, what="pg_restore")
                return
            cmd = pgtools.pg_restore_command(tool, conninfo=conninfo, use_list=list_path, **opts)
            with open_entry(self.repo, self._key(entry), entry) as src:
                run_fed(cmd, Metered(src, meter), env=env, what="pg_restore", capture=False)

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
        tool = find_pg_restore(self._dump_major)
        for entry in m.files:
            if not entry.role.startswith("database:"):
                continue
            name = entry.role.split(":", 1)[1]
            target = pgtools.with_dbname(dbname, name)
            if not database_exists(maintenance(dbname), name):
                create_database(target)
            conninfo, env = pgtools.split_secret(target)
            cmd = pgtools.pg_restore_command(tool, conninfo=conninfo, exit_on_error=False)
            try:
                with open_entry(self.repo, self._key(entry), entry) as src:
                    run_fed(cmd, src, env=env, what=f"pg_restore of {name}", capture=False)
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
        toc = list(toc) if toc is not None else self.list_contents()
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
        tool = find_pg_restore(self._dump_major)
        fd, list_path = tempfile.mkstemp(prefix="pgrecovery-toc-", suffix=".list", dir=self.workdir)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(list_file_text(entries))
            if m.format == "directory":
                with directory_archive(self.repo, m.id, m.files, self.workdir) as d:
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
                return run_fed(cmd, src, env=None, what="pg_restore", capture=True).decode()
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
        require_dbname(dbname, f"table {schema}.{name} goes into one database")
        try:
            with connect(dbname) as conn:
                database = str(conn.info.dbname)
                qualified = sql.Identifier(schema, final).as_string(conn)
                row = conn.execute("select to_regclass(%s)", (qualified,)).fetchone()
        except psycopg.Error as e:
            raise DatabaseError(f"cannot connect to {pgtools.describe(dbname)}: {first_line(e)}") from None
        if row and row[0] is not None and definition:
            raise RestoreError(
                f"table {schema}.{final} already exists in {pgtools.describe(dbname)}: drop or rename it, or "
                "restore under another name (new_name=...)"
            )
        for f in self.manifest.files:  # once, here, rather than in each restore below
            check_stored(self.repo, self._key(f), f)
        toc = self.list_contents()
        if new_name is None or new_name == name:
            picked = self.table_entries(name, schema=schema, data=data, definition=definition, toc=toc)
            self.run(dbname, entries=picked, verify_first=False)
        else:
            self._restore_renamed(dbname, schema, name, new_name, toc, data=data)
        with connect(dbname) as conn:
            count = conn.execute(
                sql.SQL("select count(*) from {}.{}").format(sql.Identifier(schema), sql.Identifier(final))
            ).fetchone()
        return RestoreResult(
            backup_id=self.manifest.id,
            database=database,
            seconds=time.monotonic() - t0,
            rows=int(count[0]) if count else None,
        )

    def _restore_renamed(
        self, dbname: str, schema: str, name: str, new_name: str, toc: Sequence[TocEntry], *, data: bool
    ) -> None:
        import secrets

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
            with connect(scratch_ci) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            self.run(scratch_ci, entries=picked, no_owner=True, no_privileges=True, verify_first=False)
            rename_table(scratch_ci, schema, name, new_name)
            copy_table(scratch_ci, dbname, schema, new_name)
        except ToolFailed as e:
            raise RestoreError(f"restoring {schema}.{name} as {new_name} failed: {e}") from None
        finally:
            drop_database(dbname, scratch)


def _check_options(m: BackupManifest, *, whole: bool, jobs: int, single_transaction: bool) -> None:
    """Refuse restore options the backup's format cannot honour (``whole``: no selection, all sections)."""
    if m.format == "plain" and (not whole or jobs > 1):
        raise ConfigurationError(
            f"backup {m.id} is plain SQL: it can only be restored whole and serially "
            "(take a custom-format backup for selective or parallel restores)"
        )
    if single_transaction and jobs > 1:
        raise ConfigurationError("single_transaction cannot be combined with parallel jobs")
    if m.format == "tar" and jobs > 1:
        raise ConfigurationError("pg_restore cannot restore the tar format in parallel: use jobs=1")


def require_dbname(conninfo: str, why: str) -> None:
    """Refuse a connection string that names no database (no dbname, service, PGDATABASE or PGSERVICE): libpq
    would connect to its default database (the user's name, often ``postgres``), and a restore would land there.
    ``why`` starts the message ("backup X is a dump of database 'shop'")."""
    parts = pgtools.conninfo_dict(conninfo)
    if parts.get("dbname") or parts.get("service") or os.environ.get("PGDATABASE") or os.environ.get("PGSERVICE"):
        return
    raise ConfigurationError(
        f"{why}, but the connection string ({pgtools.describe(conninfo)}) names no database: add dbname=NAME "
        "to it (or set PGDATABASE) rather than restore into libpq's default database"
    )


def _dbname_of(conninfo: str) -> str | None:
    return pgtools.conninfo_dict(conninfo).get("dbname") or os.environ.get("PGDATABASE")
