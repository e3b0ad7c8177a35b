"""Verification: does a backup restore? `Verifier` checks stored files against the manifest, that a dump's table of
contents reads, and (a drill) restores it somewhere and counts the rows; the outcome is a `VerificationReport`.

The pieces: `report` (Check, VerificationReport), `verifier` (Verifier: checksums, readability, which drill),
``_drills`` (the base and logical drills, the comparison with the source) and ``_counts`` (counts, invalid indexes,
amcheck).
"""

from ._counts import table_counts
from .report import Check, Status, VerificationReport
from .verifier import Verifier

__all__ = ["Check", "Status", "VerificationReport", "Verifier", "table_counts"]
