"""CLI verbs for repository copies and the 3-2-1 rule: ``copy`` and ``check-321``."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_verb, emit, progress, recorded, repository, status_options, storage_option, storage_options
from .exitcodes import EXIT_FAILED, EXIT_OK


def add_verbs(verbs: Any, common: argparse.ArgumentParser) -> None:
    cp = add_verb(
        verbs, "copy", common, "copy the backups and WAL another repository lacks (safe to rerun and to interrupt)"
    )
    cp.add_argument("--to", required=True, metavar="URL", help="the repository to bring up to date")
    cp.add_argument(
        "--to-storage-option",
        action="append",
        type=storage_option,
        default=[],
        metavar="KEY=VALUE",
        help="fsspec storage option for --to (repeatable)",
    )
    cp.add_argument("--backup", action="append", dest="backups", metavar="ID", help="copy only these backups")
    cp.add_argument("--no-wal", action="store_true", help="do not copy WAL")
    cp.add_argument("--workers", type=int, default=4, help="objects copied at once (default 4)")
    status_options(cp)

    rule = add_verb(
        verbs,
        "check-321",
        common,
        "does the 3-2-1 rule hold: 3 copies, 2 kinds of storage, 1 offsite (exit 0 yes, 1 no)",
    )
    rule.add_argument("--copy", action="append", default=[], metavar="URL", dest="copies", help="a copy (repeatable)")
    rule.add_argument(
        "--site",
        action="append",
        default=[],
        metavar="URL=SITE",
        help="where a repository is (default: local disk at 'production', object stores at provider:bucket)",
    )
    rule.add_argument("--no-production", action="store_true", help="do not count the production database as a copy")


def run(args: argparse.Namespace) -> int:
    if args.verb == "copy":
        return _copy(args)
    return _check_321(args)


def _copy(args: argparse.Namespace) -> int:
    from ..copies import copy_repository
    from ..repository import Repository

    source = repository(args)
    target = Repository(args.to, encryption=source.encryption, **dict(args.to_storage_option))
    from ..errors import StorageError

    class _Incomplete(StorageError):
        pass

    try:
        with recorded(args, "copy") as run:
            result = copy_repository(
                source,
                target,
                workers=args.workers,
                backups=args.backups,
                wal=not args.no_wal,
                progress=progress(args),
            )
            run.file_path = target.display_url
            run.size_bytes = result.bytes_copied
            if not result.ok:  # recorded as a failure, reported below
                raise _Incomplete(f"{len(result.conflicts)} conflict(s), {len(result.corrupt)} corrupt object(s)")
    except _Incomplete:
        pass

    def text() -> str:
        lines = [
            f"copied {len(result.backups_copied)} backup(s) and {result.wal_copied} WAL file(s) "
            f"({result.bytes_copied:,} bytes) to {result.target} in {result.seconds:.1f} s; "
            f"{len(result.backups_present)} backup(s) and {result.wal_present} WAL file(s) were already there"
        ]
        lines += [f"conflict (left as it is): {c}" for c in result.conflicts]
        lines += [f"corrupt in the source (not copied): {c}" for c in result.corrupt]
        return "\n".join(lines)

    emit(args, result.to_dict(), text)
    return EXIT_OK if result.ok else EXIT_FAILED


def _check_321(args: argparse.Namespace) -> int:
    from .._redact import redact_url
    from ..copies import check_321
    from ..errors import ConfigurationError
    from ..repository import Repository

    sites = {}
    for item in args.site:
        url, sep, site = item.rpartition("=")
        if not sep or not url or not site:
            raise ConfigurationError(f"--site expects URL=SITE, got {item!r}")
        sites[redact_url(url)] = site
    options = storage_options(args)
    primary = repository(args)
    repos = [primary, *(Repository(u, encryption=primary.encryption, **options) for u in args.copies)]
    report = check_321(repos, sites=sites, count_production=not args.no_production)

    def text() -> str:
        verdict = "holds" if report.holds else "does NOT hold"
        lines = [
            f"3-2-1 rule {verdict}: {report.copies} copies, {len(report.kinds)} kind(s) of storage "
            f"({', '.join(report.kinds)}), {report.offsite} offsite"
            + (f"; reference backup {report.reference_backup}" if report.reference_backup else "")
        ]
        for r in report.repositories:
            mark = "holds the data" if r.holds_data else r.note
            lines.append(f"  {r.repository}  [{r.kind}, site {r.site}{', offsite' if r.offsite else ''}]  {mark}")
        lines += [f"missing: {m}" for m in report.missing]
        return "\n".join(lines)

    emit(args, report.to_dict(), text)
    return EXIT_OK if report.holds else EXIT_FAILED
