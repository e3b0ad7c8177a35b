"""The local method's machinery: which files of a data directory a base backup takes, and the compressed tar
bundles it streams them into (each file checksummed as it is read; an incremental backup refers to its parent's
unchanged files instead of storing them again)."""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Final

import attrs

from ..catalog import data_key
from ..codec import SUFFIX, Codec, compressor
from ..manifest import FileEntry, MemberEntry
from ..progress import Meter
from ..repository import Repository
from ..storage.repository import CHUNK
from ._delta import Planner
from ._pages import decode_ranges, encode_ranges, read_blocks

# Directories whose contents a base backup leaves out (they are rebuilt or meaningless on restore), and files.
SKIP_CONTENTS: Final = frozenset(
    {"pg_wal", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_stat_tmp", "pg_subtrans"}
)
SKIP_FILES: Final = frozenset(
    {"postmaster.pid", "postmaster.opts", "backup_label", "tablespace_map", "pg_internal.init", "backup_manifest"}
)
SKIP_TOP: Final = frozenset({"pgrecovery_spool", "recovery.signal", "standby.signal"})


@attrs.frozen
class DataFile:
    """A file a base backup takes: its path in the backup, where it is read from, its size when scanned."""

    rel: str  # path in the backup (relative; tablespaces under tblspc/<oid>/)
    abspath: str
    size: int


def scan_data_directory(pgdata: str, tablespaces: dict[str, str]) -> tuple[list[str], list[DataFile]]:
    """(directories, files) to back up from a data directory and its tablespaces."""
    dirs: list[str] = []
    files: list[DataFile] = []

    def walk(root: str, prefix: str, top: bool) -> None:
        for here, subdirs, names in os.walk(root):
            rel_here = os.path.relpath(here, root)
            rel_here = "" if rel_here == "." else rel_here
            base = f"{prefix}{rel_here}".rstrip("/")
            if top and rel_here == "":
                subdirs[:] = [d for d in subdirs if d not in SKIP_TOP and d != "pg_tblspc"]
                names = [n for n in names if n not in SKIP_TOP]
                dirs.append("pg_tblspc")
            subdirs[:] = [d for d in subdirs if not d.startswith("pgsql_tmp")]
            if base:
                dirs.append(base)
            if top and rel_here in SKIP_CONTENTS:
                subdirs[:] = ["archive_status"] if rel_here == "pg_wal" else []
                continue
            if top and rel_here == "pg_wal/archive_status":
                continue
            for name in names:
                if name in SKIP_FILES or name.startswith("pgsql_tmp"):
                    continue
                path = os.path.join(here, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue  # dropped while we looked
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                files.append(DataFile(f"{base}/{name}" if base else name, path, st.st_size))

    walk(pgdata, "", True)
    for oid, location in tablespaces.items():
        walk(location, f"tblspc/{oid}/", False)
    return dirs, files


def assign(files: Sequence[DataFile], workers: int) -> list[list[DataFile]]:
    """Spread files over ``workers`` bundles, biggest first onto the lightest, so that they finish together."""
    bundles: list[list[DataFile]] = [[] for _ in range(max(1, workers))]
    loads = [0] * len(bundles)
    for f in sorted(files, key=lambda f: -f.size):
        i = loads.index(min(loads))
        bundles[i].append(f)
        loads[i] += f.size + 512
    return [b for b in bundles if b] or [[]]


class _HashingFile:
    """Reads exactly ``size`` bytes of a file that may change meanwhile (zero-padded if it shrank), hashing them.

    A server that writes during the backup is expected: WAL replay from the backup's start repairs such pages.
    """

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f, self._left, self.hash = f, size, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        if len(data) < n:
            data += bytes(n - len(data))
        self._left -= len(data)
        self.hash.update(data)
        return data


class _CompressingSink:
    """A write-only file object for tarfile: compresses into a repository writer."""

    def __init__(self, writer: Any, codec: Codec, level: int | None, meter: Meter | None, threads: int = 1) -> None:
        self._writer, self._comp, self._meter = writer, compressor(codec, level, threads=threads), meter
        self.raw = 0

    def write(self, data: bytes) -> int:
        self.raw += len(data)
        out = self._comp.compress(bytes(data))
        if out:
            self._writer.write(out)
        if self._meter is not None:
            self._meter.add(len(data))
        return len(data)

    def finish(self) -> None:
        self._writer.write(self._comp.flush())


def write_bundles(
    repo: Repository,
    backup_id: str,
    bundles: list[list[DataFile]],
    meter: Meter,
    planner: Planner | None,
    *,
    codec: Codec,
    level: int | None,
    threads: int,
) -> tuple[list[FileEntry], list[MemberEntry]]:
    """Write one compressed tar bundle per list of ``bundles``, in parallel. With a ``planner`` (an incremental
    backup) a file unchanged since the parent is referenced instead, and a relation file may be stored as the
    blocks that changed. Returns (bundle entries, members by path)."""

    def one(index: int) -> tuple[FileEntry, list[MemberEntry]]:
        role = f"bundle-{index}"
        name = f"{role}.tar{SUFFIX[codec]}"
        writer = repo.writer(data_key(backup_id, name))
        members: list[MemberEntry] = []
        try:
            sink = _CompressingSink(writer, codec, level, meter, threads)
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK) as tar:  # type: ignore[call-overload]
                tar.copybufsize = CHUNK
                for f in bundles[index]:
                    member = _one_file(tar, f, role, backup_id, planner, meter)
                    if member is not None:
                        members.append(member)
            sink.finish()
        except BaseException:
            writer.abort()
            raise
        obj = writer.commit()
        entry = FileEntry(
            path=f"data/{name}", size=obj.size, sha256=obj.sha256, codec=codec, raw_size=sink.raw, role=role
        )
        return entry, members

    with ThreadPoolExecutor(max_workers=len(bundles)) as pool:
        results = list(pool.map(one, range(len(bundles))))
    return [r[0] for r in results], sorted((m for r in results for m in r[1]), key=lambda m: m.path)


def _one_file(
    tar: tarfile.TarFile, f: DataFile, role: str, backup_id: str, planner: Planner | None, meter: Meter
) -> MemberEntry | None:
    if planner is None:
        return _add_file(tar, f, role, backup_id)
    decision = planner.decide(f.rel, f.abspath, f.size, meter)
    if decision.reuse is not None:
        return decision.reuse
    if decision.blocks is None:
        return _add_file(tar, f, role, backup_id)
    return _add_file(tar, f, role, backup_id, decision.blocks, planner.block_size)


class _BlockReader:
    """The stored form of a block-level member: the chosen blocks of a file, in order, hashed as they are read."""

    def __init__(self, f: IO[bytes], ranges: list[tuple[int, int]], block_size: int) -> None:
        self._blocks = read_blocks(f, ranges, block_size)
        self._buffer = b""
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buffer) < n:
            more = next(self._blocks, None)
            if more is None:
                break
            self._buffer += more
        out, self._buffer = (self._buffer, b"") if n < 0 else (self._buffer[:n], self._buffer[n:])
        self.hash.update(out)
        return out


