"""Block-level incremental base backups on real clusters, on every major (issue 14).

Per major (module scope, the tests share the story): a full backup, then three incrementals with a workload
before each that updates scattered rows, inserts (extends), deletes, truncates a table and refills it smaller,
vacuums a relation's tail away and extends it again, creates and drops tables and databases (one by FILE_COPY),
builds indexes, rewrites toasted values and fills an unlogged table; the second incremental is taken while a
writer keeps changing pages. Targets (and the fingerprint of every table of every database at them) are recorded
inside each incremental's window. Then: the restores (latest, immediate as a delta over an older copy, a point in
time in each window, the Verifier's drill) equal the fingerprints exactly, the incrementals store only the changed
blocks, and a chain whose middle link is damaged is refused by `Verifier` and by a restore before anything is
written (and cannot be deleted alone).

Once per file: on 17 without WAL summarization "auto" falls back to page LSNs with one warning and
"wal-summaries" is refused (API and command), in a chain mixing every method; on 17 a tablespace's chain (both
block methods) restores remapped; on 15 an incremental from a standby paused before its parent's start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgtesting import Major, archiving_cluster, owned_tmpdir, run_cli, wait_archived

from pgrecovery import (
    BaseBackup,
    ConfigurationError,
    LocalCluster,
    RecoveryPlan,
    RecoveryTarget,
    Repository,
    TargetUnreachable,
    Verifier,
)
from pgrecovery.errors import PgRecoveryError
from pgrecovery.manifest import BackupManifest

BLOCK = 8192
RANGES = re.compile(r"^(\d+(-\d+)?(,\d+(-\d+)?)*)?$")

# The tables every fingerprint covers (all permanent tables of schema public, whatever the workload made of them),
# plus the same tables read through their indexes (index-only scans trust the visibility map: a stale all-visible
# bit restored from an older backup shows up as rows that are gone).
_TABLES = (
    "select c.relname from pg_class c where c.relnamespace = 'public'::regnamespace and c.relkind = 'r' "
    "and c.relpersistence = 'p' order by 1"
)
_CATALOG = (
    "select string_agg(format('%s:%s:%s', relname, relkind, relpersistence), ',' order by relname) "
    "from pg_class where relnamespace = 'public'::regnamespace"
)
_INDEXED = (
    "select distinct t.relname from pg_index x join pg_class t on t.oid = x.indrelid "
    "join pg_attribute a on a.attrelid = t.oid and a.attnum = x.indkey[0] "
    "where t.relnamespace = 'public'::regnamespace and t.relpersistence = 'p' and a.attname = 'i' order by 1"
)


def _fingerprint_db(cluster: LocalCluster, dbname: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with cluster.connect(dbname) as conn:
        for (name,) in conn.execute(_TABLES).fetchall():
            out[name] = conn.execute(
                f"select count(*), coalesce(sum(i), 0), md5(coalesce(string_agg(x::text, ',' order by i), '')) "
                f"from {name} x"
            ).fetchone()
        out["catalog"] = conn.execute(_CATALOG).fetchone()
        conn.execute("set enable_seqscan = off")
        conn.execute("set enable_bitmapscan = off")
        for (name,) in conn.execute(_INDEXED).fetchall():
            out[f"index:{name}"] = conn.execute(f"select count(*), coalesce(sum(i), 0) from {name}").fetchone()
    return out


def fingerprint(cluster: LocalCluster) -> dict[str, Any]:
    """For every database but the templates: every permanent table's count, sum and md5 (in key order), the same
    read through an index on ``i``, and the list of relations (tables, indexes, TOAST) of schema public."""
    (names,) = cluster.query("select array_agg(datname order by datname) from pg_database where datallowconn")[0]
    return {name: _fingerprint_db(cluster, name) for name in names if name != "template1"}


# -- the workload --------------------------------------------------------------------------------------------

SETUP = """
create table big (i int primary key, pad text not null);
insert into big select i, md5(i::text) || md5((i * 7)::text) || md5((i * 13)::text) || md5((i * 17)::text)
  from generate_series(1, 30000) i;
