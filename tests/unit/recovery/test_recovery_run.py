"""The run as data, without a server: what a `RecoveryRun` decides, the incident record's naming, and the error a
recovery that stopped short becomes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_recovery_plan import A, put_backup

from pgrecovery import ConfigurationError, RecoveryTarget, Repository
from pgrecovery.errors import TargetUnreachable
from pgrecovery.recovery.plan import _archive_settings
from pgrecovery.recovery.run import Incident, RecoveryRun, failure, record_incident, server_major


@pytest.fixture
def repo() -> Repository:
    r = Repository(f"memory://run-{uuid.uuid4().hex}")
    put_backup(r, 10, at=2, next_xid=700)
    return r


def make_run(repo: Repository, target: RecoveryTarget, **kw: object) -> RecoveryRun:
    return RecoveryRun(repo=repo, backup=repo.get(A, "base"), target=target, pgdata="restore", major=15, **kw)  # type: ignore[arg-type]


def test_a_run_is_plain_data(repo: Repository) -> None:
    run = make_run(repo, RecoveryTarget.xid(800, action="pause"), ports=range(55000, 55003))
    assert run.pgdata == Path("restore").absolute()
    assert run.ports == (55000, 55001, 55002)
    assert run.port == 0
    assert run.action == "pause"
    assert make_run(repo, RecoveryTarget.latest()).action == "promote"  # latest replays to the end, then promotes


def test_server_major() -> None:
    assert server_major("15.18 (Debian 15.18-1.pgdg120+1)") == 15
    assert server_major("") is None


def test_a_recovery_that_stopped_short_names_target_and_backup(repo: Repository) -> None:
    run = make_run(repo, RecoveryTarget.xid(800))
    e = failure(run, "\nLOG: recovery ended before configured recovery target was reached")
    assert isinstance(e, TargetUnreachable)
    assert str(e).startswith(f"the archive ends before xid 800: recovery from {A} replayed everything")
    assert (e.backup_id, e.target) == (A, "xid 800")
    assert str(failure(run, "FATAL: boom")) == "recovery to xid 800 failed: FATAL: boom"


def test_incident_records_take_a_free_name(repo: Repository) -> None:
    now = datetime(2026, 3, 15, 12, tzinfo=UTC)
    incident = Incident(
        id="20260315T120000Z-recovery",
        host="h",
        target="latest",
        backup_id=A,
        backup_finished_at=now - timedelta(hours=2),
        pgdata="/srv/restore",
        started_at=now,
        finished_at=now + timedelta(seconds=5),
        state="promoted",
        end_lsn="0/3000000",
        timeline=1,
        last_transaction_time=None,
        wal_restored=1,
        first_wal=None,
        last_wal=None,
        restore_seconds=1.0,
        recovery_seconds=4.0,
        steps=(),
    )
    assert record_incident(repo, incident) == "incidents/20260315T120000Z-recovery.json"
    assert record_incident(repo, incident) == "incidents/20260315T120000Z-recovery-1.json"
    stored = json.loads(repo.read_bytes("incidents/20260315T120000Z-recovery.json"))
    assert stored["backup_id"] == A
    assert stored["started_at"] == now.isoformat()


def test_archive_settings_are_decided_before_anything_is_written() -> None:
    assert _archive_settings(False, None) == {"archive_mode": "off"}
    assert _archive_settings(True, {"work_mem": "4MB"}) == {"work_mem": "4MB"}
    with pytest.raises(ConfigurationError, match="archive=True"):
        _archive_settings(True, {"archive_mode": "off"})
    with pytest.raises(ConfigurationError, match="archive=False"):
        _archive_settings(False, {"ARCHIVE_MODE": "on"})
