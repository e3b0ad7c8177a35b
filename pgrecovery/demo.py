"""The demonstration behind ``pgrecovery demo`` and ``nox -s demo``: a real cluster, real backups, a real rescue.

Everything happens in a sandbox (a temporary directory with its own PostgreSQL server and repository) that is
removed at the end.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from .cluster import LocalCluster, check_runnable_by, default_run_as
from .logical.backup import LogicalBackup
from .logical.restore import LogicalRestore
from .manifest import BackupManifest
from .physical.backup import BaseBackup
from .progress import human_bytes
from .recovery.plan import RecoveryPlan, RecoveryTarget
from .repository import Repository
from .verify import Verifier
from .wal.archiver import archive_command

SAMPLE_SCHEMA = """
create table customers (
    id bigint generated always as identity primary key,
    name text not null,
    email text unique not null,
    joined timestamptz not null default now()
);
create table products (
    id serial primary key,
    title text not null,
    price numeric(10, 2) not null check (price >= 0),
    tags text[] not null default '{}'
);
create table orders (
    id bigserial primary key,
    customer_id bigint not null references customers,
    product_id int not null references products,
    quantity int not null check (quantity > 0),
    details jsonb not null,
    ordered_at timestamptz not null
);
create index orders_customer_idx on orders (customer_id);
comment on table orders is 'what customers bought';
insert into customers (name, email, joined)
    select 'customer ' || i, 'c' || i || '@example.org', timestamptz '2026-01-01' + i * interval '17 minutes'
    from generate_series(1, 5000) i;
insert into products (title, price, tags)
    select 'product ' || i, (i % 97) + 0.99, array['tag' || (i % 7), 'tag' || (i % 11)]
    from generate_series(1, 300) i;
insert into orders (customer_id, product_id, quantity, details, ordered_at)
    select 1 + (i::bigint * 7919) % 5000, 1 + (i::bigint * 104729) % 300, 1 + i % 5,
           jsonb_build_object('note', md5(i::text), 'gift', i % 13 = 0),
           timestamptz '2026-02-01' + i * interval '41 seconds'
    from generate_series(1, 60000) i;
"""

WORKLOAD = """
insert into orders (customer_id, product_id, quantity, details, ordered_at)
    select 1 + (i::bigint * 31) % 5000, 1 + (i::bigint * 17) % 300, 1 + i % 3,
           jsonb_build_object('note', md5((i * 3)::text), 'gift', false),
           timestamptz '2026-03-01' + i * interval '7 seconds'
    from generate_series(1, 20000) i;
update products set price = price * 1.05 where id % 10 = 0;
"""

FINGERPRINT = "select count(*), md5(string_agg(o::text, ',' order by o.id)) from orders o"


@attrs.frozen(kw_only=True)
class Step:
    name: str
    seconds: float
    detail: str


@attrs.define
class DemoReport:
    steps: list[Step] = attrs.field(factory=list)
    ok: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "steps": [attrs.asdict(s) for s in self.steps]}


def _server_owned(path: Path) -> Path:
    """A directory the server's OS user owns (the WAL archive and the recovered data directory)."""
    path.mkdir(mode=0o750, exist_ok=True)
    who = default_run_as()
    if who is not None:
        pw = pwd.getpwnam(who)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def _archive_now(cluster: LocalCluster, timeout: float = 60) -> None:
    (wal,) = cluster.query("select pg_walfile_name(pg_switch_wal())")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (last,) = cluster.query("select last_archived_wal from pg_stat_archiver")[0]
        if last is not None and last >= wal:
            return
        time.sleep(0.1)
    raise TimeoutError(f"WAL {wal} was not archived within {timeout:.0f} s: see the server log")


@attrs.define
class _Sandbox:
    """What the story's steps share: the sandbox directory, its servers and repository, and what they found."""

    base: Path
    url: str = ""
    repository: Repository | None = None
    cluster: LocalCluster | None = None
    recovered: LocalCluster | None = None
    before: tuple[Any, ...] = ()  # the orders' fingerprint before the first accident
    logical: BackupManifest | None = None
    base_backup: BackupManifest | None = None
    good: tuple[Any, ...] = ()  # the fingerprint the moment before the second accident
    moment: datetime | None = None

    @property
    def pg(self) -> LocalCluster:
        assert self.cluster is not None, "the sandbox cluster is started first"
        return self.cluster

    @property
    def repo(self) -> Repository:
        assert self.repository is not None, "the repository is made with the sandbox cluster"
        return self.repository

    def fingerprint(self, cluster: LocalCluster | None = None) -> tuple[Any, ...]:
        return tuple((cluster or self.pg).query(FINGERPRINT, dbname="shop")[0])

    def remove(self) -> None:
        for c in (self.recovered, self.cluster):
            if c is not None:
                c.destroy()
        shutil.rmtree(self.base, ignore_errors=True)


# A step of the story: it acts on the sandbox and returns (name, detail, whether it went as it should).
Outcome = tuple[str, str, bool]


def _start(sb: _Sandbox) -> Outcome:
    check_runnable_by()  # archive_command runs this interpreter as the server's OS user
    sb.url = f"file://{_server_owned(sb.base / 'repository')}"
    sb.cluster = LocalCluster.temporary(
        parent=str(sb.base),
        settings={"wal_level": "replica", "archive_mode": "on", "archive_command": archive_command(sb.url)},
    )
    sb.cluster.start()
    sb.repository = Repository(sb.url)
    detail = f"PostgreSQL {sb.cluster.major} initialised and started on port {sb.cluster.port}, archiving WAL"
    return "sandbox cluster", detail, True


