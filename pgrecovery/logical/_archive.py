"""Reading logical archives back: feeding pg_restore / psql from the repository, TOC listing."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from .. import pgtools
from .._stream import Feeder, Readable, materialise, open_entry
from ..errors import (
    ConfigurationError,
    PgRecoveryError,
    RestoreError,
    ToolFailed,
)
from ..manifest import FileEntry
from ..progress import Meter
from ..repository import Repository
from ._toc import TocEntry, parse_toc


def entry_key(backup_id: str, entry: FileEntry) -> str:
    return f"backups/{backup_id}/{entry.path}"


def find_pg_restore(min_major: int | None) -> pgtools.PgTool:
    return pgtools.find_tool("pg_restore", min_major=min_major)


@contextlib.contextmanager
def directory_archive(
    repo: Repository, backup_id: str, files: Sequence[FileEntry], workdir: str | None, only_toc: bool = False
) -> Iterator[Path]:
    """A local copy of a directory-format dump (decompressed, verified), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="pgrecovery-restore-", dir=workdir) as tmp:
        root = Path(tmp) / "dump"
        root.mkdir()
        wanted = [f for f in files if f.role.startswith("dump/") and (not only_toc or f.role == "dump/toc.dat")]

        def one(f: FileEntry) -> None:
            member = f.role.split("/", 1)[1]
            if not member or "/" in member or member in (".", "..") or "\0" in member:  # pg_dump's are flat names
                raise RestoreError(
                    f"backup {backup_id}: refusing member {member!r}: the path escapes the dump's directory "
                    "(the manifest is not as pgrecovery wrote it)"
                )
            materialise(repo, entry_key(backup_id, f), f, root / member)

        with ThreadPoolExecutor(max_workers=4) as pool:
            for fut in [pool.submit(one, f) for f in wanted]:
                fut.result()
        yield root


def run_fed(cmd: list[str], src: Readable, *, env: dict[str, str] | None, what: str, capture: bool) -> bytes:
    """Run ``cmd`` with ``src`` on its stdin; return its stdout when ``capture``."""
    out_file = tempfile.TemporaryFile() if capture else None  # noqa: SIM115 - closed in finally
    try:
        with pgtools.Spawned(
            cmd, env=env, stdin=subprocess.PIPE, stdout=out_file or subprocess.DEVNULL, what=what
        ) as proc:
            assert proc.proc.stdin is not None
            feeder = Feeder(src, proc.proc.stdin)
            feeder.start()
            code = proc.wait()
            feeder.join()
            if feeder.error is not None:
                proc.kill()
                if isinstance(feeder.error, PgRecoveryError):
                    raise feeder.error
                raise RestoreError(f"reading the backup failed: {feeder.error}; the stored object is damaged")
            if code != 0:
                raise ToolFailed(pgtools.failure_text(what, code, proc.stderr_text()))
        if out_file is None:
            return b""
        out_file.seek(0)
        return out_file.read()
    finally:
        if out_file is not None:
            out_file.close()


def read_toc(repo: Repository, backup_id: str, files: Sequence[FileEntry], fmt: str) -> list[TocEntry]:
    tool = find_pg_restore(None)
    if fmt == "plain":
        raise ConfigurationError("a plain-format backup has no table of contents: take a custom-format backup")
    if fmt == "directory":
        with directory_archive(repo, backup_id, files, None, only_toc=True) as d:
            out = pgtools.run(pgtools.pg_restore_command(tool, list_only=True, fmt="directory", archive=str(d)))
            return parse_toc(out.stdout.decode(errors="replace"))
    entry = next(f for f in files if f.role == "dump")
    with open_entry(repo, entry_key(backup_id, entry), entry, verify=False) as src:
        out_bytes = run_fed(
            pgtools.pg_restore_command(tool, list_only=True),
            src,
            env=None,
            what="pg_restore -l",
            capture=True,
        )
    return parse_toc(out_bytes.decode(errors="replace"))


class Metered:
    """A read-through stream that reports progress."""

    def __init__(self, src: BinaryIO, meter: Meter) -> None:
        self.src, self.meter = src, meter

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.meter.add(len(data))
        return data

    def close(self) -> None:
        self.src.close()

    def __enter__(self) -> Metered:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
