"""The script archive_command and restore_command run: ``python -S .../pgrecovery/_walcmd.py wal-push|wal-fetch ...``.

An entry point (the CLI's layer): it asks the spool first (`pgrecovery._fastpath.fast_command`, standard library
only, so a call the spool can answer costs Python's start-up and a stat or a rename), and on a miss loads
``site`` and hands over to the full CLI. Run as a script, it imports its sibling modules without the package
(whose ``__init__`` imports typing).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs milliseconds on the fast path
if TYPE_CHECKING:
    from collections.abc import Sequence

if __package__:
    from . import _fastpath
else:  # run as a script
    import importlib

    _fastpath = importlib.import_module("_fastpath")


def main(argv: Sequence[str]) -> int:
    """``python -S .../_walcmd.py <wal-push|wal-fetch> ...``: the spool's answer, else the full CLI with site loaded."""
    code = _fastpath.fast_command(argv)
    if code is not None:
        return code
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # no sibling modules as top level
    if sys.flags.no_site:
        import site

        site.main()  # what -S skipped: the virtualenv's site-packages and .pth files
    try:
        import pgrecovery.cli  # noqa: F401 - is the package importable now (installed, editable or PYTHONPATH)?
    except ImportError:
        sys.path.append(os.path.dirname(here))
    from pgrecovery.cli.exitcodes import EXIT_FATAL, EXIT_MISS, EXIT_OK
    from pgrecovery.cli.main import main as cli_main

    code = cli_main(list(argv))
    if list(argv[:1]) == ["wal-fetch"] and code not in (EXIT_OK, EXIT_MISS):
        return EXIT_FATAL  # a usage error must stop recovery, not read as "not archived" (exit 1 and 2 both would)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
