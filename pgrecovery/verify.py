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
from ._pgdb import drop_database
from .errors import PgRecoveryError, ToolFailed, VerificationFailed
from .manifest import BackupManifest
from .progress import ProgressCallback
from .restore import LogicalRestore
from .storage import Repository

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
        "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema') "
        "and n.nspname not like 'pg_toast%' order by 1, 2"
    ),
    "invalid_indexes": (
        "select count(*) from pg_index x join pg_class c on c.oid = x.indexrelid "
        "join pg_namespace n on n.oid = c.relnamespace where not x.indisvalid and n.nspname <> 'pg_catalog'"
    ),
    "constraints": (
        "select count(*) from pg_constraint k join pg_namespace n on n.oid = k.connamespace "
        "where n.nspname not in ('pg_catalog', 'information_schema')"
    ),
}


def table_counts(conninfo: str) -> dict[str, int]:
    """Exact row counts of every user table, keyed by ``schema.table``."""
    import psycopg
    from psycopg import sql

    out: dict[str, int] = {}
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        for schema, table in conn.execute(_QUERIES["tables"]).fetchall():
            q = sql.SQL("select count(*) from only {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            row = conn.execute(q).fetchone()
            out[f"{schema}.{table}"] = int(row[0]) if row else 0
    return out


class Verifier:
    """Verifies backups in a repository. Restore drills run in a sandbox cluster unless a server is given."""

    def __init__(self, repo: Repository, *, workdir: str | None = None) -> None:
        self.repo = repo
        self.workdir = workdir

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

        ``drill`` restores the backup into a temporary database (on ``drill_server``, or a sandbox cluster
        started and removed here), runs verification queries, and compares per-table row counts with the
        source database (``source``, else the connection recorded in the manifest) when it is reachable.
        """
        m = self.repo.get(backup_id)
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
            elif m.kind == "base":
                step("restore-drill", lambda: self._drill_base(m))
            else:
                extra: list[Check] = []
                with self._server(drill_server) as server:
                    step("restore-drill", lambda: self._drill(m, server, source, compare_source, jobs, extra))
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
        from .cluster import temporary_cluster

        with temporary_cluster(parent=self.workdir) as sandbox:
            yield sandbox.conninfo()

    def _drill_base(self, m: BackupManifest) -> tuple[Status, str]:
        """Restore a base backup into a temporary directory, recover it to consistency with WAL from the
        repository, start it on a free port, check every database (amcheck on btree indexes where available),
        and remove it all whatever happens."""
        import shutil
        import tempfile

        import psycopg

        from .cluster import LocalCluster, default_run_as
        from .recovery import RecoveryPlan, RecoveryTarget

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
            result = plan.run(base / "data", restore=False)
            cluster = LocalCluster(data_dir=base / "data", port=result.port, log_file=base / "data.log")
            with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
                names = [r[0] for r in conn.execute("select datname from pg_database where datallowconn")]
            tables = indexes = 0
            problems = []
            for name in names:
                with psycopg.connect(cluster.conninfo(name), autocommit=True) as conn:
                    row = conn.execute(_QUERIES["invalid_indexes"]).fetchone()
                    if row and row[0]:
                        problems.append(f"{name}: {row[0]} invalid index(es)")
                    tables += len(conn.execute(_QUERIES["tables"]).fetchall())
                    indexes += _amcheck(conn, name, problems)
            detail = (
                (f"{checked}; " if checked else "") + f"recovered to consistency in {result.recovery_seconds:.2f} s:"
                f" {len(names)} database(s), {tables} table(s), {indexes} btree index(es) checked with amcheck"
            )
            return ("fail", detail + "; " + "; ".join(problems)) if problems else ("pass", detail)
        finally:
            if cluster is not None and cluster.is_running():
                cluster.stop(mode="immediate")
            shutil.rmtree(base, ignore_errors=True)

    def _drill(
        self,
        m: BackupManifest,
        server: str,
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
            return self._inspect(m, target, restored, source, compare_source, checks)
        finally:
            with contextlib.suppress(Exception):
                drop_database(server, scratch)

    def _inspect(
        self,
        m: BackupManifest,
        target: str,
        restored: float,
        source: str | None,
        compare_source: bool,
        checks: list[Check],
    ) -> tuple[Status, str]:
        import psycopg

        t0 = time.monotonic()
        with psycopg.connect(target, autocommit=True) as conn:
            invalid = conn.execute(_QUERIES["invalid_indexes"]).fetchone()
            constraints = conn.execute(_QUERIES["constraints"]).fetchone()
        counts = table_counts(target)
        schemas = sorted({k.split(".", 1)[0] for k in counts})
        per_schema = {s: sum(1 for k in counts if k.split(".", 1)[0] == s) for s in schemas}
        detail = (
            f"restored in {restored:.2f} s: {len(counts)} table(s) "
            f"({', '.join(f'{s}: {n}' for s, n in per_schema.items()) or 'none'}), "
            f"{sum(counts.values())} row(s), {constraints[0] if constraints else 0} constraint(s)"
        )
        problems = []
        if invalid and invalid[0]:
            problems.append(f"{invalid[0]} invalid index(es)")
        if m.summary is not None and len(counts) < m.summary.tables:
            problems.append(f"only {len(counts)} of {m.summary.tables} tables were restored")
        if problems:
            return "fail", detail + "; " + "; ".join(problems)
        if compare_source and not m.options.get("schema_only"):
            checks.append(self._compare(m, counts, source, time.monotonic() - t0))
        return "pass", detail

    def _compare(self, m: BackupManifest, counts: dict[str, int], source: str | None, _t: float) -> Check:
        t0 = time.monotonic()
        conninfo = source if source is not None else pgtools.make_conninfo(m.source)
        try:
            live = table_counts(conninfo)
        except Exception as e:  # noqa: BLE001 - the source being unreachable is a skip, not a failure
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return Check(
                name="row-counts",
                status="skip",
                seconds=time.monotonic() - t0,
                detail=f"source {pgtools.describe(conninfo)} not reachable: {first}",
            )
        differ = [f"{t}: backup {n}, source {live[t]}" for t, n in counts.items() if t in live and live[t] != n]
        gone = [t for t in counts if t not in live]
        if differ or gone:
            detail = "; ".join(differ + [f"{t}: not in source" for t in gone])
            return Check(
                name="row-counts",
                status="warn",
                seconds=time.monotonic() - t0,
                detail=f"differs from the live source (it may have changed since the backup): {detail}",
            )
        return Check(
            name="row-counts",
            status="pass",
            seconds=time.monotonic() - t0,
            detail=f"{len(counts)} table(s) have the same row counts as the source",
        )


def _amcheck(conn: Any, dbname: str, problems: list[str]) -> int:
    """Run amcheck's bt_index_check on every valid btree index (if the extension can be created); count them."""
    try:
        conn.execute("create extension if not exists amcheck")
    except Exception:  # noqa: BLE001 - amcheck is optional (postgresql-contrib)
        return 0
    rows = conn.execute(
        "select c.oid::regclass::text from pg_index x join pg_class c on c.oid = x.indexrelid "
        "join pg_am a on a.oid = c.relam where a.amname = 'btree' and x.indisvalid and c.relpersistence <> 't'"
    ).fetchall()
    for (index,) in rows:
        try:
            conn.execute("select bt_index_check(%s::regclass)", (index,))
        except Exception as e:  # noqa: BLE001 - report every corrupt index, not only the first
            problems.append(f"{dbname}: index {index}: {str(e).strip().splitlines()[0]}")
    return len(rows)


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
