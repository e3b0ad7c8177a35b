"""`Verifier`: does a backup restore? Checksums, readability, and a real restore drill with counts.

>>> report = Verifier(repo).verify("latest", drill=True)        # doctest: +SKIP
>>> report.ok, [(c.name, c.status) for c in report.checks]      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import attrs

from . import pgtools
from ._pgdb import drop_database, invalid_indexes
from .cluster import LocalCluster, default_run_as, free_port, port_choice, temporary_cluster
from .errors import PgRecoveryError, ToolFailed, VerificationFailed
from .logical.restore import LogicalRestore
from .manifest import BackupManifest
from .progress import ProgressCallback
from .recovery.plan import RecoveryPlan, RecoveryTarget
from .repository import Repository

Status = Literal["pass", "fail", "warn", "skip"]


@attrs.frozen(kw_only=True)
class Check:
    """One verification step: what was checked, its outcome, the details, and how long it took."""

    name: str
    status: Status
    detail: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


def _checks(value: Iterable[Check]) -> tuple[Check, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class VerificationReport:
    """The outcome of verifying one backup. ``ok`` is true when no check failed (warnings allowed)."""

    backup_id: str
    kind: str
    started_at: datetime
    checks: tuple[Check, ...] = attrs.field(converter=_checks)

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.checks)

    def raise_for_failure(self) -> None:
        if not self.ok:
            lines = "; ".join(f"{c.name}: {c.detail}" for c in self.failures)
            raise VerificationFailed(f"backup {self.backup_id} failed verification: {lines}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "kind": self.kind,
            "ok": self.ok,
            "started_at": self.started_at.isoformat(),
            "seconds": round(self.seconds, 3),
            "checks": [c.to_dict() for c in self.checks],
        }


_QUERIES = {
    "tables": (
        "select n.nspname, c.relname, c.relpersistence = 'u' from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace "
        "where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema') "
        "and n.nspname not like 'pg_toast%' and c.relpersistence <> 't' order by 1, 2"
    ),
    "constraints": (
        "select count(*) from pg_constraint k join pg_namespace n on n.oid = k.connamespace "
        "where n.nspname not in ('pg_catalog', 'information_schema')"
    ),
    "matviews": "select count(*), count(*) filter (where not ispopulated) from pg_matviews",
    "large_objects": "select count(*) from pg_largeobject_metadata",
    # Every index with storage that PostgreSQL would use, by access method. Partitioned indexes (relkind 'I') have
    # no storage (their partitions' indexes are checked), invalid or unready ones are not in use, and temporary
    # ones belong to other sessions.
    "indexes": (
        "select format('%%I.%%I', n.nspname, c.relname), a.amname from pg_index x "
        "join pg_class c on c.oid = x.indexrelid join pg_namespace n on n.oid = c.relnamespace "
        "join pg_am a on a.oid = c.relam "
        "where c.relkind = 'i' and x.indisvalid and x.indisready and x.indislive and c.relpersistence <> 't' "
        "and (c.oid >= 16384 or not %s) order by 1"  # 16384: the first OID of objects not PostgreSQL's own
    ),
}


@attrs.frozen(kw_only=True)
class _Counts:
    """What a drill counted in one database."""

    tables: dict[str, int]  # exact row counts by "schema.table"
    unlogged: frozenset[str]  # the unlogged tables among them (a base backup restores them empty)
    matviews: int
    unpopulated: int
    large_objects: int


def _count(conn: Any) -> _Counts:
    from psycopg import sql

    tables: dict[str, int] = {}
    unlogged = set()
    for schema, table, is_unlogged in conn.execute(_QUERIES["tables"]).fetchall():
        q = sql.SQL("select count(*) from only {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        row = conn.execute(q).fetchone()
        tables[f"{schema}.{table}"] = int(row[0]) if row else 0
        if is_unlogged:
            unlogged.add(f"{schema}.{table}")
    views = conn.execute(_QUERIES["matviews"]).fetchone()
    objects = conn.execute(_QUERIES["large_objects"]).fetchone()
    return _Counts(
        tables=tables,
        unlogged=frozenset(unlogged),
        matviews=int(views[0]) if views else 0,
        unpopulated=int(views[1]) if views else 0,
        large_objects=int(objects[0]) if objects else 0,
    )


def table_counts(conninfo: str) -> dict[str, int]:
    """Exact row counts of every user table, keyed by ``schema.table``."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        return _count(conn).tables


