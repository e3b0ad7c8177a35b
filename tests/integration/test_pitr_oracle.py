"""A randomized point-in-time-recovery oracle.

One source cluster archives into a file:// repository. After a base backup, a workload generated from a seed
(inserts, updates, deletes, tables created/altered/dropped, savepoints, rolled-back transactions, a 200,000-row
transaction spanning WAL segments, restore points, WAL switches, checkpoints) runs on it, and every moment that
a recovery target can name is recorded with the database's fingerprint (a digest of every user table's rows in
key order and of the tables' columns). Halfway through, a copy recovered to one transaction is promoted: it
archives timeline 2 into the same repository, takes a second base backup and runs its own workload, while the
rest of timeline 1 stays in the archive as a road not taken.

Hypothesis then picks targets of every kind (time between two commits and exactly at one, xid, the LSN of a
commit record and the LSN right after it, each inclusive and exclusive; restore point names; immediate; latest)
on timeline 1 before and after the branch and on timeline 2, recovers each with `RecoveryPlan`, and compares
the recovered fingerprint with the recorded one.

Profiles: by default a handful of recoveries (``PGRECOVERY_ORACLE_EXAMPLES``, default 5 plus the 3 explicit
examples); ``PGRECOVERY_SOAK=1`` runs 100. The counts of targets tried and matched go to
``$PGRECOVERY_RELIABILITY_OUT/pitr_oracle.json`` (default ``tests/.results/``) and to the terminal.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pgtesting import archive_settings
from pgtesting import owned_tmpdir as _owned_tmpdir
from pgtesting import wait_archived as _wait_archived

from pgrecovery import (
    BaseBackup,
    LocalCluster,
    PgRecoveryError,
    RecoveryPlan,
    RecoveryTarget,
    Repository,
    TargetUnreachable,
)
from pgrecovery._walnames import is_segment, segment_number
from pgrecovery.manifest import BackupManifest
from pgrecovery.wal.archiver import WalArchiver

SEED = int(os.environ.get("PGRECOVERY_ORACLE_SEED", "20260315"))
SOAK = os.environ.get("PGRECOVERY_SOAK") == "1"
EXAMPLES = int(os.environ.get("PGRECOVERY_ORACLE_EXAMPLES") or (100 if SOAK else 5))
BIG_ROWS = 200_000
SEGMENT = 16 << 20  # initdb's default WAL segment size
RESULTS = Path(os.environ.get("PGRECOVERY_RELIABILITY_OUT") or Path(__file__).resolve().parents[1] / ".results")

# Every kind of target the oracle tries (kind of position, then inclusive or exclusive where that matters).
KINDS = (
    "time-between-incl",
    "time-between-excl",
    "time-commit-incl",
    "time-commit-excl",
    "xid-incl",
    "xid-excl",
    "xid-aborted",
    "lsn-commit-incl",
    "lsn-commit-excl",
    "lsn-after-incl",
    "lsn-after-excl",
    "name",
    "immediate",
    "latest",
)
# Where on the history the target lies: timeline 1 before the branch (reachable along both timelines), timeline 1
# after it (the road not taken: only with recovery_target_timeline=1) and timeline 2.
PATHS = ("shared", "tl1", "tl2")


# -- fingerprints ----------------------------------------------------------------------------------------------


@attrs.frozen
class Fingerprint:
    """A digest per user table (row count and md5 of its rows in key order) plus one of all tables' columns."""

    parts: tuple[tuple[str, str], ...]

    @property
    def digest(self) -> str:
        import hashlib

        return hashlib.md5(repr(self.parts).encode()).hexdigest()[:12]

    def diff(self, other: Fingerprint) -> str:
        mine, theirs = dict(self.parts), dict(other.parts)
        keys = sorted(set(mine) | set(theirs))
        return "; ".join(
            f"{k}: {theirs.get(k, '-')} instead of {mine.get(k, '-')}" for k in keys if mine.get(k) != theirs.get(k)
        )


_COLUMNS = (
    "select table_name::text, string_agg(column_name || ' ' || data_type, ', ' order by ordinal_position) "
    "from information_schema.columns where table_schema = 'public' group by table_name order by table_name"
)


