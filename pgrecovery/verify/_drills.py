"""The restore drills: a base backup recovered to consistency in a sandbox cluster, a logical backup restored into
a scratch database; each restored copy inspected (counts, indexes, amcheck) and its row counts compared with the
live source when it is reachable."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from .. import pgtools
from .._pgdb import connect, drop_database, invalid_indexes
from ..cluster import LocalCluster, default_run_as
from ..errors import ToolFailed, VerificationFailed
from ..logical.restore import LogicalRestore
from ..manifest import BackupManifest
from ..recovery.plan import RecoveryPlan
from ..recovery.target import RecoveryTarget
from ..repository import Repository
from ._counts import QUERIES, Amcheck, Counts, amcheck, amcheck_summary, count, extras, judge_invalid, outcome
from .report import Check, Status


def drill_base(
    repo: Repository,
    m: BackupManifest,
    *,
    workdir: str | None,
    ports: tuple[int, ...] | None,
    source: str | None,
    compare_source: bool,
    checks: list[Check],
) -> tuple[Status, str]:
    """Restore a base backup into a temporary directory, recover it to consistency with WAL from the
    repository, start it (on one of ``ports``), check every database, count its rows, and remove it all
    whatever happens."""
    base = Path(tempfile.mkdtemp(prefix="pgrecovery-drill-", dir=workdir))
    who = default_run_as()
    if who is not None:
        pw = pwd.getpwnam(who)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    cluster = None
    try:
        plan = RecoveryPlan(repo, RecoveryTarget.immediate(), backup_id=m.id)
        plan.restore(base / "data", settings={"archive_mode": "off"})
        checked = pg_verifybackup(base / "data")  # PostgreSQL's own manifest, when pg_basebackup wrote one
        result = plan.run(base / "data", restore=False, ports=ports, record_incident=False)
        cluster = LocalCluster(data_dir=base / "data", port=result.port, log_file=base / "data.log")
        with connect(cluster.conninfo(), what="connect to the drill's sandbox") as conn:
            names = [r[0] for r in conn.execute("select datname from pg_database where datallowconn order by 1")]
        counts: dict[str, Counts] = {}
        amchecks: dict[str, Amcheck] = {}
        problems: list[str] = []
        warnings: list[str] = []
        recorded = m.invalid_indexes
        for name in names:
            with connect(cluster.conninfo(name), what="connect to the drill's sandbox") as conn:
                counts[name] = count(conn)
                amchecks[name] = amcheck(conn, name, user_only=False)
            bad, odd = judge_invalid(
                invalid_indexes(cluster.conninfo(name)),
                recorded.get(name) if recorded is not None else None,
                f"{name}: ",
            )
            problems += bad
            warnings += odd
        amcheck_detail, amcheck_problems, amcheck_warnings = amcheck_summary(amchecks)
        tables = sum(len(c.tables) for c in counts.values())
        rows = sum(sum(c.tables.values()) for c in counts.values())
        detail = (
            (f"{checked}; " if checked else "")
            + f"recovered to consistency in {result.recovery_seconds:.2f} s on a sandbox at port {result.port}: "
            f"{len(names)} database(s), "
            f"{tables} table(s), {rows} row(s)"
            + extras(counts.values())
            + (f"; {amcheck_detail}" if amcheck_detail else "")
        )
        if compare_source:
            checks.append(compare(m, counts, source, per_database=True))
        return outcome(detail, problems + amcheck_problems, warnings + amcheck_warnings)
    finally:
        if cluster is not None and cluster.is_running():
            cluster.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


def drill_logical(
    repo: Repository,
    m: BackupManifest,
    workdir: str | None,
    server: str,
    place: str,
    source: str | None,
    compare_source: bool,
    jobs: int,
    checks: list[Check],
) -> tuple[Status, str]:
    restore = LogicalRestore(repo, m.id, workdir=workdir)
    if m.kind == "globals":
        restore.run(server)
        return "pass", "globals SQL ran on a scratch server"
    if m.kind == "cluster":
        restore.run(server, jobs=jobs)
        with connect(pgtools.with_dbname(server, "postgres"), what="connect to the drill's server") as conn:
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
        return inspect(m, target, f"restored in {restored:.2f} s{place}", source, compare_source, checks)
    finally:
        with contextlib.suppress(Exception):
            drop_database(server, scratch)


def inspect(
    m: BackupManifest,
    target: str,
    restored: str,
    source: str | None,
    compare_source: bool,
    checks: list[Check],
) -> tuple[Status, str]:
    with connect(target, what="connect to the restored copy") as conn:
        constraints = conn.execute(QUERIES["constraints"]).fetchone()
        counts = count(conn)
        indexes = amcheck(conn, "restored copy", user_only=True)
    recorded = m.invalid_indexes.get(m.database or "") if m.invalid_indexes is not None else None
    problems, warnings = judge_invalid(invalid_indexes(target), recorded)
    tables = counts.tables
    schemas = sorted({k.split(".", 1)[0] for k in tables})
    per_schema = {s: sum(1 for k in tables if k.split(".", 1)[0] == s) for s in schemas}
    amcheck_detail, amcheck_problems, amcheck_warnings = amcheck_summary({"restored copy": indexes})
    detail = (
        f"{restored}: {len(tables)} table(s) "
        f"({', '.join(f'{s}: {n}' for s, n in per_schema.items()) or 'none'}), "
        f"{sum(tables.values())} row(s)"
        + extras([counts])
        + f", {constraints[0] if constraints else 0} constraint(s)"
        + (f"; {amcheck_detail}" if amcheck_detail else "")
    )
    if m.summary is not None and len(tables) < m.summary.tables:
        problems.append(f"only {len(tables)} of {m.summary.tables} tables were restored")
    status, text = outcome(detail, problems + amcheck_problems, warnings + amcheck_warnings)
    if status != "fail" and compare_source and not m.options.get("schema_only"):
        checks.append(compare(m, {m.database or "": counts}, source))
    return status, text


def compare(
    m: BackupManifest,
    restored: dict[str, Counts],
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
    live: dict[str, Counts] = {}
    try:
        if per_database:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
                have = {r[0] for r in conn.execute("select datname from pg_database where datallowconn")}
            targets = {db: pgtools.with_dbname(conninfo, db) for db in restored if db in have}
        else:
            targets = dict.fromkeys(restored, conninfo)
        for db, db_conninfo in targets.items():
            with psycopg.connect(db_conninfo, autocommit=True, connect_timeout=10) as conn:
                live[db] = count(conn)
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
            differ.append(f"{where}large objects: backup {counts.large_objects}, source {source_counts.large_objects}")
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


def pg_verifybackup(pgdata: Path) -> str | None:
    """Check restored files against the backup_manifest pg_basebackup wrote (WAL is checked by recovery itself)."""
    if not (pgdata / "backup_manifest").exists():
        return None
    tool = pgtools.find_tool("pg_verifybackup")
    try:
        pgtools.run(pgtools.pg_verifybackup_command(tool, str(pgdata)), what="pg_verifybackup")
    except ToolFailed as e:
        raise VerificationFailed(f"pg_verifybackup found differences from PostgreSQL's backup manifest: {e}") from None
    return "pg_verifybackup: files match PostgreSQL's backup manifest"