def _names(items: Iterable[str], limit: int = 10) -> str:
    shown = list(items)
    return ", ".join(shown[:limit]) + (f" and {len(shown) - limit} more" if len(shown) > limit else "")


def _judge_invalid(
    found: Iterable[str], recorded: Iterable[str] | None, where: str = ""
) -> tuple[list[str], list[str]]:
    """(problems, warnings) about the invalid indexes ``found`` in a restored copy, given those ``recorded`` as
    invalid in the source when the backup was taken (None: not recorded)."""
    found = sorted(found)
    if not found:
        return [], []
    if recorded is None:
        return [], [
            f"{where}{len(found)} invalid index(es): {_names(found)} (the backup did not record the source's index "
            "state, so the drill cannot tell a faithful copy from damage; check them in the source)"
        ]
    was_invalid = set(recorded)
    faithful = [i for i in found if i in was_invalid]
    damaged = [i for i in found if i not in was_invalid]
    problems = [f"{where}{len(damaged)} index(es) invalid after the restore but valid in the source: {_names(damaged)}"]
    warnings = [f"{where}{len(faithful)} index(es) invalid as in the source (a faithful copy): {_names(faithful)}"]
    return problems if damaged else [], warnings if faithful else []


@attrs.frozen(kw_only=True)
class _Amcheck:
    """What amcheck did in one database: B-tree indexes checked, indexes of other access methods (by access
    method) that it has no check for, corruption found, or why it could not run."""

    checked: int = 0
    other: dict[str, int] = attrs.field(factory=dict)
    problems: tuple[str, ...] = ()
    missing: str | None = None


def _amcheck_missing(conn: Any) -> str | None:
    """Why amcheck cannot check indexes in this database, or None when it can (the extension is created here when
    the server has it but the database does not). Servers without PostgreSQL's contrib modules lack it."""
    import psycopg

    row = conn.execute("select installed_version from pg_available_extensions where name = 'amcheck'").fetchone()
    if row is None:
        return "not installed"
    if row[0] is None:
        try:
            conn.execute("create extension amcheck")
        except psycopg.Error as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return f"the extension cannot be created ({first})"
    return None


def _amcheck(conn: Any, dbname: str, *, user_only: bool) -> _Amcheck:
    """Run amcheck's bt_index_check on every B-tree index in use (of user objects only, with ``user_only``)."""
    from psycopg import sql

    why = _amcheck_missing(conn)
    if why is not None:
        return _Amcheck(missing=why)
    row = conn.execute(
        "select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'amcheck'"
    ).fetchone()
    check = sql.SQL("select {}.bt_index_check(%s::regclass)").format(sql.Identifier(str(row[0]) if row else "public"))
    other: dict[str, int] = {}
    problems = []
    checked = 0
    for index, am in conn.execute(_QUERIES["indexes"], (user_only,)).fetchall():
        if am != "btree":
            other[am] = other.get(am, 0) + 1
            continue
        checked += 1
        try:
            conn.execute(check, (index,))
        except Exception as e:  # noqa: BLE001 - report every corrupt index, not only the first
            problems.append(f"{dbname}: index {index}: {str(e).strip().splitlines()[0]}")
    return _Amcheck(checked=checked, other=other, problems=tuple(problems))


