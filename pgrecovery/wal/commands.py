"""The ``archive_command`` and ``restore_command`` settings for postgresql.conf that run pgrecovery.

>>> archive_command("s3://backups/prod", python="/usr/bin/python3", fast=False)  # doctest: +SKIP
"/usr/bin/python3 -m pgrecovery wal-push --repo s3://backups/prod %p"
"""

from __future__ import annotations

import logging
import os
import shlex
import sys

from .. import _spool
from . import _absent

log = logging.getLogger(__package__)
# PostgreSQL 15 and older expand archive_command into a buffer of MAXPGPATH (1,024) bytes and cut what does not fit
_PG15_LIMIT = 1024


def _q(text: str) -> str:
    """Shell-quote ``text`` and protect its ``%`` from PostgreSQL's placeholder substitution."""
    return shlex.quote(text).replace("%", "%%")


def _entry(python: str | None, fast: bool) -> str:
    exe = _q(python or sys.executable)
    if not fast:
        return f"{exe} -m pgrecovery"
    # -S: no site module at start-up (10 ms less); the script loads it itself when the spool cannot answer.
    # the entry script beside the spool (a path, not an import: it belongs to the CLI's layer)
    script = os.path.join(os.path.dirname(os.path.abspath(_spool.__file__)), "_walcmd.py")
    return f"{exe} -S {_q(script)}"


def archive_command(
    repo_url: str,
    python: str | None = None,
    *,
    spool_dir: str | None = None,
    fast: bool = True,
    key_file: str | None = None,
) -> str:
    """The ``archive_command`` setting that archives into ``repo_url`` with this interpreter (``sys.executable``).

    ``key_file``: an encrypted repository's key file (its path goes on the command line, never the key; or set
    ``PGRECOVERY_ENCRYPTION_KEY_FILE`` / ``PGRECOVERY_ENCRYPTION_KEY`` in the server's environment instead).

    With ``fast`` (the default) a file that the WAL worker already archived ahead is acknowledged by the shell
    itself (a test of its hard link in the spool); otherwise the command runs ``pgrecovery/_walcmd.py`` under
    ``python -S``, which asks the WAL worker, or hands over to the full CLI. ``fast=False`` gives the plainer
    ``python -m pgrecovery wal-push``. Storage credentials are best given through the server's environment
    (``FSSPEC_*`` variables), not the URL.
    """
    spool = f" --spool {_q(spool_dir)}" if spool_dir else ""
    key = f" --encryption-key-file {_q(key_file)}" if key_file else ""
    command = f"{_entry(python, fast)} wal-push --repo {_q(repo_url)}{spool}{key} %p"
    if not fast:
        return command
    # the shell's part: a file the WAL worker already made durable (pushed ahead) is acknowledged by a test of
    # its hard link (`pgrecovery._spool.link_ack`), with no program started at all. In a subshell, so that its
    # exit and exec end only this command: it composes with others (``A && B``) as a plain command does.
    acked = _spool_path(spool_dir, "acked", _spool.repo_tag(repo_url))
    return _checked(f"""({acked}[ "$s/%f" -ef "$p" ] 2>/dev/null && exit 0; {_wait_for_worker()}exec {command})""")


# how long the shell waits for the WAL worker's acknowledgement before starting Python, in polls of 2 ms (with
# the start of `sleep`, about 3 ms each): a local push takes 20-40 ms, one into an object store 50-150 ms
_WAIT_POLLS = 150


# how long the shell waits, at most, for the WAL worker's push of the file under way (its lock), in seconds
_LOCK_WAIT = 1


def _wait_for_worker() -> str:
    """Shell code: while the WAL worker serving this repository lives (its pid in ``acked/<tag>.worker``, tested
    with the ``kill -0`` builtin), wait for its push of the file and exit 0 once the acknowledgement link is
    there (the worker starts on the ``.ready`` file as soon as it appears). This spares the Python start-up
    (about 10 ms) of asking it over its socket.

    The worker holds an exclusive flock on the WAL file while pushing it (`pgrecovery.wal.worker`), so the shell
    first waits for that lock in the kernel (``flock -s``, one program started, nothing spent while waiting),
    then tests the link every 2 ms for a moment: for a push the worker had not begun yet, or where ``flock`` is
    missing. A worker that died, a pid reused, or a push not done in time only cost this wait: the Python command
    follows, as it does with no worker at all."""
    return (
        '{ read w <"$s.worker" && kill -0 "$w"; } 2>/dev/null && { '
        f'flock -s -w {_LOCK_WAIT} 9 9<"$p" 2>/dev/null; [ "$s/%f" -ef "$p" ] && exit 0; i=0; '
        f'while [ $i -lt {_WAIT_POLLS} ] && sleep 0.002; do [ "$s/%f" -ef "$p" ] && exit 0; i=$((i+1)); done; }}; '
    )


def _checked(command: str) -> str:
    """``command``, after a warning if PostgreSQL 15 would cut it once ``%p`` and ``%f`` are expanded (a path of
    up to 64 bytes assumed for ``%p``): the cut command would fail, and archiving stop, until it is shortened."""
    expanded = len(command.replace("%%", "%").replace("%p", "x" * 64).replace("%f", "x" * 24))
    if expanded >= _PG15_LIMIT:
        log.warning(
            "the archive_command is about %d bytes once expanded; PostgreSQL 15 and older cut it at 1,024: use a "
            "shorter interpreter or spool path, or fast=False",
            expanded,
        )
    return command


