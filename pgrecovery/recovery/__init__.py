"""Point-in-time recovery: targets, the plan (which backup, is the archive enough), running it, and rescues of rows
and tables through a sandbox recovery."""

from .plan import RecoveryPlan, RecoveryResult, RecoveryTarget
from .rescue import RowRescue, Sandbox, TableRescue, recover_rows, recover_table, sandbox_at

__all__ = [
    "RecoveryPlan",
    "RecoveryResult",
    "RecoveryTarget",
    "RowRescue",
    "Sandbox",
    "TableRescue",
    "recover_rows",
    "recover_table",
    "sandbox_at",
]