def _amcheck_summary(results: dict[str, _Amcheck]) -> tuple[str, list[str], list[str]]:
    """(detail, problems, warnings) for amcheck runs over databases."""
    missing = {db: r.missing for db, r in results.items() if r.missing is not None}
    problems = [p for r in results.values() for p in r.problems]
    checked = sum(r.checked for r in results.values())
    other: dict[str, int] = {}
    for r in results.values():
        for am, n in r.other.items():
            other[am] = other.get(am, 0) + n
    warnings = []
    if missing and len(missing) == len(results) and len(set(missing.values())) == 1:
        warnings.append(f"amcheck: skipped, {next(iter(missing.values()))}")
        return "", problems, warnings
    warnings += [f"amcheck: skipped in {db}, {why}" for db, why in missing.items()]
    detail = f"amcheck: {checked} B-tree index(es) checked"
    if other:
        kinds = ", ".join(f"{n} {am}" for am, n in sorted(other.items()))
        detail += f" (not amcheck targets: {kinds})"
    return detail, problems, warnings


def _outcome(detail: str, problems: list[str], warnings: list[str]) -> tuple[Status, str]:
    text = "; ".join([detail, *problems, *warnings])
    return ("fail" if problems else "warn" if warnings else "pass"), text


class Verifier:
    """Verifies backups in a repository. Restore drills run in a sandbox cluster unless a server is given.

    ``ports``: the port, or ports (``range(55000, 55100)``), that every sandbox server of a drill may listen on,
    for hosts that allow only some; default: any free port.
    """

    def __init__(
        self, repo: Repository, *, workdir: str | None = None, ports: int | Iterable[int] | None = None
    ) -> None:
        self.repo = repo
        self.workdir = workdir
        self.ports = port_choice(ports)

    def verify(
        self,
        backup_id: str = "latest",
        *,
        checksums: bool = True,
        readable: bool = True,
        drill: bool = False,
        drill_server: str | None = None,
        source: str | None = None,
        compare_source: bool = True,
        jobs: int = 1,
        progress: ProgressCallback | None = None,
    ) -> VerificationReport:
        """Run the checks and return the report (it does not raise on a failed check: see ``raise_for_failure``).

        ``drill`` restores the backup (a logical one into a temporary database on ``drill_server``, or in a
        sandbox cluster started and removed here; a base backup into a sandbox recovered to consistency), checks
        it (invalid indexes against those recorded at backup time, amcheck on B-tree indexes where the server has
        it), and compares per-table row counts with the source (``source``, else the connection recorded in the
        manifest) when it is reachable.
        """
        m = self.repo.get(backup_id)
        if drill and self.ports is not None and (m.kind == "base" or drill_server is None):
            free_port(self.ports)  # none free: say so now, not after a long restore
        started = datetime.now(UTC)
        checks: list[Check] = []

        def step(name: str, fn: Callable[[], tuple[Status, str]]) -> bool:
            t0 = time.monotonic()
            try:
                status, detail = fn()
            except PgRecoveryError as e:
                status, detail = "fail", str(e)
            checks.append(Check(name=name, status=status, detail=detail, seconds=time.monotonic() - t0))
            return status != "fail"

        intact = True
        if checksums:
            intact = step("checksums", lambda: self._checksums(m))
        if readable and m.kind == "logical" and m.format != "plain":
            intact = step("readable", lambda: self._readable(m)) and intact
        if drill:
            if not intact:
                checks.append(
                    Check(
                        name="restore-drill",
                        status="skip",
                        detail="skipped: stored files are damaged",
                        seconds=0.0,
                    )
                )
            else:
                extra: list[Check] = []
                if m.kind == "base":
                    step("restore-drill", lambda: self._drill_base(m, source, compare_source, extra))
                else:
                    with self._server(drill_server) as server:
                        place = "" if drill_server is not None else f" on a sandbox at port {_port_of(server)}"
                        step(
                            "restore-drill",
                            lambda: self._drill(m, server, place, source, compare_source, jobs, extra),
                        )
                checks.extend(extra)
        return VerificationReport(backup_id=m.id, kind=m.kind, started_at=started, checks=checks)

    # -- checks ------------------------------------------------------------------------------------------------
    def _checksums(self, m: BackupManifest) -> tuple[Status, str]:
        bad = []
        files = [(m.id, f) for f in m.files]
        if m.physical is not None:  # an incremental backup: the bundles it takes from earlier backups count too
            wanted = {(x.source, x.bundle) for x in m.physical.members if x.source != m.id}
            for source in sorted({s for s, _ in wanted}):
                try:
                    earlier = self.repo.get(source, "base")
                except PgRecoveryError as e:
                    bad.append(f"backup {source}, which holds files of this one, is not available: {e}")
                    continue
                files += [(source, f) for f in earlier.files if (source, f.role) in wanted]
        for owner, f in files:
            key = f"backups/{owner}/{f.path}"
            try:
                size, digest = self.repo.digest(key)
            except PgRecoveryError as e:
                bad.append(f"{key}: {e}")
                continue
            if size != f.size:
                bad.append(f"{key}: size {size}, manifest says {f.size}")
            elif digest != f.sha256:
                bad.append(f"{key}: sha256 differs from the manifest")
        if bad:
            return "fail", "; ".join(bad)
        extra = len(files) - len(m.files)
        return "pass", f"{len(m.files)} file(s), {m.size} bytes match the manifest" + (
            f"; {extra} file(s) it takes from earlier backups match theirs" if extra else ""
        )

    def _readable(self, m: BackupManifest) -> tuple[Status, str]:
        entries = LogicalRestore(self.repo, m.id, workdir=self.workdir).list_contents()
        if m.summary is not None and len(entries) != m.summary.objects:
            return (
                "fail",
                f"table of contents lists {len(entries)} entries, the manifest recorded {m.summary.objects}",
            )
        return "pass", f"table of contents lists {len(entries)} entries"

    @contextlib.contextmanager
    def _server(self, drill_server: str | None) -> Iterator[str]:
        if drill_server is not None:
            yield drill_server
            return
        with temporary_cluster(parent=self.workdir, ports=self.ports) as sandbox:
            yield sandbox.conninfo()

    def _drill_base(
        self, m: BackupManifest, source: str | None, compare_source: bool, checks: list[Check]
    ) -> tuple[Status, str]:
        """Restore a base backup into a temporary directory, recover it to consistency with WAL from the
        repository, start it (on one of ``ports``), check every database, count its rows, and remove it all
        whatever happens."""
        import shutil
        import tempfile

        import psycopg

        base = Path(tempfile.mkdtemp(prefix="pgrecovery-drill-", dir=self.workdir))
        who = default_run_as()
        if who is not None:
            import pwd

            pw = pwd.getpwnam(who)
            os.chown(base, pw.pw_uid, pw.pw_gid)
        cluster = None
        try:
            plan = RecoveryPlan(self.repo, RecoveryTarget.immediate(), backup_id=m.id)
            plan.restore(base / "data", settings={"archive_mode": "off"})
            checked = _pg_verifybackup(base / "data")  # PostgreSQL's own manifest, when pg_basebackup wrote one
            result = plan.run(base / "data", restore=False, ports=self.ports, record_incident=False)
            cluster = LocalCluster(data_dir=base / "data", port=result.port, log_file=base / "data.log")
            with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
                names = [r[0] for r in conn.execute("select datname from pg_database where datallowconn order by 1")]
            counts: dict[str, _Counts] = {}
            amchecks: dict[str, _Amcheck] = {}
            problems: list[str] = []
            warnings: list[str] = []
            recorded = m.invalid_indexes
            for name in names:
                with psycopg.connect(cluster.conninfo(name), autocommit=True) as conn:
                    counts[name] = _count(conn)
                    amchecks[name] = _amcheck(conn, name, user_only=False)
                bad, odd = _judge_invalid(
                    invalid_indexes(cluster.conninfo(name)),
                    recorded.get(name) if recorded is not None else None,
                    f"{name}: ",
                )
                problems += bad
                warnings += odd
            amcheck_detail, amcheck_problems, amcheck_warnings = _amcheck_summary(amchecks)
            tables = sum(len(c.tables) for c in counts.values())
            rows = sum(sum(c.tables.values()) for c in counts.values())
            detail = (
                (f"{checked}; " if checked else "")
                + f"recovered to consistency in {result.recovery_seconds:.2f} s on a sandbox at port {result.port}: "
                f"{len(names)} database(s), "
                f"{tables} table(s), {rows} row(s)"
                + _extras(counts.values())
                + (f"; {amcheck_detail}" if amcheck_detail else "")
            )
            if compare_source:
                checks.append(self._compare(m, counts, source, per_database=True))
            return _outcome(detail, problems + amcheck_problems, warnings + amcheck_warnings)
        finally:
            if cluster is not None and cluster.is_running():
                cluster.stop(mode="immediate")
            shutil.rmtree(base, ignore_errors=True)

    def _drill(
        self,
        m: BackupManifest,
        server: str,
        place: str,
        source: str | None,
        compare_source: bool,
        jobs: int,
        checks: list[Check],
    ) -> tuple[Status, str]:
        restore = LogicalRestore(self.repo, m.id, workdir=self.workdir)
        if m.kind == "globals":
            restore.run(server)
            return "pass", "globals SQL ran on a scratch server"
        if m.kind == "cluster":
            restore.run(server, jobs=jobs)
            import psycopg

            with psycopg.connect(pgtools.with_dbname(server, "postgres"), autocommit=True) as conn:
                have = {r[0] for r in conn.execute("select datname from pg_database")}
            missing = sorted(set(m.databases) - have)
            if missing:
                return "fail", f"databases missing after restore: {', '.join(missing)}"
            return "pass", f"{len(m.databases)} database(s) restored"
        scratch = f"pgrecovery_verify_{secrets.token_hex(4)}"
        target = pgtools.with_dbname(server, scratch)
        try:
            t0 = time.monotonic()
            restore.run(target, create=True, no_owner=True, no_privileges=True, jobs=jobs if m.format != "tar" else 1)
            restored = time.monotonic() - t0
            return self._inspect(m, target, f"restored in {restored:.2f} s{place}", source, compare_source, checks)
        finally:
            with contextlib.suppress(Exception):
                drop_database(server, scratch)

    def _inspect(
        self,
        m: BackupManifest,
        target: str,
        restored: str,
        source: str | None,
        compare_source: bool,
        checks: list[Check],
    ) -> tuple[Status, str]:
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            constraints = conn.execute(_QUERIES["constraints"]).fetchone()
            counts = _count(conn)
            amcheck = _amcheck(conn, "restored copy", user_only=True)
        recorded = m.invalid_indexes.get(m.database or "") if m.invalid_indexes is not None else None
        problems, warnings = _judge_invalid(invalid_indexes(target), recorded)
        tables = counts.tables
        schemas = sorted({k.split(".", 1)[0] for k in tables})
        per_schema = {s: sum(1 for k in tables if k.split(".", 1)[0] == s) for s in schemas}
        amcheck_detail, amcheck_problems, amcheck_warnings = _amcheck_summary({"restored copy": amcheck})
        detail = (
            f"{restored}: {len(tables)} table(s) "
            f"({', '.join(f'{s}: {n}' for s, n in per_schema.items()) or 'none'}), "
            f"{sum(tables.values())} row(s)"
            + _extras([counts])
            + f", {constraints[0] if constraints else 0} constraint(s)"
            + (f"; {amcheck_detail}" if amcheck_detail else "")
        )
        if m.summary is not None and len(tables) < m.summary.tables:
            problems.append(f"only {len(tables)} of {m.summary.tables} tables were restored")
        status, text = _outcome(detail, problems + amcheck_problems, warnings + amcheck_warnings)
        if status != "fail" and compare_source and not m.options.get("schema_only"):
            checks.append(self._compare(m, {m.database or "": counts}, source))
        return status, text

    def _compare(
        self,
        m: BackupManifest,
        restored: dict[str, _Counts],
        source: str | None,
        *,
        per_database: bool = False,
    ) -> Check:
        """Row counts (and large objects) of the restored copy against the live source, by database when
        ``per_database`` (a base backup's). Unlogged tables of a base backup restore empty: not compared; nor are
        large objects of a dump of some schemas or tables (pg_dump leaves them out)."""
        import psycopg

        t0 = time.monotonic()
        conninfo = source if source is not None else pgtools.make_conninfo(m.source)
        live: dict[str, _Counts] = {}
        try:
            if per_database:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
                    have = {r[0] for r in conn.execute("select datname from pg_database where datallowconn")}
                targets = {db: pgtools.with_dbname(conninfo, db) for db in restored if db in have}
            else:
                targets = dict.fromkeys(restored, conninfo)
            for db, db_conninfo in targets.items():
                with psycopg.connect(db_conninfo, autocommit=True, connect_timeout=10) as conn:
                    live[db] = _count(conn)
        except Exception as e:  # noqa: BLE001 - the source being unreachable is a skip, not a failure
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return Check(
                name="row-counts",
                status="skip",
                seconds=time.monotonic() - t0,
                detail=f"source {pgtools.describe(conninfo)} not reachable: {first}",
            )
        differ: list[str] = []
        compared = skipped = 0
        for db, counts in restored.items():
            where = f"{db}: " if per_database else ""
            if db not in live:
                differ.append(f"{where}no such database in the source")
                continue
            source_counts = live[db]
            for t, n in counts.tables.items():
                if per_database and t in counts.unlogged:
                    skipped += 1
                elif t not in source_counts.tables:
                    differ.append(f"{where}{t}: not in source")
                elif source_counts.tables[t] != n:
                    differ.append(f"{where}{t}: backup {n}, source {source_counts.tables[t]}")
                else:
                    compared += 1
            whole = per_database or not (m.options.get("schemas") or m.options.get("tables"))
            if whole and counts.large_objects != source_counts.large_objects:
                differ.append(
                    f"{where}large objects: backup {counts.large_objects}, source {source_counts.large_objects}"
                )
        if differ:
            return Check(
                name="row-counts",
                status="warn",
                seconds=time.monotonic() - t0,
                detail="differs from the live source (it may have changed since the backup): " + "; ".join(differ),
            )
        note = f"; {skipped} unlogged table(s) not compared (a base backup restores them empty)" if skipped else ""
        return Check(
            name="row-counts",
            status="pass",
            seconds=time.monotonic() - t0,
            detail=f"{compared} table(s) have the same row counts as the source{note}",
        )


