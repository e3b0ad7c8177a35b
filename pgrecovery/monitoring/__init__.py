"""Monitoring: the status table of runs, health checks with Nagios exit codes, Prometheus metrics.

The modules: `results` (check states and results), `thresholds` (durations and limits), `status` (the status
table and `recording`), `health` (`check`), `prometheus` (`metrics`, `write_textfile`), and ``_sql`` (the
in-database ``pgrecovery_check()``).
"""

from ._sql import DEFAULT_STATUS_TABLE, check_function_sql
from .health import check
from .prometheus import Metrics, collect_metrics, metrics, write_textfile
from .results import CheckResult, CheckState, HealthReport
from .status import RunContext, RunRecord, StatusTable, recording
from .thresholds import BACKUP_KINDS, AgeLimit, CountLimit, Thresholds, human_duration, parse_duration

__all__ = [
    "BACKUP_KINDS",
    "DEFAULT_STATUS_TABLE",
    "AgeLimit",
    "CheckResult",
    "CheckState",
    "CountLimit",
    "HealthReport",
    "Metrics",
    "RunContext",
    "RunRecord",
    "StatusTable",
    "Thresholds",
    "check",
    "check_function_sql",
    "collect_metrics",
    "human_duration",
    "metrics",
    "parse_duration",
    "recording",
    "write_textfile",
]
