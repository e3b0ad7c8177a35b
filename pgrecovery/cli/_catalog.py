"""The verbs about the backups a repository holds: ``list``, ``show``, ``verify``, ``delete``, ``clean``; and
``demo``."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import emit, manifest_text, progress, recorded, repository, table
from .exitcodes import EXIT_FAILED, EXIT_OK


def list_backups(args: argparse.Namespace) -> int:
    from ..catalog import leftovers
    from ..progress import human_bytes

    repo = repository(args)
    backups = repo.backups(args.kind)
    extra = leftovers(repo) if args.incomplete else []
    data: dict[str, Any] = {"repository": repo.display_url, "backups": [m.to_dict() for m in backups]}
    if args.incomplete:
        data["incomplete"] = [x.to_dict() for x in extra]

    def text() -> str:
        if not backups and not extra:
            return f"no backups in {repo.display_url}"
        rows = [["ID", "KIND", "DATABASE", "FORMAT", "SIZE", "DURATION", "FINISHED"]]
        for m in backups:
            rows.append(
                [
                    m.id,
                    m.kind,
                    m.database or ",".join(m.databases) or "-",
                    m.format,
                    human_bytes(m.size),
                    f"{m.duration:.1f}s",
                    m.finished_at.strftime("%Y-%m-%d %H:%M:%S"),
                ]
            )
        out = table(rows) if backups else ""
        if extra:
            out += "\n\nincomplete:\n" + "\n".join(f"{x.id}  {x.reason}" for x in extra)
        return out

    emit(args, data, text)
    return EXIT_OK


def show(args: argparse.Namespace) -> int:
    m = repository(args).get(args.id)
    emit(args, m.to_dict(), lambda: manifest_text(m))
    return EXIT_OK


def verify(args: argparse.Namespace) -> int:
    from ..cluster import parse_ports
    from ..errors import VerificationFailed
    from ..verify import Verifier

    class _Failed(VerificationFailed):
        pass

    ports = parse_ports(args.drill_port) if args.drill_port is not None else None
    try:
        with recorded(args, "verify") as run:
            report = Verifier(repository(args), ports=ports).verify(
                args.id,
                drill=args.drill,
                drill_server=args.drill_dbname,
                source=args.source_dbname,
                jobs=args.jobs,
                progress=progress(args),
            )
            run.backup_id = report.backup_id
            if not report.ok:  # recorded as a failure, reported below
                bad = [f"{c.name}: {c.detail}" for c in report.failures]
                raise _Failed(f"verification of {report.backup_id} failed: " + "; ".join(bad))
    except _Failed:
        pass

    def text() -> str:
        lines = [f"backup {report.backup_id}: {'OK' if report.ok else 'FAILED'}"]
        lines += [f"  {c.status.upper():4}  {c.name}: {c.detail} ({c.seconds:.2f} s)" for c in report.checks]
        return "\n".join(lines)

    emit(args, report.to_dict(), text)
    return EXIT_OK if report.ok else EXIT_FAILED


def delete(args: argparse.Namespace) -> int:
    gone = repository(args).delete_backup(args.id, with_dependents=args.with_dependents)
    emit(
        args,
        {"deleted": gone[-1].id, "dependents": [m.id for m in gone[:-1]]},
        "\n".join(f"deleted {m.id}" for m in gone),
    )
    return EXIT_OK


def clean(args: argparse.Namespace) -> int:
    from ..catalog import clean_leftovers

    repo = repository(args)
    dry = args.dry_run
    removed = clean_leftovers(repo, include_in_progress=args.include_in_progress, dry_run=dry)
    temps = repo.stale_temp_files()  # left by writes killed mid-way (an hour old at least)
    uploads = repo.unfinished_uploads(args.uploads_older_than * 3600)  # invisible to listings, still stored
    if not dry:
        for key in temps:
            repo.remove_temp_file(key)
        for upload in uploads:
            repo.abort_upload(upload)
    verb = "would remove" if dry else "removed"
    lines = (
        [f"{verb} {x.id} ({x.reason})" for x in removed]
        + [f"{verb} temporary file {k}" for k in temps]
        + [
            f"{'would abort' if dry else 'aborted'} {u.kind} of {u.key} (last active {u.last_active:%Y-%m-%d %H:%M})"
            for u in uploads
        ]
    )
    emit(
        args,
        {
            "dry_run": dry,
            "removed": [x.to_dict() for x in removed],
            "temporary_files": temps,
            "unfinished_uploads": [u.to_dict() for u in uploads],
        },
        "\n".join(lines) or "nothing to clean",
    )
    return EXIT_OK


def demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    quiet = getattr(args, "json", False)
    report = run_demo(workdir=args.workdir, out=None if quiet else (lambda s: print(s, flush=True)))
    if quiet:
        emit(args, report.to_dict(), "")
    return EXIT_OK if report.ok else EXIT_FAILED
