"""Declarative backup policies: schedules, jobs, and the runner cron calls every few minutes."""

from .runner import (
    BACKUP_KINDS,
    JOB_KINDS,
    BackupPolicy,
    Job,
    JobRun,
    PolicyRun,
    RepositoryRef,
    Schedule,
    default_state_dir,
    load_policy,
    retention_from,
    run_policy,
    state_paths,
    write_atomically,
)

__all__ = [
    "BACKUP_KINDS",
    "JOB_KINDS",
    "BackupPolicy",
    "Job",
    "JobRun",
    "PolicyRun",
    "RepositoryRef",
    "Schedule",
    "default_state_dir",
    "load_policy",
    "retention_from",
    "run_policy",
    "state_paths",
    "write_atomically",
]
