"""Restoring a base backup's files into a data directory (and its tablespaces): bundles extracted in parallel,
every file checked against the manifest, optionally as a delta over an existing copy."""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .._fsutil import atomic_file
from .._stream import open_entry
from ..errors import BackupError, ChecksumMismatch, ConfigurationError
from ..manifest import BackupManifest, FileEntry, MemberEntry, PhysicalInfo
from ..progress import Meter, ProgressCallback
from ..repository import Repository
from ..storage.repository import CHUNK


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
) -> int:
    """Write a base backup's files into ``pgdata`` (bundles extracted in parallel, every file checked).

    ``pgdata`` must be empty, unless ``delta``: then files that already have the backup's size and sha256 are
    kept, only the others are written, and files the backup does not have are removed. Returns how many files
    were written.
    """
    phys = manifest.physical
    if phys is None:
        raise ConfigurationError(f"backup {manifest.id} is a {manifest.kind} backup, not a base backup")
    odd = [oid for oid in phys.tablespaces if not oid.isdigit()]
    if odd:  # it names a link under pg_tblspc: anything but an OID could point it elsewhere
        raise BackupError(f"backup {manifest.id}: tablespace {odd[0]!r} is not an OID: the manifest is not as written")
    spaces = {oid: Path((tablespace_map or {}).get(oid, loc)) for oid, loc in phys.tablespaces.items()}
    for loc in spaces.values():
        if not delta and loc.exists() and any(loc.iterdir()):
            raise ConfigurationError(f"tablespace directory {loc} is not empty: remap it or empty it first")
    small = _read_small_files(repo, manifest)  # checked before anything is written
    roots = {"": pgdata, **{f"tblspc/{oid}/": loc for oid, loc in spaces.items()}}
    expected = {m.path: m for m in phys.members}
    meter = Meter("restore", progress, total=manifest.raw_size)

    def place(rel: str) -> Path:
        for prefix, root in roots.items():
            if prefix and rel.startswith(prefix):
                return _safe_target(root, rel[len(prefix) :])
        return _safe_target(pgdata, rel)

    _make_directories(pgdata, phys, spaces, place)
    keep: set[str] = set()
    if delta:
        keep = _delta_prepare(pgdata, roots, phys, place)
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
                want = expected.get(info.name) if expected else None
                if expected and (want is None or want.source != source.id or want.bundle != entry.role):
                    continue  # a file this backup took from elsewhere (or dropped): not from this bundle
                if info.name in keep:
                    continue  # delta: already identical on disk
                dest = place(info.name)
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                _extract_one(tar, info, dest, want, key, meter)
                written[0] += 1

    chain = {manifest.id: manifest}
    for m in phys.members:
        if m.source not in chain:
            chain[m.source] = repo.get(m.source, "base")
    jobs = bundles_to_read(manifest, chain, keep)
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), 4))) as pool:
        for fut in [pool.submit(extract, source, f) for source, f in jobs]:
            fut.result()
    for role, data in small.items():
        if role == "tablespace_map":  # the server recreates pg_tblspc links from it: give it the new places
            lines = [ln.split(" ", 1) for ln in data.decode().splitlines() if ln.strip()]
            data = "".join(f"{oid} {spaces.get(oid, Path(old))}\n" for oid, old in lines).encode()
        (pgdata / role).write_bytes(data)
    meter.finish()
    return written[0]


def bundles_to_read(
    manifest: BackupManifest, chain: Mapping[str, BackupManifest], keep: Collection[str] = ()
) -> list[tuple[BackupManifest, FileEntry]]:
    """The stored bundles a restore of ``manifest`` reads, with the backup each is in: its own ``base`` file (a
    stream-method backup), and those of its bundles and of its parents' (``chain``, by id, ``manifest``
    included) that hold a member not in ``keep`` (the files a delta restore finds identical on disk)."""
    assert manifest.physical is not None
    needed = {(m.source, m.bundle) for m in manifest.physical.members if m.path not in keep}
    return [
        (chain[source_id], f)
        for source_id in chain
        for f in chain[source_id].files
        if (f.role == "base" and source_id == manifest.id) or (source_id, f.role) in needed
    ]


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


def _delta_prepare(pgdata: Path, roots: dict[str, Path], phys: PhysicalInfo, place: Callable[[str], Path]) -> set[str]:
    """For a delta restore: the member paths already identical on disk; files the backup lacks are removed."""
    if not phys.members:
        raise ConfigurationError("a delta restore needs a local-method base backup (one with a per-file manifest)")
    if (pgdata / "postmaster.pid").exists():
        raise ConfigurationError(f"{pgdata} has a postmaster.pid: stop the server (and remove a stale pid file) first")
    keep: set[str] = set()
    for m in phys.members:
        path = place(m.path)
        try:
            if path.stat().st_size != m.size:
                continue
            h = hashlib.sha256()
            with open(path, "rb", buffering=0) as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if h.hexdigest() == m.sha256:
            keep.add(m.path)
    wanted = {str(place(m.path)) for m in phys.members}
    for root in roots.values():
        for here, _dirs, files in os.walk(root):
            for name in files:
                p = os.path.join(here, name)
                if p not in wanted:
                    os.unlink(p)  # not in the backup: a stray file, a WAL segment, a stale pid or signal file
    return keep


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
    """Give ``paths`` (recursively) to ``user`` with private modes: 0700 directories, 0600 files."""
    ids = None
    if user is not None:
        import pwd

        pw = pwd.getpwnam(user)
        ids = (pw.pw_uid, pw.pw_gid) if pw.pw_uid != os.getuid() else None
    for root in paths:
        for here, dirs, files in os.walk(root):
            os.chmod(here, 0o700)
            if ids:
                os.chown(here, *ids)
            for name in files + [d for d in dirs if os.path.islink(os.path.join(here, d))]:
                p = os.path.join(here, name)
                if ids:
                    os.lchown(p, *ids)
                if not os.path.islink(p):
                    os.chmod(p, 0o600)
