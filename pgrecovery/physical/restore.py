"""Restoring a base backup's files into a data directory (and its tablespaces): bundles extracted in parallel,
every file checked against the manifest, optionally as a delta over an existing copy."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .._chain import Layer, file_layers, load_chain, stored_pieces
from .._fsutil import atomic_file
from .._spool import SPOOL_NAME
from .._stream import open_entry
from ..errors import BackupError, ChecksumMismatch, ConfigurationError
from ..manifest import BackupManifest, FileEntry, MemberEntry, PhysicalInfo
from ..progress import Meter, ProgressCallback
from ..repository import Repository
from ..storage.repository import CHUNK
from ._pages import decode_ranges


def _safe_target(root: Path, rel: str) -> Path:
    """``root / rel``, refusing absolute paths, ``..`` and anything that would land outside ``root``."""
    if not rel or rel.startswith("/") or any(part in ("", "..") for part in rel.split("/")):
        raise BackupError(f"refusing to restore {rel!r}: the path escapes the target directory")
    target = (root / rel).resolve()
    if target != root.resolve() and root.resolve() not in target.parents:
        raise BackupError(f"refusing to restore {rel!r}: the path escapes the target directory")
    return target


def restore_files(
    repo: Repository,
    manifest: BackupManifest,
    pgdata: Path,
    *,
    tablespace_map: dict[str, str] | None = None,
    delta: bool = False,
    progress: ProgressCallback | None = None,
    directories_made: Callable[[], object] | None = None,
) -> int:
    """Write a base backup's files into ``pgdata`` (bundles extracted in parallel, every file checked).

    An incremental backup is restored from its whole chain: each file from its whole stored version, then the
    blocks each later link changed, link by link. Before anything is written the chain is checked: every link's
    manifest, every stored object it needs present with its size, and the incremental links' objects read and
    checked against their sha256 (the full backup's objects are checked as they stream).

    ``pgdata`` must be empty, unless ``delta``: then files that already have the backup's size and sha256 are
    kept, only the others are written, and files the backup does not have are removed. Returns how many files
    were written. ``directories_made`` is called once the backup's directories exist, before any file is written
    (a recovery starts its WAL worker then).
    """
    phys = manifest.physical
    if phys is None:
        raise ConfigurationError(f"backup {manifest.id} is a {manifest.kind} backup, not a base backup")
    spaces = _tablespace_places(manifest.id, phys, tablespace_map, delta)
    chain = load_chain(repo, manifest)
    layers = file_layers(chain, manifest)
    small = _read_small_files(repo, manifest)  # checked before anything is written
    roots = {"": pgdata, **{f"tblspc/{oid}/": loc for oid, loc in spaces.items()}}

    def place(rel: str) -> Path:
        for prefix, root in roots.items():
            if prefix and rel.startswith(prefix):
                return _safe_target(root, rel[len(prefix) :])
        return _safe_target(pgdata, rel)

    keep: set[str] = set()
    if delta:  # reads only: what is already identical on disk
        keep = _delta_keep(pgdata, layers, place)
    stages = _stages(chain, manifest, {p: s for p, s in layers.items() if p not in keep})
    check_chain(repo, chain, stages)
    meter = Meter("restore", progress, total=sum(f.raw_size or 0 for stage in stages for _, f in stage))
    _make_directories(pgdata, phys, spaces, place)
    if directories_made is not None:
        directories_made()
    if delta:
        _delta_remove_strays(roots, phys, place)
    actions = {(x.source, x.bundle, path): x for path, stack in layers.items() if path not in keep for x in stack}
    written = [0]

    def extract(source: BackupManifest, entry: FileEntry) -> None:
        key = f"backups/{source.id}/{entry.path}"
        with open_entry(repo, key, entry) as src, tarfile.open(fileobj=src, mode="r|") as tar:
            for info in tar:
                if info.isdir():
                    place(info.name.rstrip("/")).mkdir(parents=True, exist_ok=True, mode=0o700)
                    continue
                if not info.isfile():
                    raise BackupError(f"{key}: refusing member {info.name!r}: only files and directories are restored")
                layer = actions.get((source.id, entry.role, info.name))
                if layer is None and phys.members:
                    continue  # not needed: a newer link has the file, or a delta restore keeps it
                dest = place(info.name)
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if layer is None or layer.whole:
                    _extract_one(tar, info, dest, layer.member if layer else None, key, meter)
                    written[0] += 1
                else:
                    _apply_blocks(tar, info, dest, layer.member, chain[layer.source].physical, key, meter)

    for stage in stages:  # link by link, oldest first: a link's blocks go over the older links' content
        with ThreadPoolExecutor(max_workers=max(1, min(len(stage), 4))) as pool:
            for fut in [pool.submit(extract, source, f) for source, f in stage]:
                fut.result()
    for path in (p for p, stack in layers.items() if len(stack) > 1 and p not in keep):  # its newest version's time
        os.utime(place(path), (layers[path][-1].member.mtime,) * 2)
    _write_small_files(pgdata, small, spaces)
    meter.finish()
    return written[0]


def _tablespace_places(
    backup_id: str, phys: PhysicalInfo, tablespace_map: dict[str, str] | None, delta: bool
) -> dict[str, Path]:
    odd = [oid for oid in phys.tablespaces if not oid.isdigit()]
    if odd:  # it names a link under pg_tblspc: anything but an OID could point it elsewhere
        raise BackupError(f"backup {backup_id}: tablespace {odd[0]!r} is not an OID: the manifest is not as written")
    spaces = {oid: Path((tablespace_map or {}).get(oid, loc)) for oid, loc in phys.tablespaces.items()}
    for loc in spaces.values():
        if not delta and loc.exists() and any(loc.iterdir()):
            raise ConfigurationError(f"tablespace directory {loc} is not empty: remap it or empty it first")
    return spaces


def _write_small_files(pgdata: Path, small: dict[str, bytes], spaces: dict[str, Path]) -> None:
    for role, data in small.items():
        if role == "tablespace_map":  # the server recreates pg_tblspc links from it: give it the new places
            lines = [ln.split(" ", 1) for ln in data.decode().splitlines() if ln.strip()]
            data = "".join(f"{oid} {spaces.get(oid, Path(old))}\n" for oid, old in lines).encode()
        (pgdata / role).write_bytes(data)


def _stages(
    chain: Mapping[str, BackupManifest], manifest: BackupManifest, layers: Mapping[str, list[Layer]]
) -> list[list[tuple[BackupManifest, FileEntry]]]:
    """The stored bundles to read, grouped by backup, oldest first: a stream-method backup's single ``base``
    file, else the bundles that hold a needed layer."""
    if manifest.physical is not None and not manifest.physical.members:
        return [[(manifest, f) for f in manifest.files if f.role == "base"]]
    needed = stored_pieces(layers.values())
    stages = [[(m, f) for f in m.files if (m.id, f.role) in needed] for m in chain.values()]
    return [s for s in stages if s]


def check_chain(
    repo: Repository, chain: Mapping[str, BackupManifest], stages: list[list[tuple[BackupManifest, FileEntry]]]
) -> None:
    """Refuse a chain whose stored objects are not as their manifests say, before anything is written: every
    object present with its size; an incremental link's objects (small) also read whole and their sha256
    checked. A full backup's objects are checked as they stream."""

    def one(owner: BackupManifest, f: FileEntry) -> None:
        key = f"backups/{owner.id}/{f.path}"
        incremental = owner.physical is not None and owner.physical.parent is not None
        size, digest = repo.digest(key) if incremental else (repo.size(key), f.sha256)
        if size != f.size or digest != f.sha256:
            raise ChecksumMismatch(
                f"{key} ({'a link of the chain' if incremental else 'the full backup'} of this restore) is "
                f"{size} bytes{' with another sha256' if size == f.size else ''} where its manifest says {f.size}: "
                "the backup is damaged; nothing was written (verify it, and restore an older backup or a copy)"
            )

    jobs = [(m, f) for stage in stages for m, f in stage]
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), 8))) as pool:
        for fut in [pool.submit(one, m, f) for m, f in jobs]:
            fut.result()


