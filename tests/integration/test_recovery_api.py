"""The recovery API as an application embedding it meets it: a handle that stops the recovered server, archiving
off unless asked for (and on when asked, onto the new timeline), exact progress at the end, and logical restores
that say (or must be told) which database they go into. Real clusters, real WAL archives."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgtesting import Archiving, archiving_cluster, wait_archived

from pgrecovery import (
    BaseBackup,
    ConfigurationError,
    LocalCluster,
    LogicalBackup,
    LogicalRestore,
    Progress,
    RecoveryPlan,
    RecoveryTarget,
    WalArchiver,
)
from pgrecovery._walnames import history_name
from pgrecovery.cli.main import main

# The keys of `restore base --run --json` (docs/json.md): the handle on the server must not show up there.
RESULT_KEYS = {
    "backup_id",
    "target",
    "pgdata",
    "port",
    "state",
    "end_lsn",
    "timeline",
    "last_transaction_time",
    "restore_seconds",
    "recovery_seconds",
    "wal_restored",
    "incident",
    "incident_key",
}


def _fill(ctx: Archiving, first: int, last: int) -> None:
    ctx.pg.execute(f"insert into t select i, md5(i::text) from generate_series({first}, {last}) i")


@pytest.fixture(scope="module")
def story() -> Iterator[Archiving]:
    """An archiving cluster with 1,000 rows in ``t`` at its base backup and 2,000 in its archive."""
    with archiving_cluster("pgrecovery-recapi") as ctx:
        _fill(ctx, 1, 1000)
        BaseBackup(dbname=ctx.pg.conninfo()).run(ctx.repo)
        _fill(ctx, 1001, 2000)
        wait_archived(ctx.pg)
        yield ctx


def _auto_conf(pgdata: Path) -> dict[str, str]:
    """The settings in a data directory's postgresql.auto.conf (the last value of each wins, as for the server)."""
    out = {}
    for line in (pgdata / "postgresql.auto.conf").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            out[key.strip().lower()] = value.strip().strip("'")
    return out


# -- the handle on the recovered server -------------------------------------------------------------------------------


def test_the_result_stops_the_server_it_recovered(story: Archiving) -> None:
    pgdata = story.pgdata()
    with RecoveryPlan(story.repo).run(pgdata) as result:
        assert result.state == "promoted"
        assert result.cluster.is_running()
        assert result.cluster.query("select count(*) from t")[0] == (2000,)
        assert result.cluster.port == result.port
    assert not LocalCluster(data_dir=pgdata).is_running()  # stopped on leaving the block
    assert (pgdata / "PG_VERSION").exists()  # stopped, not removed: it is the caller's recovery
    result.stop()  # again: nothing to do, no error
    assert set(result.to_dict()) == RESULT_KEYS
    json.dumps(result.to_dict(), default=str)  # what --json prints


def test_stop_without_the_block(story: Archiving) -> None:
    pgdata = story.pgdata()
    result = RecoveryPlan(story.repo, RecoveryTarget.immediate()).run(pgdata, record_incident=False)
    assert LocalCluster(data_dir=pgdata).is_running()
    result.stop()
    assert not LocalCluster(data_dir=pgdata).is_running()


# -- archiving: off unless asked for --------------------------------------------------------------------------------


def _archived_history(ctx: Archiving, timeline: int) -> bool:
    return bool(WalArchiver(ctx.repo).objects(history_name(timeline)))


def test_a_recovered_server_archives_only_when_asked() -> None:
    """The default restores a copy that does not archive: its new timeline never reaches the source's repository
    (where a later recovery to timeline latest would follow it). archive=True keeps the backup's archiving, and the
    promoted server archives its new timeline there, as a replacement for the source should."""
    with archiving_cluster("pgrecovery-recapi-arch") as ctx:
        _fill(ctx, 1, 100)
        BaseBackup(dbname=ctx.pg.conninfo()).run(ctx.repo)
        wait_archived(ctx.pg)

        looked_at = ctx.pgdata()
        with RecoveryPlan(ctx.repo).run(looked_at, record_incident=False) as result:
            assert result.timeline == 2
            assert result.cluster.query("select current_setting('archive_mode')")[0] == ("off",)
            result.cluster.execute("create table written_on_the_copy (i int); select pg_switch_wal()")
            result.cluster.execute("checkpoint")
            time.sleep(2)  # an archiver, if there were one, would have sent the history file by now
            assert result.cluster.query("select archived_count from pg_stat_archiver")[0] == (0,)
        assert not _archived_history(ctx, 2)
        assert WalArchiver(ctx.repo).timelines() == [1]
        assert _auto_conf(looked_at)["archive_mode"] == "off"

        replacement = ctx.pgdata()
        with RecoveryPlan(ctx.repo).run(replacement, archive=True, record_incident=False) as result:
            assert result.timeline == 2
            assert result.cluster.query("select current_setting('archive_mode')")[0] == ("on",)
            deadline = time.monotonic() + 60
            while not _archived_history(ctx, 2) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _archived_history(ctx, 2), "the promoted server did not archive its new timeline"