def _table_digest(conn: psycopg.Connection[Any], table: str) -> str:
    row = conn.execute(
        f"select count(*), md5(coalesce(string_agg(x::text, E'\\n' order by x.id), '')) from \"{table}\" x"
    ).fetchone()
    assert row is not None
    return f"{row[0]} rows {row[1][:12]}"


def fingerprint(
    conn: psycopg.Connection[Any],
    *,
    previous: Fingerprint | None = None,
    touched: frozenset[str] | set[str] = frozenset(),
) -> Fingerprint:
    """The database's fingerprint; with ``previous``, only the ``touched`` tables (and new ones) are read again."""
    columns = conn.execute(_COLUMNS).fetchall()
    old = dict(previous.parts) if previous is not None else {}
    parts: list[tuple[str, str]] = [("(columns)", repr(columns))]
    for table, _ in columns:
        key = f"table {table}"
        parts.append((key, old[key] if key in old and table not in touched else _table_digest(conn, table)))
    return Fingerprint(tuple(parts))


# -- the recorded history --------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Moment:
    """A recorded moment: a transaction's end (commit or abort) or a restore point, with the state around it."""

    kind: str  # commit, abort, point
    path: str  # shared, tl1, tl2
    label: str
    before: Fingerprint
    after: Fingerprint
    xid: str | None = None
    lsn_before: str = ""  # insert position before the COMMIT/ROLLBACK was sent
    lsn_after: str = ""  # insert position after it
    end_lsn: str | None = None  # start of the commit/abort record (from pg_walinspect)
    at: datetime | None = None  # commit timestamp (track_commit_timestamp)
    name: str | None = None  # restore point


@attrs.frozen(kw_only=True)
class Candidate:
    """A recovery target and the fingerprint the recovered cluster must have."""

    kind: str
    path: str
    target: RecoveryTarget
    expected: Fingerprint
    backup_id: str | None = None

    def describe(self) -> str:
        tli = self.target.timeline
        return f"{self.kind} on {self.path}: {self.target.describe()} (timeline {tli})" + (
            f" from {self.backup_id}" if self.backup_id else ""
        )


