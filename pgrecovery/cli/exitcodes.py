"""The exit codes of the ``pgrecovery`` command: the one table. The library raises typed exceptions and never
exits; the verbs in `pgrecovery.cli` and the archive/restore_command script (``_walcmd``) turn them into these.

====  ===========  ===========================================================================================
code  name         meaning
====  ===========  ===========================================================================================
0     OK           success (``check``: every check OK)
1     FAILED       the operation or a verification failed; ``wal-push``: any failure (PostgreSQL retries later)
1     MISS         ``wal-fetch``: the file is not archived, a confirmed miss (recovery ends there)
2     USAGE        usage error: bad option, unknown backup id, bad repository URL, missing extra
3     UNKNOWN      ``check``: the check could not run (Nagios UNKNOWN; 1 and 2 are its WARNING and CRITICAL)
130   INTERRUPTED  interrupted (128 + SIGINT)
255   FATAL        ``wal-fetch``: anything but a delivery or a confirmed miss (storage error, corrupt object, bad
                   configuration or usage): PostgreSQL stops on exit codes above 125 instead of ending recovery
                   early at the wrong point
====  ===========  ===========================================================================================
"""

from __future__ import annotations

from ..errors import ConfigurationError, PgRecoveryError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_MISS = 1
EXIT_USAGE = 2
EXIT_UNKNOWN = 3
EXIT_INTERRUPTED = 130
EXIT_FATAL = 255

# The exit code of an error that reaches the command's top, by its class: the first entry it is an instance of.
EXIT_FOR: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigurationError, EXIT_USAGE),
    (PgRecoveryError, EXIT_FAILED),
)


def exit_code_for(error: BaseException) -> int:
    """The exit code for an error that ends the command (`EXIT_FAILED` for one the table does not name)."""
    return next((code for kind, code in EXIT_FOR if isinstance(error, kind)), EXIT_FAILED)


__all__ = [
    "EXIT_FAILED",
    "EXIT_FATAL",
    "EXIT_FOR",
    "EXIT_INTERRUPTED",
    "EXIT_MISS",
    "EXIT_OK",
    "EXIT_UNKNOWN",
    "EXIT_USAGE",
    "exit_code_for",
]
