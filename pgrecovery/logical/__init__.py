"""Logical backups (pg_dump streamed into the repository) and their restores, whole or in part."""

from .backup import ClusterBackup, GlobalsBackup, LogicalBackup
from .restore import LogicalRestore, RestoreResult

__all__ = ["ClusterBackup", "GlobalsBackup", "LogicalBackup", "LogicalRestore", "RestoreResult"]
