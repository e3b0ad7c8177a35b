"""What the storage suite shares: the backends' description and a few constants (imported by tests and conftest)."""

from __future__ import annotations

import os
import pwd
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgrecovery import Repository

ROOT = Path(__file__).resolve().parents[2]
REQUIRE_ENV = "PGRECOVERY_REQUIRE_EMULATORS"
# Object stores with commit semantics pgrecovery knows (s3, azure, gcs), local disk and memory, and filesystems it
# does not special-case: fsspec's DirFileSystem over local disk, SFTP (sshfs against OpenSSH's sshd), WebDAV
# (webdav4 against wsgidav) and a user-defined AbstractFileSystem subclass (user_fs.py).
BACKENDS = ["file", "memory", "dir", "sftp", "webdav", "userfs", "s3", "azure", "gcs"]
OBJECT_STORES = ["s3", "azure", "gcs"]
# Azurite's well-known development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
S3_KEY = "pgrecovery-test-key"
S3_SECRET = "pgr-s3-secret-Vh3q9ZtK"  # moto accepts any credentials; this one is distinctive enough to grep for
PART_SIZE = 5 << 20  # the smallest part S3 allows: bundles of a few MiB already go in several parts


@dataclass
class Backend:
    """One storage backend: how this process reaches it, and how a PostgreSQL server's commands do.

    A repository lives at ``<bucket>/<prefix>`` inside the filesystem; its URL is
    ``<protocol>://<authority><bucket>/<prefix>`` (the authority is ``user@host:port`` for SFTP, empty elsewhere).
    ``make_fs``, when set, builds the filesystem instance this process hands to ``Repository(fs=..., root=...)``
    (as an application embedding pgrecovery would); otherwise the URL and ``options`` are used. ``env`` is what
    a process started elsewhere (a PostgreSQL server's archive_command, a CLI run) needs to open the same URL.
    ``unreachable`` says why no other process can reach the backend (memory), None when one can.
    """

    name: str
    protocol: str  # URL scheme
    bucket: str  # bucket / container / directory: the path inside the filesystem under which repositories live
    options: dict[str, Any] = field(default_factory=dict)  # fsspec options for this process
    env: dict[str, str] = field(default_factory=dict)  # FSSPEC_* (and the like) for other processes
    authority: str = ""
    make_fs: Callable[[], Any] | None = None
    unreachable: str | None = None
    owned_dir: Path | None = None  # a local directory the repositories are in, which the server's user must own
    disk: Path | None = None  # where the bucket's files are on this host, when a server keeps them as files
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def object_store(self) -> bool:
        return self.name in OBJECT_STORES

    def url(self, prefix: str) -> str:
        return f"{self.protocol}://{self.authority}{self.bucket}/{prefix}"

    @property
    def secrets(self) -> list[str]:
        """The credential values among the options (what must never show up in commands, logs or output)."""
        return [str(v) for k, v in self.options.items() if k in ("key", "secret", "connection_string") and v]

    def prepare(self, prefix: str) -> None:
        """For a server's archive_command: a repository directory on this host must belong to postgres."""
        if self.owned_dir is not None:
            path = self.owned_dir / prefix
            path.mkdir(mode=0o750, parents=True)
            if os.getuid() == 0:
                pw = pwd.getpwnam("postgres")
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def repo(self, prefix: str | None = None, **kwargs: Any) -> Repository:
        """A repository in a fresh (or the given) prefix, with this process's options."""
        prefix = prefix or f"r-{uuid.uuid4().hex[:10]}"
        if self.make_fs is not None:
            return Repository(fs=self.make_fs(), root=f"{self.bucket}/{prefix}", part_size=PART_SIZE, **kwargs)
        return Repository(self.url(prefix), part_size=PART_SIZE, **self.options, **kwargs)

    def fs(self) -> Any:
        """The backend's filesystem, as this process reaches it."""
        if self.make_fs is not None:
            return self.make_fs()
        import fsspec.core

        return fsspec.core.url_to_fs(self.url("x"), **self.options)[0]

    def plant(self, repo: Repository, objects: dict[str, bytes]) -> None:
        """Store objects under ``repo``'s keys behind pgrecovery's back, as another writer would."""
        if self.disk is not None:  # straight onto the disk: a server's clients may take seconds per object
            for key, data in objects.items():
                full = repo.path(key)  # relative to the filesystem, or (a DirFileSystem seen through) absolute
                path = self.disk / full[full.index(self.bucket) + len(self.bucket) :].lstrip("/")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        else:
            repo.fs.pipe({repo.path(k): v for k, v in objects.items()})
