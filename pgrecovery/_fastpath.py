"""The answers archive_command and restore_command get without the library: from the spool (`_spool`) or the
WAL worker (`_walclient`). Standard library only, and little of it: `pgrecovery/_walcmd.py` runs this under
``python -S`` before it loads anything else.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs milliseconds on the fast path
if TYPE_CHECKING:
    from collections.abc import Sequence

if __package__:
    from . import _spool, _walclient
else:  # run as a script: import the sibling modules without the package (whose __init__ imports typing)
    import importlib

    _spool = importlib.import_module("_spool")
    _walclient = importlib.import_module("_walclient")


def _fast_args(argv: Sequence[str]) -> tuple[str, dict[str, str], list[str], set[str]] | None:
    """(verb, options, positionals, flags) of the few forms archive_command/restore_command use, else None."""
    if not argv or argv[0] not in ("wal-push", "wal-fetch"):
        return None
    opts: dict[str, str] = {}
    flags: set[str] = set()
    pos: list[str] = []
    it = iter(argv[1:])
    for arg in it:
        if arg in ("--repo", "--spool", "--encryption-key-file"):  # a key file changes no spool decision
            value = next(it, None)
            if value is None:
                return None
            opts[arg] = value
        elif arg == "--no-prefetch":
            flags.add(arg)
        elif arg.startswith("-"):
            return None  # anything else is for the full CLI
        else:
            pos.append(arg)
    return argv[0], opts, pos, flags


def _prefetch_quietly(name: str, spool: str, url: str) -> bool:
    try:
        return _spool.after_fetch(name, spool, repo_url=url)
    except Exception:  # noqa: BLE001 - the file is delivered; prefetch is only an optimisation
        return False


def queue_answer(name: str, dest: str, spool: str, tag: str) -> str | None:
    """How the prefetch queue answers restore_command for ``name``: ``staged`` when the queued file is staged in
    ``dest``'s directory (pg_wal: the very file, see `pgrecovery.wal._prefetch.stage`; restore_command exits 1
    and the server reads it there, as the shell answers; noted as wanted and in ``.taken``), ``ok`` when it was
    handed over as ``dest``, None when the queue does not hold it. (A staged segment whose download ended after
    the shell looked could be renamed to ``dest`` too, but the server would then free it before its next call.)"""
    queued = os.path.join(_spool.prefetch_dir(spool), name)
    if not _spool.same_file(queued, os.path.join(os.path.dirname(dest), name)) or not _spool.source_matches(spool, tag):
        return "ok" if _spool.take_prefetched(name, dest, spool, tag) else None
    try:
        _spool.note_wanted(spool, name)
        with open(os.path.join(_spool.prefetch_dir(spool), ".taken"), "a") as f:
            f.write(name + "\n")
    except OSError:
        pass  # notes for the prefetcher and the report: the answer stands
    return "staged"


def fast_command(argv: Sequence[str]) -> int | None:
    """Answer wal-push / wal-fetch from the spool or the WAL worker (`_walclient`): an exit code, or None when the
    full CLI must run."""
    parsed = _fast_args(argv)
    url = parsed and (parsed[1].get("--repo") or os.environ.get("PGRECOVERY_REPO"))
    if not parsed or not url:
        return None
    verb, opts, pos, flags = parsed
    try:
        if verb == "wal-push" and len(pos) == 1:
            path = os.path.abspath(pos[0])
            spool, tag = opts.get("--spool") or _spool.default_spool(path), _spool.repo_tag(url)
            if _spool.pushed_already(path, spool, tag):
                return 0
            return 0 if _walclient.push(path, spool, url, tag, opts.get("--encryption-key-file")) else None
        if verb == "wal-fetch" and len(pos) == 2:
            name, dest = pos[0], os.path.abspath(pos[1])
            spool = opts.get("--spool") or _spool.default_spool(dest)
            _spool.remove_stale_temps(dest)
            tag = _spool.repo_tag(url)
            answer = queue_answer(name, dest, spool, tag)
            if answer == "staged":
                return 1  # staged in pg_wal after the shell looked: the server reads it there
            if answer is None:
                got = _walclient.fetch(name, dest, spool, url, tag, opts.get("--encryption-key-file"))
                if not got:
                    return None if got is None else 1
            if "--no-prefetch" not in flags:
                _prefetch_quietly(name, spool, url)
            return 0
    except Exception:  # noqa: BLE001 - the full CLI retries and reports properly
        return None
    return None