create table grow (i int primary key, note text);
insert into grow select i, 'g' || i from generate_series(1, 5000) i;
create table small (i int primary key, note text);
insert into small select i, repeat('s', 60) from generate_series(1, 3000) i;
create table toasty (i int primary key, doc text);
insert into toasty select i, (select string_agg(md5(i::text || '-' || g::text), '') from generate_series(1, 80) g)
  from generate_series(1, 200) i;
create unlogged table scratch (i int primary key, note text);
insert into scratch select i, 'u' || i from generate_series(1, 2000) i;
create table tmp_0 as select i, md5(i::text) as note from generate_series(1, 500) i;
"""


EXTRA = (
    "create table e (i int primary key, note text); insert into e select i, 'e' || i from generate_series(1, 5000) i"
)


def first_half(pg: LocalCluster, r: int) -> None:
    """Round ``r``'s changes before its target."""
    scattered = ", ".join(str(k * 5000 + r) for k in range(6))  # about 1% of big's pages, far apart
    pg.execute(
        f"""
        update big set pad = md5(pad) || pad where i in ({scattered});
        delete from big where i between {3000 * r} and {3000 * r + 40};
        insert into big select i, md5(i::text) || repeat('x', 96) from generate_series({40000 + 100 * r}, {40000 + 100 * r + 99}) i;
        update toasty set doc = md5(doc) || doc where i % 50 = {r};
        truncate small;
        insert into small select i, repeat('r{r}', 20) from generate_series(1, {3000 - 600 * r}) i;
        create table tmp_{r} as select i, md5(i::text) as note from generate_series(1, {300 * r}) i;
        drop table tmp_{r - 1};
        insert into scratch select i, 'u' || i from generate_series({10000 * r}, {10000 * r + 99}) i;
        """  # noqa: E501
    )
    if r == 1:
        pg.execute("create index grow_note on grow (note)")
        pg.execute("create database blk_extra")  # a database created in a window (its files: whole)
        pg.execute(EXTRA, dbname="blk_extra")
    elif r == 2:  # the tail of grow is emptied and cut off by VACUUM
        pg.execute("delete from grow where i > 3000")
        pg.execute("vacuum grow")
        pg.execute(
            "update e set note = 'r2' where i % 97 = 0; insert into e select generate_series(5001, 5100)",
            dbname="blk_extra",
        )
        pg.execute("create database blk_copy template blk_extra strategy file_copy")  # pages copied, old LSNs kept
    elif r == 3:  # ... and extended again
        pg.execute("insert into grow select i, 'again' || i from generate_series(6000, 6400) i")
        pg.execute("create index small_note on small (note)")
        pg.execute("delete from e where i % 3 = 0", dbname="blk_copy")
        pg.execute("drop database blk_extra")
    elif r == 4:
        pg.execute("vacuum big")


def second_half(pg: LocalCluster, r: int) -> None:
    """Round ``r``'s changes after its target (before the next backup)."""
    pg.execute(
        f"""
        update big set pad = 'second ' || pad where i in ({r * 7000 + 11}, {r * 7000 + 12});
        insert into grow select i, 'h' || i from generate_series({10000 + 100 * r}, {10000 + 100 * r + 49}) i;
        delete from small where i % 10 = {r};
        """
    )


class Writer:
    """A thread that keeps updating a few pages of ``big`` and appending to ``grow`` until stopped."""

    def __init__(self, pg: LocalCluster) -> None:
        self.pg = pg
        self.stop = threading.Event()
        self.count = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with self.pg.connect() as conn:
                n = 0
                while not self.stop.is_set() and n < 400:  # bounded: the changed pages stay a few percent
                    n += 1
                    conn.execute("update big set pad = md5(pad) || %s where i = %s", (str(n), 20000 + n % 300))
                    conn.execute("insert into grow values (%s, 'writer')", (50000 + n,))
                    self.count = n
                    time.sleep(0.01)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def library_warnings() -> Iterator[list[logging.LogRecord]]:
    """The warnings the library logs meanwhile (logger ``pgrecovery`` and below), whatever the root's handlers."""
    handler = _Collect()
    logger = logging.getLogger("pgrecovery")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


