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


def run_demo(workdir: str | None = None, out: Callable[[str], None] | None = None) -> DemoReport:
    """Run the story; ``out`` receives a line per step as it happens."""
    report = DemoReport()
    say = out or (lambda _s: None)
    base = Path(tempfile.mkdtemp(prefix="pgrecovery-demo-", dir=workdir))
    base.chmod(0o755)  # the server's OS user must reach its data directory below
    t_all = time.monotonic()

    def step(name: str, detail: str, t0: float) -> None:
        s = Step(name=name, seconds=round(time.monotonic() - t0, 3), detail=detail)
        report.steps.append(s)
        say(f"  {s.seconds:7.2f} s  {name}: {detail}")

    say(f"pgrecovery demo in {base}")
    cluster = recovered = None
    try:
        t0 = time.monotonic()
        check_runnable_by()  # archive_command runs this interpreter as the server's OS user
        url = f"file://{_server_owned(base / 'repository')}"
        cluster = LocalCluster.temporary(
            parent=str(base),
            settings={"wal_level": "replica", "archive_mode": "on", "archive_command": archive_command(url)},
        )
        cluster.start()
        step(
            "sandbox cluster",
            f"PostgreSQL {cluster.major} initialised and started on port {cluster.port}, archiving WAL",
            t0,
        )

        t0 = time.monotonic()
        cluster.execute("create database shop")
        cluster.execute(SAMPLE_SCHEMA, dbname="shop")
        before = cluster.query(FINGERPRINT, dbname="shop")[0]
        step("sample data", f"database shop: customers, products, {before[0]} orders", t0)

        t0 = time.monotonic()
        repo = Repository(url)
        m = LogicalBackup(dbname=cluster.conninfo("shop")).run(repo)
        step(
            "logical backup",
            f"{m.id}: {human_bytes(m.raw_size or 0)} dumped, {human_bytes(m.size)} stored "
            f"({m.compression}), {m.summary.tables if m.summary else '?'} tables",
            t0,
        )

        t0 = time.monotonic()
        rep = Verifier(repo).verify(m.id, drill=True, drill_server=cluster.conninfo())
        step("verification", "; ".join(f"{c.name} {c.status}" for c in rep.checks), t0)
        report.ok &= rep.ok

        t0 = time.monotonic()
        cluster.execute("drop table orders", dbname="shop")
        step("accident", "DROP TABLE orders", t0)

        t0 = time.monotonic()
        res = LogicalRestore(repo, m.id).restore_table("orders", cluster.conninfo("shop"))
        after = cluster.query(FINGERPRINT, dbname="shop")[0]
        same = tuple(after) == tuple(before)
        report.ok &= same
        step(
            "table recovered",
            f"{res.rows} rows back from {m.id}; content "
            + ("identical to before the accident" if same else "DIFFERS from before the accident"),
            t0,
        )

        t0 = time.monotonic()
        b = BaseBackup(dbname=cluster.conninfo()).run(repo)
        step(
            "base backup",
            f"{b.id}: {human_bytes(b.raw_size or 0)} in {len(b.files) - 1} bundle(s), "
            f"{human_bytes(b.size)} stored, WAL from {b.physical.start_wal if b.physical else '?'}",
            t0,
        )

        t0 = time.monotonic()
        cluster.execute(WORKLOAD, dbname="shop")
        good = cluster.query(FINGERPRINT, dbname="shop")[0]
        (moment,) = cluster.query("select clock_timestamp()")[0]
        time.sleep(0.2)
        cluster.execute("delete from orders where ordered_at < '2026-02-20'", dbname="shop")
        left = cluster.query(FINGERPRINT, dbname="shop")[0]
        _archive_now(cluster)
        step(
            "accident",
            f"{good[0]} orders after a day of work, then DELETE left {left[0]} at "
            f"{datetime.now(UTC):%H:%M:%S}; WAL archived",
            t0,
        )

        t0 = time.monotonic()
        plan = RecoveryPlan(repo, RecoveryTarget.time(moment))
        plan.validate()
        result = plan.run(_server_owned(base / "recovered") / "data", archive=False)  # a copy to look at
        recovered = result.cluster
        back = recovered.query(FINGERPRINT, dbname="shop")[0]
        same = tuple(back) == tuple(good)
        report.ok &= same
        step(
            "point-in-time recovery",
            f"to {moment:%H:%M:%S.%f} from {result.backup_id}: {back[0]} orders, "
            + ("identical to the moment before the DELETE" if same else "DIFFERENT from before the DELETE")
            + f" (restore {result.restore_seconds:.2f} s, replay {result.recovery_seconds:.2f} s)",
            t0,
        )

        t0 = time.monotonic()
        rep = Verifier(repo).verify(b.id, drill=True)
        report.ok &= rep.ok
        step("base backup verified", "; ".join(f"{c.name} {c.status}" for c in rep.checks), t0)
    except Exception as e:  # noqa: BLE001 - the report shows any failure as its last step
        report.ok = False
        step("failed", str(e), t_all)
    finally:
        for c in (recovered, cluster):
            if c is not None:
                c.destroy()
        shutil.rmtree(base, ignore_errors=True)
    say(f"{'OK' if report.ok else 'FAILED'}: demo finished in {time.monotonic() - t_all:.1f} s")
    return report
