from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from pgrecovery import BackupManifest, ContentSummary, FileEntry, ManifestError
from pgrecovery.codec import CODECS
from pgrecovery.manifest import BACKUP_KINDS, COMPRESSIONS, FORMATS


def make() -> BackupManifest:
    t = datetime(2026, 11, 24, 10, 15, tzinfo=UTC)
    return BackupManifest(
        id="20261124T101500Z-logical",
        kind="logical",
        started_at=t,
        finished_at=t + timedelta(seconds=2.5),
        format="custom",
        compression="zstd",
        compression_level=3,
        files=[
            FileEntry(path="data/dump.pgdump.zst", size=10, sha256="ab" * 32, codec="zstd", raw_size=40, role="dump")
        ],
        database="shop",
        source={"host": "db1", "dbname": "shop"},
        summary=ContentSummary(schemas=1, tables=2, objects=9, by_type={"TABLE": 2}),
        pgrecovery_version="0.1.0",
    )


def test_json_round_trip_and_derived_fields() -> None:
    m = make()
    data = json.loads(m.to_json())
    assert data["duration"] == 2.5
    assert data["size"] == 10
    assert data["raw_size"] == 40
    assert data["schema_version"] == 1
    assert BackupManifest.from_json(m.to_json()) == m


def test_newer_schema_refused() -> None:
    data = make().to_dict()
    data["schema_version"] = 99
    with pytest.raises(ManifestError, match="upgrade pgrecovery"):
        BackupManifest.from_dict(data)


@pytest.mark.parametrize("text", ["{", "[]", '{"kind": "logical"}', '{"schema_version": 1, "id": "x"}'])
def test_malformed_refused(text: str) -> None:
    with pytest.raises(ManifestError):
        BackupManifest.from_json(text)


def test_naive_time_refused() -> None:
    data = make().to_dict()
    data["started_at"] = "2026-11-24T10:15:00"
    with pytest.raises(ManifestError, match="time zone"):
        BackupManifest.from_dict(data)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("kind", "incremental", "unknown backup kind 'incremental'"),
        ("format", "zip", "unknown format 'zip'"),
        ("compression", "bzip2", "unknown compression 'bzip2'"),
    ],
)
def test_a_value_outside_a_closed_set_is_a_manifest_error(field: str, value: str, named: str) -> None:
    """Kinds, formats and compressions are closed sets: an unknown one (a damaged or future manifest) is refused
    with a `ManifestError` naming it, both from a dict and from the stored JSON (with a matching digest)."""
    data = make().to_dict()
    data[field] = value
    with pytest.raises(ManifestError, match=f"manifest is malformed: {named}"):
        BackupManifest.from_dict(data)
    text = make().to_json().replace(f'"{field}": "{getattr(make(), field)}"', f'"{field}": "{value}"')
    with pytest.raises(ManifestError):  # the digest no longer matches, or the value is refused: never a crash
        BackupManifest.from_json(text)


def test_the_closed_sets_name_what_each_backup_kind_writes() -> None:
    assert BACKUP_KINDS == ("logical", "globals", "cluster", "base")
    assert set(FORMATS) == {"custom", "directory", "plain", "tar"}
    assert set(COMPRESSIONS) == {*CODECS, "pg_dump"}