class Recorder:
    """Runs workload steps on one cluster and records the moments they make."""

    def __init__(self, pg: LocalCluster, rng: random.Random, path: str, state: Fingerprint, moments: list[Moment]):
        self.pg, self.rng, self.path, self.state, self.moments = pg, rng, path, state, moments
        self.conn = pg.connect()
        self.points = 0

    def close(self) -> None:
        self.conn.close()

    def _tables(self, prefix: str = "") -> list[str]:
        rows = self.conn.execute(
            "select tablename::text from pg_tables where schemaname = 'public' and starts_with(tablename, %s) "
            "order by 1",
            (prefix,),
        ).fetchall()
        return [r[0] for r in rows]

    def _next_id(self, table: str) -> int:
        row = self.conn.execute(f'select coalesce(max(id), 0) + 1 from "{table}"').fetchone()
        assert row is not None
        return int(row[0])

    def transaction(
        self, label: str, work: Callable[[psycopg.Connection[Any]], set[str]], *, abort: bool = False
    ) -> None:
        """Run ``work`` in one transaction (committed, or rolled back with ``abort``) and record its moment."""
        conn = self.conn
        before = self.state
        conn.execute("begin")
        xid = str(conn.execute("select pg_current_xact_id()::text").fetchone()[0])  # type: ignore[index]
        touched = work(conn)
        lsn_before = str(conn.execute("select pg_current_wal_insert_lsn()::text").fetchone()[0])  # type: ignore[index]
        conn.execute("rollback" if abort else "commit")
        lsn_after = str(conn.execute("select pg_current_wal_insert_lsn()::text").fetchone()[0])  # type: ignore[index]
        if not abort:
            self.state = fingerprint(conn, previous=before, touched=touched)
        self.moments.append(
            Moment(
                kind="abort" if abort else "commit",
                path=self.path,
                label=label,
                before=before,
                after=self.state,
                xid=xid,
                lsn_before=lsn_before,
                lsn_after=lsn_after,
            )
        )

    def restore_point(self) -> None:
        self.points += 1
        name = f"rp-{self.path}-{self.points:02d}"
        self.conn.execute("select pg_create_restore_point(%s)", (name,))
        self.moments.append(
            Moment(kind="point", path=self.path, label="restore point", before=self.state, after=self.state, name=name)
        )

    # -- the steps -------------------------------------------------------------------------------------------
    def step(self, kind: str) -> None:
        rng = self.rng
        tables = self._tables()
        small = [t for t in tables if t != "big"]
        t = rng.choice(small)
        if kind == "insert":
            first, n = self._next_id(t), rng.randint(1, 60)
            self.transaction(f"insert {n} into {t}", lambda c: self._insert(c, t, first, n))
        elif kind == "update":
            m, r, d = rng.randint(2, 9), rng.randint(0, 1), rng.randint(1, 1000)
            self.transaction(
                f"update {t}", lambda c: self._exec(c, t, f'update "{t}" set v = v + {d} where id % {m} = {r}')
            )
        elif kind == "delete":
            m, r = rng.randint(5, 15), rng.randint(0, 4)
            self.transaction(f"delete from {t}", lambda c: self._exec(c, t, f'delete from "{t}" where id % {m} = {r}'))
        elif kind == "create":
            new = f"t_{self.path}_{len(self.moments):03d}"
            n = rng.randint(0, 40)

            def create(c: psycopg.Connection[Any]) -> set[str]:
                c.execute(f'create table "{new}" (id int primary key, v bigint not null default 0, note text)')
                return self._insert(c, new, 1, n)

            self.transaction(f"create {new}", create)
        elif kind == "alter-add":
            col = f"c{len(self.moments):03d}"
            sql = f"alter table \"{t}\" add column {col} text default 'x{rng.randint(0, 99)}'"
            self.transaction(f"alter {t} add {col}", lambda c: self._exec(c, t, sql))
        elif kind == "alter-drop":
            cols = [r[0] for r in self.conn.execute(
                "select column_name::text from information_schema.columns where table_schema = 'public' "
                "and table_name = %s and (column_name = 'note' or column_name like 'c%%') order by 1", (t,)
            ).fetchall()]  # fmt: skip
            if not cols:
                return self.step("alter-add")
            col = rng.choice(cols)
            self.transaction(
                f"alter {t} drop {col}", lambda c: self._exec(c, t, f'alter table "{t}" drop column {col}')
            )
        elif kind == "drop":
            victims = self._tables("t_")
            if not victims:
                return self.step("create")
            v = rng.choice(victims)
            self.transaction(f"drop {v}", lambda c: self._exec(c, v, f'drop table "{v}"'))
        elif kind == "multi":
            u = rng.choice(small)
            first, n = self._next_id(u), rng.randint(1, 30)

            def multi(c: psycopg.Connection[Any]) -> set[str]:
                c.execute(f'update "{t}" set v = v * 2 where id % 7 = 3')
                return {t} | self._insert(c, u, first, n)

            self.transaction(f"update {t}, insert into {u}", multi)
        elif kind == "savepoint":
            first = self._next_id(t)

            def savepoints(c: psycopg.Connection[Any]) -> set[str]:
                self._insert(c, t, first, 5)
                c.execute("savepoint s1")
                c.execute(f'delete from "{t}" where id % 3 = 0')
                self._insert(c, t, first + 5, 50)
                c.execute("rollback to savepoint s1")
                c.execute("savepoint s2")
                self._insert(c, t, first + 5, 3)
                c.execute("release savepoint s2")
                return {t}

            self.transaction(f"savepoints in {t}", savepoints)
        elif kind == "abort":
            first = self._next_id(t)

            def doomed(c: psycopg.Connection[Any]) -> set[str]:
                self._insert(c, t, first, 20)
                c.execute(f'update "{t}" set v = -1')
                return {t}

            self.transaction(f"rolled back in {t}", doomed, abort=True)
        elif kind == "big":

            def big(c: psycopg.Connection[Any]) -> set[str]:
                c.execute("create table if not exists big (id int primary key, v bigint not null, note text)")
                first = self._next_id("big")
                c.execute(
                    "insert into big select g, g %% 977, md5(g::text) from generate_series(%s::int, %s::int) g",
                    (first, first + BIG_ROWS - 1),
                )
                return {"big"}

            self.transaction(f"big: {BIG_ROWS} rows", big)
        elif kind == "point":
            self.restore_point()
        elif kind == "switch":
            self.conn.execute("select pg_switch_wal()")
        elif kind == "checkpoint":
            self.conn.execute("checkpoint")
        else:
            raise AssertionError(kind)
        return None

    @staticmethod
    def _exec(c: psycopg.Connection[Any], table: str, sql: str) -> set[str]:
        c.execute(sql)
        return {table}

    def _insert(self, c: psycopg.Connection[Any], table: str, first: int, n: int) -> set[str]:
        if n:
            c.execute(
                f'insert into "{table}" (id, v) select g, (g * %s) %% 1000 from generate_series(%s::int, %s::int) g',
                (self.rng.randint(1, 97), first, first + n - 1),
            )
        return {table}

    def resolve(self) -> None:
        """Find each transaction's commit/abort record and commit time (everything is flushed by now)."""
        for i, m in enumerate(self.moments):
            if m.path != self.path or m.xid is None or m.end_lsn is not None:
                continue
            rows = self.conn.execute(
                "select start_lsn::text from pg_get_wal_records_info(%s, %s) "
                "where resource_manager = 'Transaction' and record_type = %s and xid::text = %s",
                (m.lsn_before, m.lsn_after, "ABORT" if m.kind == "abort" else "COMMIT", m.xid),
            ).fetchall()
            assert len(rows) == 1, f"{m.label}: {len(rows)} end records of xid {m.xid} in {m.lsn_before}..{m.lsn_after}"
            at = None
            if m.kind == "commit":
                at = self.conn.execute("select pg_xact_commit_timestamp(%s::text::xid)", (m.xid,)).fetchone()[0]  # type: ignore[index]
            self.moments[i] = attrs.evolve(m, end_lsn=rows[0][0], at=at)


