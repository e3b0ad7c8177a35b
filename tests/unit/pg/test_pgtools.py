from __future__ import annotations

import pytest

from pgrecovery import ConfigurationError
from pgrecovery.pgtools import PgTool, describe, pg_dump_command, public_conninfo, split_secret


def test_password_goes_to_environment_not_command_line() -> None:
    conninfo, env = split_secret("host=db1 port=5433 dbname=shop user=app password=s3cret")
    assert "s3cret" not in conninfo
    assert env == {"PGPASSWORD": "s3cret"}
    cmd = pg_dump_command(PgTool("pg_dump", __import__("pathlib").Path("/x/pg_dump"), 15, "15"), conninfo, fmt="custom")
    assert not any("s3cret" in c for c in cmd)


def test_uri_password_is_split_too() -> None:
    conninfo, env = split_secret("postgresql://app:s3cret@db1:5433/shop")
    assert "s3cret" not in conninfo
    assert env["PGPASSWORD"] == "s3cret"
    assert public_conninfo("postgresql://app:s3cret@db1:5433/shop") == {
        "host": "db1",
        "port": "5433",
        "user": "app",
        "dbname": "shop",
    }


def test_describe_never_shows_secrets() -> None:
    assert "s3cret" not in describe("host=db1 password=s3cret")
    assert describe("host=db1 dbname=x").startswith("host=db1")


def test_bad_conninfo() -> None:
    with pytest.raises(ConfigurationError, match="bad connection string"):
        split_secret("host=db1 password='unterminated")
