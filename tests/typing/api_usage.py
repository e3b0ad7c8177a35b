"""Typed usage of the public API, checked by mypy --strict (nox -s typecheck); never executed by pytest."""

from __future__ import annotations

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
    report: VerificationReport = Verifier(repo).verify(m.id, drill=True)
    return report.ok


def rescue(repo: Repository, cluster: LocalCluster) -> int | None:
    restore = LogicalRestore(repo, "latest")
    entries: list[TocEntry] = [e for e in restore.list_contents() if e.schema == "public"]
    whole: RestoreResult = restore.run(cluster.conninfo("copy"), create=True, entries=entries)
    print(whole.seconds)
    one = restore.restore_table("orders", cluster.conninfo("shop"), new_name="orders_before")
    return one.rows