def _apply_blocks(
    tar: tarfile.TarFile,
    info: tarfile.TarInfo,
    dest: Path,
    member: MemberEntry,
    phys: PhysicalInfo | None,
    key: str,
    meter: Meter,
) -> None:
    """Write a block-level member's blocks over ``dest`` (its older version), first cut or extended to the
    member's size; the blocks' sha256 is checked."""
    block_size = phys.block_size if phys is not None else 8192
    ranges = decode_ranges(member.blocks or "")
    if info.size != sum(n for _, n in ranges) * block_size or any(
        (a + n) * block_size > member.size for a, n in ranges
    ):
        raise ChecksumMismatch(f"{info.name} in {key} does not match its manifest's block list: the backup is damaged")
    src = tar.extractfile(info)
    assert src is not None
    h = hashlib.sha256()
    with open(dest, "r+b") as out:
        out.truncate(member.size)
        for first, count in ranges:
            out.seek(first * block_size)
            left = count * block_size
            while left > 0:
                chunk = src.read(min(CHUNK, left))
                if not chunk:
                    raise ChecksumMismatch(f"{info.name} in {key} ends early: the backup is damaged")
                h.update(chunk)
                out.write(chunk)
                left -= len(chunk)
                meter.add(len(chunk))
    if h.hexdigest() != member.sha256:
        raise ChecksumMismatch(f"{info.name} in {key} differs from the manifest: the backup is damaged")


