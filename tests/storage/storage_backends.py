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
BACKENDS = ["file", "s3", "azure", "gcs"]
OBJECT_STORES = ["s3", "azure", "gcs"]
# Azurite's well-known development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
S3_KEY = "pgrecovery-test-key"
S3_SECRET = "pgr-s3-secret-Vh3q9ZtK"  # moto accepts any credentials; this one is distinctive enough to grep for
PART_SIZE = 5 << 20  # the smallest part S3 allows: bundles of a few MiB already go in several parts


@dataclass
class Backend:
    """One storage backend: how this process reaches it, and how a PostgreSQL server's commands do."""

    name: str
    protocol: str  # URL scheme
    bucket: str  # bucket / container (a directory for "file")
    options: dict[str, Any] = field(default_factory=dict)  # fsspec options for this process
    env: dict[str, str] = field(default_factory=dict)  # FSSPEC_* environment for archive/restore_command
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def object_store(self) -> bool:
        return self.name != "file"

    def url(self, prefix: str) -> str:
        return f"file://{self.bucket}/{prefix}" if self.name == "file" else f"{self.protocol}://{self.bucket}/{prefix}"

    @property
    def secrets(self) -> list[str]:
        """The credential values among the options (what must never show up in commands, logs or output)."""
        return [str(v) for k, v in self.options.items() if k in ("key", "secret", "connection_string") and v]

    def prepare(self, prefix: str) -> None:
        """For a server's archive_command: on local disk the repository directory must belong to postgres."""
        if self.name == "file":
            path = Path(self.bucket) / prefix
            path.mkdir(mode=0o750)
            if os.getuid() == 0:
                pw = pwd.getpwnam("postgres")
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def repo(self, prefix: str | None = None, **kwargs: Any) -> Repository:
        """A repository in a fresh (or the given) prefix, with this process's options."""
        prefix = prefix or f"r-{uuid.uuid4().hex[:10]}"
        return Repository(self.url(prefix), part_size=PART_SIZE, **self.options, **kwargs)

    def fs(self) -> Any:
        import fsspec

        return fsspec.filesystem(self.protocol, **self.options)
