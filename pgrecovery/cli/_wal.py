"""CLI verbs for WAL archiving (wal-push, wal-fetch, wal-verify, wal-cleanup, archiver-status, restore-point).

Kept apart from the other verbs so that archive_command and restore_command start with the standard library only: a
wal-push that the spool's archive-ahead marker answers, and a wal-fetch that the prefetch queue answers, import
nothing but ``_spool`` and ``_walnames``.

Exit codes for PostgreSQL (from `pgrecovery.cli.exitcodes`):
  wal-push   0 once the file is durable in the repository; 1 on any failure (PostgreSQL retries later).
  wal-fetch  0 when delivered; 1 only for a confirmed miss (the file is not archived: recovery ends there);
             255 for anything else (storage error, corrupt object, bad configuration): PostgreSQL treats exit
             codes above 125 as fatal and stops, instead of ending recovery early at the wrong point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from .. import _spool
from . import _common
from ._common import add_verb, dbname_option, emit, repository_url, storage_options
from .exitcodes import EXIT_FAILED, EXIT_FATAL, EXIT_MISS, EXIT_OK

if TYPE_CHECKING:
    from ..repository import Repository
    from ..wal.archiver import WalArchiver

_MIB = 1024 * 1024


def _size(text: str) -> int:
    t = text.strip().upper().removesuffix("B")
    factor = {"K": 1024, "M": _MIB, "G": 1024 * _MIB}.get(t[-1:], 1)
    try:
        return int(t[:-1] if factor > 1 else t) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 16MB, got {text!r}") from None


def _segment_size_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--segment-size", type=_size, default=16 * _MIB, help="the cluster's wal_segment_size (default: 16MB)"
    )


def add_verbs(verbs: Any, common: argparse.ArgumentParser) -> None:
    """Register the WAL verbs on the main parser's subparsers."""
    push = add_verb(verbs, "wal-push", common, "archive a WAL file (archive_command: wal-push %%p)")
    push.add_argument("path", help="the WAL file (%%p, relative to the data directory)")
    push.add_argument("--spool", help="spool directory (default: pgrecovery_spool beside pg_wal)")
    push.add_argument("--compression", choices=["zstd", "gzip", "lz4", "none"], default="zstd")
    push.add_argument("--level", type=int, default=None, help="compression level (default: 1 for zstd)")
    push.add_argument("--parallel", type=int, default=4, help="threads for archive-ahead (default: 4)")

    fetch = add_verb(verbs, "wal-fetch", common, "restore a WAL file (restore_command: wal-fetch %%f %%p)")
    fetch.add_argument("name", help="the WAL file name (%%f)")
    fetch.add_argument("dest", help="where to put it (%%p, relative to the data directory)")
    fetch.add_argument("--spool", help="spool directory (default: pgrecovery_spool beside pg_wal)")
    fetch.add_argument("--no-prefetch", action="store_true", help="do not download the next segments ahead")
    fetch.add_argument("--prefetch", type=int, default=8, metavar="N", help="segments to download ahead (default 8)")
    fetch.add_argument("--parallel", type=int, default=4, help="parallel prefetch downloads (default: 4)")
    _segment_size_option(fetch)

    prefetch = verbs.add_parser("wal-prefetch", parents=[common])  # internal: started by wal-fetch; no help line
    prefetch.add_argument("name")
    prefetch.add_argument("--spool", required=True)
    prefetch.add_argument("--count", type=int, default=8)
    prefetch.add_argument("--parallel", type=int, default=4)
    prefetch.add_argument("--lock-fd", type=int, help="descriptor of the spool's lock, taken by wal-fetch")
    _segment_size_option(prefetch)

    worker = verbs.add_parser("wal-worker", parents=[common])  # internal: started by wal-push; no help line
    worker.add_argument("--spool", required=True)
    worker.add_argument("--wal-dir", required=True)
    worker.add_argument("--lock-fd", type=int, help="descriptor of the spool's worker lock, taken by wal-push")
    worker.add_argument("--idle", type=float, help="seconds without work before it exits (default 600)")
    worker.add_argument("--parallel", type=int, default=4)
    worker.add_argument("--prefetch-after", help="fill the prefetch queue after this segment at once")
    worker.add_argument("--await-server", type=float, default=0.0, help="seconds to wait for a server to start")

    verify = add_verb(verbs, "wal-verify", common, "check the WAL archive for gaps")
    verify.add_argument("--from", dest="first", metavar="SEGMENT", help="first segment (default: the oldest)")
    verify.add_argument("--timeline", type=int, help="follow this timeline's history (default: the newest)")
    verify.add_argument(
        "--check-digests",
        action="store_true",
        help="also download and check every archived object (segments, history, .backup and .partial files)",
    )
    _segment_size_option(verify)

    status = add_verb(verbs, "archiver-status", common, "the server's WAL archiver statistics")
    dbname_option(status)
    status.add_argument("--pgdata", help="data directory, to count the files waiting to be archived")

    point = add_verb(verbs, "restore-point", common, "create a named restore point")
    point.add_argument("name")
    dbname_option(point)

    cleanup = add_verb(verbs, "wal-cleanup", common, "delete archived WAL older than a segment")
    cleanup.add_argument(
        "--keep-from", metavar="SEGMENT", help="oldest segment to keep (default: the first one the oldest backup needs)"
    )
    cleanup.add_argument("--force", action="store_true", help="allow deleting WAL that a kept base backup needs")
    cleanup.add_argument("--timeline", type=int, help="also clean timelines up to this one (default: the segment's)")
    cleanup.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    _segment_size_option(cleanup)


