"""Across PostgreSQL majors, with real servers of two majors side by side.

A base backup runs only under its own major: recovering a 16 backup with 17's programs, or restoring it over a
17 data directory, is refused before anything is written, in one line naming both versions. A logical backup is
the way across majors: one of 15 restores into 18 (the dump-and-restore upgrade), with 18's pg_restore.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pgtesting import Archiving, Major, major_or_skip, owned_tmpdir
from pgtesting import wait_archived as _wait_archived

from pgrecovery import (
    BaseBackup,
    ConfigurationError,
    LocalCluster,
    LogicalBackup,
    LogicalRestore,
    RecoveryPlan,
    RecoveryTarget,
    Repository,
)
from pgrecovery.cli.main import main
from pgrecovery.errors import ToolNotFound


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _view_rows(conninfo: str, view: str) -> tuple[Any, ...]:
    import psycopg

    with psycopg.connect(conninfo) as conn:
        row = conn.execute(f"select count(*), md5(string_agg(v::text, ',' order by v::text)) from {view} v").fetchone()
    assert row is not None
    return tuple(row)


PROGRAMS = ("initdb", "pg_ctl", "pg_dump", "pg_dumpall", "pg_restore", "psql", "pg_basebackup", "pg_verifybackup")


def test_every_major_has_its_programs_and_checksums_follow_the_request(major: Major) -> None:
    """On 15, 16, 17 and 18: the programs pgrecovery runs are found, of that major, runnable by the server's user
    (checked by the fixture); initdb's data checksums are what LocalCluster asks (18 turns them on by itself)."""
    from pgrecovery.cluster import default_run_as
    from pgrecovery.pgtools import find_tool, run

    with major.active():
        for name in PROGRAMS:
            tool = find_tool(name)
            assert (tool.major, tool.bindir) == (major.number, major.bindir), name
        for checksums in (False, True):
            pg = LocalCluster.temporary(checksums=checksums)
            try:
                cmd = [str(find_tool("pg_controldata").path), "-D", str(pg.data_dir)]
                out = run(cmd, run_as=default_run_as(), cwd="/").stdout.decode()
                version = [ln.split(":")[1].strip() for ln in out.splitlines() if ln.startswith("Data page checksum")]
                assert version == (["1"] if checksums else ["0"])
            finally:
                pg.destroy()


@pytest.fixture(scope="module")
def pg16_backup() -> Iterator[dict[str, Any]]:
    """A PostgreSQL 16 cluster archiving into a repository, with one base backup of it."""
    m16 = major_or_skip(16)
    with m16.active():
        ctx = Archiving("pgrecovery-x16")
        try:
            ctx.pg.start()
            ctx.pg.execute("create table t as select generate_series(1, 1000) i")
            backup = BaseBackup(dbname=ctx.pg.conninfo()).run(ctx.repo)
            _wait_archived(ctx.pg)
            ctx.pg.stop()
            yield {"ctx": ctx, "repo": ctx.repo, "url": ctx.url, "backup": backup}
        finally:
            ctx.close()


def test_a_16_backup_with_17_programs_is_refused_before_anything_is_written(
    pg16_backup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    m17 = major_or_skip(17)
    pgdata = pg16_backup["ctx"].pgdata()
    backup = pg16_backup["backup"]
    with m17.active():
        with pytest.raises(ToolNotFound) as e:
            RecoveryPlan(pg16_backup["repo"], RecoveryTarget.latest()).run(pgdata)
        text = str(e.value)
        assert "\n" not in text
        assert f"backup {backup.id} is PostgreSQL 16 but the server programs here are PostgreSQL 17" in text
        assert not pgdata.exists()

        argv = ["--repo", pg16_backup["url"], "restore", "base", "latest", "--pgdata", str(pgdata), "--run"]
        assert main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert "PostgreSQL 16" in err
        assert "PostgreSQL 17" in err
        assert "Traceback" not in err
        assert not pgdata.exists()


def test_a_16_backup_over_a_17_data_directory_is_refused_and_the_directory_untouched(
    pg16_backup: dict[str, Any],
) -> None:
    m17 = major_or_skip(17)
    with m17.active():
        pg17 = LocalCluster.temporary()
        try:
            before = _tree_digest(pg17.data_dir)
            plan = RecoveryPlan(pg16_backup["repo"], RecoveryTarget.latest())
            for how in ({"delta": True}, {"overwrite": True}):
                with pytest.raises(ConfigurationError) as e:
                    plan.restore(pg17.data_dir, **how)
                text = str(e.value)
                assert "\n" not in text
                assert "is PostgreSQL 16 but" in text
                assert "is a PostgreSQL 17 data directory" in text
                assert _tree_digest(pg17.data_dir) == before
        finally:
            pg17.destroy()


def test_a_logical_backup_of_15_restores_into_18_with_the_newer_pg_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_logical_roundtrip import assert_same, fingerprint

    from pgrecovery.logical import restore as restore_mod

    used: list[int] = []
    real = restore_mod.find_pg_restore

    def watched(min_major: int | None) -> Any:
        tool = real(min_major)
        used.append(tool.major)
        return tool

    monkeypatch.setattr(restore_mod, "find_pg_restore", watched)  # observe which pg_restore ran, nothing else

    m15, m18 = major_or_skip(15), major_or_skip(18)
    root = owned_tmpdir("pgrecovery-x15-")
    repo = Repository(f"file://{root}")
    clusters: list[tuple[Major, LocalCluster]] = []
    try:
        with m15.active():
            pg15 = LocalCluster.temporary()
            clusters.append((m15, pg15))
            pg15.start()
            src = pg15.create_database("app")
            pg15.execute(
                "create schema s; create table s.items (id bigint generated always as identity primary key,"
                " name text not null unique, tags text[], doc jsonb, at timestamptz default now());"
                " create view s.v as select id, name from s.items where id > 10;"
                " create function s.f(x int) returns int language sql immutable as 'select x + 1';"
                " create sequence s.q start 42; select nextval('s.q');"
                " insert into s.items (name, tags, doc) select 'n' || g, array['x', g::text],"
                " jsonb_build_object('g', g) from generate_series(1, 3000) g;"
                " create index on s.items using gin (doc); comment on table s.items is 'the items';",
                dbname="app",
            )
            want = fingerprint(src)
            m = LogicalBackup(dbname=src).run(repo)
            assert m.server_version.startswith("15.")
        with m18.active():
            pg18 = LocalCluster.temporary()
            clusters.append((m18, pg18))
            pg18.start()
            target = pg18.conninfo("app")
            LogicalRestore(repo, m.id).run(target, create=True)
            got = fingerprint(target)
            # 18 records NOT NULL as constraints too (contype 'n'); the columns' attnotnull is compared either way
            got["constraints"] = [c for c in got["constraints"] if c[3] != "n"]
            # 16+ print view definitions without 15's table qualifiers: compare the views' names and what they return
            for fp, conninfo in ((got, target), (want, src)):
                fp["views"] = [
                    (schema, name, _view_rows(conninfo, f"{schema}.{name}")) for schema, name, _ in fp["views"]
                ]
            assert_same(got, want)
            assert used
            assert set(used) == {18}  # the newer pg_restore, into the newer server
            assert pg18.query("select current_setting('server_version_num')::int / 10000")[0][0] == 18
    finally:
        for major, c in clusters:
            with major.active():
                c.destroy()
        shutil.rmtree(root, ignore_errors=True)
