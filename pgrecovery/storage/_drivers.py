"""What pgrecovery knows of each filesystem: the capability table, and how a repository URL becomes one.

What each object store does (read from s3fs, gcsfs and adlfs, proven against their emulators in tests/storage):

* S3 (s3fs): a small object is one PutObject; a large one a multipart upload that s3fs completes only in
  ``commit()`` (``close()`` uploads the last part); ``discard()`` aborts it. With ``mode="create"`` / ``"xb"``
  both carry ``If-None-Match: *``, so a write never replaces an object that appeared meanwhile.
* Google Cloud Storage (gcsfs): one request for a small object; a resumable upload for a large one, finalised
  only by ``commit()``; ``discard()`` cancels the session. ``ifGenerationMatch=0`` makes both conditional.
* Azure Blob (adlfs): blocks are staged as the file fills, and the block list is committed by ``close()`` (adlfs
  ignores ``autocommit``; its ``commit()``/``discard()`` do nothing). So the writer closes the file only to commit,
  and an aborted write is closed without its final flush: the staged blocks never become a blob.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit

import attrs

from .._redact import redact_url, scrub
from ..errors import ConfigurationError, MissingDependency

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

CHUNK: Final = 1 << 20
PART_SIZE: Final = 8 << 20  # upload part (S3) / block (Azure) / resumable chunk (GCS) size for large objects
MIN_PART_SIZE: Final = 5 << 20  # S3's minimum part size
MAX_PARTS: Final = 10_000  # S3's maximum part count: parts grow so that no object needs more

# Which extra provides which protocol (for the "install this" message).
PROVIDER_EXTRAS: Final[dict[str, str]] = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "adl": "azure",
}

# -- capabilities ------------------------------------------------------------------------------------------------

Finish = Literal["commit", "close"]
Unfinished = Literal["s3-multipart-upload", "azure-uncommitted-blocks"]


@attrs.frozen(kw_only=True)
class Capabilities:
    """What a protocol guarantees, so that writes can be made safe on each one.

    ``local``: a POSIX filesystem on this host (temp file + fsync + link/rename + fsync of the directory).
    ``object_store``: an upload becomes visible only when completed; ``finish`` says which call completes it on
    the driver's file object (``commit`` for s3fs and gcsfs, ``close`` for adlfs). ``conditional``: a write can be
    made conditional on the name being free (``mode="create"``/``"xb"``), closing the race of exists-then-write.
    ``staged``: nothing is known of the filesystem; a write goes to a hidden temporary name, is published under
    its own name, and is reported stored only once the storage shows it there with the size written (and the
    digest, read back, up to the repository's part size).
    ``stored_md5``: the key of ``info()`` that holds the base64 MD5 the store keeps of a whole object uploaded in
    parts (GCS: ``md5Hash``); a large upload is checked against it once completed.
    ``unfinished``: how uploads a killed writer left unfinished are found and aborted (`_uploads`).
    """

    local: bool = False
    object_store: bool = False
    finish: Finish = "commit"
    conditional: bool = False
    staged: bool = False
    stored_md5: str | None = None
    unfinished: Unfinished | None = None


_LOCAL = Capabilities(local=True)
_MEMORY = Capabilities()
_S3 = Capabilities(object_store=True, finish="commit", conditional=True, unfinished="s3-multipart-upload")
_GCS = Capabilities(object_store=True, finish="commit", conditional=True, stored_md5="md5Hash")
_AZURE = Capabilities(object_store=True, finish="close", conditional=True, unfinished="azure-uncommitted-blocks")
# Any other filesystem: writes staged under a temporary name, published, then confirmed by reading the storage back
# (see `_StagedWriter`). Nothing is assumed of it that fsspec's public API does not promise.
_OTHER = Capabilities(staged=True)

# protocol -> (capabilities, the package whose implementation those were proven with)
_CAPS: Final[dict[str, tuple[Capabilities, str]]] = {
    "file": (_LOCAL, "fsspec.implementations.local"),
    "local": (_LOCAL, "fsspec.implementations.local"),
    "memory": (_MEMORY, "fsspec.implementations.memory"),
    "s3": (_S3, "s3fs"),
    "s3a": (_S3, "s3fs"),
    "gs": (_GCS, "gcsfs"),
    "gcs": (_GCS, "gcsfs"),
    "az": (_AZURE, "adlfs"),
    "abfs": (_AZURE, "adlfs"),
    "abfss": (_AZURE, "adlfs"),
}
# The methods whose behaviour the table describes: a subclass that overrides any of them elsewhere is not the
# implementation that was proven, and gets the safe default instead.
_PROVEN_METHODS: Final = ("open", "_open", "pipe_file", "info", "exists", "ls", "find", "rm_file")


def capabilities_of(fs: AbstractFileSystem) -> Capabilities:
    """The capabilities pgrecovery relies on for ``fs``: from the table when ``fs`` is one of the implementations
    it was proven with (or a subclass that changes none of the methods used), the safe default otherwise."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    entry = next((_CAPS[p] for p in protocols if p in _CAPS), None)
    if entry is None:
        return _OTHER
    caps, package = entry
    for name in _PROVEN_METHODS:
        owner = next((c for c in type(fs).__mro__ if name in vars(c)), None)
        module = getattr(owner, "__module__", "") or ""
        if not (module == package or module.startswith(package + ".") or module in ("fsspec.spec", "fsspec.asyn")):
            return _OTHER
    return caps


def check_usable(fs: AbstractFileSystem) -> None:
    """Refuse, at `Repository` construction, a filesystem on which no write could ever be confirmed: one that can
    neither open files (fsspec's base class would hand back a file that stores nothing) nor describe them."""
    from fsspec import AbstractFileSystem as Base

    def own(name: str) -> bool:
        method = getattr(fs, name, None)  # through the instance: wrappers may delegate by attribute lookup
        return method is not None and getattr(method, "__func__", None) is not getattr(Base, name)

    name = type(fs).__name__
    if not (own("open") or own("_open")):
        raise ConfigurationError(
            f"filesystem {name} implements neither open() nor _open(): pgrecovery cannot write to it"
        )
    if not (own("info") or own("ls")):
        raise ConfigurationError(
            f"filesystem {name} implements neither info() nor ls(): pgrecovery could not confirm that a write "
            "was stored, so it refuses to use it"
        )


_CACHED_LISTINGS: Final = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def unwrap_dir(fs: AbstractFileSystem, root: str) -> tuple[AbstractFileSystem, str]:
    """A ``DirFileSystem`` only prefixes paths: use the filesystem it wraps, under its directory, so that a known
    filesystem keeps its guarantees (local fsync, conditional object-store writes) when reached through one.

    A chained URL (``dir::file:///srv/backups``) hands back the wrapper's own directory as the path inside it:
    that means its top. Subclasses of ``DirFileSystem`` are left alone (they may do more than prefix paths).
    """
    from fsspec.implementations.dirfs import DirFileSystem

    while type(fs) is DirFileSystem:
        base = str(fs.path).rstrip("/")
        inside = root.strip("/")
        if inside == base.strip("/"):
            inside = ""
        root = f"{base}/{inside}" if inside else base
        fs = fs.fs
    return fs, root


def open_fs(url: str, options: dict[str, Any]) -> tuple[AbstractFileSystem, str]:
    import fsspec.core

    scheme = urlsplit(url).scheme
    if "://" not in url:
        if scheme and len(scheme) > 1:  # "s3:bucket" and the like; a Windows drive letter is one char
            raise ConfigurationError(f"repository URL {redact_url(url)!r} lacks '://': write {scheme}://...")
        url = os.path.abspath(url)
    if scheme in _CACHED_LISTINGS:
        # Listings must be fresh: other processes (archive_command) write into the same repository.
        options = {"use_listings_cache": False, **options}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        extra = PROVIDER_EXTRAS.get(scheme)
        hint = f'pip install "pgrecovery[{extra}]"' if extra else f"install the fsspec driver for {scheme}://"
        raise MissingDependency(f"{scheme}:// repositories need an extra package: {hint} ({e})") from None
    except ValueError as e:
        if "Protocol not known" in str(e):
            raise ConfigurationError(
                f"unknown storage protocol {scheme!r} in repository URL {redact_url(url)!r}: "
                "use file://, s3://, gs://, az:// or another fsspec protocol"
            ) from None
        raise ConfigurationError(f"bad repository URL {redact_url(url)!r}: {scrub(str(e))}") from None
    except TypeError as e:
        raise ConfigurationError(f"bad storage option for {scheme}://: {scrub(str(e))}") from None
    return fs, str(path)