STEP_KINDS = ("insert", "update", "delete", "create", "alter-add", "alter-drop", "drop", "multi", "savepoint",
              "abort", "point", "switch")  # fmt: skip
EXTRA_KINDS = ("insert", "update", "delete", "multi", "point", "checkpoint")


def _plan(rng: random.Random, extra: int) -> list[str]:
    """Every step kind at least once, a few more at random, shuffled."""
    kinds = [*STEP_KINDS, *(rng.choice(EXTRA_KINDS) for _ in range(extra))]
    rng.shuffle(kinds)
    return kinds


# -- helpers for clusters owned by the server's OS user ---------------------------------------------------------


# -- the oracle ------------------------------------------------------------------------------------------------


@attrs.define(repr=False)
class Oracle:
    """The recorded history of the source and its branch, the targets it can check, and a place to recover."""

    repo: Repository
    pgdata: Path
    candidates: dict[tuple[str, str], list[Candidate]]
    moments: list[Moment]
    backups: dict[str, tuple[BackupManifest, Fingerprint]]
    finals: dict[str, Fingerprint]

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example: keep it short
        return f"<Oracle: {len(self.moments)} moments, backups {', '.join(b.id for b, _ in self.backups.values())}>"

    def pick(self, kind: str, path: str, pick: int) -> Candidate | None:
        found = self.candidates.get((kind, path), [])
        return found[pick % len(found)] if found else None

    def recover(self, c: Candidate) -> tuple[Fingerprint | None, str]:
        """Recover to ``c`` in the one recovery directory; (fingerprint, "") or (None, the error).

        A delta restore over the previous recovery (files identical to the backup's are kept, every other file,
        pg_wal's included, is removed): twice as fast as emptying the directory, and it exercises delta restores.
        """
        try:
            plan = RecoveryPlan(self.repo, c.target, backup_id=c.backup_id)
            label = next((k for k, (b, _) in self.backups.items() if b.id == plan.backup.id), plan.backup.id)
            used = _TALLY.setdefault("by_backup", {})
            used[label] = used.get(label, 0) + 1
            result = plan.run(self.pgdata, delta=True, settings={"archive_mode": "off"}, record_incident=False)
        except PgRecoveryError as e:
            _stop(self.pgdata)
            return None, f"{type(e).__name__}: {e}"
        cluster = LocalCluster(data_dir=self.pgdata, port=result.port)
        try:
            with cluster.connect() as conn:
                return fingerprint(conn), ""
        finally:
            cluster.stop()


