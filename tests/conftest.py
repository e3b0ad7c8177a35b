"""Shared fixtures: a real PostgreSQL server (LocalCluster) for the session, fresh databases and repositories."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgtesting import MAJORS, Major, major_or_skip

from pgrecovery import LocalCluster, Repository

_counter = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalCluster]:
    """One throwaway cluster (initdb'd by LocalCluster, data checksums on) for the whole session."""
    cluster = LocalCluster.temporary(settings={"fsync": False, "max_connections": 50})
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session", params=MAJORS, ids=lambda n: f"pg{n}")
def major(request: pytest.FixtureRequest) -> Major:
    """A PostgreSQL major (15 from the distribution, 16-18 from the wheels of the ``majors`` extra) and its bindir.

    Use ``major.active()`` to point the library at it; narrow the majors with
    ``@pytest.mark.parametrize("major", [16, 17], indirect=True)``. A missing one skips (fails under nox)."""
    return major_or_skip(int(request.param))


@pytest.fixture
def fresh_db(pg: LocalCluster) -> Iterator[str]:
    """A new empty database on the session cluster; returns its conninfo and drops it afterwards."""
    name = f"t{next(_counter)}_{os.getpid()}"
    conninfo = pg.create_database(name)
    yield conninfo
    pg.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def db_name(fresh_db: str) -> str:
    from pgrecovery.pgtools import conninfo_dict

    return conninfo_dict(fresh_db)["dbname"]


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """A local-disk repository in the test's temporary directory."""
    return Repository(f"file://{tmp_path}/repo")
