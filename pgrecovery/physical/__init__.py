"""Physical base backups (full or incremental) and restoring their files into a data directory."""

from .backup import BaseBackup

__all__ = ["BaseBackup"]
