"""Restore drills on schemas as real applications have them: partitioned tables with primary keys (range, list,
default partitions, several levels), inheritance, unlogged tables, large objects, materialized views, TOASTed rows,
every index access method PostgreSQL ships; invalid indexes in the source; servers without amcheck; and the ports
drill sandboxes listen on."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs
import psycopg
import pytest
from pgtesting import Archiving, owned_tmpdir, run_cli

from pgrecovery import (
    BaseBackup,
    ClusterError,
    ConfigurationError,
    LogicalBackup,
    Repository,
    VerificationReport,
    Verifier,
    pgtools,
)
from pgrecovery.cluster import free_port
from pgrecovery.manifest import CHECKSUM_FIELD, BackupManifest, _content_digest

SHOP = """
create sequence invoice_no start 1000;
select nextval('invoice_no') from generate_series(1, 5);

-- list partitioning with a default partition; the primary key makes partitioned indexes (relkind 'I')
create table customer (id int not null, region text not null, name text not null, primary key (id, region))
    partition by list (region);
create table customer_eu partition of customer for values in ('eu', 'uk');
create table customer_us partition of customer for values in ('us');
create table customer_other partition of customer default;

-- range partitioning on two levels (the second by list), default partitions, a foreign key to a partitioned table
create table payment (
    id bigint generated always as identity,
    paid_at date not null,
    region text not null,
    customer_id int not null,
    amount numeric(10, 2) not null check (amount >= 0),
    primary key (id, paid_at, region),
    foreign key (customer_id, region) references customer (id, region)
) partition by range (paid_at);
create table payment_2025 partition of payment for values from ('2025-01-01') to ('2026-01-01');
create table payment_2026 partition of payment for values from ('2026-01-01') to ('2027-01-01')
    partition by list (region);
create table payment_2026_eu partition of payment_2026 for values in ('eu', 'uk');
create table payment_2026_other partition of payment_2026 default;
create table payment_default partition of payment default;
create index payment_customer on payment (customer_id);

-- inheritance
create table city (id int primary key, name text not null unique, population int not null);
create table capital (country text not null) inherits (city);
alter table capital add primary key (id);

-- an unlogged table (a base backup restores it empty) with a GIN index
create unlogged table session_cache (key text primary key, data jsonb not null);
create index session_cache_data on session_cache using gin (data);

-- one index of every other access method, an exclusion constraint (GiST), a foreign key
create table place (
    id int primary key,
    name text not null,
    location point not null,
    tags text[] not null,
    seen_at timestamptz not null
);
create index place_name_hash on place using hash (name);
create index place_location on place using gist (location);
create index place_tags on place using gin (tags);
create index place_name_spgist on place using spgist (name);
create index place_seen on place using brin (seen_at);
create table booking (
    id serial primary key,
    place_id int not null references place,
    during tsrange not null,
    exclude using gist (during with &&)
);

-- rows stored out of line (TOAST)
create table document (id int primary key, body text not null);
alter table document alter column body set storage external;

insert into customer select i, (array['eu', 'uk', 'us', 'br'])[1 + i % 4], 'customer ' || i
    from generate_series(1, 200) i;
insert into payment (paid_at, region, customer_id, amount)
    select date '2024-12-01' + (i % 800), c.region, c.id, (i % 97)::numeric
    from generate_series(1, 2000) i join customer c on c.id = 1 + i % 200;
insert into city select i, 'city ' || i, i * 1000 from generate_series(1, 40) i;
insert into capital select i, 'capital ' || i, i * 5000, 'country ' || i from generate_series(41, 50) i;
insert into session_cache select 'k' || i, jsonb_build_object('n', i) from generate_series(1, 30) i;
insert into place
    select i, 'place ' || i, point(i, i), array['t' || i % 5], timestamptz '2026-01-01 00:00+00' + i * interval '1 hour'
    from generate_series(1, 300) i;
insert into booking (place_id, during)
    select 1 + i % 300, tsrange(day, day + interval '1 day')
    from generate_series(1, 100) i, lateral (select timestamp '2026-01-01' + i * interval '1 day' as day) d;
insert into document select i, repeat(md5(i::text), 200) from generate_series(1, 50) i;
select lo_from_bytea(0, convert_to(repeat('large object ', 1000 * i), 'UTF8')) from generate_series(1, 3) i;

create materialized view payment_totals as
    select customer_id, region, count(*) as payments, sum(amount) as total from payment group by 1, 2;