def _sample_data(sb: _Sandbox) -> Outcome:
    sb.pg.execute("create database shop")
    sb.pg.execute(SAMPLE_SCHEMA, dbname="shop")
    sb.before = sb.fingerprint()
    return "sample data", f"database shop: customers, products, {sb.before[0]} orders", True


def _logical_backup(sb: _Sandbox) -> Outcome:
    m = sb.logical = LogicalBackup(dbname=sb.pg.conninfo("shop")).run(sb.repo)
    return (
        "logical backup",
        f"{m.id}: {human_bytes(m.raw_size or 0)} dumped, {human_bytes(m.size)} stored "
        f"({m.compression}), {m.summary.tables if m.summary else '?'} tables",
        True,
    )


def _verify(
    backup: Callable[[_Sandbox], BackupManifest | None], name: str, on_server: bool
) -> Callable[[_Sandbox], Outcome]:
    def verify(sb: _Sandbox) -> Outcome:
        m = backup(sb)
        assert m is not None
        # the base backup is verified after the story's DELETE: its rows are compared with the moment it was
        # taken (the PITR step did that), not with the changed live database, which would only warn
        rep = Verifier(sb.repo).verify(
            m.id, drill=True, drill_server=sb.pg.conninfo() if on_server else None, compare_source=on_server
        )
        return name, "; ".join(f"{c.name} {c.status}" for c in rep.checks), rep.ok

    return verify


def _drop_table(sb: _Sandbox) -> Outcome:
    sb.pg.execute("drop table orders", dbname="shop")
    return "accident", "DROP TABLE orders", True


def _recover_table(sb: _Sandbox) -> Outcome:
    assert sb.logical is not None
    res = LogicalRestore(sb.repo, sb.logical.id).restore_table("orders", sb.pg.conninfo("shop"))
    same = sb.fingerprint() == sb.before
    content = "identical to before the accident" if same else "DIFFERS from before the accident"
    return "table recovered", f"{res.rows} rows back from {sb.logical.id}; content {content}", same


def _base_backup(sb: _Sandbox) -> Outcome:
    b = sb.base_backup = BaseBackup(dbname=sb.pg.conninfo()).run(sb.repo)
    return (
        "base backup",
        f"{b.id}: {human_bytes(b.raw_size or 0)} in {len(b.files) - 1} bundle(s), "
        f"{human_bytes(b.size)} stored, WAL from {b.physical.start_wal if b.physical else '?'}",
        True,
    )


def _delete_rows(sb: _Sandbox) -> Outcome:
    sb.pg.execute(WORKLOAD, dbname="shop")
    sb.good = sb.fingerprint()
    (sb.moment,) = sb.pg.query("select clock_timestamp()")[0]
    time.sleep(0.2)
    sb.pg.execute("delete from orders where ordered_at < '2026-02-20'", dbname="shop")
    left = sb.fingerprint()
    _archive_now(sb.pg)
    return (
        "accident",
        f"{sb.good[0]} orders after a day of work, then DELETE left {left[0]} at {datetime.now(UTC):%H:%M:%S}; "
        "WAL archived",
        True,
    )


def _point_in_time(sb: _Sandbox) -> Outcome:
    assert sb.moment is not None
    plan = RecoveryPlan(sb.repo, RecoveryTarget.time(sb.moment))
    plan.validate()
    result = plan.run(_server_owned(sb.base / "recovered") / "data", archive=False)  # a copy to look at
    sb.recovered = result.cluster
    back = sb.fingerprint(sb.recovered)
    same = back == sb.good
    return (
        "point-in-time recovery",
        f"to {sb.moment:%H:%M:%S.%f} from {result.backup_id}: {back[0]} orders, "
        + ("identical to the moment before the DELETE" if same else "DIFFERENT from before the DELETE")
        + f" (restore {result.restore_seconds:.2f} s, replay {result.recovery_seconds:.2f} s)",
        same,
    )


# The story, in order: each step runs once the ones before it went through (a failure ends it).
STORY: list[Callable[[_Sandbox], Outcome]] = [
    _start,
    _sample_data,
    _logical_backup,
    _verify(lambda sb: sb.logical, "verification", on_server=True),
    _drop_table,
    _recover_table,
    _base_backup,
    _delete_rows,
    _point_in_time,
    _verify(lambda sb: sb.base_backup, "base backup verified", on_server=False),
]


def run_demo(workdir: str | None = None, out: Callable[[str], None] | None = None) -> DemoReport:
    """Run the story; ``out`` receives a line per step as it happens."""
    report = DemoReport()
    say = out or (lambda _s: None)
    sandbox = _Sandbox(base=Path(tempfile.mkdtemp(prefix="pgrecovery-demo-", dir=workdir)))
    sandbox.base.chmod(0o755)  # the server's OS user must reach its data directory below
    t_all = time.monotonic()

    def step(name: str, detail: str, t0: float) -> None:
        s = Step(name=name, seconds=round(time.monotonic() - t0, 3), detail=detail)
        report.steps.append(s)
        say(f"  {s.seconds:7.2f} s  {name}: {detail}")

    say(f"pgrecovery demo in {sandbox.base}")
    try:
        for action in STORY:
            t0 = time.monotonic()
            name, detail, ok = action(sandbox)
            report.ok &= ok
            step(name, detail, t0)
    except Exception as e:  # noqa: BLE001 - the report shows any failure as its last step
        report.ok = False
        step("failed", str(e), t_all)
    finally:
        sandbox.remove()
    say(f"{'OK' if report.ok else 'FAILED'}: demo finished in {time.monotonic() - t_all:.1f} s")
    return report