# -- helpers ---------------------------------------------------------------------------------------------------


def _repo(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Repository:
    key_file = getattr(args, "encryption_key_file", None)
    if key_file:  # the prefetcher this may start reads the same key
        os.environ["PGRECOVERY_ENCRYPTION_KEY_FILE"] = os.path.abspath(key_file)
    return _common.repository(args, extra)


def _archiver(args: argparse.Namespace, repo: Repository | None = None, **kwargs: Any) -> WalArchiver:
    from ..wal.archiver import WalArchiver

    return WalArchiver(
        repo or _repo(args),
        segment_size=getattr(args, "segment_size", 16 * _MIB),
        **kwargs,
    )


def _fail(verb: str, e: BaseException) -> None:
    from .._redact import redact  # PostgreSQL copies this line into its log: no secret a driver echoed goes there

    text = redact(" ".join(str(e).split())) or type(e).__name__
    sys.stderr.write(f"pgrecovery: {verb}: {text}\n")


# -- verbs -----------------------------------------------------------------------------------------------------


def _push(args: argparse.Namespace) -> int:
    try:
        url = repository_url(args)
        path = os.path.abspath(args.path)
        spool = args.spool or _spool.default_spool(path)
        if _spool.pushed_already(path, spool, _spool.repo_tag(url)):
            return EXIT_OK  # archived ahead by an earlier call: nothing to read, nothing to import
        archiver = _archiver(
            args, spool_dir=args.spool, compression=args.compression, level=args.level, parallel=args.parallel
        )
        result = archiver.push(args.path)
        if getattr(args, "verbose", False):
            sys.stderr.write(f"pgrecovery: wal-push: {result.name} {result.outcome}, ahead: {len(result.ahead)}\n")
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - PostgreSQL must see 1 for any failure, and retries
        _fail(f"wal-push {args.path}", e)
        return EXIT_FAILED


def _fetch(args: argparse.Namespace) -> int:
    try:
        url = repository_url(args)
        dest = os.path.abspath(args.dest)
        spool = args.spool or _spool.default_spool(dest)
        count = 0 if args.no_prefetch else args.prefetch
        if _spool.take_prefetched(args.name, dest, spool, _spool.repo_tag(url)):
            with contextlib.suppress(OSError):  # the file is delivered; prefetch is only an optimisation
                _spool.after_fetch(
                    args.name,
                    spool,
                    repo_url=url,
                    storage_options=storage_options(args),
                    count=count,
                    parallel=args.parallel,
                    segment_size=args.segment_size,
                )
            return EXIT_OK
        archiver = _archiver(args, spool_dir=args.spool, parallel=args.parallel, prefetch=count)
        if archiver.fetch(args.name, args.dest, prefetch=count > 0):
            return EXIT_OK
        if getattr(args, "verbose", False):
            sys.stderr.write(f"pgrecovery: wal-fetch: {args.name} is not in the archive\n")
        return EXIT_MISS
    except Exception as e:  # noqa: BLE001 - anything but a confirmed miss must stop recovery (exit 255)
        _fail(f"wal-fetch {args.name}", e)
        return EXIT_FATAL


def _prefetch(args: argparse.Namespace) -> int:
    try:
        extra = json.loads(os.environ.get(_spool.OPTIONS_ENV) or "{}")
        archiver = _archiver(
            args, _repo(args, extra), spool_dir=args.spool, parallel=args.parallel, prefetch=args.count
        )
        archiver.run_prefetch(args.name, lock_fd=args.lock_fd)
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - a detached helper: nobody reads its stderr, so note why in the spool
        with contextlib.suppress(OSError), open(os.path.join(args.spool, "prefetch.log"), "a") as f:
            f.write(f"wal-prefetch after {args.name}: {' '.join(str(e).split()) or type(e).__name__}\n")
        return EXIT_FAILED


def _worker(args: argparse.Namespace) -> int:
    from .._walclient import FAILED_NAME, IDLE_ENV
    from ..wal.worker import IDLE, ArchivingWorker

    try:
        idle = args.idle if args.idle is not None else float(os.environ.get(IDLE_ENV) or IDLE)
        archiver = _archiver(args, spool_dir=args.spool, parallel=args.parallel)
        worker = ArchivingWorker(archiver, args.spool, args.wal_dir, idle=idle, await_server=args.await_server)
        worker.serve(lock_fd=args.lock_fd, prefetch_after=args.prefetch_after)
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - detached: note why in the spool; wal-push pushes in-process meanwhile
        with contextlib.suppress(OSError), open(os.path.join(args.spool, FAILED_NAME), "a") as f:
            f.write(f"wal-worker: {' '.join(str(e).split()) or type(e).__name__}\n")
        return EXIT_FAILED


def _verify(args: argparse.Namespace) -> int:
    report = _archiver(args).verify(args.first, args.timeline, check_digests=args.check_digests)
    tls = ", ".join(str(t) for t in report.timelines)
    text = f"{report.first} .. {report.last} (timeline {tls}): {report.count} segment(s) archived, "
    if report.ok:
        text += "no gaps"
    else:
        text += f"{len(report.missing)} missing, {len(report.corrupt)} corrupt"
        text += "".join(f"\n  missing {n}" for n in report.missing)
        text += "".join(f"\n  corrupt {n}" for n in report.corrupt)
    emit(args, report.to_dict(), text)
    return EXIT_OK if report.ok else EXIT_FAILED


def _status(args: argparse.Namespace) -> int:
    from ..wal.archiver import archiver_status

    st = archiver_status(args.dbname, args.pgdata)
    data = st.to_dict()
    emit(args, data, "\n".join(f"{k}: {'-' if v is None else v}" for k, v in data.items()))
    return EXIT_OK


def _restore_point(args: argparse.Namespace) -> int:
    """``restore-point NAME``: created on the server and, with a repository (--repo, $PGRECOVERY_REPO), recorded
    there (so that a recovery to the name finds it without reading WAL)."""
    if not (getattr(args, "repo", None) or os.environ.get("PGRECOVERY_REPO")):
        from ..wal.archiver import create_restore_point

        lsn = create_restore_point(args.dbname, args.name)
        emit(args, {"name": args.name, "lsn": lsn, "recorded": False}, f"restore point {args.name!r} at {lsn}")
        return EXIT_OK
    point = _archiver(args).record_restore_point(args.dbname, args.name)
    emit(
        args,
        {"name": point.name, "lsn": point.lsn, "recorded": True, "timeline": point.timeline},
        f"restore point {point.name!r} at {point.lsn} on timeline {point.timeline}, recorded in the repository",
    )
    return EXIT_OK


def _cleanup(args: argparse.Namespace) -> int:
    removed = _archiver(args).cleanup(args.keep_from, args.timeline, dry_run=args.dry_run, force=args.force)
    verb = "would remove" if args.dry_run else "removed"
    emit(
        args,
        {"dry_run": args.dry_run, "removed": removed},
        "\n".join(f"{verb} {n}" for n in removed) or "nothing to remove",
    )
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    verbs = {
        "wal-push": _push,
        "wal-fetch": _fetch,
        "wal-prefetch": _prefetch,
        "wal-worker": _worker,
        "wal-verify": _verify,
        "archiver-status": _status,
        "restore-point": _restore_point,
        "wal-cleanup": _cleanup,
    }
    return verbs[args.verb](args)
