"""Monitoring without a server: check states over synthetic catalogs with a fake clock, exit codes, thresholds,
metrics parsed back, JSON log lines, and redaction everywhere a secret could leak."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fakes import finished_backup as backup
from fsspec.implementations.local import LocalFileSystem

from pgrecovery import ConfigurationError, Repository
from pgrecovery.cli.main import main
from pgrecovery.codec import compress_bytes
from pgrecovery.logs import configure_logging, redact
from pgrecovery.monitoring import (
    AgeLimit,
    CheckResult,
    CheckState,
    CountLimit,
    HealthReport,
    RunRecord,
    StatusTable,
    Thresholds,
    check,
    check_function_sql,
    collect_metrics,
    human_duration,
    metrics,
    parse_duration,
    recording,
    write_textfile,
)
from pgrecovery.monitoring._sources import _Server
from pgrecovery.monitoring.health import _wal_checks_server
from pgrecovery.wal.archiver import object_key

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
NO_WAL = Thresholds(wal=False)
SECRET = "s3cr3t-Pa55"


def wal(repo: Repository, segno: int, stored_at: datetime) -> str:
    name = f"00000001000000000000{segno:04X}"
    raw = os.urandom(64) * 16
    key = object_key(name, hashlib.sha256(raw).hexdigest(), "zstd")
    repo.put_bytes(key, compress_bytes(raw, "zstd"))
    path = repo.local_path(key)
    assert path is not None
    os.utime(path, (stored_at.timestamp(), stored_at.timestamp()))
    return name


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(str(tmp_path / "repo"))


def states(report: HealthReport) -> dict[str, CheckState]:
    return {c.name: c.state for c in report.checks}


# -- backup ages -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "state", "exit_code"),
    [
        (timedelta(hours=1), CheckState.OK, 0),
        (timedelta(hours=23, minutes=59), CheckState.OK, 0),
        (timedelta(hours=24, minutes=30), CheckState.WARNING, 1),
        (timedelta(hours=25), CheckState.CRITICAL, 2),
        (timedelta(days=3), CheckState.CRITICAL, 2),
    ],
)
def test_logical_backup_age_states(repo: Repository, age: timedelta, state: CheckState, exit_code: int) -> None:
    m = backup(repo, T0)
    backup(repo, T0 + timedelta(days=7), kind="base")
    report = check(repo, thresholds=NO_WAL, now=T0 + age)
    assert states(report)["logical-backup"] is state
    assert report.exit_code == exit_code
    (result,) = [c for c in report.checks if c.name == "logical-backup"]
    assert m.id in result.detail
    assert result.value == age.total_seconds()
    assert (result.warning, result.critical) == (86400.0, 90000.0)


def test_the_newest_backup_counts_and_kinds_are_separate(repo: Repository) -> None:
    backup(repo, T0 - timedelta(days=30))
    backup(repo, T0)
    backup(repo, T0 - timedelta(days=9), kind="base")
    report = check(repo, thresholds=NO_WAL, now=T0 + timedelta(hours=2))
    assert states(report) == {"logical-backup": CheckState.OK, "base-backup": CheckState.CRITICAL}
    assert report.state is CheckState.CRITICAL


def test_no_backup_at_all_is_critical_or_warning_without_a_critical_level(repo: Repository) -> None:
    report = check(repo, thresholds=NO_WAL, now=T0)
    assert states(report) == {"logical-backup": CheckState.CRITICAL, "base-backup": CheckState.CRITICAL}
    assert "no complete logical backup" in report.checks[0].detail
    th = Thresholds(wal=False, backups={"logical": AgeLimit(warning=timedelta(hours=1))})
    assert states(check(repo, thresholds=th, now=T0)) == {"logical-backup": CheckState.WARNING}


def test_a_kind_can_be_disabled_and_others_enabled(repo: Repository) -> None:
    backup(repo, T0, kind="globals")
    th = NO_WAL.with_backup("base", None).with_backup("logical", None)
    th = th.with_backup("globals", AgeLimit(timedelta(hours=1), timedelta(hours=2)))
    assert states(check(repo, thresholds=th, now=T0 + timedelta(minutes=90))) == {"globals-backup": CheckState.WARNING}
    with pytest.raises(ConfigurationError, match="unknown backup kind 'nightly'"):
        Thresholds(backups={"nightly": AgeLimit(critical=timedelta(hours=1))})
    with pytest.raises(ConfigurationError, match="above the critical one"):
        AgeLimit(timedelta(hours=2), timedelta(hours=1))


class _UnlistableFS(LocalFileSystem):  # type: ignore[misc]
    """Storage that refuses every listing (as a bucket with a revoked credential would)."""

    protocol = "unlistable"

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        raise PermissionError(f"access denied listing {path}")


def test_an_unreadable_repository_is_unknown_not_ok(tmp_path: Path) -> None:
    broken = Repository(fs=_UnlistableFS(), root=str(tmp_path))
    report = check(broken, now=T0)
    assert set(states(report).values()) == {CheckState.UNKNOWN}
    assert report.exit_code == 3
    assert "cannot check" in report.checks[0].detail


def test_worst_state_ranks_critical_over_unknown_over_warning() -> None:
    def report(*s: CheckState) -> HealthReport:
        return HealthReport(
            checks=[CheckResult(name=f"c{i}", state=x, detail="") for i, x in enumerate(s)], checked_at=T0
        )

    assert report(CheckState.OK, CheckState.WARNING).exit_code == 1
    assert report(CheckState.WARNING, CheckState.UNKNOWN).exit_code == 3
    assert report(CheckState.UNKNOWN, CheckState.CRITICAL, CheckState.WARNING).exit_code == 2
    assert report().exit_code == 3  # nothing checked is not "OK"
    assert report(CheckState.OK).lines() == ["OK - c0: ", "OK - pgrecovery: 1 check(s): 1 OK"]


# -- WAL ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "state"),
    [
        (timedelta(minutes=5), CheckState.OK),
        (timedelta(minutes=20), CheckState.WARNING),
        (timedelta(hours=2), CheckState.CRITICAL),
    ],
)
def test_wal_lag_from_the_newest_object_in_the_repository(repo: Repository, age: timedelta, state: CheckState) -> None:
    for segno in range(1, 4):
        wal(repo, segno, T0 - timedelta(hours=4 - segno))
    newest = wal(repo, 4, T0)
    report = check(repo, thresholds=Thresholds(backups={}), now=T0 + age)
    (result,) = report.checks
    assert (result.name, result.state) == ("wal-lag", state)
    assert newest in result.detail
    assert result.value == pytest.approx(age.total_seconds(), abs=1)


def test_no_wal_in_the_repository_is_critical(repo: Repository) -> None:
    assert states(check(repo, thresholds=Thresholds(backups={}), now=T0)) == {"wal-lag": CheckState.CRITICAL}


def server(**changes: Any) -> _Server:
    facts: dict[str, Any] = {
        "archive_mode": "on",
        "in_recovery": False,
        "archived_count": 40,
        "last_archived_wal": "000000010000000000000027",
        "last_archived_time": T0 - timedelta(hours=3),
        "failed_count": 0,
        "last_failed_wal": None,
        "last_failed_time": None,
        "current_wal": "000000010000000000000028",
        "segment_size": 16 << 20,
        "ready_count": 0,
        "oldest_ready": None,
        "ready_error": None,
    }
    facts.update(changes)
    return _Server(**facts)


def test_an_idle_server_with_nothing_waiting_is_ok_however_old_its_last_archive() -> None:
    got = {c.name: c.state for c in _wal_checks_server(server(), Thresholds(), T0)}
    assert got == {"wal-lag": CheckState.OK, "wal-ready": CheckState.OK, "wal-failures": CheckState.OK}
    # without access to archive_status: the current segment tells the same
    denied = server(ready_count=None, ready_error="grant pg_monitor to this role")
    got = {c.name: c.state for c in _wal_checks_server(denied, Thresholds(), T0)}
    assert got == {"wal-lag": CheckState.OK, "wal-ready": CheckState.UNKNOWN, "wal-failures": CheckState.OK}


@pytest.mark.parametrize(
    ("waiting", "count", "lag_state", "ready_state"),
    [
        (timedelta(minutes=1), 3, CheckState.OK, CheckState.OK),
        (timedelta(minutes=30), 12, CheckState.WARNING, CheckState.WARNING),
        (timedelta(hours=2), 60, CheckState.CRITICAL, CheckState.CRITICAL),
    ],
)
def test_backlog_lag_is_the_age_of_the_oldest_waiting_segment(
    waiting: timedelta, count: int, lag_state: CheckState, ready_state: CheckState
) -> None:
    facts = server(ready_count=count, oldest_ready=T0 - waiting)
    got = {c.name: c for c in _wal_checks_server(facts, Thresholds(), T0)}
    assert got["wal-lag"].state is lag_state
    assert got["wal-lag"].value == waiting.total_seconds()
    assert got["wal-ready"].state is ready_state
    assert got["wal-ready"].value == count


def test_failing_archiving_is_warning_then_critical() -> None:
    failing = server(
        failed_count=7,
        last_failed_wal="000000010000000000000028",
        last_failed_time=T0 - timedelta(seconds=5),
        ready_count=1,
        oldest_ready=T0 - timedelta(minutes=3),
    )
    (fail,) = [c for c in _wal_checks_server(failing, Thresholds(), T0) if c.name == "wal-failures"]
    assert fail.state is CheckState.WARNING
    assert "7 failed attempt(s)" in fail.detail
    assert "000000010000000000000028" in fail.detail
    later = T0 + timedelta(minutes=10)
    (fail,) = [c for c in _wal_checks_server(failing, Thresholds(), later) if c.name == "wal-failures"]
    assert fail.state is CheckState.CRITICAL
    never = server(
        failed_count=2,
        last_archived_time=None,
        last_archived_wal=None,
        last_failed_time=T0,
        last_failed_wal="000000010000000000000001",
        ready_count=None,
        ready_error="denied",
    )
    (fail,) = [c for c in _wal_checks_server(never, Thresholds(), T0) if c.name == "wal-failures"]
    assert fail.state is CheckState.CRITICAL
    assert "never archived" in fail.detail
    # an old failure followed by successes is history, not an alert
    healed = server(
        failed_count=7, last_failed_time=T0 - timedelta(hours=5), last_failed_wal="0000000100000000000000FF"
    )
    (fail,) = [c for c in _wal_checks_server(healed, Thresholds(), T0) if c.name == "wal-failures"]
    assert fail.state is CheckState.OK


def test_archive_mode_off_is_critical_and_a_standby_is_fine() -> None:
    (off,) = _wal_checks_server(server(archive_mode="off"), Thresholds(), T0)
    assert (off.name, off.state) == ("wal-archiving", CheckState.CRITICAL)
    (standby,) = _wal_checks_server(server(in_recovery=True), Thresholds(), T0)
    assert standby.state is CheckState.OK


def test_an_unreachable_database_makes_the_wal_checks_unknown(repo: Repository) -> None:
    report = check(
        repo,
        dbname="host=127.0.0.1 port=1 connect_timeout=2 password=" + SECRET,
        thresholds=Thresholds(backups={}),
        now=T0,
    )
    assert states(report) == dict.fromkeys(("wal-lag", "wal-ready", "wal-failures"), CheckState.UNKNOWN)
    assert SECRET not in json.dumps(report.to_dict())


# -- the command -------------------------------------------------------------------------------------------------


def test_cli_prints_one_line_per_check_then_a_summary(repo: Repository, capsys: pytest.CaptureFixture[str]) -> None:
    backup(repo, datetime.now(UTC) - timedelta(hours=2))
    code = main(["--repo", repo.url, "check", "--age", "base=off", "--age", "logical=1h/3h", "--no-wal"])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert re.fullmatch(
        r"WARNING - logical-backup: newest backup \S+ finished 2 h( \d+ min)? ago "
        r"\(warning after 1 h, critical after 3 h\)",
        out[0],
    )
    assert out[-1] == "WARNING - pgrecovery: 1 check(s): 1 WARNING"


def test_cli_json_shape(repo: Repository, capsys: pytest.CaptureFixture[str]) -> None:
    backup(repo, datetime.now(UTC) - timedelta(minutes=5))
    assert main(["--repo", repo.url, "check", "--json", "--age", "base=off", "--no-wal"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"state", "exit_code", "summary", "checked_at", "sources", "checks"}
    assert (data["state"], data["exit_code"]) == ("OK", 0)
    assert data["sources"] == {"repository": repo.display_url, "database": None, "status_table": None}
    (c,) = data["checks"]
    assert set(c) == {"check", "state", "detail", "value", "warning", "critical", "unit"}
    assert (c["check"], c["state"], c["unit"], c["critical"]) == ("logical-backup", "OK", "seconds", 90000.0)


@pytest.mark.parametrize(
    "argv",
    [["--age", "logical=soon"], ["--age", "logical"], ["--ready", "ten/50"], ["--wal-lag", "5m"]],
)
def test_cli_bad_thresholds_are_unknown(repo: Repository, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--repo", repo.url, "check", *argv]) == 3
    out = capsys.readouterr().out
    assert out.startswith("UNKNOWN - pgrecovery: ")
    assert "Traceback" not in out


def test_cli_without_any_source_is_unknown(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGRECOVERY_REPO", raising=False)
    monkeypatch.delenv("PGRECOVERY_STATUS_DBNAME", raising=False)
    assert main(["check"]) == 3
    assert "pass --repo URL" in capsys.readouterr().out


def test_cli_thresholds_reach_the_checks(repo: Repository, capsys: pytest.CaptureFixture[str]) -> None:
    backup(repo, datetime.now(UTC) - timedelta(hours=30))
    assert main(["--repo", repo.url, "check", "--age", "base=off", "--no-wal"]) == 2
    capsys.readouterr()
    assert main(["--repo", repo.url, "check", "--age", "base=off", "--age", "logical=2d/3d", "--no-wal"]) == 0
    assert main(["--repo", repo.url, "check", "--age", "base=off", "--age", "logical=1d/off", "--no-wal"]) == 1


def test_show_sql_quotes_the_table_and_carries_the_thresholds(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["check", "--show-sql", "--status-table", "ops.runs", "--age", "logical=2h/3h", "--ready", "5/off"]) == 0
    )
    text = capsys.readouterr().out
    assert 'CREATE OR REPLACE FUNCTION "ops"."pgrecovery_check"(' in text
    assert 'FROM "ops"."runs" t' in text
    assert "logical_critical interval DEFAULT interval '10800 seconds'" in text
    assert "ready_warning integer DEFAULT 5" in text
    assert "ready_critical integer DEFAULT NULL" in text
    assert "SET search_path = pg_catalog, pg_temp" in text
    assert "search_path" not in check_function_sql("runs")  # unqualified: resolved by the caller's search_path


# -- metrics -----------------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse_exposition(text: str) -> dict[str, dict[str, Any]]:
    """A strict little reader of the Prometheus text format: families with help, type and samples."""
    families: dict[str, dict[str, Any]] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help_text = line[7:].split(" ", 1)
            assert name not in families, f"{name} described twice"
            families[name] = {"help": help_text, "type": None, "samples": []}
        elif line.startswith("# TYPE "):
            name, mtype = line[7:].split(" ", 1)
            assert families[name]["type"] is None
            assert not families[name]["samples"]
            assert mtype in ("gauge", "counter")
            families[name]["type"] = mtype
        else:
            m = _SAMPLE.fullmatch(line)
            assert m, f"not a sample line: {line!r}"
            name = m["name"]
            assert families.get(name, {}).get("type"), f"{name} has no HELP/TYPE before its samples"
            labels = {}
            if m["labels"]:
                pairs = _LABEL.findall(m["labels"])
                assert ",".join(f'{k}="{v}"' for k, v in pairs) == m["labels"]
                labels = {k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\") for k, v in pairs}
            families[name]["samples"].append((labels, float(m["value"])))
    for name, fam in families.items():
        assert name.startswith("pgrecovery_")
        assert fam["type"] != "counter" or name.endswith("_total")
    return families


def value(families: dict[str, dict[str, Any]], name: str, **labels: str) -> float:
    found = [
        v for lab, v in families[f"pgrecovery_{name}"]["samples"] if all(lab.get(k) == x for k, x in labels.items())
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_metrics_parse_back_to_the_catalog(repo: Repository) -> None:
    backup(repo, T0 - timedelta(days=1), size=1000)
    newest = backup(repo, T0, size=2000)
    base = backup(repo, T0 - timedelta(days=2), kind="base", size=5000)
    wal(repo, 1, T0 - timedelta(minutes=2))
    fams = parse_exposition(metrics(repo, now=T0 + timedelta(minutes=1)))
    r = repo.display_url
    assert value(fams, "backups", kind="logical", repository=r) == 2
    assert value(fams, "backups", kind="base", repository=r) == 1
    assert value(fams, "backups", kind="cluster", repository=r) == 0
    assert value(fams, "backup_last_success_timestamp_seconds", kind="logical") == newest.finished_at.timestamp()
    assert value(fams, "backup_last_duration_seconds", kind="logical") == 600
    assert value(fams, "backup_last_stored_bytes", kind="logical") == newest.size
    assert value(fams, "backup_last_raw_bytes", kind="base") == base.raw_size
    assert value(fams, "backup_stored_bytes", kind="logical") == sum(m.size for m in repo.backups("logical"))
    assert value(fams, "wal_archive_lag_seconds", repository=r) == pytest.approx(180, abs=1)
    assert value(fams, "source_up", source="repository") == 1
    assert "pgrecovery_backup_last_success_timestamp_seconds" not in {
        n for n, f in fams.items() if any(lab.get("kind") == "cluster" for lab, _ in f["samples"])
    }


def test_metrics_labels_are_escaped_and_carry_no_credentials(tmp_path: Path) -> None:
    odd = tmp_path / 'we"ird\\dir'
    repo = Repository(str(odd))
    backup(repo, T0)
    fams = parse_exposition(metrics(repo, now=T0))
    assert value(fams, "backups", kind="logical", repository=str(odd)) == 1


def test_metrics_report_a_source_that_cannot_be_read(tmp_path: Path) -> None:
    broken = Repository(fs=_UnlistableFS(), root=str(tmp_path))
    result = collect_metrics(broken, now=T0)
    assert not result.ok
    assert value(parse_exposition(result.text), "source_up", source="repository") == 0


def test_metrics_output_file_is_replaced_atomically(
    repo: Repository, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backup(repo, T0)
    out_dir = tmp_path / "textfile"
    out_dir.mkdir()
    target = out_dir / "pgrecovery.prom"
    target.write_text("stale\n")
    assert main(["--repo", repo.url, "metrics", "--output", str(target)]) == 0
    assert capsys.readouterr().out == ""
    fams = parse_exposition(target.read_text())
    assert value(fams, "backups", kind="logical") == 1
    assert os.listdir(out_dir) == ["pgrecovery.prom"]  # no temporary file left behind
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    with pytest.raises(ConfigurationError, match="exists"):
        write_textfile(tmp_path / "missing-dir" / "x.prom", "x\n")


# -- status records, recording and redaction ---------------------------------------------------------------------


def test_run_records_are_redacted_on_the_way_in() -> None:
    rec = RunRecord(
        kind="logical",
        status="failure",
        file_path=f"s3://AKIA:{SECRET}@bucket/prefix/backups/x?X-Amz-Signature={SECRET}",
        error=f"pg_dump: connection to host=db1 password={SECRET} failed; "
        f"tried postgresql://app:{SECRET}@db1/shop; AccountKey={SECRET};",
    )
    assert SECRET not in json.dumps(rec.to_dict())
    assert rec.file_path == "s3://bucket/prefix/backups/x"
    assert rec.error is not None
    assert "password=***" in rec.error
    assert len(RunRecord(kind="wal", status="failure", error="x" * 10000).error or "") == 4000


@pytest.mark.parametrize("name", ["Runs", "a.b.c", "runs; drop table x", "1runs", "", "x" * 64, 'r"s'])
def test_status_table_names_are_validated(name: str) -> None:
    with pytest.raises(ConfigurationError, match="status table name"):
        StatusTable("dbname=x", name)


def test_status_table_hides_the_password() -> None:
    table = StatusTable(f"host=mon dbname=ops password={SECRET}", "ops.runs")
    assert SECRET not in repr(table)
    assert SECRET not in table.where
    with pytest.raises(ConfigurationError, match="run kind"):
        RunRecord(kind="Logical Backup", status="success")


class _Table:
    """Stands in for a StatusTable: keeps what it is given."""

    def __init__(self, fail: bool = False) -> None:
        self.rows: list[RunRecord] = []
        self.fail = fail

    def record(self, run: RunRecord) -> RunRecord:
        if self.fail:
            from pgrecovery import DatabaseError

            raise DatabaseError("monitoring database is down")
        self.rows.append(run)
        return run


def test_recording_times_a_run_and_records_failures_with_a_redacted_error(repo: Repository) -> None:
    table = _Table()
    m = backup(repo, T0)
    with recording(table, "logical") as run:  # type: ignore[arg-type]
        run.note_backup(m, repo)
    with pytest.raises(RuntimeError, match="boom"), recording(table, "base") as run:  # type: ignore[arg-type]
        raise RuntimeError(f"boom: password={SECRET}")
    ok, failed = table.rows
    assert (ok.kind, ok.status, ok.backup_id, ok.size_bytes) == ("logical", "success", m.id, m.size)
    assert ok.file_path == f"{repo.display_url}/backups/{m.id}"
    assert ok.duration_seconds is not None
    assert ok.duration_seconds >= 0
    assert (failed.kind, failed.status) == ("base", "failure")
    assert failed.error == "boom: password=***"


def test_recording_never_turns_a_good_run_into_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    with recording(_Table(fail=True), "logical") as run:  # type: ignore[arg-type]
        pass
    assert run.record is not None
    assert run.record.ok
    assert "could not record the logical run" in caplog.text


# -- logging -----------------------------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def test_json_logs_are_one_object_per_line_with_extra_fields_and_no_secret(restore_logging: None) -> None:
    buf = io.StringIO()
    configure_logging("INFO", json=True, stream=buf)
    configure_logging("INFO", json=True, stream=buf)  # a second call replaces, never duplicates
    log = logging.getLogger("pgrecovery.test")
    log.info("connecting to %s", f"host=db1 password={SECRET} dbname=shop", extra={"backup_id": "b1", "size": 42})
    log.debug("not shown")
    try:
        raise ValueError(f"s3://key:{SECRET}@bucket/x")
    except ValueError:
        log.exception("upload failed", extra={"storage_options": {"secret": SECRET, "endpoint_url": "http://s3"}})
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert set(first) == {"ts", "level", "logger", "message", "backup_id", "size"}
    assert (first["level"], first["logger"], first["backup_id"], first["size"]) == ("INFO", "pgrecovery.test", "b1", 42)
    assert first["message"] == "connecting to host=db1 password=*** dbname=shop"
    assert datetime.fromisoformat(first["ts"].replace("Z", "+00:00")).tzinfo is not None
    assert second["level"] == "ERROR"
    assert "ValueError" in second["exc"]
    assert second["storage_options"] == {"secret": "***", "endpoint_url": "http://s3"}
    assert SECRET not in buf.getvalue()


def test_text_logs_are_redacted_too(restore_logging: None) -> None:
    buf = io.StringIO()
    configure_logging(logging.WARNING, stream=buf)
    logging.getLogger("pgrecovery.x").warning("retrying postgresql://u:%s@h/db", SECRET)
    assert "postgresql://u:***@h/db" in buf.getvalue()
    assert SECRET not in buf.getvalue()
    with pytest.raises(ConfigurationError, match="unknown log level"):
        configure_logging("LOUD")


@pytest.mark.parametrize(
    "text",
    [
        f"password={SECRET}",
        f"password = '{SECRET} x'",
        f"PGPASSWORD={SECRET}",
        f"https://user:{SECRET}@host/path",
        f"DefaultEndpointsProtocol=http;AccountName=dev;AccountKey={SECRET};",
        f"https://acct.blob/x?sv=2020&sig={SECRET}",
        f'{{"password": "{SECRET}"}}',
        f"aws_secret_access_key={SECRET}",
    ],
)
def test_redact_removes_secrets(text: str) -> None:
    assert SECRET not in redact(text)


# -- durations ---------------------------------------------------------------------------------------------------


def test_durations() -> None:
    assert parse_duration("25h") == timedelta(hours=25)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("90m") == parse_duration("90min") == timedelta(minutes=90)
    assert parse_duration("2w") == timedelta(days=14)
    assert parse_duration("off") is None
    for bad in ("", "25", "h", "25 hours", "-1h"):
        with pytest.raises(ConfigurationError, match="bad duration"):
            parse_duration(bad)
    assert [human_duration(s) for s in (0, 45, 3600, 3720, 8 * 86400 + 3600)] == [
        "0 s",
        "45 s",
        "1 h",
        "1 h 2 min",
        "8 d 1 h",
    ]
    assert CountLimit(10, 50).state(10) is CheckState.WARNING
