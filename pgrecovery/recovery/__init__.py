"""Point-in-time recovery: targets, the plan (which backup, is the archive enough), running it, and rescues of rows
and tables through a sandbox recovery."""

from .plan import RecoveryPlan
from .rescue import RowRescue, TableRescue, recover_rows, recover_table
from .run import RecoveryResult
from .sandbox import Sandbox, sandbox_at
from .target import RecoveryTarget

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
