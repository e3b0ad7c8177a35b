"""Typed usage of the public API, checked by mypy --strict (nox -s typecheck); never executed by pytest."""

from __future__ import annotations

from datetime import datetime

from pgrecovery import (
    BackupManifest,
    LocalCluster,
    LogicalBackup,
    LogicalRestore,
    PgRecoveryError,
    Progress,
    Repository,
    RestoreResult,
    TocEntry,
    VerificationReport,
    Verifier,
)


def nightly(repo_url: str, conninfo: str) -> bool:
    repo = Repository(repo_url)

    def show(p: Progress) -> None:
        print(p.operation, p.done, p.rate)

    try:
        m: BackupManifest = LogicalBackup(dbname=conninfo, schemas=["data"]).run(repo, progress=show)
    except PgRecoveryError as e:
        print(f"backup failed: {e}")
        return False
    report: VerificationReport = Verifier(repo, ports=range(55000, 55100)).verify(m.id, drill=True)
    return report.ok


def rescue(repo: Repository, cluster: LocalCluster) -> int | None:
    restore = LogicalRestore(repo, "latest")
    entries: list[TocEntry] = [e for e in restore.list_contents() if e.schema == "public"]
    whole: RestoreResult = restore.run(cluster.conninfo("copy"), create=True, entries=entries)
    print(whole.seconds)
    one = restore.restore_table("orders", cluster.conninfo("shop"), new_name="orders_before")
    return one.rows


def keep_three_copies(primary: Repository, offsite: Repository, nas: Repository) -> bool:
    from pgrecovery import CopyResult, RetentionPolicy, RuleReport, check_321, copy_repository, expire

    for copy in (nas, offsite):
        result: CopyResult = copy_repository(primary, copy, workers=4)
        if not result.ok:
            print(result.conflicts, result.corrupt)
    expired = expire(primary, RetentionPolicy.production(), dry_run=True)
    print(expired.to_dict()["wal_removed"])
    report: RuleReport = check_321([primary, nas, offsite], sites={offsite.display_url: "eu-west"})
    return report.holds


def watch(repo: Repository, conninfo: str) -> int:
    from pgrecovery import HealthReport, StatusTable, check, metrics, recording

    table = StatusTable(conninfo)
    with recording(table, "logical") as run:
        run.note_backup(LogicalBackup(dbname=conninfo).run(repo), repo)
    health: HealthReport = check(repo, dbname=conninfo, status_table=table)
    text: str = metrics(repo, status_table=table)
    print(text)
    return health.exit_code


def undo_a_delete(repo: Repository, live: str, before: datetime) -> int:
    from pgrecovery import RecoveryTarget, RowRescue, TableRescue, recover_rows, recover_table

    target = RecoveryTarget.time(before)
    rows: RowRescue = recover_rows(
        repo,
        target,
        "select * from orders where id = any(%s)",
        dbname="shop",
        params=[[1, 2]],
        into=live,
        table="public.orders",
        on_conflict="skip",
    )
    table: TableRescue = recover_table(repo, target, "public.customers", dbname="shop", into=live)
    print(table.to_dict())
    return rows.inserted


def scheduled(path: str) -> bool:
    from pgrecovery import BackupPolicy, PolicyRun, load_policy, run_policy

    policy: BackupPolicy = load_policy(path)
    run: PolicyRun = run_policy(policy, dry_run=True)
    return run.ok


def look_at_yesterday(repo: Repository, when: datetime) -> int:
    """Recover a copy to look at (it does not archive: the default), query it, stop it on leaving the block."""
    from pgrecovery import RecoveryPlan, RecoveryResult, RecoveryTarget

    plan = RecoveryPlan(repo, RecoveryTarget.time(when, action="pause"))
    with plan.run("/srv/look", archive=False) as result:
        (count,) = result.cluster.query("select count(*) from orders", dbname="shop")[0]
    replacement: RecoveryResult = RecoveryPlan(repo).run("/srv/pg", archive=True)  # archives its new timeline
    replacement.stop(mode="fast")
    path = plan.restore("/srv/later", archive=False, settings={"hot_standby": "on"})
    print(path, replacement.to_dict()["port"])
    return int(count)
