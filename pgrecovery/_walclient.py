"""archive_command's side of the archiving worker (standard library only; see `pgrecovery.wal.worker`).

``push`` asks the worker listening on ``<spool>/worker.sock`` to archive a WAL file and says whether it answered
"ok" (the file is durable in the repository); ``fetch`` asks it to deliver one (or to say the archive lacks it).
With no worker listening they start one and wait for it. Any other outcome (no answer in time, a dead or foreign
worker, an error) counts as no answer: the caller then does the work in-process, so a worker can only ever make
archiving and recovery faster, never make them lose, falsely acknowledge or wrongly deny a file.
``PGRECOVERY_WAL_WORKER=off`` in the server's environment turns the worker off; ``PGRECOVERY_WAL_WORKER_TIMEOUT``
sets how long a push may take before the caller stops waiting (120 s), ``PGRECOVERY_WAL_WORKER_IDLE`` how long a
worker without work lives (600 s).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs milliseconds on the fast path
if TYPE_CHECKING:
    import socket
    import subprocess
    from collections.abc import Callable, Mapping, Sequence
    from typing import Final

SOCKET_NAME: Final = "worker.sock"
LOCK_NAME: Final = "worker.lock"
FAILED_NAME: Final = "worker.failed"
FAILED_PAUSE: Final = 60.0
WORKER_ENV: Final = "PGRECOVERY_WAL_WORKER"
START_WAIT: Final = 30.0  # seconds for a new worker to listen
REPLY_WAIT: Final = 120.0  # seconds for a push to be acknowledged; then the caller pushes itself
IDLE_ENV: Final = "PGRECOVERY_WAL_WORKER_IDLE"
TIMEOUT_ENV: Final = "PGRECOVERY_WAL_WORKER_TIMEOUT"  # another wait than REPLY_WAIT, in seconds
_MAX_PATH: Final = 100  # sun_path holds 108 bytes


def enabled() -> bool:
    return os.environ.get(WORKER_ENV, "on").strip().lower() not in ("0", "off", "no", "false")


def socket_path(spool: str) -> str:
    return os.path.join(spool, SOCKET_NAME)


def usable(spool: str) -> bool:
    """Whether a worker can listen for ``spool``: its socket's path fits a socket address, or on Linux, where a
    longer one is reached through the spool directory's descriptor (`_at_address`)."""
    return len(os.fsencode(socket_path(spool))) <= _MAX_PATH or os.path.isdir("/proc/self/fd")