def _stop(pgdata: Path) -> None:
    cluster = LocalCluster(data_dir=pgdata)
    if cluster.is_running():
        cluster.stop(mode="immediate")


def _candidates(
    moments: list[Moment],
    backups: dict[str, tuple[BackupManifest, Fingerprint]],
    finals: dict[str, Fingerprint],
    rng: random.Random,
) -> dict[tuple[str, str], list[Candidate]]:
    """Every target the recorded history can check, by (kind, path)."""
    out: dict[tuple[str, str], list[Candidate]] = {}

    def add(
        kind: str, path: str, tli: str, target: RecoveryTarget, expected: Fingerprint, backup_id: str | None = None
    ) -> None:
        c = Candidate(kind=kind, path=path, target=target.with_timeline(tli), expected=expected, backup_id=backup_id)
        out.setdefault((kind, path), []).append(c)

    def following(i: int, tli: str) -> Moment | None:
        """The next commit after moments[i] along the history recovery follows with ``tli``."""
        along = ("tl2",) if moments[i].path == "tl2" or tli == "latest" else ("tl1",)
        return next((m for m in moments[i + 1 :] if m.kind == "commit" and m.path in ("shared", *along)), None)

    for i, m in enumerate(moments):
        path = m.path
        tli = {"shared": rng.choice(("latest", "1", "current")), "tl1": "1", "tl2": rng.choice(("latest", "2"))}[path]
        nxt = following(i, tli)
        if m.kind == "point":
            assert m.name is not None
            add("name", path, tli, RecoveryTarget.name(m.name), m.after)
            continue
        assert m.xid is not None
        assert m.end_lsn is not None
        if m.kind == "abort":
            add("xid-aborted", path, tli, RecoveryTarget.xid(m.xid, inclusive=rng.random() < 0.5), m.after)
            add("lsn-commit-incl" if rng.random() < 0.5 else "lsn-commit-excl", path, tli,
                RecoveryTarget.lsn(m.end_lsn, inclusive=rng.random() < 0.5), m.after)  # fmt: skip
            continue
        add("xid-incl", path, tli, RecoveryTarget.xid(m.xid), m.after)
        add("xid-excl", path, tli, RecoveryTarget.xid(m.xid, inclusive=False), m.before)
        add("lsn-commit-incl", path, tli, RecoveryTarget.lsn(m.end_lsn), m.after)
        add("lsn-commit-excl", path, tli, RecoveryTarget.lsn(m.end_lsn, inclusive=False), m.before)
        if nxt is not None:  # a record after the position, and a commit after the time, must exist
            add("lsn-after-incl", path, tli, RecoveryTarget.lsn(m.lsn_after), m.after)
            add("lsn-after-excl", path, tli, RecoveryTarget.lsn(m.lsn_after, inclusive=False), m.after)
        assert m.at is not None
        add("time-commit-excl", path, tli, RecoveryTarget.time(m.at, inclusive=False), m.before)
        if nxt is not None and nxt.at is not None and nxt.at > m.at:
            add("time-commit-incl", path, tli, RecoveryTarget.time(m.at), m.after)
            middle = m.at + (nxt.at - m.at) / 2
            if middle > m.at:
                add("time-between-incl", path, tli, RecoveryTarget.time(middle), m.after)
                add("time-between-excl", path, tli, RecoveryTarget.time(middle, inclusive=False), m.after)
    for backup, state in backups.values():
        path = "shared" if backup.physical is not None and backup.physical.timeline == 1 else "tl2"
        add("immediate", path, "latest", RecoveryTarget.immediate(), state, backup_id=backup.id)
    add("latest", "tl1", "1", RecoveryTarget.latest(), finals["tl1"])
    add("latest", "tl2", "latest", RecoveryTarget.latest(), finals["tl2"])
    return out


_TALLY: dict[str, Any] = {"tried": 0, "matched": 0, "by_kind": {}, "failures": []}