create unique index payment_totals_key on payment_totals (customer_id, region);
"""

# The index access methods other than B-tree in SHOP, as the drill names those amcheck cannot check
NOT_TARGETS = "not amcheck targets: 1 brin, 2 gin, 2 gist, 1 hash, 1 spgist"

FLAWED = """
create table dup (i int);
insert into dup values (1), (1);
create table ledger (id int not null, booked date not null, primary key (id, booked)) partition by range (booked);
create table ledger_2025 partition of ledger for values from ('2025-01-01') to ('2026-01-01');
create table ledger_2026 partition of ledger for values from ('2026-01-01') to ('2027-01-01');
insert into ledger select i, date '2025-06-01' + i from generate_series(1, 400) i;
-- an index on the parent ONLY, attached to one partition of two: it stays invalid
create index ledger_booked on only ledger (booked);
create index ledger_2025_booked on ledger_2025 (booked);
alter index ledger_booked attach partition ledger_2025_booked;
"""


@attrs.frozen
class Source:
    """A server archiving into its repository, with the database ``shop`` holding SHOP, and a backup of each kind."""

    ctx: Archiving
    logical: BackupManifest
    base: BackupManifest

    @property
    def repo(self) -> Repository:
        return self.ctx.repo

    def conninfo(self, dbname: str = "postgres") -> str:
        return self.ctx.pg.conninfo(dbname)


@pytest.fixture(scope="module")
def source() -> Iterator[Source]:
    ctx = Archiving("pgrecovery-drill")
    try:
        ctx.pg.start()
        ctx.pg.create_database("shop")
        ctx.pg.execute(SHOP, dbname="shop")
        # the fixture is what it claims: rows stored out of line, partitioned indexes
        assert ctx.pg.query(
            "select pg_relation_size(reltoastrelid) > 0 from pg_class where relname = 'document'", dbname="shop"
        ) == [(True,)]
        assert ctx.pg.query("select count(*) >= 3 from pg_class where relkind = 'I'", dbname="shop") == [(True,)]
        logical = LogicalBackup(dbname=ctx.pg.conninfo("shop")).run(ctx.repo)
        base = BaseBackup(dbname=ctx.pg.conninfo()).run(ctx.repo)
        yield Source(ctx=ctx, logical=logical, base=base)
    finally:
        ctx.close()


def _tables(conninfo: str, *, unlogged: bool) -> int:
    """How many tables (plain and partitioned; unlogged ones too, or not) the database has: what a drill compares."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where c.relkind in ('r', 'p') and (c.relpersistence = 'p' or %s) "
            "and n.nspname not in ('pg_catalog', 'information_schema')",
            (unlogged,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _statuses(report: VerificationReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def _check(report: VerificationReport, name: str) -> str:
    return next(c.detail for c in report.checks if c.name == name)


# -- a realistic schema --------------------------------------------------------------------------------------


def test_logical_drill_passes_on_a_realistic_schema(source: Source) -> None:
    report = Verifier(source.repo).verify(source.logical.id, drill=True)
    assert _statuses(report) == {"checksums": "pass", "readable": "pass", "restore-drill": "pass", "row-counts": "pass"}
    drill = _check(report, "restore-drill")
    assert "1 materialized view(s)" in drill
    assert "3 large object(s)" in drill
    assert re.search(r"amcheck: \d+ B-tree index\(es\) checked", drill), drill
    assert NOT_TARGETS in drill
    tables = _tables(source.conninfo("shop"), unlogged=True)  # a dump holds their rows
    assert _check(report, "row-counts") == f"{tables} table(s) have the same row counts as the source"


def test_base_drill_passes_on_a_realistic_schema(source: Source) -> None:
    """Partitioned indexes are not given to amcheck (it rejects them), indexes of other access methods are named
    as not checkable, and the unlogged table, empty after a base backup's restore, is not counted as a difference."""
    report = Verifier(source.repo).verify(source.base.id, drill=True)
    assert _statuses(report) == {"checksums": "pass", "restore-drill": "pass", "row-counts": "pass"}, report.to_dict()
    drill = _check(report, "restore-drill")
    assert re.search(r"amcheck: \d+ B-tree index\(es\) checked", drill), drill
    assert NOT_TARGETS in drill  # PostgreSQL's own catalogs have only B-tree indexes
    assert "3 large object(s)" in drill
    databases = [r[0] for r in source.ctx.pg.query("select datname from pg_database where datallowconn")]
    tables = sum(_tables(source.conninfo(db), unlogged=False) for db in databases)
    assert _check(report, "row-counts") == (
        f"{tables} table(s) have the same row counts as the source; "
        "1 unlogged table(s) not compared (a base backup restores them empty)"
    )


# -- invalid indexes in the source ---------------------------------------------------------------------------


@pytest.fixture
def flawed(source: Source) -> Iterator[str]:
    """A database with two invalid indexes: a failed CREATE UNIQUE INDEX CONCURRENTLY, and a partitioned index
    created ON ONLY its table with one partition of two attached. Dropped afterwards."""
    pg = source.ctx.pg
    pg.create_database("flawed")
    try:
        pg.execute(FLAWED, dbname="flawed")
        with pytest.raises(psycopg.errors.UniqueViolation):
            pg.execute("create unique index concurrently dup_i on dup (i)", dbname="flawed")
        invalid = pg.query(
            "select c.relname from pg_index x join pg_class c on c.oid = x.indexrelid "
            "where not x.indisvalid order by 1",
            dbname="flawed",
        )
        assert invalid == [("dup_i",), ("ledger_booked",)]
        yield "flawed"
    finally:
        pg.execute('drop database if exists "flawed" with (force)')


def _rewrite(repo: Repository, m: BackupManifest, record: dict[str, list[str]] | None) -> None:
    """Store backup ``m``'s manifest again with another record of invalid indexes; None: without the field, as a
    manifest written before it existed."""
    data = attrs.evolve(m, invalid_indexes=record).to_dict()
    if record is None:
        del data["invalid_indexes"]
    data[CHECKSUM_FIELD] = _content_digest(data)
    (Path(repo.root) / "backups" / m.id / "manifest.json").write_text(json.dumps(data))


def test_logical_drill_tells_faithful_invalid_indexes_from_damage(source: Source, flawed: str) -> None:
    m = LogicalBackup(dbname=source.conninfo(flawed)).run(source.repo)
    assert m.invalid_indexes == {flawed: ("public.dup_i", "public.ledger_booked")}
    assert source.repo.get(m.id).invalid_indexes == m.invalid_indexes  # stored, and read back

    # pg_dump leaves the failed index out; the partitioned one is restored as the source has it, invalid
    report = Verifier(source.repo).verify(m.id, drill=True)
    assert report.ok, report.to_dict()
    assert _statuses(report)["restore-drill"] == "warn"
    assert "1 index(es) invalid as in the source (a faithful copy): public.ledger_booked" in _check(
        report, "restore-drill"
    )
    assert _statuses(report)["row-counts"] == "pass"

    # had the partitioned index been valid at backup time, an invalid one after the restore is damage
    _rewrite(source.repo, m, {flawed: ["public.dup_i"]})
    report = Verifier(source.repo).verify(m.id, drill=True)
    assert not report.ok
    assert [c.name for c in report.failures] == ["restore-drill"]
    assert "1 index(es) invalid after the restore but valid in the source: public.ledger_booked" in _check(
        report, "restore-drill"
    )

    # a backup taken before pgrecovery recorded index state still verifies: it cannot tell, and says so
    _rewrite(source.repo, m, None)
    old = source.repo.get(m.id)
    assert old.invalid_indexes is None
    report = Verifier(source.repo).verify(m.id, drill=True)
    assert report.ok
    assert _statuses(report)["restore-drill"] == "warn"
    assert "the backup did not record the source's index state" in _check(report, "restore-drill")


def test_base_drill_tells_faithful_invalid_indexes_from_damage(source: Source, flawed: str) -> None:
    m = BaseBackup(dbname=source.conninfo()).run(source.repo)
    assert m.invalid_indexes is not None
    assert m.invalid_indexes[flawed] == ("public.dup_i", "public.ledger_booked")
    assert m.invalid_indexes["shop"] == ()

    # a physical copy has both, invalid as in the source
    report = Verifier(source.repo).verify(m.id, drill=True)
    assert report.ok, report.to_dict()
    assert _statuses(report)["restore-drill"] == "warn"
    assert (
        "flawed: 2 index(es) invalid as in the source (a faithful copy): public.dup_i, public.ledger_booked"
        in _check(report, "restore-drill")
    )

    _rewrite(source.repo, m, {**{k: list(v) for k, v in m.invalid_indexes.items()}, flawed: ["public.ledger_booked"]})
    report = Verifier(source.repo).verify(m.id, drill=True)
    assert [c.name for c in report.failures] == ["restore-drill"]
    drill = _check(report, "restore-drill")
    assert "flawed: 1 index(es) invalid after the restore but valid in the source: public.dup_i" in drill
    assert "flawed: 1 index(es) invalid as in the source (a faithful copy): public.ledger_booked" in drill


def test_stream_base_backup_records_invalid_indexes(source: Source, flawed: str) -> None:
    m = BaseBackup(dbname=source.conninfo(), method="stream").run(source.repo)
    assert m.invalid_indexes is not None
    assert m.invalid_indexes[flawed] == ("public.dup_i", "public.ledger_booked")


# -- a server without amcheck ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def without_amcheck() -> Iterator[Path]:
    """A copy of this host's PostgreSQL installation without the amcheck extension, as on a server installed
    without its contrib modules. Programs are copied (a server finds its shared files relative to its own
    program), shared files too except amcheck's, libraries are linked. Nothing of the system is changed."""
    bindir = pgtools.find_tool("postgres").bindir
    pg_config = bindir / "pg_config"
    if not pg_config.exists():
        pytest.skip("pg_config is needed to copy the PostgreSQL installation")

    def where(option: str) -> Path:
        return Path(subprocess.run([str(pg_config), option], capture_output=True, text=True, check=True).stdout.strip())

    dirs = {"bin": where("--bindir"), "share": where("--sharedir"), "lib": where("--pkglibdir")}
    common = Path(os.path.commonpath([str(d) for d in dirs.values()]))
    root = owned_tmpdir("pgrecovery-no-amcheck-")
    copies = {k: root / d.relative_to(common) for k, d in dirs.items()}
    shutil.copytree(dirs["bin"], copies["bin"], symlinks=False)
    shutil.copytree(dirs["share"], copies["share"], ignore=shutil.ignore_patterns("amcheck*"))
    copies["lib"].mkdir(parents=True, exist_ok=True)
    for lib in dirs["lib"].iterdir():
        if not lib.name.startswith("amcheck"):
            (copies["lib"] / lib.name).symlink_to(lib)
    for here, subdirs, _ in os.walk(root):
        for d in subdirs:
            os.chmod(os.path.join(here, d), 0o755)
    yield copies["bin"]
    shutil.rmtree(root, ignore_errors=True)


def test_drills_without_amcheck_say_so_and_still_count_rows(
    source: Source, without_amcheck: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGRECOVERY_PG_BINDIR", str(without_amcheck))  # the drills' sandbox servers
    for m in (source.logical, source.base):
        report = Verifier(source.repo).verify(m.id, drill=True)
        assert report.ok, report.to_dict()
        assert _statuses(report)["restore-drill"] == "warn", m.kind
        assert _statuses(report)["row-counts"] == "pass", m.kind
        drill = _check(report, "restore-drill")
        assert drill.endswith("amcheck: skipped, not installed"), drill
        assert "row(s)" in drill


# -- ports -----------------------------------------------------------------------------------------------------


def _free_range(size: int) -> range:
    """``size`` consecutive ports nothing listens on now."""

    def free(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

    for _ in range(50):
        low = free_port()
        ports = range(low, low + size)
        if ports[-1] <= 65535 and all(free(p) for p in ports):
            return ports
    pytest.skip("no run of free ports found")


def _sandbox_port(detail: str) -> int:
    found = re.search(r"on a sandbox at port (\d+):", detail)
    assert found, detail
    return int(found.group(1))


def test_drill_sandboxes_listen_on_the_given_ports(source: Source) -> None:
    ports = _free_range(3)
    with socket.socket() as busy:  # the first port of the range is taken: the next one is used
        busy.bind(("127.0.0.1", ports[0]))
        busy.listen()
        verifier = Verifier(source.repo, ports=ports)
        for m in (source.logical, source.base):
            report = verifier.verify(m.id, drill=True)
            assert report.ok, report.to_dict()
            assert _sandbox_port(_check(report, "restore-drill")) in ports[1:], m.kind

        with pytest.raises(ClusterError) as err:
            Verifier(source.repo, ports=ports[0]).verify(source.logical.id, drill=True)
        assert str(err.value) == (
            f"no free port for a PostgreSQL server in {ports[0]} (it is in use): give more ports or free one"
        )


def test_bad_ports_are_refused(source: Source) -> None:
    with pytest.raises(ConfigurationError, match="the port range is empty"):
        Verifier(source.repo, ports=range(0))
    with pytest.raises(ConfigurationError, match="70000 is not a TCP port"):
        Verifier(source.repo, ports=[5432, 70000])


_cli = run_cli


def test_cli_drill_port(source: Source, capsys: pytest.CaptureFixture[str]) -> None:
    ports = _free_range(2)
    url, backup = source.ctx.url, source.logical.id
    code, out, err = _cli(
        capsys, "--repo", url, "verify", backup, "--drill", "--drill-port", f"{ports[0]}-{ports[-1]}", "--json"
    )
    assert code == 0, err
    drill = next(c for c in json.loads(out)["checks"] if c["name"] == "restore-drill")
    assert _sandbox_port(drill["detail"]) in ports

    for bad, says in (
        ("abc", "'abc' is not a port or a port range: use PORT or LOW-HIGH"),
        ("5500-5400", "port range '5500-5400' ends before it starts"),
        ("0-10", "0 is not a TCP port"),
    ):
        code, out, err = _cli(capsys, "--repo", url, "verify", backup, "--drill", "--drill-port", bad)
        assert code == 2, bad
        assert out == ""
        assert len(err.strip().splitlines()) == 1, err
        assert says in err

    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the drill's connections may linger in TIME_WAIT
        busy.bind(("127.0.0.1", ports[0]))
        busy.listen()
        code, out, err = _cli(capsys, "--repo", url, "verify", backup, "--drill", "--drill-port", str(ports[0]))
    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert f"no free port for a PostgreSQL server in {ports[0]} (it is in use)" in err
