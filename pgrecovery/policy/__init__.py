"""Declarative backup policies: schedules, jobs, and the runner cron calls every few minutes.

The modules: `schedule` (when jobs fire), `jobs` (`Job`, `RepositoryRef`, `BackupPolicy`), `loader` (the TOML
policy file), `state` (the state file and the lock), `results` (`JobRun`, `PolicyRun`) and `runner` (`run_policy`).
"""

from .jobs import BACKUP_KINDS, JOB_KINDS, BackupPolicy, Job, RepositoryRef, retention_from
from .loader import load_policy
from .results import JobRun, PolicyRun
from .runner import run_policy, state_paths
from .schedule import Schedule
from .state import default_state_dir, write_atomically

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
