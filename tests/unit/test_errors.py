"""Errors carry structured, already-redacted fields beside their message, and the message stays as it was."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from pgrecovery.errors import (
    ChecksumMismatch,
    PgRecoveryError,
    RestoreError,
    StorageError,
    TamperedObject,
    TargetUnreachable,
    WalGap,
)


def test_positional_construction_and_message_unchanged() -> None:
    e = RestoreError("restoring backup b1 failed", 3)
    assert str(e) == "('restoring backup b1 failed', 3)"
    assert e.args == ("restoring backup b1 failed", 3)
    assert str(StorageError("cannot read k")) == "cannot read k"
    assert str(PgRecoveryError()) == ""


def test_fields_default_to_none() -> None:
    e = WalGap("gap")
    assert (e.backup_id, e.key, e.segment, e.path, e.target) == (None, None, None, None, None)
    assert e.fields == {}


def test_fields_are_attributes_and_do_not_change_the_message() -> None:
    e = WalGap(
        "WAL segment 000000010000000000000007 is missing",
        segment="000000010000000000000007",
        backup_id="20260315T120000Z",
        target="time 2026-03-15T14:30:00+00:00",
    )
    assert str(e) == "WAL segment 000000010000000000000007 is missing"
    assert e.segment == "000000010000000000000007"
    assert e.backup_id == "20260315T120000Z"
    assert e.target == "time 2026-03-15T14:30:00+00:00"
    assert e.fields == {
        "backup_id": "20260315T120000Z",
        "segment": "000000010000000000000007",
        "target": "time 2026-03-15T14:30:00+00:00",
    }
    assert isinstance(e, TargetUnreachable)
    assert isinstance(e, RestoreError)


def test_a_path_is_kept_as_text() -> None:
    assert RestoreError("no space", path=Path("/srv/restore")).path == "/srv/restore"


def test_fields_are_redacted_when_the_error_is_made() -> None:
    e = StorageError(
        "cannot read s3://u:s3cret@bucket/k password=hunter2",
        key="base/b1/data.tar?X-Amz-Signature=abcdef",
        path="/tmp/x password=hunter2",
    )
    assert "s3cret" not in str(e)
    assert "hunter2" not in str(e)
    assert e.key is not None
    assert "abcdef" not in e.key
    assert e.key.startswith("base/b1/data.tar")
    assert e.path == "/tmp/x password=***"
    assert "hunter2" not in repr(e)


def test_the_hierarchy_still_holds_with_fields() -> None:
    e = TamperedObject("changed", key="wal/000000010000000000000001")
    assert isinstance(e, ChecksumMismatch)
    assert e.key == "wal/000000010000000000000001"


def test_fields_survive_pickling() -> None:
    e = pickle.loads(pickle.dumps(WalGap("gap", segment="000000010000000000000002", backup_id="b1")))
    assert type(e) is WalGap
    assert str(e) == "gap"
    assert e.fields == {"backup_id": "b1", "segment": "000000010000000000000002"}


def test_raised_and_caught_by_field() -> None:
    with pytest.raises(TargetUnreachable) as info:
        raise WalGap("gap", segment="000000010000000000000003")
    assert info.value.segment == "000000010000000000000003"