def _make_directories(pgdata: Path, phys: PhysicalInfo, spaces: dict[str, Path], place: Callable[[str], Path]) -> None:
    """The backup's directories, its tablespaces' directories, and the pg_tblspc links to them."""
    for d in phys.directories:
        if d.startswith("tblspc/") and d.count("/") == 1:
            continue
        place(d).mkdir(parents=True, exist_ok=True, mode=0o700)
    for loc in spaces.values():
        loc.mkdir(parents=True, exist_ok=True, mode=0o700)
    for oid, loc in spaces.items():
        link = pgdata / "pg_tblspc" / oid
        if not link.is_symlink():
            os.symlink(loc, link)


def _read_small_files(repo: Repository, manifest: BackupManifest) -> dict[str, bytes]:
    """The backup's backup_label and tablespace_map, checked against the manifest (size and sha256)."""
    out = {}
    for role in ("backup_label", "tablespace_map"):
        entry = next((f for f in manifest.files if f.role == role), None)
        if entry is None:
            continue
        key = f"backups/{manifest.id}/{entry.path}"
        data = repo.read_bytes(key)
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ChecksumMismatch(
                f"{key} is corrupt: {len(data)} bytes with another sha256 than the manifest's ({entry.size} bytes); "
                "restore from another backup or repository copy"
            )
        out[role] = data
    return out


def _delta_keep(pgdata: Path, layers: Mapping[str, list[Layer]], place: Callable[[str], Path]) -> set[str]:
    """For a delta restore: the files already identical on disk (a file rebuilt from blocks is always rewritten:
    only its stored pieces have checksums)."""
    if not layers:
        raise ConfigurationError("a delta restore needs a local-method base backup (one with a per-file manifest)")
    if (pgdata / "postmaster.pid").exists():
        raise ConfigurationError(f"{pgdata} has a postmaster.pid: stop the server (and remove a stale pid file) first")
    keep: set[str] = set()
    for path, stack in layers.items():
        m = stack[0].member
        if len(stack) > 1:
            continue
        try:
            if place(path).stat().st_size != m.size:
                continue
            with open(place(path), "rb", buffering=0) as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except (FileNotFoundError, NotADirectoryError):
            continue
        if digest == m.sha256:
            keep.add(path)
    return keep


def _delta_remove_strays(roots: dict[str, Path], phys: PhysicalInfo, place: Callable[[str], Path]) -> None:
    """For a delta restore: remove the files the backup does not have (a stray file, a WAL segment, a stale pid
    or signal file)."""
    wanted = {str(place(m.path)) for m in phys.members}
    for root in roots.values():
        for here, _dirs, files in os.walk(root):
            for name in files:
                p = os.path.join(here, name)
                if p not in wanted:
                    os.unlink(p)


def _extract_one(
    tar: tarfile.TarFile, info: tarfile.TarInfo, dest: Path, want: MemberEntry | None, key: str, meter: Meter
) -> None:
    src = tar.extractfile(info)
    assert src is not None
    h = hashlib.sha256()
    # not fsynced one by one: PostgreSQL syncs the data directory when it starts on it
    with atomic_file(str(dest), mode=0o600, sync=False) as out:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
            meter.add(len(chunk))
        if want is not None and (h.hexdigest() != want.sha256 or info.size != want.size):
            raise ChecksumMismatch(f"{info.name} in {key} differs from the manifest: the backup is damaged")
        out.flush()  # before the times are set: a later write would change them
        os.utime(out.fileno(), (info.mtime, info.mtime))


def chown_tree(paths: Sequence[Path], user: str | None) -> None:
    """Give ``paths`` (recursively) to ``user`` with private modes: 0700 directories, 0600 files.

    The WAL spool at the top of a data directory is left alone: the WAL worker a recovery starts during the
    restore runs as ``user`` already and writes there meanwhile. So may it in ``pg_wal`` (staging): a file gone
    before its turn needs nothing."""
    ids = None
    if user is not None:
        import pwd

        pw = pwd.getpwnam(user)
        ids = (pw.pw_uid, pw.pw_gid) if pw.pw_uid != os.getuid() else None
    for root in paths:
        for here, dirs, files in os.walk(root):
            if here == str(root):
                dirs[:] = [d for d in dirs if d != SPOOL_NAME]
            os.chmod(here, 0o700)
            if ids:
                os.chown(here, *ids)
            for name in files + [d for d in dirs if os.path.islink(os.path.join(here, d))]:
                p = os.path.join(here, name)
                with contextlib.suppress(FileNotFoundError):
                    if ids:
                        os.lchown(p, *ids)
                    if not os.path.islink(p):
                        os.chmod(p, 0o600)