def _at_address(spool: str, call: Callable[[str], None]) -> None:
    """``call`` (a socket's connect or bind) with the address of ``spool``'s socket. A socket address holds about
    100 bytes of path: a longer spool path is reached through ``/proc/self/fd/<n>``, ``n`` a descriptor of the
    spool directory opened for the call (Linux), so that a data directory deep in a mount still gets a worker."""
    path = socket_path(spool)
    if len(os.fsencode(path)) <= _MAX_PATH:
        call(path)
        return
    if not usable(spool):
        raise OSError(errno.ENAMETOOLONG, f"the spool path is too long for a socket: {path}")
    fd = os.open(spool, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        call(f"/proc/self/fd/{fd}/{SOCKET_NAME}")
    finally:
        os.close(fd)


def worker_mark(spool: str, tag: str) -> str:
    """``acked/<tag>.worker``: the pid of the WAL worker pushing ahead into repository ``tag`` while it runs, beside
    that repository's acknowledgement links. The shell part of archive_command waits a moment for a link only
    while that process lives."""
    return os.path.join(spool, "acked", tag + ".worker")


def mark_worker(spool: str, tag: str, pid: int) -> None:
    from ._fsutil import write_atomic  # (only the worker marks: not on archive_command's fast path)

    path = worker_mark(spool, tag)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomic(path, f"{pid}\n", mode=0o644, sync=False)
    except OSError:
        pass  # best effort: without it archive_command asks the worker over its socket


def unmark_worker(spool: str, tag: str, pid: int) -> None:
    """Remove the worker mark if it is still ``pid``'s (a worker started after this one keeps its own)."""
    path = worker_mark(spool, tag)
    try:
        with open(path) as f:
            if f.read(32).strip() == str(pid):
                os.unlink(path)
    except OSError:
        pass


def ask(spool: str, line: str, timeout: float) -> str | None:
    """The worker's one-line reply to ``line``: None when no worker listens, "" when one took the question but
    gave no answer (it died, or is hung past ``timeout``)."""
    path = socket_path(spool)
    if not os.path.exists(path):
        return None  # (before importing socket, which costs a spool hit 5 ms)
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        try:
            _at_address(spool, s.connect)
        except OSError:
            return None
        data = b""
        try:
            s.sendall(line.encode() + b"\n")
            while not data.endswith(b"\n"):
                more = s.recv(4096)
                if not more:
                    return ""
                data += more
        except OSError:
            return ""
        return data.decode(errors="replace").strip()
    finally:
        s.close()


def listen(spool: str) -> socket.socket:
    """A non-blocking listening socket at ``<spool>/worker.sock`` (0600), replacing a dead worker's."""
    import socket

    path = socket_path(spool)
    try:  # noqa: SIM105 - contextlib costs an import on archive_command's path
        os.unlink(path)  # the caller holds the lock: a socket file here is a dead worker's
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        _at_address(spool, s.bind)
    except BaseException:
        s.close()
        raise
    finally:
        os.umask(old)
    s.listen(64)
    s.setblocking(False)
    return s


def start_holding(
    spool: str,
    lock_name: str,
    cmd: list[str],
    env: dict[str, str],
    *,
    owner: tuple[int, int] | None = None,
    prefix: Sequence[str] = (),
    umask: int = -1,
) -> subprocess.Popen[bytes] | None:
    """Take ``<spool>/<lock_name>`` and start ``cmd`` with ``--lock-fd N`` detached (its own session, no terminal,
    stdin/stdout/stderr on /dev/null), handing it the lock: held from now until the child exits. None (nothing
    started) when the lock is taken: such a process runs, or is starting, already.

    ``owner`` (uid, gid): whom the spool and the lock file are given to when this call creates them (a process
    of another user, ``prefix`` being what runs ``cmd`` as that user: root starting the server's worker);
    ``umask``: the child's (-1: this process's)."""
    import subprocess

    if not os.path.isdir(spool):
        os.makedirs(spool, mode=0o700, exist_ok=True)
        if owner is not None:
            os.chown(spool, *owner)
    fd = os.open(os.path.join(spool, lock_name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        return subprocess.Popen(
            [*prefix, *cmd, "--lock-fd", str(fd)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            pass_fds=(fd,),
            umask=umask,
        )
    finally:
        os.close(fd)  # the child keeps its inherited copy (and with it the lock)


def spawn(
    spool: str,
    url: str,
    wal_dir: str,
    key_file: str | None = None,
    *,
    python: str | None = None,
    options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    owner: tuple[int, int] | None = None,
    prefix: Sequence[str] = (),
    umask: int = -1,
) -> subprocess.Popen[bytes] | None:
    """Start a detached worker unless one runs (or is starting); the child, if one was started. The repository URL
    goes through the child's environment, not its command line (``ps`` shows command lines to every user).

    ``python`` runs it (this interpreter), with more of its ``options``, in ``env`` (this process's environment)
    plus the URL; ``owner``, ``prefix`` and ``umask`` as in `start_holding`."""
    full = dict(os.environ if env is None else env, PGRECOVERY_REPO=url)
    if key_file:
        full["PGRECOVERY_ENCRYPTION_KEY_FILE"] = os.path.abspath(key_file)
    cmd = [python or sys.executable, "-m", "pgrecovery", "wal-worker", "--spool", spool, "--wal-dir", wal_dir]
    return start_holding(spool, LOCK_NAME, [*cmd, *options], full, owner=owner, prefix=prefix, umask=umask)


def failed_recently(spool: str) -> bool:
    """A worker failed (``worker.failed``, written by it) in the last minute: do not wait for another."""
    try:
        return time.time() - os.stat(os.path.join(spool, FAILED_NAME)).st_mtime < FAILED_PAUSE
    except OSError:
        return False


def stop(spool: str, timeout: float = 30.0) -> None:
    """Ask the worker of ``spool`` (if one listens) to leave, and wait until it has (its lock is free)."""
    if not ask(spool, "stop", 5.0):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fd = os.open(os.path.join(spool, LOCK_NAME), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.01)
        finally:
            os.close(fd)


def _request(line: str, spool: str, url: str, wal_dir: str, key_file: str | None) -> str | None:
    """The worker's reply to ``line`` (starting a worker when none listens); None: no usable answer."""
    if not enabled() or failed_recently(spool) or not usable(spool):
        return None
    try:
        wait = float(os.environ.get(TIMEOUT_ENV) or REPLY_WAIT)
    except ValueError:
        wait = REPLY_WAIT
    reply = ask(spool, line, wait)
    if reply is None:  # nobody listens: start a worker (a hung or dying one is not waited for again)
        child = spawn(spool, url, wal_dir, key_file)
        deadline = time.monotonic() + START_WAIT
        while reply is None and time.monotonic() < deadline:
            if (child is not None and child.poll() is not None) or failed_recently(spool):
                return None  # it died at start-up (ours, or the one another caller started)
            time.sleep(0.01)
            reply = ask(spool, line, wait)
    return reply or None


def push(path: str, spool: str, url: str, tag: str, key_file: str | None = None) -> bool:
    """Whether the worker archived ``path`` (absolute) durably."""
    reply = _request(f"push {tag} {path}", spool, url, os.path.dirname(path), key_file)
    return reply is not None and reply.startswith("ok ")


def fetch(name: str, dest: str, spool: str, url: str, tag: str, key_file: str | None = None) -> bool | None:
    """True: the worker delivered ``name`` as ``dest`` (absolute); False: the server is to read pg_wal (exit 1):
    the archive does not have it, or it is staged there (its prefetcher finished it after the shell looked);
    None: no answer to rely on (the full CLI then fetches, and reports what goes wrong)."""
    reply = _request(f"fetch {tag} {name} {dest}", spool, url, os.path.dirname(dest), key_file)
    return True if reply == "ok" else False if reply in ("miss", "staged") else None