def _port_of(conninfo: str) -> str:
    return pgtools.conninfo_dict(conninfo).get("port") or "?"


def _extras(counts: Iterable[_Counts]) -> str:
    """The materialized views and large objects counted, as ", 2 materialized view(s), 3 large object(s)"."""
    items = list(counts)
    views = sum(c.matviews for c in items)
    unpopulated = sum(c.unpopulated for c in items)
    objects = sum(c.large_objects for c in items)
    out = ""
    if views:
        out += f", {views} materialized view(s)" + (f" ({unpopulated} not populated)" if unpopulated else "")
    if objects:
        out += f", {objects} large object(s)"
    return out


def _pg_verifybackup(pgdata: Path) -> str | None:
    """Check restored files against the backup_manifest pg_basebackup wrote (WAL is checked by recovery itself)."""
    if not (pgdata / "backup_manifest").exists():
        return None
    tool = pgtools.find_tool("pg_verifybackup")
    try:
        pgtools.run(pgtools.pg_verifybackup_command(tool, str(pgdata)), what="pg_verifybackup")
    except ToolFailed as e:
        raise VerificationFailed(f"pg_verifybackup found differences from PostgreSQL's backup manifest: {e}") from None
    return "pg_verifybackup: files match PostgreSQL's backup manifest"
