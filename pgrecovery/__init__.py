"""pgrecovery: PostgreSQL backup and recovery as a typed Python library, over any fsspec storage.

>>> from pgrecovery import Repository, LogicalBackup, LogicalRestore, Verifier      # doctest: +SKIP
>>> repo = Repository("file:///var/backups/pg")                                     # doctest: +SKIP
>>> m = LogicalBackup(dbname="host=db1 dbname=shop").run(repo)                      # doctest: +SKIP
>>> Verifier(repo).verify(m.id, drill=True).raise_for_failure()                     # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._toc import TocEntry
from .catalog import Leftover
from .cluster import LocalCluster, temporary_cluster
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
    PgRecoveryError,
    RestoreError,
    StorageError,
    ToolFailed,
    ToolNotFound,
    VerificationFailed,
)
from .logical import ClusterBackup, GlobalsBackup, LogicalBackup
from .manifest import BackupManifest, ContentSummary, FileEntry
from .progress import Progress, ProgressCallback
from .restore import LogicalRestore, RestoreResult
from .storage import Repository, StoredObject
from .verify import Check, VerificationReport, Verifier

__all__ = [
    "AlreadyExists",
    "BackupError",
    "BackupManifest",
    "BackupNotFound",
    "Check",
    "ChecksumMismatch",
    "ClusterBackup",
    "ClusterError",
    "ConfigurationError",
    "ContentSummary",
    "DatabaseError",
    "FileEntry",
    "GlobalsBackup",
    "Leftover",
    "LocalCluster",
    "LogicalBackup",
    "LogicalRestore",
    "ManifestError",
    "MissingDependency",
    "PgRecoveryError",
    "Progress",
    "ProgressCallback",
    "Repository",
    "RestoreError",
    "RestoreResult",
    "StorageError",
    "StoredObject",
    "TocEntry",
    "ToolFailed",
    "ToolNotFound",
    "VerificationFailed",
    "VerificationReport",
    "Verifier",
    "__version__",
    "temporary_cluster",
]
