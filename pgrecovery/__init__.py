"""pgrecovery: PostgreSQL backup and recovery as a typed Python library, over any fsspec storage.

>>> from pgrecovery import Repository, LogicalBackup, LogicalRestore, Verifier      # doctest: +SKIP
>>> repo = Repository("file:///var/backups/pg")                                     # doctest: +SKIP
>>> m = LogicalBackup(dbname="host=db1 dbname=shop").run(repo)                      # doctest: +SKIP
>>> Verifier(repo).verify(m.id, drill=True).raise_for_failure()                     # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_getattr
from ._version import __version__
from .errors import (
    AlreadyExists,
    BackupError,
    BackupNotFound,
    ChecksumMismatch,
    ClusterError,
    ConfigurationError,
    DatabaseError,
    ManifestError,
    MissingDependency,
    NotStored,
    PgRecoveryError,
    PolicyLocked,
    RestoreError,
    StorageError,
    TargetUnreachable,
    ToolFailed,
    ToolNotFound,
    VerificationFailed,
    WalGap,
)

# Imports are lazy (PEP 562): `python -m pgrecovery wal-push` must start fast, with the standard library only,
# when it can answer from its spool. Type checkers see the real names.
_LAZY = {
    "TocEntry": "logical._toc",
    "Leftover": "catalog",
    "CopyResult": "copies",
    "RuleReport": "copies",
    "check_321": "copies",
    "copy_repository": "copies",
    "LocalCluster": "cluster",
    "temporary_cluster": "cluster",
    "ClusterBackup": "logical.backup",
    "GlobalsBackup": "logical.backup",
    "LogicalBackup": "logical.backup",
    "LogicalRestore": "logical.restore",
    "RestoreResult": "logical.restore",
    "BackupManifest": "manifest",
    "ContentSummary": "manifest",
    "FileEntry": "manifest",
    "Progress": "progress",
    "ProgressCallback": "progress",
    "Repository": "repository",
    "StoredObject": "_objects",
    "Check": "verify",
    "VerificationReport": "verify",
    "Verifier": "verify",
    "BaseBackup": "physical.backup",
    "RecoveryPlan": "recovery.plan",
    "RecoveryResult": "recovery.run",
    "RecoveryTarget": "recovery.target",
    "WalArchiver": "wal.archiver",
    "AgeLimit": "monitoring",
    "CheckResult": "monitoring",
    "HealthReport": "monitoring",
    "RunRecord": "monitoring",
    "StatusTable": "monitoring",
    "Thresholds": "monitoring",
    "check": "monitoring",
    "metrics": "monitoring",
    "recording": "monitoring",
    "configure_logging": "logs",
    "RetentionPolicy": "retention",
    "expire": "retention",
    "RowRescue": "recovery.rescue",
    "Sandbox": "recovery.rescue",
    "TableRescue": "recovery.rescue",
    "recover_rows": "recovery.rescue",
    "recover_table": "recovery.rescue",
    "sandbox_at": "recovery.rescue",
    "BackupPolicy": "policy",
    "Job": "policy",
    "JobRun": "policy",
    "PolicyRun": "policy",
    "Schedule": "policy",
    "load_policy": "policy",
    "run_policy": "policy",
}

if TYPE_CHECKING:
    from ._objects import StoredObject
    from .catalog import Leftover
    from .cluster import LocalCluster, temporary_cluster
    from .copies import CopyResult, RuleReport, check_321, copy_repository
    from .logical._toc import TocEntry
    from .logical.backup import ClusterBackup, GlobalsBackup, LogicalBackup
    from .logical.restore import LogicalRestore, RestoreResult
    from .logs import configure_logging
    from .manifest import BackupManifest, ContentSummary, FileEntry
    from .monitoring import (
        AgeLimit,
        CheckResult,
        HealthReport,
        RunRecord,
        StatusTable,
        Thresholds,
        check,
        metrics,
        recording,
    )
    from .physical.backup import BaseBackup
    from .policy import BackupPolicy, Job, JobRun, PolicyRun, Schedule, load_policy, run_policy
    from .progress import Progress, ProgressCallback
    from .recovery.plan import RecoveryPlan
    from .recovery.rescue import RowRescue, Sandbox, TableRescue, recover_rows, recover_table, sandbox_at
    from .recovery.run import RecoveryResult
    from .recovery.target import RecoveryTarget
    from .repository import Repository
    from .retention import RetentionPolicy, expire
    from .verify import Check, VerificationReport, Verifier
    from .wal.archiver import WalArchiver


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = [
    "AgeLimit",
    "AlreadyExists",
    "BackupError",
    "BackupManifest",
    "BackupNotFound",
    "BackupPolicy",
    "BaseBackup",
    "Check",
    "CheckResult",
    "ChecksumMismatch",
    "ClusterBackup",
    "ClusterError",
    "ConfigurationError",
    "ContentSummary",
    "CopyResult",
    "DatabaseError",
    "FileEntry",
    "GlobalsBackup",
    "HealthReport",
    "Job",
    "JobRun",
    "Leftover",
    "LocalCluster",
    "LogicalBackup",
    "LogicalRestore",
    "ManifestError",
    "MissingDependency",
    "NotStored",
    "PgRecoveryError",
    "PolicyLocked",
    "PolicyRun",
    "Progress",
    "ProgressCallback",
    "RecoveryPlan",
    "RecoveryResult",
    "RecoveryTarget",
    "Repository",
    "RestoreError",
    "RestoreResult",
    "RetentionPolicy",
    "RowRescue",
    "RuleReport",
    "RunRecord",
    "Sandbox",
    "Schedule",
    "StatusTable",
    "StorageError",
    "StoredObject",
    "TableRescue",
    "TargetUnreachable",
    "Thresholds",
    "TocEntry",
    "ToolFailed",
    "ToolNotFound",
    "VerificationFailed",
    "VerificationReport",
    "Verifier",
    "WalArchiver",
    "WalGap",
    "__version__",
    "check",
    "check_321",
    "configure_logging",
    "copy_repository",
    "expire",
    "load_policy",
    "metrics",
    "recording",
    "recover_rows",
    "recover_table",
    "run_policy",
    "sandbox_at",
    "temporary_cluster",
]