# -- watching a directory for writes (a refused restore must not write anything there) -----------------------

_WATCHED: list[tuple[str, list[str]]] = []
_HOOKED: list[bool] = []
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _WATCHED:
        return
    try:
        if event == "open":
            if not (isinstance(args[2], int) and args[2] & _WRITE_FLAGS):
                return
            path = args[0]
        elif event in ("os.mkdir", "os.truncate"):
            path = args[0]
        elif event in ("os.rename", "os.symlink", "os.link"):
            path = args[1]
        else:
            return
        if isinstance(path, int):
            return
        name = os.path.abspath(os.fsdecode(path))
        for prefix, seen in _WATCHED:
            if name.startswith(prefix):
                seen.append(f"{event} {name}")
    except Exception:  # noqa: BLE001 - an audit hook must never break the call it watches
        return


@contextlib.contextmanager
def writes_under(directory: Path) -> Iterator[list[str]]:
    """What this process creates or writes below ``directory`` meanwhile (not ``directory`` itself)."""
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED.append(True)
    entry: tuple[str, list[str]] = (str(directory.absolute()) + os.sep, [])
    _WATCHED.append(entry)
    try:
        yield entry[1]
    finally:
        _WATCHED.remove(entry)


# -- the story ---------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _use_major(major: Major) -> Iterator[None]:
    """Every program the library runs in a test (and every server it starts) is this major's."""
    with major.active():
        yield


def _settings(major: int, summarize: bool) -> dict[str, object]:
    settings: dict[str, object] = {"fsync": "off", "autovacuum": "off"}  # vacuums happen when the workload says
    if major >= 17:
        settings["summarize_wal"] = "on" if summarize else "off"
    return settings


def _setup(pg: LocalCluster) -> None:
    pg.execute(SETUP)
    pg.execute("vacuum (analyze)")  # all-visible pages, hint bits set: later reads change nothing


@pytest.fixture(scope="module")
def story(major: Major) -> Iterator[dict[str, Any]]:
    """A cluster of ``major`` (WAL summarization on from 17) archiving into its repository: full backup, then
    round 1, inc1, round 2, inc2 (taken while a writer changes pages), round 3, inc3, round 4. Each round records
    a target (an LSN) and the fingerprint there halfway through, and the fingerprint before its backup."""
    with (
        major.active(),
        archiving_cluster(
            f"pgrecovery-blk{major.number}", table=None, settings=_settings(major.number, summarize=True)
        ) as ctx,
    ):
        pg, repo = ctx.pg, ctx.repo
        _setup(pg)
        facts: dict[str, Any] = {"ctx": ctx, "pg": pg, "repo": repo, "major": major.number}
        marks: dict[int, str] = {}
        fps: dict[str, Any] = {}
        warned: dict[int, list[str]] = {}
        writer_rows = 0
        facts["full"] = BaseBackup(dbname=pg.conninfo()).run(repo)
        (facts["big_path"],) = pg.query("select pg_relation_filepath('big')")[0]
        incs: list[BackupManifest] = []
        for r in (1, 2, 3, 4):
            first_half(pg, r)
            fps[f"mark{r}"] = fingerprint(pg)
            (marks[r],) = pg.query("select pg_current_wal_lsn()::text")[0]
            second_half(pg, r)
            if r == 4:
                break
            fps[f"before_inc{r}"] = fingerprint(pg)
            writer = Writer(pg) if r == 2 else contextlib.nullcontext()
            with library_warnings() as seen, writer:
                incs.append(BaseBackup(dbname=pg.conninfo(), parent="latest", incremental="auto").run(repo))
            warned[r] = [x.getMessage() for x in seen]
            if isinstance(writer, Writer):
                assert writer.error is None, f"the writer failed: {writer.error!r}"
                writer_rows = writer.count
        fps["final"] = fingerprint(pg)
        wait_archived(pg)
        facts.update(incs=incs, marks=marks, fps=fps, warned=warned, writer_rows=writer_rows)
        yield facts


