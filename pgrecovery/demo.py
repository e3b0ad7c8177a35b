"""The demonstration behind ``pgrecovery demo`` and ``nox -s demo``: a real cluster, real backups, a real rescue.

Everything happens in a sandbox (a temporary directory with its own PostgreSQL server and repository) that is
removed at the end.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from .cluster import LocalCluster
from .logical import LogicalBackup
from .progress import human_bytes
from .restore import LogicalRestore
from .storage import Repository
from .verify import Verifier

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
    cluster = None
    try:
        t0 = time.monotonic()
        cluster = LocalCluster.temporary(parent=str(base))
        cluster.start()
        step(
            "sandbox cluster",
            f"PostgreSQL {cluster.major} initialised and started on port {cluster.port}",
            t0,
        )

        t0 = time.monotonic()
        cluster.execute("create database shop")
        cluster.execute(SAMPLE_SCHEMA, dbname="shop")
        before = cluster.query(FINGERPRINT, dbname="shop")[0]
        step("sample data", f"database shop: customers, products, {before[0]} orders", t0)

        t0 = time.monotonic()
        repo = Repository(f"file://{base}/repository")
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
    except Exception as e:  # noqa: BLE001 - the report shows any failure as its last step
        report.ok = False
        step("failed", str(e), t_all)
    finally:
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
    say(f"{'OK' if report.ok else 'FAILED'}: demo finished in {time.monotonic() - t_all:.1f} s")
    return report
