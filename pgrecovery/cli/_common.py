"""What every verb of the command shares: the parser class and the options common to several verbs, the repository
from the options, output (text or JSON), progress lines, status-table recording and recovery targets.

Standard library only at import time: each verb imports what it needs from the package when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import ConfigurationError
from .exitcodes import EXIT_USAGE

if TYPE_CHECKING:
    from ..recovery.plan import Action, RecoveryTarget
    from ..repository import Repository


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line that names the problem and the fix (no usage dump, no traceback)."""
        import difflib
        import re

        found = re.search(r"argument ([^:]*): invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            arg, word, choices = found.group(1), found.group(2), re.findall(r"'([^']*)'", found.group(3))
            close = difflib.get_close_matches(word, choices, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(choices)}"
            what = {"VERB": "verb", "KIND": "kind"}.get(arg, f"value for {arg}")
            message = f"unknown {what} {word!r}: {hint}"
        self.exit(EXIT_USAGE, f"pgrecovery: {message} (see `{self.prog} --help`)\n")


# -- options -----------------------------------------------------------------------------------------------------


def storage_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (the value as JSON when it parses, else the string)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def common_options() -> Parser:
    """The options every verb takes (a parent parser: they may come before or after the verb)."""
    p = Parser(add_help=False)
    p.add_argument("--repo", default=argparse.SUPPRESS, help="repository URL (default: $PGRECOVERY_REPO)")
    p.add_argument(
        "--storage-option",
        action="append",
        type=storage_option,
        default=argparse.SUPPRESS,
        metavar="KEY=VALUE",
        help="fsspec storage option (repeatable); fsspec's FSSPEC_<PROTOCOL>_<OPTION> variables work too",
    )
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON (see docs/json.md)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress details")
    p.add_argument(
        "--encryption-key-file",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="the repository's encryption key (default: $PGRECOVERY_ENCRYPTION_KEY_FILE or "
        "$PGRECOVERY_ENCRYPTION_KEY; none: not encrypted; see docs/encryption.md)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=argparse.SUPPRESS,
        help="log lines on stderr as text or one JSON object per line (default: $PGRECOVERY_LOG_FORMAT or text)",
    )
    return p


def status_options(p: argparse.ArgumentParser, *, reading: bool = False) -> None:
    """The monitoring database's status table (see docs/monitoring.md): where runs are recorded, or read from."""
    what = "read runs from" if reading else "record this run in"
    p.add_argument(
        "--status-dbname",
        default=os.environ.get("PGRECOVERY_STATUS_DBNAME"),
        metavar="CONNINFO",
        help=f"{what} the status table of this monitoring database (default: $PGRECOVERY_STATUS_DBNAME)",
    )
    p.add_argument(
        "--status-table",
        default=os.environ.get("PGRECOVERY_STATUS_TABLE"),
        metavar="NAME",
        help="status table name, optionally schema.table (default: $PGRECOVERY_STATUS_TABLE or "
        "pgrecovery_backup_status)",
    )


def dbname_option(p: argparse.ArgumentParser, help_text: str = "libpq connection string or URI") -> None:
    p.add_argument("-d", "--dbname", default="", help=f"{help_text} (default: PGHOST, PGPORT, PGUSER, PGDATABASE)")


def flags(p: argparse.ArgumentParser, names: Iterable[str] | Mapping[str, str]) -> None:
    """``--NAME`` switches (store_true); given a mapping, each with its help line."""
    for name in names:
        p.add_argument(f"--{name}", action="store_true", help=names[name] if isinstance(names, Mapping) else None)