@pytest.fixture(scope="module")
def oracle(request: pytest.FixtureRequest) -> Iterator[Oracle]:
    t0 = time.monotonic()
    rng = random.Random(SEED)
    root = _owned_tmpdir("pgrecovery-oracle-repo-")
    work = _owned_tmpdir("pgrecovery-oracle-")
    url = f"file://{root}"
    repo = Repository(url)
    src = LocalCluster.temporary(
        settings=archive_settings(
            url,
            track_commit_timestamp=True,
            autovacuum=False,
            wal_keep_size="2GB",  # pg_walinspect reads back the WAL of every recorded transaction
            max_wal_size="2GB",
            checkpoint_timeout="1h",
        )
    )
    branch: LocalCluster | None = None
    moments: list[Moment] = []
    finals: dict[str, Fingerprint] = {}
    backups: dict[str, tuple[BackupManifest, Fingerprint]] = {}
    try:
        src.start()
        src.execute("create extension pg_walinspect")
        src.execute("create table acct (id int primary key, v bigint not null default 0, note text)")
        src.execute("insert into acct (id, v, note) select g, g * 10, 'n' || g from generate_series(1, 300) g")
        with src.connect() as conn:
            state = fingerprint(conn)
        b1 = BaseBackup(dbname=src.conninfo()).run(repo)
        backups["b1"] = (b1, state)
        # timeline 1: the shared part, then the branch transaction, then the road not taken (with the big one)
        rec = Recorder(src, rng, "shared", state, moments)
        shared_plan = _plan(rng, 4)
        for kind in shared_plan[: len(shared_plan) // 2]:
            rec.step(kind)
        # an incremental backup (files unchanged since B1 are referenced, not stored) in the middle of the history
        b1i = BaseBackup(dbname=src.conninfo(), parent="latest").run(repo)
        backups["b1i"] = (b1i, rec.state)
        for kind in shared_plan[len(shared_plan) // 2 :]:
            rec.step(kind)
        rec.step("insert")
        branch_moment = moments[-1]
        rec.path = "tl1"
        tl1_plan = _plan(rng, 4)
        tl1_plan.insert(rng.randrange(len(tl1_plan) + 1), "big")
        for kind in tl1_plan:
            rec.step(kind)
        rec.step("insert")  # the tail: every recorded moment has something after it
        finals["tl1"] = rec.state
        with src.connect() as conn:
            assert fingerprint(conn) == rec.state, "the incremental fingerprints drifted from the database"
        rec.path = "shared"
        rec.resolve()
        rec.path = "tl1"
        rec.resolve()
        rec.close()
        _wait_archived(src)
        src.stop()

        # timeline 2: recover a copy to the branch transaction and promote it; it archives into the same repository
        assert branch_moment.xid is not None
        pgdata2 = work / "branch"
        result = RecoveryPlan(repo, RecoveryTarget.xid(branch_moment.xid)).run(
            pgdata2, archive=True, record_incident=False
        )
        assert result.timeline == 2
        branch = LocalCluster(data_dir=pgdata2, port=result.port)
        with branch.connect() as conn:
            got = fingerprint(conn)
        _count("branch", got == branch_moment.after, f"branch at xid {branch_moment.xid}", branch_moment.after, got)
        assert got == branch_moment.after, f"the branch copy differs: {branch_moment.after.diff(got)}"
        rng2 = random.Random(SEED + 2)
        rec = Recorder(branch, rng2, "tl2", got, moments)
        tl2_plan = _plan(rng2, 4)
        half = len(tl2_plan) // 2
        for kind in tl2_plan[:half]:
            rec.step(kind)
        b2 = BaseBackup(dbname=branch.conninfo(), parent="latest").run(repo)  # its parent is on timeline 1
        backups["b2"] = (b2, rec.state)
        for kind in tl2_plan[half:]:
            rec.step(kind)
        # timeline 2 outgrows timeline 1 (as after a failover, where the old timeline ends at the branch): its
        # newest positions lie in segments that timeline 1 never reached
        tl1_end = max(segment_number(n, SEGMENT) for n in WalArchiver(repo).list_archived(1)[1] if is_segment(n))
        while (
            segment_number(branch.query("select pg_walfile_name(pg_current_wal_insert_lsn())")[0][0], SEGMENT)
            <= tl1_end
        ):
            rec.step("insert")
            rec.step("switch")
        rec.step("insert")
        finals["tl2"] = rec.state
        with branch.connect() as conn:
            assert fingerprint(conn) == rec.state, "the incremental fingerprints drifted from the database"
        rec.resolve()
        rec.close()
        _wait_archived(branch)
        branch.stop()

        oracle = Oracle(
            repo=repo,
            pgdata=work / "data",
            candidates=_candidates(moments, backups, finals, rng),
            moments=moments,
            backups=backups,
            finals=finals,
        )
        _TALLY["setup_seconds"] = round(time.monotonic() - t0, 1)
        _TALLY["workload"] = {
            "seed": SEED,
            "moments": len(moments),
            "commits": sum(m.kind == "commit" for m in moments),
            "aborts": sum(m.kind == "abort" for m in moments),
            "restore_points": sum(m.kind == "point" for m in moments),
            "timelines": WalArchiver(repo).timelines(),
            "segments_archived": sum(len(v) for v in WalArchiver(repo).list_archived().values()),
            "candidates": sum(len(v) for v in oracle.candidates.values()),
        }
        yield oracle
    finally:
        _report(request)
        if branch is not None:
            branch.destroy()
        src.destroy()
        _stop(work / "data")
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def _count(kind: str, ok: bool, what: str, expected: Fingerprint, got: Fingerprint | None, error: str = "") -> None:
    _TALLY["tried"] += 1
    _TALLY["matched"] += ok
    by = _TALLY["by_kind"].setdefault(kind, {"tried": 0, "matched": 0})
    by["tried"] += 1
    by["matched"] += ok
    if not ok:
        _TALLY["failures"].append({"target": what, "error": error or (expected.diff(got) if got else "")})


def _report(request: pytest.FixtureRequest) -> None:
    if not _TALLY["tried"]:
        return
    _TALLY["profile"] = "soak" if SOAK else "fast"
    _TALLY["examples"] = EXAMPLES
    _TALLY["finished_at"] = datetime.now().astimezone().isoformat(timespec="seconds")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pitr_oracle.json").write_text(json.dumps(_TALLY, indent=2, sort_keys=True) + "\n")
    line = (
        f"PITR oracle ({_TALLY['profile']}, seed {SEED}): {_TALLY['matched']} of {_TALLY['tried']} recovery targets "
        f"matched the recorded state; written to {RESULTS / 'pitr_oracle.json'}"
    )
    _show(request, line)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(kind=st.sampled_from(KINDS), path=st.sampled_from(PATHS), pick=st.integers(0, 1 << 16))
@example(kind="lsn-commit-excl", path="tl2", pick=3)
@example(kind="xid-incl", path="tl1", pick=5)
@example(kind="time-commit-excl", path="shared", pick=1)
def test_recovery_reaches_the_recorded_state(oracle: Oracle, kind: str, path: str, pick: int) -> None:
    c = oracle.pick(kind, path, pick)
    if c is None:  # e.g. no "latest" before the branch: nothing to recover here
        return
    got, error = oracle.recover(c)
    ok = got == c.expected
    _count(c.kind, ok, c.describe(), c.expected, got, error)
    assert not error, f"{c.describe()}: {error}"
    assert got is not None
    assert ok, f"{c.describe()}: recovered {got.digest}, recorded {c.expected.digest}: {c.expected.diff(got)}"


def test_every_kind_of_target_is_available(oracle: Oracle) -> None:
    """The workload makes every (kind, path) the oracle can check: a regression here means lost coverage."""
    missing = [
        (k, p)
        for k in KINDS
        for p in PATHS
        if not oracle.candidates.get((k, p)) and (k, p) not in {("latest", "shared"), ("immediate", "tl1")}
    ]
    assert not missing
    assert any(m.label.startswith("big") for m in oracle.moments)


# -- regressions the oracle found ------------------------------------------------------------------------------


def test_a_backup_of_a_recovered_cluster_recovers_to_any_kind_of_target(oracle: Oracle) -> None:
    """B2 was taken on the branch, a cluster made by a recovery to an xid: its postgresql.auto.conf still names
    that xid. Restoring B2 for a time target used to give PostgreSQL two targets ("multiple recovery targets
    specified"), and a latest recovery stopped at (or failed on) the old xid."""
    b2, _ = oracle.backups["b2"]
    last = next(m for m in reversed(oracle.moments) if m.path == "tl2" and m.kind == "commit" and m.at is not None)
    assert last.at is not None
    for target, expected in [
        (RecoveryTarget.time(last.at, inclusive=False), last.before),
        (RecoveryTarget.latest(), oracle.finals["tl2"]),
    ]:
        c = Candidate(kind="regression", path="tl2", target=target, expected=expected, backup_id=b2.id)
        got, error = oracle.recover(c)
        assert not error, f"{c.describe()}: {error}"
        assert got == expected, expected.diff(got) if got else ""


def test_targets_on_timeline_1_are_planned_from_a_backup_of_timeline_1(oracle: Oracle) -> None:
    """After the branch, the newest backup (B2) is on timeline 2: a target on timeline 1's road not taken must not
    be planned from it (it used to be, by LSN, xid or "latest", and PostgreSQL then refused the timeline)."""
    b1, _ = oracle.backups["b1i"]  # the newest backup of timeline 1
    b2, _ = oracle.backups["b2"]
    tl1_only = [m for m in oracle.moments if m.path == "tl1" and m.kind == "commit"]
    assert tl1_only
    last = tl1_only[-1]
    assert last.end_lsn is not None
    assert last.xid is not None
    for target in (
        RecoveryTarget.lsn(last.end_lsn),
        RecoveryTarget.xid(last.xid),
        RecoveryTarget.latest(),
        RecoveryTarget.immediate(),
    ):
        assert RecoveryPlan(oracle.repo, target.with_timeline(1)).backup.id == b1.id, target.describe()
    assert RecoveryPlan(oracle.repo, RecoveryTarget.latest()).backup.id == b2.id  # latest follows timeline 2
    with pytest.raises(TargetUnreachable, match="not on the history of target timeline 1"):
        RecoveryPlan(oracle.repo, RecoveryTarget.latest().with_timeline(1), backup_id=b2.id)
    c = Candidate(kind="regression", path="tl1", target=RecoveryTarget.latest().with_timeline(1),
                  expected=oracle.finals["tl1"])  # fmt: skip
    got, error = oracle.recover(c)
    assert not error, error
    assert got == oracle.finals["tl1"], oracle.finals["tl1"].diff(got) if got else ""


def test_an_lsn_on_timeline_2_past_the_end_of_timeline_1_is_reachable(oracle: Oracle) -> None:
    """With the default target timeline (latest), validation used to look for the target LSN's segment on the
    backup's timeline 1, which ends before it, and refused a reachable target with a WalGap."""
    last = next(m for m in reversed(oracle.moments) if m.path == "tl2" and m.kind == "commit")
    assert last.end_lsn is not None
    tl1_end = max(segment_number(n, SEGMENT) for n in WalArchiver(oracle.repo).list_archived(1)[1] if is_segment(n))
    assert segment_number(f"00000002{_segment_of(last.end_lsn)}", SEGMENT) > tl1_end
    b1, _ = oracle.backups["b1"]
    c = Candidate(kind="regression", path="tl2", target=RecoveryTarget.lsn(last.end_lsn, inclusive=False),
                  expected=last.before, backup_id=b1.id)  # fmt: skip
    RecoveryPlan(oracle.repo, c.target, backup_id=b1.id).validate()
    got, error = oracle.recover(c)
    assert not error, error
    assert got == last.before, last.before.diff(got) if got else ""


def _segment_of(lsn: str) -> str:
    """The 16 hex digits after the timeline in the name of the segment holding ``lsn``."""
    hi, lo = (int(x, 16) for x in lsn.split("/"))
    segno = ((hi << 32) | lo) // SEGMENT
    return f"{segno // (0x100000000 // SEGMENT):08X}{segno % (0x100000000 // SEGMENT):08X}"


def _show(request: pytest.FixtureRequest, line: str) -> None:
    """Write ``line`` to the terminal past pytest's output capture."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)
