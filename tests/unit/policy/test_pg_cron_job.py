"""The pg_cron job's text, without a server: the command is quoted for the shell and then for SQL, paths are made
absolute, and no secret goes onto the command line."""

from __future__ import annotations

import shlex

import pytest

from pgrecovery.errors import ConfigurationError
from pgrecovery.policy.pg_cron import CronSchedule


def _unquote_sql(statement: str) -> str:
    head = "COPY (SELECT 1) TO PROGRAM "
    assert statement.startswith(head)
    literal = statement[len(head) :]
    if literal.startswith("E'"):
        body = literal[2:-1].replace("''", "'").replace("\\\\", "\\")
    else:
        body = literal[1:-1].replace("''", "'")
    return body


@pytest.mark.parametrize("policy", ["/etc/pgrecovery/shop.toml", "/srv/it's here/p.toml", "/srv/back\\slash/p.toml"])
def test_the_command_survives_both_quotings(policy: str) -> None:
    schedule = CronSchedule(
        policy_file=policy,
        cron=" * * * * * ",
        python="/opt/pgrecovery/bin/python",
        status_dbname="host=mon dbname=ops user=backup",
        state_dir="/var/lib/pgrecovery",
    )
    assert schedule.cron == "* * * * *"
    words = shlex.split(_unquote_sql(schedule.statement()))
    assert words == [
        "/opt/pgrecovery/bin/python",
        "-m",
        "pgrecovery",
        "run-policy",
        policy,
        "--status-dbname",
        "host=mon dbname=ops user=backup",
        "--state-dir",
        "/var/lib/pgrecovery",
    ]


def test_relative_paths_become_absolute() -> None:
    schedule = CronSchedule(policy_file="policy.toml", cron="0 * * * *", python="venv/bin/python", name="x")
    assert schedule.policy_file.startswith("/")
    assert schedule.python.startswith("/")
    assert schedule.job_name() == "x"


@pytest.mark.parametrize("conninfo", ["host=mon password=hunter2 dbname=ops", "postgresql://u:hunter2@mon/ops"])
def test_no_secret_on_the_command_line(conninfo: str) -> None:
    with pytest.raises(ConfigurationError, match="status-dbname carries a secret") as e:
        CronSchedule(policy_file="/p.toml", cron="* * * * *", status_dbname=conninfo)
    assert "hunter2" not in str(e.value)