def options_of(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The parsed values of these options (``no-owner`` or ``no_owner``) as keyword arguments for the API."""
    return {(key := name.replace("-", "_")): getattr(args, key) for name in names}


def add_verb(verbs: Any, name: str, common: argparse.ArgumentParser, text: str, **more: Any) -> Parser:
    """A verb (or a kind of one) on a subparsers object, taking the common options."""
    parser: Parser = verbs.add_parser(name, help=text, parents=[common], **more)
    return parser


def add_kinds(parent: argparse.ArgumentParser, dest: str = "kind") -> Any:
    """The required KIND subcommand of a verb such as ``backup``."""
    kinds = parent.add_subparsers(dest=dest, metavar="KIND", parser_class=Parser)
    kinds.required = True
    return kinds


# -- the repository ----------------------------------------------------------------------------------------------


def repository_url(args: argparse.Namespace) -> str:
    url = getattr(args, "repo", None) or os.environ.get("PGRECOVERY_REPO")
    if not url:
        raise ConfigurationError("no repository: pass --repo URL or set PGRECOVERY_REPO")
    return str(url)


def storage_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--storage-option`` pairs as a dict."""
    return dict(getattr(args, "storage_option", None) or [])


def repository(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Repository:
    """The repository of ``--repo`` (or $PGRECOVERY_REPO) with its storage options (over ``extra``) and key."""
    from ..repository import Repository

    return Repository(
        repository_url(args), encryption=encryption_key(args), **{**(extra or {}), **storage_options(args)}
    )


def encryption_key(args: argparse.Namespace) -> Any:
    """The repository key from --encryption-key-file or the environment (None: the repository is not encrypted).
    Only imported when one is configured, so that the plain path stays free of the cryptography package."""
    file = getattr(args, "encryption_key_file", None)
    if (
        not file
        and not os.environ.get("PGRECOVERY_ENCRYPTION_KEY_FILE")
        and not os.environ.get("PGRECOVERY_ENCRYPTION_KEY")
    ):
        return None
    from ..crypto import EncryptionKey

    return EncryptionKey.from_environment(file)


# -- recording runs in the status table --------------------------------------------------------------------------


def recorded(args: argparse.Namespace, kind: str) -> Any:
    """A `monitoring.recording` block when a status database is configured, else a plain timer-free block."""
    import contextlib

    conninfo = getattr(args, "status_dbname", None)
    if not conninfo:
        return contextlib.nullcontext(_NoRecord())
    from ..monitoring import DEFAULT_STATUS_TABLE, StatusTable, recording

    return recording(StatusTable(conninfo, getattr(args, "status_table", None) or DEFAULT_STATUS_TABLE), kind)


class _NoRecord:
    backup_id: str | None = None
    size_bytes: int | None = None

    def note_backup(self, manifest: Any, repo: Any = None) -> None:
        pass


# -- output ------------------------------------------------------------------------------------------------------


def emit(args: argparse.Namespace, data: Any, text: str | Callable[[], str]) -> None:
    """``data`` as JSON with --json, else the text (a callable is only called for text)."""
    out = sys.stdout
    if getattr(args, "json", False):
        out.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    else:
        out.write((text() if callable(text) else text).rstrip("\n") + "\n")


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as columns padded to their widest cell (the first row is the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def progress(args: argparse.Namespace, *, every: float = 10.0) -> Any:
    """A progress callback for long operations: a bar redrawn in place on a terminal, a plain line at most every
    ``every`` seconds otherwise (cron mail, log files). Nothing with --json (unless -v): stdout stays parseable."""
    if getattr(args, "json", False) and not getattr(args, "verbose", False):
        return None
    import time

    from ..progress import Progress

    tty = sys.stderr.isatty()
    last = [-float("inf")]  # the first event is always shown (monotonic time may start near 0 at boot)

    def show(p: Progress) -> None:
        if tty:
            bar = ""
            if p.total:
                filled = int(24 * min(1.0, p.done / p.total))
                bar = f"[{'#' * filled}{'.' * (24 - filled)}] "
            end = "\n" if p.finished else ""
            sys.stderr.write(f"\r{p.operation}: {bar}{_describe(p)}\033[K{end}")
            sys.stderr.flush()
            return
        now = time.monotonic()
        if p.finished or now - last[0] >= every:
            last[0] = now
            state = "done, " if p.finished else ""
            sys.stderr.write(f"pgrecovery: {p.operation}: {state}{_describe(p)} after {p.elapsed:.0f} s\n")
            sys.stderr.flush()

    return show


def _describe(p: Any) -> str:
    from ..progress import human_bytes

    text = f"{human_bytes(p.done)}"
    if p.total:
        text += f" of {human_bytes(p.total)} ({min(100.0, 100 * p.done / p.total):.0f}%)"
    text += f" at {human_bytes(p.rate)}/s"
    if p.total and p.rate > 0 and not p.finished and p.done < p.total:
        text += f", about {(p.total - p.done) / p.rate:.0f} s left"
    return text


def manifest_text(m: Any) -> str:
    """A backup's manifest for people (``show`` and what a backup prints)."""
    from ..progress import human_bytes

    lines = [
        f"id:           {m.id}",
        f"kind:         {m.kind}",
        f"database:     {m.database or ', '.join(m.databases) or '-'}",
        f"format:       {m.format}, compression {m.compression}"
        + (f" level {m.compression_level}" if m.compression_level is not None else ""),
        f"started:      {m.started_at.isoformat()}",
        f"duration:     {m.duration:.2f} s",
        f"size:         {human_bytes(m.size)}" + (f" (raw {human_bytes(m.raw_size)})" if m.raw_size else ""),
        f"server:       {m.server_version}",
        f"tool:         {m.tool_version}",
        f"source:       {' '.join(f'{k}={v}' for k, v in m.source.items()) or '-'}",
    ]
    if m.summary is not None:
        lines.append(
            f"contents:     {m.summary.schemas} schema(s), {m.summary.tables} table(s), {m.summary.objects} object(s)"
        )
    if m.options:
        lines.append(f"options:      {json.dumps(m.options, sort_keys=True)}")
    lines.append(f"files:        {len(m.files)}")
    return "\n".join(lines)


# -- recovery targets (restore base, rescue) ---------------------------------------------------------------------

# The recovery target options: (attribute, option, what to give).
TARGET_OPTIONS = (
    ("target_time", "--target-time", "a timestamp with a time zone, e.g. '2026-03-15 14:30:00+00'"),
    ("target_xid", "--target-xid", "a transaction id"),
    ("target_name", "--target-name", "a restore point name"),
    ("target_lsn", "--target-lsn", "a WAL position, e.g. 0/3000060"),
)


def recovery_target(
    args: argparse.Namespace, *, action: Action = "promote", latest_allowed: bool = True
) -> RecoveryTarget:
    """The `RecoveryTarget` the --target-* options ask for (none of them: ``latest``, when allowed). An empty or
    blank value is a usage error naming the option: an unset shell variable must never mean "the end of the
    archive"."""
    from ..recovery.plan import RecoveryTarget

    inclusive = not getattr(args, "exclusive", False)
    for attr, option, what in TARGET_OPTIONS:
        value = getattr(args, attr, None)
        if value is None:
            continue
        if not value.strip():
            hint = "; to recover to the end of the archive, give no --target-* option" if latest_allowed else ""
            raise ConfigurationError(f"{option} is empty: give {what}{hint}")
        if attr == "target_time":
            return RecoveryTarget.time(value, inclusive=inclusive, action=action)
        if attr == "target_xid":
            return RecoveryTarget.xid(value, inclusive=inclusive, action=action)
        if attr == "target_name":
            return RecoveryTarget.name(value, action=action)
        return RecoveryTarget.lsn(value, inclusive=inclusive, action=action)
    if getattr(args, "target_immediate", False):
        return RecoveryTarget.immediate(action=action)
    if not latest_allowed:
        raise ConfigurationError("give a target: --target-time, --target-xid, --target-lsn or --target-name")
    return RecoveryTarget.latest()
