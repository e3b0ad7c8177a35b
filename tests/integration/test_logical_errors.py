"""Failures are clear, typed and leave nothing half-done behind: bad ids, unreachable servers, bad repositories,
interrupted and failed backups, corrupted files, deletes, and restores that would overwrite a database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from pgtesting import run_cli
from test_logical_roundtrip import assert_same, fingerprint, target, unique_name

from pgrecovery import (
    BackupNotFound,
    ChecksumMismatch,
    ClusterBackup,
    ConfigurationError,
    DatabaseError,
    GlobalsBackup,
    LocalCluster,
    LogicalBackup,
    LogicalRestore,
    ManifestError,
    PgRecoveryError,
    Repository,
    RestoreError,
    StorageError,
    Verifier,
)
from pgrecovery.cluster import free_port
from pgrecovery.logical.backup import Compression, Format
from pgrecovery.pgtools import conninfo_dict

__all__ = ["target"]

MISSING_ID = "20990101T000000Z-logical"
SECRET = "s3cretpw"


def _backup_dirs(repo: Repository) -> list[str]:
    root = Path(repo.root) / "backups"
    return sorted(os.listdir(root)) if root.is_dir() else []


_cli = run_cli


@pytest.fixture
def small_db(pg: LocalCluster, fresh_db: str, db_name: str) -> str:
    """A small database with some rows (enough for a dump of a few kB)."""
    pg.execute(
        "create table items (id int primary key, name text, payload bytea);"
        "insert into items select i, 'item ' || i, decode(md5(i::text), 'hex') from generate_series(1, 2000) i;"
        "create table other (k text primary key); insert into other values ('a'), ('b')",
        dbname=db_name,
    )
    return fresh_db


# -- unknown ids -----------------------------------------------------------------------------------------------------


def test_unknown_backup_id_raises_backup_not_found(repo: Repository, small_db: str) -> None:
    LogicalBackup(dbname=small_db).run(repo)  # the repository is not empty
    for call in (
        lambda: repo.get(MISSING_ID),
        lambda: LogicalRestore(repo, MISSING_ID),
        lambda: Verifier(repo).verify(MISSING_ID),
        lambda: repo.delete_backup(MISSING_ID),
    ):
        with pytest.raises(BackupNotFound, match=MISSING_ID):
            call()


def test_latest_in_an_empty_repository(repo: Repository) -> None:
    with pytest.raises(BackupNotFound):
        LogicalRestore(repo, "latest")


@pytest.mark.parametrize(
    "argv",
    [
        ["show", MISSING_ID],
        ["contents", MISSING_ID],
        ["verify", MISSING_ID],
        ["delete", MISSING_ID],
        ["restore", "logical", MISSING_ID, "--dbname", "dbname=x"],
        ["restore", "table", MISSING_ID, "t", "--dbname", "dbname=x"],
    ],
    ids=lambda a: a[0] if a[0] != "restore" else f"restore-{a[1]}",
)
def test_cli_unknown_backup_id_is_a_usage_error(
    repo: Repository, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = _cli(capsys, "--repo", repo.url, *argv)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert MISSING_ID in lines[0]
    assert lines[0].startswith("pgrecovery: ")


# -- unreachable servers ---------------------------------------------------------------------------------------------


@pytest.fixture
def dead_server() -> tuple[str, int]:
    port = free_port()  # nothing listens there once the probe socket is closed
    return "127.0.0.1", port


def _check_db_error(err: BaseException, host: str, port: int) -> None:
    text = str(err)
    assert isinstance(err, DatabaseError), repr(err)
    assert host in text
    assert str(port) in text
    assert SECRET not in text
    assert SECRET not in repr(err)


@pytest.mark.parametrize("style", ["keywords", "uri"])
def test_unreachable_database_is_a_clear_database_error_without_password(
    pg: LocalCluster, repo: Repository, dead_server: tuple[str, int], style: str
) -> None:
    host, port = dead_server
    if style == "uri":
        conninfo = f"postgresql://postgres:{SECRET}@{host}:{port}/shop?connect_timeout=5"
    else:
        conninfo = f"host={host} port={port} user=postgres dbname=shop password={SECRET} connect_timeout=5"
    for job in (LogicalBackup(dbname=conninfo), GlobalsBackup(dbname=conninfo), ClusterBackup(dbname=conninfo)):
        with pytest.raises(DatabaseError) as exc:
            job.run(repo)
        _check_db_error(exc.value, host, port)
    assert _backup_dirs(repo) == []  # nothing was claimed in the repository

    m = LogicalBackup(dbname=pg.conninfo()).run(repo)
    restore = LogicalRestore(repo, m.id)
    calls: list[Callable[[], object]] = [
        lambda: restore.run(conninfo),
        lambda: restore.run(conninfo, create=True),
        lambda: restore.restore_table("public.x", conninfo),
    ]
    for call in calls:
        with pytest.raises(DatabaseError) as exc:
            call()
        _check_db_error(exc.value, host, port)


def test_cli_unreachable_database_exit_1_without_password(
    repo: Repository, dead_server: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    host, port = dead_server
    conninfo = f"host={host} port={port} user=postgres dbname=shop password={SECRET} connect_timeout=5"
    code, out, err = _cli(capsys, "--repo", repo.url, "backup", "logical", "--dbname", conninfo)
    assert code == 1
    assert f"port={port}" in err
    assert SECRET not in err
    assert SECRET not in out
    assert "Traceback" not in err


def test_restore_into_missing_database_without_create(pg: LocalCluster, repo: Repository, small_db: str) -> None:
    m = LogicalBackup(dbname=small_db).run(repo)
    name = unique_name("absent")
    with pytest.raises(DatabaseError, match=name):
        LogicalRestore(repo, m.id).run(pg.conninfo(name))


# -- bad repositories ------------------------------------------------------------------------------------------------


def test_unknown_repository_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigurationError, match="nosuchproto"):
        Repository("nosuchproto://x")
    code, _, err = _cli(capsys, "--repo", "nosuchproto://x", "list")
    assert code == 2
    assert "nosuchproto" in err
    assert len(err.strip().splitlines()) == 1


def test_repository_path_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "not-a-dir"
    f.write_text("hello")
    for url in (f"file://{f}", str(f)):
        with pytest.raises(ConfigurationError, match="not a directory"):
            Repository(url)
    code, _, err = _cli(capsys, "--repo", str(f), "list")
    assert code == 2
    assert "not a directory" in err
    assert f.read_text() == "hello"


# -- interrupted and failed backups ----------------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _leftover(repo: Repository, backup_id: str, *, pid: int, started: datetime | None = None) -> None:
    """What an interrupted backup leaves: the start marker and part of a data file, but no manifest."""
    marker = {
        "kind": "logical",
        "host": socket.gethostname(),
        "pid": pid,
        "started_at": (started or datetime.now(UTC)).isoformat(),
    }
    repo.put_bytes(f"backups/{backup_id}/started.json", json.dumps(marker).encode())
    w = repo.writer(f"backups/{backup_id}/data/dump.pgdump.zst")
    w.write(b"\x28\xb5\x2f\xfd partial zstd frame, never finished")
    w.commit()


def test_interrupted_backup_is_unlisted_shown_as_incomplete_and_cleaned(
    pg: LocalCluster, repo: Repository, small_db: str, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    done = LogicalBackup(dbname=small_db).run(repo)
    gone_id, busy_id = "20260101T000000Z-logical", "20260101T000001Z-logical"
    _leftover(repo, gone_id, pid=_dead_pid())
    _leftover(repo, busy_id, pid=os.getpid())  # looks like a backup still being written by a live process

    assert [m.id for m in repo.backups()] == [done.id]
    assert repo.get("latest").id == done.id
    with pytest.raises(BackupNotFound):
        repo.get(gone_id)

    code, out, _ = _cli(capsys, "--repo", repo.url, "list", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [b["id"] for b in listed["backups"]] == [done.id]
    assert "incomplete" not in listed
    code, out, _ = _cli(capsys, "--repo", repo.url, "list")
    assert code == 0
    assert done.id in out
    assert gone_id not in out

    code, out, _ = _cli(capsys, "--repo", repo.url, "list", "--incomplete", "--json")
    assert code == 0
    incomplete = {x["id"]: x for x in json.loads(out)["incomplete"]}
    assert set(incomplete) == {gone_id, busy_id}
    assert incomplete[gone_id]["reason"] == "interrupted (its process is gone)"
    assert incomplete[busy_id]["reason"] == "in progress"
    code, out, _ = _cli(capsys, "--repo", repo.url, "list", "--incomplete")
    assert code == 0
    assert gone_id in out
    assert "interrupted" in out

    code, out, _ = _cli(capsys, "--repo", repo.url, "clean")
    assert code == 0
    assert gone_id in out
    assert busy_id not in out
    assert _backup_dirs(repo) == sorted([done.id, busy_id])

    code, out, _ = _cli(capsys, "--repo", repo.url, "clean", "--include-in-progress", "--json")
    assert code == 0
    assert [x["id"] for x in json.loads(out)["removed"]] == [busy_id]
    assert _backup_dirs(repo) == [done.id]

    # the complete backup was not touched
    assert Verifier(repo).verify(done.id).ok
    LogicalRestore(repo, done.id).run(target, create=True)
    assert fingerprint(target) == fingerprint(small_db)


def test_leftover_without_start_marker_is_cleaned(
    repo: Repository, small_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    done = LogicalBackup(dbname=small_db).run(repo)
    w = repo.writer("backups/20260101T000000Z-logical/data/dump.pgdump.zst")
    w.write(b"partial")
    w.commit()
    assert [m.id for m in repo.backups()] == [done.id]
    code, out, _ = _cli(capsys, "--repo", repo.url, "clean")
    assert code == 0
    assert "20260101T000000Z-logical" in out
    assert _backup_dirs(repo) == [done.id]


@pytest.mark.parametrize("fmt", ["custom", "directory", "plain", "tar"])
def test_failing_pg_dump_leaves_no_backup_and_no_leftover(repo: Repository, small_db: str, fmt: Format) -> None:
    with pytest.raises(PgRecoveryError) as exc:
        LogicalBackup(dbname=small_db, format=fmt, tables=["no_such_table"]).run(repo)
    assert not isinstance(exc.value, ConfigurationError)
    assert "no matching tables were found" in str(exc.value)  # pg_dump's own words
    assert repo.backups() == []
    assert _backup_dirs(repo) == []


def test_cli_failing_pg_dump(repo: Repository, small_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(
        capsys, "--repo", repo.url, "backup", "logical", "--dbname", small_db, "-t", "no_such_table", "--json"
    )
    assert code == 1
    assert out == ""
    assert "no matching tables were found" in err
    assert _backup_dirs(repo) == []


# -- corruption ------------------------------------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "flip":
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()


DAMAGE_CASES = [
    pytest.param(fmt, comp, jobs, how, id=f"{name}-{how}")
    for fmt, comp, jobs, name in [
        ("custom", "zstd", 1, "custom-zstd"),
        ("custom", "gzip", 1, "custom-gzip"),
        ("custom", "zstd", 2, "custom-zstd-j2"),
        ("custom", "none", 2, "custom-none-j2"),
        ("directory", "lz4", 1, "directory-lz4"),
        ("directory", "gzip", 2, "directory-gzip-j2"),
        ("tar", "zstd", 1, "tar-zstd"),
        ("plain", "gzip", 1, "plain-gzip"),
    ]
    for how in ("flip", "truncate", "delete")
]


@pytest.mark.parametrize(("fmt", "compression", "jobs", "how"), DAMAGE_CASES)
def test_damaged_file_fails_verification_and_restore(
    pg: LocalCluster,
    repo: Repository,
    small_db: str,
    target: str,
    fmt: Format,
    compression: Compression,
    jobs: int,
    how: str,
) -> None:
    m = LogicalBackup(dbname=small_db, format=fmt, compression=compression).run(repo)
    assert Verifier(repo).verify(m.id).ok
    victim = max(m.files, key=lambda f: f.size)  # the dump itself (or the biggest table's data file)
    _damage(Path(repo.root) / "backups" / m.id / victim.path, how)

    report = Verifier(repo).verify(m.id, drill=True, drill_server=target)
    assert not report.ok
    checks = {c.name: c for c in report.checks}
    assert checks["checksums"].status == "fail"
    assert victim.path in checks["checksums"].detail
    assert checks["restore-drill"].status == "skip"
    assert report.failures[0].name == "checksums"

    # a missing file is a storage error naming it; damaged bytes are a checksum (or restore) error
    expected = (StorageError,) if how == "delete" else (ChecksumMismatch, RestoreError)
    with pytest.raises(expected) as exc:
        LogicalRestore(repo, m.id).run(target, create=True, jobs=jobs)
    assert victim.path in str(exc.value)
    # stored files are checked before anything is written: the target database was never created
    name = conninfo_dict(target)["dbname"]
    assert pg.query("select 1 from pg_database where datname = %s", (name,)) == []


def test_damaged_manifest_is_skipped_in_listing(repo: Repository, small_db: str) -> None:
    good = LogicalBackup(dbname=small_db).run(repo)
    bad = LogicalBackup(dbname=small_db, compression="gzip").run(repo)
    (Path(repo.root) / "backups" / bad.id / "manifest.json").write_text("{not json")
    assert [m.id for m in repo.backups()] == [good.id]
    with pytest.raises(ManifestError):
        repo.get(bad.id)


# -- deleting --------------------------------------------------------------------------------------------------------


def test_delete_backup_removes_listing_and_files(repo: Repository, small_db: str) -> None:
    keep = LogicalBackup(dbname=small_db).run(repo)
    drop = LogicalBackup(dbname=small_db, format="directory").run(repo)
    assert {m.id for m in repo.backups()} == {keep.id, drop.id}
    [deleted] = repo.delete_backup(drop.id)
    assert deleted.id == drop.id
    assert [m.id for m in repo.backups()] == [keep.id]
    assert not (Path(repo.root) / "backups" / drop.id).exists()
    assert _backup_dirs(repo) == [keep.id]
    with pytest.raises(BackupNotFound):
        repo.get(drop.id)
    with pytest.raises(BackupNotFound):
        repo.delete_backup(drop.id)
    assert Verifier(repo).verify(keep.id).ok


# -- restores that must not touch an existing database ---------------------------------------------------------------


def test_create_into_existing_database_is_refused_and_changes_nothing(
    pg: LocalCluster, repo: Repository, small_db: str, db_name: str
) -> None:
    m = LogicalBackup(dbname=small_db).run(repo)
    pg.execute("delete from items where id > 10; create table extra (i int)", dbname=db_name)
    before = fingerprint(small_db)
    with pytest.raises(RestoreError, match=db_name) as exc:
        LogicalRestore(repo, m.id).run(small_db, create=True)
    assert "already exists" in str(exc.value)
    assert_same(fingerprint(small_db), before)


def test_restore_over_existing_objects_fails_with_pg_restore_text(repo: Repository, small_db: str) -> None:
    m = LogicalBackup(dbname=small_db).run(repo)
    before = fingerprint(small_db)
    with pytest.raises(RestoreError) as exc:
        LogicalRestore(repo, m.id).run(small_db)
    assert "already exists" in str(exc.value)
    assert_same(fingerprint(small_db), before)


def test_invalid_option_combinations(repo: Repository, small_db: str, target: str) -> None:
    for kwargs in (
        {"format": "custom", "jobs": 2},
        {"data_only": True, "schema_only": True},
        {"compression": "brotli"},
        {"compression": "gzip", "level": 42},
        {"if_exists": True},
        {"format": "tar", "compression": "pg_dump"},
    ):
        with pytest.raises(ConfigurationError):
            LogicalBackup(dbname=small_db, **kwargs)
    tar = LogicalBackup(dbname=small_db, format="tar").run(repo)
    with pytest.raises(ConfigurationError, match="tar"):
        LogicalRestore(repo, tar.id).run(target, create=True, jobs=2)
    with pytest.raises(ConfigurationError):
        LogicalRestore(repo, tar.id).run(target, create=True, jobs=2, single_transaction=True)
    with pytest.raises(ConfigurationError):
        LogicalRestore(repo, tar.id).run(target, jobs=0)
    g = GlobalsBackup(dbname=small_db).run(repo)
    with pytest.raises(ConfigurationError, match="globals"):
        LogicalRestore(repo, g.id).list_contents()
    # nothing was created by the refused restores
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(target).close()


def test_password_is_never_stored(
    repo: Repository, small_db: str, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server trusts local connections, so a password in the conninfo is accepted but must go nowhere."""
    conninfo = f"{small_db} password={SECRET}"
    m = LogicalBackup(dbname=conninfo).run(repo)
    g = GlobalsBackup(dbname=conninfo, roles_only=True).run(repo)
    for b in (m, g):
        assert SECRET not in b.to_json()
        assert "password" not in b.source
    for path in Path(repo.root).rglob("*.json"):
        assert SECRET not in path.read_text()
    code, out, err = _cli(capsys, "--repo", repo.url, "show", m.id, "--json")
    assert code == 0
    assert SECRET not in out + err
    LogicalRestore(repo, m.id).run(f"{target} password={SECRET}", create=True)
    assert fingerprint(target) == fingerprint(small_db)