def _expand(ranges: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, ranges.split(",")):
        low, _, high = part.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out


def test_the_incrementals_store_only_changed_blocks(story: dict[str, Any]) -> None:
    full, incs, major = story["full"], story["incs"], story["major"]
    assert story["writer_rows"] > 0, "the writer changed nothing while the second incremental ran"
    assert full.physical is not None
    assert full.physical.incremental is None
    assert full.physical.parent is None
    assert all(m.blocks is None for m in full.physical.members)
    method = "wal-summaries" if major >= 17 else "page-lsn"
    parent = full
    for n, inc in enumerate(incs, 1):
        phys = inc.physical
        assert phys is not None
        assert (n, phys.incremental, phys.parent) == (n, method, parent.id)
        assert phys.block_size == BLOCK
        blocky = [m for m in phys.members if m.blocks is not None]
        assert blocky, f"incremental {n} has no block-level member"
        for m in blocky:
            assert m.blocks is not None
            assert RANGES.match(m.blocks), (m.path, m.blocks)
            blocks = _expand(m.blocks)
            assert blocks == sorted(set(blocks)), (m.path, m.blocks)
            assert not blocks or blocks[-1] < -(-m.size // BLOCK), (m.path, m.blocks, m.size)
        # the big table: about 1% of its pages changed, and only those (and the pages it grew by) are stored
        big = {m.path: m for m in phys.members}[story["big_path"]]
        assert big.source == inc.id, big
        assert big.blocks is not None, big
        pages = big.size // BLOCK
        assert 0 < len(_expand(big.blocks)) < pages / 10, (n, big.blocks, pages)
        if n == 3:  # no database created in its window (rounds 1 and 2 each add one: whole new files)
            assert inc.size < full.size / 5, (n, inc.size, full.size)
        if major >= 17:  # summaries covered every range: no fallback, no warning
            assert story["warned"][n] == [], story["warned"][n]
        parent = inc
    report = Verifier(story["repo"]).verify(incs[-1].id)
    assert report.ok, report.to_dict()


@pytest.mark.parametrize("major", [15, 16], indirect=True, ids=["pg15", "pg16"])  # 17 without them: its own test
def test_wal_summaries_are_refused_where_the_server_has_none(story: dict[str, Any]) -> None:
    repo, pg = story["repo"], story["pg"]
    before = [b.id for b in repo.backups("base")]
    with pytest.raises(ConfigurationError, match=r"(?i)summar"):
        BaseBackup(dbname=pg.conninfo(), parent="latest", incremental="wal-summaries").run(repo)
    assert [b.id for b in repo.backups("base")] == before


def _restored(result: Any) -> tuple[dict[str, Any], int]:
    """The fingerprint of a recovered server, and the rows of its unlogged table (reset by recovery)."""
    fp = fingerprint(result.cluster)
    (rows,) = result.cluster.query("select count(*) from scratch")[0]
    return fp, int(rows)


def test_the_last_incremental_restores_to_the_latest_exactly(story: dict[str, Any]) -> None:
    inc3 = story["incs"][-1]
    plan = RecoveryPlan(story["repo"], RecoveryTarget.latest(), backup_id=inc3.id)
    with plan.run(story["ctx"].pgdata()) as result:
        assert result.backup_id == inc3.id
        fp, unlogged = _restored(result)
    assert fp == story["fps"]["final"]
    assert unlogged == 0


@pytest.mark.parametrize("major", [15, 17], indirect=True, ids=["pg15", "pg17"])  # one per block method
def test_the_drill_restores_the_chain(story: dict[str, Any]) -> None:
    """Verifier's restore drill on the last incremental: the chain restored in a sandbox, recovered, checked."""
    report = Verifier(story["repo"]).verify(story["incs"][-1].id, drill=True)
    assert report.ok, report.to_dict()
    assert [c.name for c in report.checks][:2] == ["checksums", "restore-drill"]


def test_pitr_into_each_incremental_window_is_exact(story: dict[str, Any]) -> None:
    """Backup = incremental k, target = the LSN recorded halfway through the next round (after its end)."""
    got, want = {}, {}
    for k, inc in enumerate(story["incs"], 1):
        target = RecoveryTarget.lsn(story["marks"][k + 1], inclusive=False)
        pgdata = story["ctx"].pgdata()
        with RecoveryPlan(story["repo"], target, backup_id=inc.id).run(pgdata) as result:
            assert result.backup_id == inc.id
            got[k], _ = _restored(result)
        want[k] = story["fps"][f"mark{k + 1}"]
        story.setdefault("older", pgdata)  # a stopped copy from the first incremental: the delta test's start
    assert got == want


def test_delta_restore_over_an_older_copy_is_exact(story: dict[str, Any]) -> None:
    repo, inc3 = story["repo"], story["incs"][-1]
    older = story.get("older")
    if older is None:  # run alone: an older copy restored from the full backup
        older = story["ctx"].pgdata()
        RecoveryPlan(repo, RecoveryTarget.immediate(), backup_id=story["full"].id).restore(older)
    untouched = older / "PG_VERSION"
    inode = untouched.stat().st_ino
    plan = RecoveryPlan(repo, RecoveryTarget.immediate(), backup_id=inc3.id)
    with plan.run(older, delta=True) as result:
        fp, unlogged = _restored(result)
    assert fp == story["fps"]["before_inc3"]
    assert unlogged == 0
    assert untouched.stat().st_ino == inode  # identical files are left alone


# -- a damaged middle link ---------------------------------------------------------------------------------------


def _needed_bundle(inc2: BackupManifest, inc3: BackupManifest) -> Any:
    """A stored bundle of ``inc2`` holding something a restore of ``inc3`` needs (a file inc3 references, or
    blocks inc3 does not store again)."""
    assert inc2.physical is not None
    assert inc3.physical is not None
    last = {m.path: m for m in inc3.physical.members}
    roles = [
        m.bundle
        for m in inc2.physical.members
        if m.source == inc2.id
        and m.path in last
        and (last[m.path].source != inc3.id or last[m.path].blocks is not None)
    ]
    bundles = [f for f in inc2.files if f.role.startswith("bundle-")]
    assert bundles, "the second incremental stored no bundle"
    assert roles, "the second incremental holds nothing the third needs"
    return max(bundles, key=lambda f: (roles.count(f.role), f.size))


def _refused(story: dict[str, Any], repo: Repository, names: str, *, strict: bool = True) -> None:
    """Restoring the last incremental from ``repo`` is refused naming backup ``names``; the target stays absent or
    empty (``strict``: nothing at all was written below it meanwhile)."""
    inc3 = story["incs"][-1]
    target = story["ctx"].pgdata()
    with writes_under(target) as writes, pytest.raises(PgRecoveryError) as err:
        RecoveryPlan(repo, RecoveryTarget.immediate(), backup_id=inc3.id).restore(target)
    assert not isinstance(err.value, TargetUnreachable | ConfigurationError), err.value  # the chain, not the WAL
    assert names in str(err.value)
    assert not target.exists() or not any(target.iterdir())
    if strict:
        assert writes == [], writes[:5]


def _verify_fails(repo: Repository, inc3: BackupManifest, *names: str) -> None:
    report = Verifier(repo).verify(inc3.id)
    assert not report.ok
    checks = {c.name: c for c in report.checks}
    assert checks["checksums"].status == "fail"
    for name in names:
        assert name in checks["checksums"].detail, checks["checksums"].detail


def _flip(path: Path) -> bytes:
    """Flip one byte in the middle of ``path``; return its content before."""
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x40
    path.write_bytes(bytes(damaged))
    return original


def test_a_damaged_middle_link_is_refused_before_anything_is_written(story: dict[str, Any]) -> None:
    full, (inc1, inc2, inc3) = story["full"], story["incs"]
    root = owned_tmpdir("pgrecovery-blk-damaged-")
    try:
        shutil.copytree(Path(story["repo"].root), root, dirs_exist_ok=True)
        with writes_under(root) as probe:  # the watch sees this process's writes
            (root / "probe").write_bytes(b"x")
        assert probe == [f"open {root / 'probe'}"]
        bundle = _needed_bundle(inc2, inc3)
        path = root / "backups" / inc2.id / bundle.path

        # one byte flipped in a bundle of the middle link
        original = _flip(path)
        repo = Repository(f"file://{root}")
        _verify_fails(repo, inc3, inc2.id, bundle.path)
        _refused(story, repo, inc2.id)

        # the same bundle gone
        path.unlink()
        repo = Repository(f"file://{root}")
        _verify_fails(repo, inc3, inc2.id, bundle.path)
        _refused(story, repo, inc2.id)

        # the bundle back, the middle link's manifest damaged instead
        path.write_bytes(original)
        manifest = root / "backups" / inc2.id / "manifest.json"
        text = manifest.read_text()
        at = text.index('"stop_lsn"')
        manifest.write_text(text[:at] + text[at:].replace("/", "/1", 1))
        repo = Repository(f"file://{root}")
        _verify_fails(repo, inc3, inc2.id)
        _refused(story, repo, inc2.id)
        manifest.write_text(text)

        # a byte flipped in the full backup at the root of the chain: refused too, and nothing is left behind
        biggest = max((f for f in full.files if f.role.startswith("bundle-")), key=lambda f: f.size)
        full_path = root / "backups" / full.id / biggest.path
        full_original = _flip(full_path)
        repo = Repository(f"file://{root}")
        _verify_fails(repo, inc3, full.id, biggest.path)
        _refused(story, repo, full.id, strict=False)  # the full's objects are checked as they stream
        full_path.write_bytes(full_original)

        # the chain intact again: the middle link cannot be deleted alone, and with its dependents only they go
        repo = Repository(f"file://{root}")
        assert Verifier(repo).verify(inc3.id).ok
        with pytest.raises(ConfigurationError, match=inc3.id):
            repo.delete_backup(inc2.id)
        assert [m.id for m in repo.delete_backup(inc2.id, with_dependents=True)] == [inc3.id, inc2.id]
        assert [m.id for m in repo.backups("base")] == [full.id, inc1.id]
        assert Verifier(repo).verify(inc1.id).ok
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- PostgreSQL 17 without WAL summarization ---------------------------------------------------------------------


@pytest.mark.parametrize("major", [17], indirect=True, ids=["pg17"])
def test_without_summaries_auto_falls_back_to_page_lsn_with_one_warning(
    major: Major, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """summarize_wal off: "auto" takes page LSNs and says so in one line; "wal-summaries" is refused (API and
    command). A chain of every method (page-lsn, file, page-lsn, then wal-summaries once summarization is on)
    restores exactly."""
    import json

    settings = _settings(major.number, summarize=False)
    with archiving_cluster("pgrecovery-blk-nosum", table=None, settings=settings) as ctx:
        pg, repo = ctx.pg, ctx.repo
        _setup(pg)
        full = BaseBackup(dbname=pg.conninfo()).run(repo)
        first_half(pg, 1)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pgrecovery"):
            inc = BaseBackup(dbname=pg.conninfo(), parent=full.id, incremental="auto").run(repo)
        warned = [r.getMessage() for r in caplog.records if r.name.startswith("pgrecovery")]
        assert inc.physical is not None
        assert inc.physical.incremental == "page-lsn"
        assert len(warned) == 1, warned
        assert "\n" not in warned[0], warned[0]
        assert "summarize_wal" in warned[0], warned[0]
        assert any(m.blocks is not None for m in inc.physical.members)

        before = [b.id for b in repo.backups("base")]
        with pytest.raises(ConfigurationError, match=r"(?i)summar"):
            BaseBackup(dbname=pg.conninfo(), parent=inc.id, incremental="wal-summaries").run(repo)
        base = ["--repo", ctx.url, "--json", "backup", "base", "--dbname", pg.conninfo(), "--parent", inc.id]
        code, _, err = run_cli(capsys, *base, "--incremental", "wal-summaries")
        assert code != 0, err
        assert "summar" in err.lower(), err
        assert [b.id for b in repo.backups("base")] == before

        second_half(pg, 1)
        code, out, err = run_cli(capsys, *base, "--incremental", "file")
        assert code == 0, err
        by_file = json.loads(out)
        assert by_file["physical"]["incremental"] == "file"
        assert all(m.get("blocks") is None for m in by_file["physical"]["members"])
        first_half(pg, 2)
        last = BaseBackup(dbname=pg.conninfo(), parent="latest", incremental="page-lsn").run(repo)
        assert last.physical is not None
        assert (last.physical.parent, last.physical.incremental) == (by_file["id"], "page-lsn")

        # summarization turned on now covers only what follows: the next "auto" falls back (and says so), the one
        # after it reads the summaries
        pg.execute("alter system set summarize_wal = on")
        pg.execute("select pg_reload_conf()")
        pg.execute("checkpoint")
        second_half(pg, 2)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pgrecovery"):
            turned = BaseBackup(dbname=pg.conninfo(), parent="latest", incremental="auto").run(repo)
        warned = [r.getMessage() for r in caplog.records if r.name.startswith("pgrecovery")]
        assert turned.physical is not None
        assert (turned.physical.incremental, len(warned)) in (("page-lsn", 1), ("wal-summaries", 0)), warned
        first_half(pg, 3)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pgrecovery"):
            summed = BaseBackup(dbname=pg.conninfo(), parent="latest", incremental="auto").run(repo)
        assert summed.physical is not None
        assert summed.physical.incremental == "wal-summaries", [r.getMessage() for r in caplog.records]
        second_half(pg, 3)
        want = fingerprint(pg)
        wait_archived(pg)

        with RecoveryPlan(repo, RecoveryTarget.latest(), backup_id=summed.id).run(ctx.pgdata()) as result:
            fp, unlogged = _restored(result)
        assert fp == want
        assert unlogged == 0


# -- a tablespace, both block methods, restored to a new place ---------------------------------------------------


@pytest.mark.parametrize("major", [17], indirect=True, ids=["pg17"])
def test_a_chain_with_a_tablespace_restores_to_a_new_place(major: Major) -> None:
    """full, then an incremental from WAL summaries and one from page LSNs of a table and index in a tablespace;
    restored with the tablespace remapped, equal to the source."""
    with archiving_cluster("pgrecovery-blk-space", table=None, settings=_settings(major.number, True)) as ctx:
        pg, repo = ctx.pg, ctx.repo
        space, moved = owned_tmpdir("pgrecovery-blk-space-"), owned_tmpdir("pgrecovery-blk-moved-")
        ctx.made += [space, moved]
        pg.execute(f"create tablespace elsewhere location '{space}'")
        pg.execute(
            "create table far (i int primary key using index tablespace elsewhere, note text) tablespace elsewhere;"
            "insert into far select i, md5(i::text) || md5((i * 3)::text) from generate_series(1, 30000) i;"
            "create index far_note on far (note) tablespace elsewhere"
        )
        pg.execute("vacuum (analyze) far")
        full = BaseBackup(dbname=pg.conninfo()).run(repo)
        assert full.physical is not None
        [(oid, location)] = full.physical.tablespaces.items()
        assert location == str(space)

        pg.execute("update far set note = 'one' where i % 3000 = 1; delete from far where i between 500 and 540")
        inc1 = BaseBackup(dbname=pg.conninfo(), parent="latest", incremental="auto").run(repo)
        pg.execute("update far set note = 'two' where i % 3000 = 2; delete from far where i > 29960")
        pg.execute("vacuum far")  # its tail cut off
        inc2 = BaseBackup(dbname=pg.conninfo(), parent="latest", incremental="page-lsn").run(repo)
        for inc, method in ((inc1, "wal-summaries"), (inc2, "page-lsn")):
            assert inc.physical is not None
            assert inc.physical.incremental == method
            far = [m for m in inc.physical.members if m.path.startswith(f"tblspc/{oid}/") and m.blocks is not None]
            assert far, f"no block-level member in the tablespace ({method})"
            assert inc.size < full.size / 5, (method, inc.size, full.size)
        pg.execute("insert into far values (40000, 'after')")
        want = fingerprint(pg)
        wait_archived(pg)

        plan = RecoveryPlan(repo, RecoveryTarget.latest(), backup_id=inc2.id)
        with plan.run(ctx.pgdata(), tablespace_map={oid: str(moved)}) as result:
            got = fingerprint(result.cluster)
            (where,) = result.cluster.query("select pg_tablespace_location(%s::oid)", (int(oid),))[0]
        assert got == want
        assert where == str(moved)


# -- a parent newer than the backup: a lagging standby ----------------------------------------------------------


@pytest.mark.parametrize("major", [15], indirect=True, ids=["pg15"])  # 17: the same, after waiting for summaries
def test_an_incremental_from_a_standby_behind_its_parent_is_exact_or_refused(major: Major) -> None:
    """A standby made from a full backup (the same files) replays the archive and is paused; the primary moves on
    and takes a second full backup, which the standby's backup then names as its parent: the parent starts after
    the standby's position, its pages are newer than the standby's. Restored to its own consistent point the
    incremental must equal the standby's data there, or the backup must be refused."""
    with archiving_cluster("pgrecovery-blk-lag", table=None, settings=_settings(major.number, True)) as ctx:
        primary, repo = ctx.pg, ctx.repo
        primary.execute("create table t (i int primary key, note text)")
        primary.execute("insert into t select i, md5(i::text) from generate_series(1, 20000) i")
        primary.execute("vacuum (analyze) t")
        first = BaseBackup(dbname=primary.conninfo()).run(repo)
        # a record first: right after a backup the server may stand at a segment's start, where pg_switch_wal()
        # switches nothing and wait_archived would wait for a segment nobody fills
        primary.execute("select pg_current_xact_id()")
        wait_archived(primary)
        data = ctx.pgdata()
        RecoveryPlan(repo, RecoveryTarget.latest(), backup_id=first.id).restore(data, standby=True)
        standby = LocalCluster(data_dir=data, run_as=primary.run_as, log_file=data.parent / "server.log")
        standby.start()
        (lsn,) = primary.query("select pg_current_wal_lsn()::text")[0]
        deadline = time.monotonic() + 60
        while not standby.query("select pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))[0][0]:
            assert time.monotonic() < deadline, "the standby did not catch up"
            time.sleep(0.05)
        standby.execute("select pg_wal_replay_pause()")
        while standby.query("select pg_get_wal_replay_pause_state()")[0][0] != "paused":
            time.sleep(0.05)
        want = fingerprint(standby)

        # the primary moves on, then its full backup (the parent) starts after the standby's position
        primary.execute("update t set note = 'later' where i % 50 = 0; delete from t where i % 77 = 0")
        primary.execute("insert into t select i, 'later' from generate_series(30001, 31000) i")
        primary.query("select count(*) from t")  # hint bits, written with the pages
        parent = BaseBackup(dbname=primary.conninfo()).run(repo)
        assert parent.physical is not None
        try:
            inc = BaseBackup(dbname=standby.conninfo(), primary=primary.conninfo(), parent=parent.id).run(repo)
        except PgRecoveryError as e:  # refusing is right: the parent is newer than the backup
            refused = str(e)
        else:
            refused = ""
        if refused:
            assert parent.id in refused or "parent" in refused, refused
            return
        assert inc.physical is not None
        plan = RecoveryPlan(repo, RecoveryTarget.immediate(), backup_id=inc.id)
        facts = (
            f"{inc.physical.incremental} incremental starting at {inc.physical.start_lsn} "
            f"on a parent starting at {parent.physical.start_lsn}"
        )
        with plan.run(ctx.pgdata()) as result:
            try:
                got = fingerprint(result.cluster)
            except psycopg.Error as e:
                pytest.fail(f"the restored {facts} cannot be read: {e}")
        assert got == want, facts
