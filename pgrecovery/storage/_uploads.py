"""Uploads a killed writer left unfinished on an object store, invisible to listings but stored (and billed).

- **S3**: a multipart upload that was neither completed nor aborted keeps its parts until it is aborted, for ever
  unless a lifecycle rule (``AbortIncompleteMultipartUpload``) says otherwise.
- **Azure Blob**: blocks staged for a blob but never committed; the service discards them after 7 days. A blob
  that has only uncommitted blocks is found by listing with ``uncommittedblobs``; it is discarded by committing an
  empty block list (which drops the staged blocks) and deleting the empty blob. A blob that has a committed
  version is never touched: its staged blocks go with the service's own cleanup.
- **GCS**: resumable upload sessions cannot be listed by any API; an unfinished one expires after a week, and its
  bytes are not stored as an object. Nothing to do here (``unfinished_uploads`` returns nothing).

Only uploads under the repository's own prefix are considered, and only those idle for more than ``older_than``
seconds (S3: since they started or last received a part; an upload under way in another process must not be
cut).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs

from ._drivers import Unfinished

if TYPE_CHECKING:
    from .repository import Storage


@attrs.frozen(kw_only=True)
class UnfinishedUpload:
    """An upload left unfinished under the repository's prefix: ``key`` is the repository key it was writing;
    ``last_active`` when it was started or last received a part (S3) or when its blob was created (Azure)."""

    key: str
    last_active: datetime
    kind: Unfinished
    upload_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "last_active": self.last_active.isoformat(), "kind": self.kind}


def _split(storage: Storage) -> tuple[str, str]:
    """(bucket or container, the key prefix of the repository's root with a trailing slash, or "")."""
    root = storage.fs._strip_protocol(storage.root).strip("/")
    bucket, _, prefix = root.partition("/")
    return bucket, f"{prefix}/" if prefix else ""


def _relative(prefix: str, name: str) -> str | None:
    return name[len(prefix) :] if name.startswith(prefix) and len(name) > len(prefix) else None


def unfinished_uploads(storage: Storage, older_than: float) -> list[UnfinishedUpload]:
    """The repository's unfinished uploads idle for more than ``older_than`` seconds, oldest first."""
    cutoff = datetime.fromtimestamp(time.time() - older_than, tz=UTC)
    kind = storage.capabilities.unfinished  # only the drivers whose API was proven (`_drivers`)
    if kind == "s3-multipart-upload":
        found = _s3_uploads(storage)
    elif kind == "azure-uncommitted-blocks":
        found = _azure_uncommitted(storage)
    else:
        return []
    return sorted((u for u in found if u.last_active < cutoff), key=lambda u: (u.last_active, u.key))


def abort_upload(storage: Storage, upload: UnfinishedUpload) -> None:
    """Abort one of `unfinished_uploads` (gone already: nothing to do)."""
    bucket, prefix = _split(storage)
    if upload.kind == "s3-multipart-upload":
        key = prefix + upload.key
        storage._retry(
            "abort the upload of",
            upload.key,
            lambda: storage.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload.upload_id),
        )
    else:
        _azure_discard(storage, bucket, prefix + upload.key)


# -- S3 --------------------------------------------------------------------------------------------------------


def _s3_uploads(storage: Storage) -> list[UnfinishedUpload]:
    bucket, prefix = _split(storage)

    def page_after(markers: dict[str, str]) -> Any:
        return storage._retry(
            "list unfinished uploads under",
            prefix or "/",
            lambda: storage.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **markers),
        )

    found: list[UnfinishedUpload] = []
    page = page_after({})
    while True:
        for upload in page.get("Uploads", []):
            key = _relative(prefix, upload["Key"])
            if key is not None:
                active = max([upload["Initiated"], *_part_times(storage, bucket, upload)], key=_aware)
                found.append(
                    UnfinishedUpload(
                        key=key, last_active=_aware(active), kind="s3-multipart-upload", upload_id=upload["UploadId"]
                    )
                )
        if not page.get("IsTruncated"):
            return found
        page = page_after({"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]})


def _part_times(storage: Storage, bucket: str, upload: dict[str, Any]) -> list[datetime]:
    """When each part of ``upload`` arrived (the first 1,000: a writer still at work sent one recently)."""
    listed = storage._retry(
        "list the parts of",
        upload["Key"],
        lambda: storage.fs.call_s3("list_parts", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]),
    )
    return [part["LastModified"] for part in listed.get("Parts", [])]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- Azure Blob ------------------------------------------------------------------------------------------------


def _azure_run(storage: Storage, coroutine_of: Any) -> Any:
    """Run ``coroutine_of(container_client)`` on adlfs's event loop (its clients are asynchronous)."""
    from fsspec.asyn import sync

    bucket, _ = _split(storage)

    async def call() -> Any:
        async with storage.fs.service_client.get_container_client(bucket) as container:
            return await coroutine_of(container)

    return sync(storage.fs.loop, call)


def _azure_uncommitted(storage: Storage) -> list[UnfinishedUpload]:
    _, prefix = _split(storage)

    async def listing(container: Any) -> list[tuple[str, datetime]]:
        candidates = []
        async for blob in container.list_blobs(name_starts_with=prefix, include=["uncommittedblobs"]):
            if not blob.size:  # a blob with only uncommitted blocks is listed empty
                candidates.append((blob.name, blob.creation_time or blob.last_modified))
        found = []
        for name, started in candidates:
            committed, staged = await container.get_blob_client(name).get_block_list("all")
            if not committed and staged:
                found.append((name, started))
        return found

    result = []
    for name, started in storage._retry(
        "list unfinished uploads under", prefix or "/", lambda: _azure_run(storage, listing)
    ):
        key = _relative(prefix, name)
        if key is not None and started is not None:
            result.append(UnfinishedUpload(key=key, last_active=_aware(started), kind="azure-uncommitted-blocks"))
    return result


def _azure_discard(storage: Storage, bucket: str, name: str) -> None:
    async def discard(container: Any) -> None:
        blob = container.get_blob_client(name)
        committed, _staged = await blob.get_block_list("all")
        if committed:  # committed meanwhile: a real object now, not ours to touch
            return
        await blob.commit_block_list([])
        await blob.delete_blob()

    storage._retry("abort the upload of", name, lambda: _azure_run(storage, discard))


__all__ = ["UnfinishedUpload", "abort_upload", "unfinished_uploads"]