def restore_command(
    repo_url: str,
    python: str | None = None,
    *,
    spool_dir: str | None = None,
    prefetch: bool = True,
    fast: bool = True,
    key_file: str | None = None,
) -> str:
    """The ``restore_command`` setting that fetches from ``repo_url`` (exit 1 only when a file is not archived, or
    is staged in ``pg_wal`` already, verified: PostgreSQL then reads it there).

    With ``fast`` and ``prefetch`` (the defaults) a segment already in the prefetch queue is moved into place by
    the shell itself (`_queue_hit`): no Python starts, so replay does not wait for an interpreter per segment; so
    is a file the prefetch filler's listing of the last second lacks answered "not archived" (`_known_absent`).
    Anything else runs ``_walcmd.py`` as for `archive_command`.
    """
    spool = f" --spool {_q(spool_dir)}" if spool_dir else ""
    no_prefetch = "" if prefetch else " --no-prefetch"
    key = f" --encryption-key-file {_q(key_file)}" if key_file else ""
    command = f"{_entry(python, fast)} wal-fetch --repo {_q(repo_url)}{spool}{no_prefetch}{key} %f %p"
    if not (fast and prefetch):
        return command
    # a group, not a subshell (whose fork cost 0.55 ms of the shell's 1.8 ms per segment), and so no exit: the
    # shell part sets r, and a case on it gives the answer, or runs Python; the command still composes (A && B)
    return f"{{ {_queue_hit(repo_url, spool_dir)}case $r in 0) true;; 1) false;; *) {command};; esac; }}"


def _spool_path(spool_dir: str | None, *parts: str) -> str:
    """Shell code setting ``p`` to ``%p`` and ``s`` to a path under the spool: quoted, or, for the default spool,
    found from ``%p`` as `pgrecovery._spool.default_spool` finds it (lexically: the parent of ``%p``'s directory,
    even where pg_wal is a symbolic link). Every ``%`` of the shell's patterns is doubled for PostgreSQL."""
    if spool_dir:
        return f"p='%p' s={_q(os.path.join(spool_dir, *parts))}; "
    under = "/".join((_spool.SPOOL_NAME, *parts))
    return f"""p='%p'; d=${{p%%/*}}; s=${{d%%/*}}; [ "$s" = "$d" ] && s=.; s="$s/{under}"; """


def _queue_hit(repo_url: str, spool_dir: str | None) -> str:
    """The shell's part of the fast restore_command, which sets ``r`` to the answer: if the prefetch queue belongs
    to this repository (its ``.source`` holds the repository's tag and this boot's id) and holds ``%f``, rename it
    to ``%p`` (0); otherwise (or if the rename fails: empty) the Python command runs. Only builtins and one
    ``mv``: about 2 ms. A queued segment the prefetcher staged in ``pg_wal`` (the same file under its own name
    there: `pgrecovery.wal._prefetch.stage`) is noted as wanted (and in ``.taken``, for the recovery's report)
    and answered 1: PostgreSQL then reads it from ``pg_wal``, with no program started at all; about 1.3 ms.

    The queue holds only complete, verified files (renamed into it by the prefetcher), so taking one is as safe
    here as in Python. They are not fsynced: a power loss could tear them, but a power loss is always a reboot,
    and a queue written in another boot is never taken. The default spool is found from ``%p`` as
    `pgrecovery._spool.default_spool` finds it.
    """
    tag = _spool.repo_tag(repo_url)
    return (
        _spool_path(spool_dir, "prefetch")
        + f'r=; {{ read t b <"$s/.source" && {{ read k <{_q(_spool.BOOT_ID)} || k=; }} && [ "$t $b" = "{tag} $k" ] '
        + '&& { [ -f "$s/%f" ] && { { [ "$s/%f" -ef "${p%%/*}/%f" ] '
        + '&& { echo %f >"$s/.wanted"; echo %f >>"$s/.taken"; r=1; }; } '
        + '|| { mv -fT "$s/%f" "$p" && r=0; }; } || '
        + _known_absent(tag)
        + "; }; } 2>/dev/null; "
    )


def _known_absent(tag: str) -> str:
    """Shell code setting ``r`` to 1 (not archived) when the prefetch filler's listing, begun less than a second ago in
    this boot, lacks ``%f`` (`pgrecovery.wal._absent`): its ``.absent`` holds the repository's tag, the boot id
    (``$k``), the expiry in ``/proc/uptime``'s centiseconds and the names; ``$s`` is the queue's directory. Only
    builtins: an ask for a file the archive does not have (the end of the archive, a timeline probe) costs no
    program start and no request to the store."""
    return (
        f'{{ read t b e a <"$s/{_absent.NAME}" && [ "$t $b" = "{tag} $k" ] && read u t </proc/uptime '
        + '&& [ "${u%%.*}${u#*.}" -lt "$e" ] && case " $a " in *" %f "*) r=1;; esac; }'
    )


__all__ = ["archive_command", "restore_command"]