def test_contradicting_settings_are_refused_before_anything_is_written(story: Archiving) -> None:
    plan = RecoveryPlan(story.repo)
    pgdata = story.pgdata()
    with pytest.raises(ConfigurationError, match="archive=True"):
        plan.run(pgdata, settings={"archive_mode": "on"})
    with pytest.raises(ConfigurationError, match="archive=False"):
        plan.restore(pgdata, archive=True, settings={"archive_mode": "off"})
    with pytest.raises(ConfigurationError, match="restore=False"):
        plan.run(pgdata, restore=False, archive=True)
    assert not pgdata.exists()
    plan.restore(pgdata, settings={"archive_mode": False})  # says the same as the default: fine
    assert _auto_conf(pgdata)["archive_mode"] == "off"


def test_the_cli_archives_by_default_and_not_with_no_archive(
    story: Archiving, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command keeps its documented default (a restored server keeps the backup's archiving); --no-archive
    is the same choice as the API's archive=False."""
    kept, off = story.pgdata(), story.pgdata()
    assert main(["--repo", story.url, "restore", "base", "latest", "--pgdata", str(kept)]) == 0
    assert "it archives as the backed-up server did" in capsys.readouterr().out  # the choice is said
    assert main(["--repo", story.url, "restore", "base", "latest", "--pgdata", str(off), "--no-archive"]) == 0
    assert "archiving off (--no-archive)" in capsys.readouterr().out
    assert _auto_conf(kept)["archive_mode"] == "on"
    assert "wal-push" in _auto_conf(kept)["archive_command"]
    assert _auto_conf(off)["archive_mode"] == "off"


# -- progress: the last event of a finished operation is exact ---------------------------------------------------------


def test_the_last_progress_event_is_exact(story: Archiving) -> None:
    plan = RecoveryPlan(story.repo, RecoveryTarget.immediate())
    pgdata = story.pgdata()
    for delta in (False, True):  # a delta restore rewrites almost nothing: far below the backup's size
        events: list[Progress] = []
        plan.restore(pgdata, delta=delta, progress=events.append)
        last = events[-1]
        assert last.finished
        assert last.operation == "restore"
        assert last.done == last.total
        assert all(not e.finished and e.total is not None and e.done <= e.total for e in events[:-1])
        if delta:
            assert last.done < plan.backup.raw_size
    events = []
    m = LogicalBackup(dbname=story.pg.conninfo()).run(story.repo, progress=events.append)
    assert events[-1].finished
    assert events[-1].done == events[-1].total
    assert m.kind == "logical"


# -- logical restores: into which database ----------------------------------------------------------------------------


def test_a_logical_restore_needs_a_database_and_says_which(
    story: Archiving, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGDATABASE", raising=False)
    monkeypatch.delenv("PGSERVICE", raising=False)
    pg = story.pg
    m = LogicalBackup(dbname=pg.conninfo()).run(story.repo)
    server = f"host={pg.host} port={pg.port} user=postgres"
    before = pg.query("select count(*) from pg_class")[0]
    code = main(["--repo", story.url, "restore", "logical", m.id, "--dbname", server])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert f"backup {m.id} is a dump of database 'postgres'" in err
    assert "dbname=NAME" in err
    assert pg.query("select count(*) from pg_class")[0] == before  # nothing restored into postgres
    with pytest.raises(ConfigurationError, match="names no database"):
        LogicalRestore(story.repo, m.id).restore_table("t", server, new_name="t_copy")

    code = main(["--repo", story.url, "restore", "logical", m.id, "--dbname", f"{server} dbname=api_copy", "--create"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"restored {m.id} into database 'api_copy' on host={pg.host} port={pg.port} user=postgres" in out
    assert pg.query("select count(*) from t", dbname="api_copy")[0] == (2000,)
    monkeypatch.setenv("PGDATABASE", "api_copy")  # named by the environment: allowed, and said
    code = main(["--repo", story.url, "--json", "restore", "logical", m.id, "--dbname", server, "--clean"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["database"] == "api_copy"
    pg.execute("drop database api_copy with (force)")


def test_a_globals_restore_says_it_went_into_the_server(story: Archiving, capsys: pytest.CaptureFixture[str]) -> None:
    from pgrecovery import GlobalsBackup

    pg = story.pg
    g = GlobalsBackup(dbname=pg.conninfo()).run(story.repo)
    server = f"host={pg.host} port={pg.port} user=postgres"
    assert main(["--repo", story.url, "restore", "logical", g.id, "--dbname", server]) == 0
    assert f"restored the roles and tablespaces of {g.id} into the server on {server}" in capsys.readouterr().out


def test_latest_is_the_newest_logical_backup_even_after_newer_ones_of_other_kinds(
    story: Archiving, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the guide says: `contents latest` and `restore logical latest` skip newer globals and base backups."""
    from pgrecovery import GlobalsBackup

    pg = story.pg
    m = LogicalBackup(dbname=pg.conninfo()).run(story.repo)
    GlobalsBackup(dbname=pg.conninfo()).run(story.repo)
    BaseBackup(dbname=pg.conninfo()).run(story.repo)
    assert [b.kind for b in story.repo.backups()][-3:] == ["logical", "globals", "base"]
    capsys.readouterr()
    assert main(["--repo", story.url, "--json", "contents", "latest"]) == 0
    assert json.loads(capsys.readouterr().out)["backup_id"] == m.id
    target = pg.conninfo("latest_copy")
    assert main(["--repo", story.url, "--json", "restore", "logical", "latest", "--dbname", target, "--create"]) == 0
    assert json.loads(capsys.readouterr().out) | {"seconds": 0} == {
        "backup_id": m.id,
        "database": "latest_copy",
        "seconds": 0,
        "entries": None,
        "rows": None,
    }
    pg.execute("drop database latest_copy with (force)")