def _add_file(
    tar: tarfile.TarFile,
    f: DataFile,
    role: str,
    backup_id: str,
    blocks: list[int] | None = None,
    block_size: int = 8192,
) -> MemberEntry | None:
    """Store ``f`` whole, or only ``blocks`` (then the member's size is the one the blocks were chosen for)."""
    try:
        handle = open(f.abspath, "rb", buffering=0)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return None  # a relation dropped during the backup: replay removes it anyway
    text = None if blocks is None else encode_ranges(blocks)
    with handle:
        st = os.fstat(handle.fileno())
        info = tarfile.TarInfo(f.rel)
        info.mtime, info.mode = int(st.st_mtime), 0o600
        reader: _HashingFile | _BlockReader
        if blocks is None:
            size = info.size = st.st_size
            reader = _HashingFile(handle, st.st_size)
        else:
            size, info.size = f.size, len(blocks) * block_size
            reader = _BlockReader(handle, decode_ranges(text or ""), block_size)
        tar.addfile(info, reader)
    return MemberEntry(
        path=f.rel,
        size=size,
        mtime=int(st.st_mtime),
        sha256=reader.hash.hexdigest(),
        bundle=role,
        source=backup_id,
        blocks=text,
    )


def small_file(repo: Repository, backup_id: str, role: str, data: bytes) -> FileEntry:
    obj = repo.put_bytes(data_key(backup_id, role), data)
    return FileEntry(path=f"data/{role}", size=obj.size, sha256=obj.sha256, codec="none", raw_size=len(data), role=role)
