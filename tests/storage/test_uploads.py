"""Unfinished uploads on the object stores (what a killed writer leaves, invisible to listings but stored): `clean`
lists them with ``--dry-run`` and aborts them otherwise, only under the repository's own prefix, only past the
given age, and never touches an object that was committed."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from storage_backends import Backend

from pgrecovery.cli.main import main

FRESH = 3600.0


def _start_upload(backend: Backend, key: str) -> Any:
    """Leave an unfinished upload of ``<bucket>/<key>`` as a killed writer would; returns a handle to check it."""
    fs = backend.fs()
    if backend.name == "s3":
        upload = fs.call_s3("create_multipart_upload", Bucket=backend.bucket, Key=key)
        fs.call_s3(
            "upload_part", Bucket=backend.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024
        )
        return upload["UploadId"]
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(backend.options["connection_string"])
    blob = client.get_blob_client(backend.bucket, key)
    blob.stage_block(uuid.uuid4().hex, b"x" * 1024)
    return blob


def _s3_open_uploads(backend: Backend) -> set[str]:
    page = backend.fs().call_s3("list_multipart_uploads", Bucket=backend.bucket)
    return {u["Key"] for u in page.get("Uploads", [])}


def _azure_staged(blob: Any) -> int:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        _committed, staged = blob.get_block_list("all")
    except ResourceNotFoundError:
        return 0
    return len(staged)


def test_clean_aborts_only_the_repositorys_old_unfinished_uploads(
    object_store: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = object_store
    prefix = f"r-{uuid.uuid4().hex[:10]}"
    repo = backend.repo(prefix)
    if backend.name == "gcs":  # no API lists resumable sessions; they expire by themselves (docs/reliability.md)
        assert repo.unfinished_uploads(0.0) == []
        return
    repo.put_bytes("backups/kept/manifest.json", b"{}")  # a committed object under the prefix
    ours = _start_upload(backend, f"{prefix}/backups/b1/bundle-0")
    theirs = _start_upload(backend, f"{prefix}-other/backups/b1/bundle-0")  # a sibling prefix: not ours
    if backend.name == "azure":  # a committed object with a failed overwrite's staged block: never touched
        on_committed = _start_upload(backend, f"{prefix}/backups/kept/manifest.json")
    assert repo.unfinished_uploads(FRESH) == []  # under way, for all we know
    time.sleep(1.5)
    (found,) = repo.unfinished_uploads(1.0)
    assert found.key == "backups/b1/bundle-0"
    options = [f"--storage-option={k}={v}" for k, v in backend.options.items()]
    url = backend.url(prefix)
    hours = str(1.0 / 3600)
    assert main(["--repo", url, *options, "clean", "--dry-run", "--uploads-older-than", hours, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["dry_run"] is True
    assert [u["key"] for u in listed["unfinished_uploads"]] == ["backups/b1/bundle-0"]
    assert repo.unfinished_uploads(1.0) == [found]  # a dry run aborts nothing
    assert main(["--repo", url, *options, "clean", "--uploads-older-than", hours, "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert [u["kind"] for u in done["unfinished_uploads"]] == [found.kind]
    assert repo.unfinished_uploads(1.0) == []
    assert repo.read_bytes("backups/kept/manifest.json") == b"{}"
    if backend.name == "s3":
        assert _s3_open_uploads(backend) == {f"{prefix}-other/backups/b1/bundle-0"}
    else:
        assert _azure_staged(ours) == 0
        assert _azure_staged(theirs) == 1
        assert _azure_staged(on_committed) == 1
