"""Backup policies without a server: parsing and its errors, schedules, due decisions, state, lock, dry run, CLI.

Jobs that need no PostgreSQL server do the running here: ``copy`` between local repositories, and
``wal-cleanup`` on a repository without base backups (which fails: the failing job). A fake clock (``now=``)
moves time; every schedule is in UTC.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fakes import put_logical_backup
from hypothesis import given, settings
from hypothesis import strategies as st

from pgrecovery import ConfigurationError, PolicyLocked, Repository
from pgrecovery.cli.main import main
from pgrecovery.policy import (
    BackupPolicy,
    Job,
    RepositoryRef,
    Schedule,
    load_policy,
    run_policy,
    state_paths,
)

SUNDAY = datetime(2026, 3, 15, tzinfo=UTC)  # a Sunday, 00:00 UTC
H = timedelta(hours=1)
DAY = timedelta(days=1)


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A time in March 2026 (the 15th is a Sunday)."""
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


# -- schedules ---------------------------------------------------------------------------------------------------


def test_daily_at_fires_once_a_day_at_that_time() -> None:
    s = Schedule(every="1d", at="02:00")
    assert s.previous(at(15, 1, 59)) == at(14, 2)
    assert s.previous(at(15, 2, 0)) == at(15, 2)
    assert s.previous(at(15, 23, 59)) == at(15, 2)
    assert s.following(at(15, 2, 0)) == at(16, 2)
    # across a month and a year boundary
    assert s.previous(datetime(2026, 3, 1, 1, tzinfo=UTC)) == datetime(2026, 2, 28, 2, tzinfo=UTC)
    assert s.previous(datetime(2027, 1, 1, 0, 30, tzinfo=UTC)) == datetime(2026, 12, 31, 2, tzinfo=UTC)


def test_weekly_on_sunday_across_the_week_boundary() -> None:
    s = Schedule(every="7d", on="sunday", at="03:00")
    assert s.previous(at(15, 2, 59)) == at(8, 3)  # Sunday before 03:00: the Sunday before
    assert s.previous(at(15, 3, 0)) == at(15, 3)
    assert s.previous(at(21, 23, 0)) == at(15, 3)  # Saturday
    assert s.previous(at(16, 0, 0)) == at(15, 3)  # Monday
    assert s.following(at(15, 3, 0)) == at(22, 3)
    assert Schedule(every="1w").previous(at(15, 12)) == at(9)  # without `on`: Mondays 00:00


def test_hours_and_minutes() -> None:
    assert Schedule(every="6h").previous(at(15, 13, 5)) == at(15, 12)
    assert Schedule(every="6h", at="02:00").previous(at(15, 13, 5)) == at(15, 8)
    assert Schedule(every="15m").previous(at(15, 13, 44)) == at(15, 13, 30)
    assert Schedule(every="1h", at="00:30").following(at(15, 13, 30)) == at(15, 14, 30)


def test_naive_and_other_zones_are_taken_in_utc() -> None:
    from datetime import timezone

    s = Schedule(every="1d", at="02:00")
    assert s.previous(datetime(2026, 3, 15, 1, 59)) == at(14, 2)  # naive: UTC
    paris = timezone(timedelta(hours=1))
    assert s.previous(datetime(2026, 3, 15, 3, 30, tzinfo=paris)) == at(15, 2)  # 02:30 UTC


@pytest.mark.parametrize(
    ("expr", "now", "previous", "following"),
    [
        ("0 3 * * 0", at(15, 2, 59), at(8, 3), at(15, 3)),
        ("0 3 * * 7", at(15, 3, 0), at(15, 3), at(22, 3)),  # 7 is Sunday too
        ("0 3 * * sun", at(17, 12), at(15, 3), at(22, 3)),
        ("*/15 * * * *", at(15, 13, 44), at(15, 13, 30), at(15, 13, 45)),
        ("30 2 * * mon-fri", at(15, 12), at(13, 2, 30), at(16, 2, 30)),
        ("0 0 1 * *", datetime(2026, 1, 1, tzinfo=UTC) - H, datetime(2025, 12, 1, tzinfo=UTC), at(1) - 59 * DAY),
        ("0 12 1,15 * *", at(14), at(1, 12), at(15, 12)),
        ("5 4 * jan,jul *", at(15), datetime(2026, 1, 31, 4, 5, tzinfo=UTC), datetime(2026, 7, 1, 4, 5, tzinfo=UTC)),
        ("0 0 29 2 *", at(15), datetime(2024, 2, 29, tzinfo=UTC), datetime(2028, 2, 29, tzinfo=UTC)),
        ("0 8-18/5 * * *", at(15, 12), at(15, 8), at(15, 13)),
        ("@weekly", at(15, 12), at(15), at(22)),
        ("@daily", at(15, 12), at(15), at(16)),
    ],
)
def test_cron(expr: str, now: datetime, previous: datetime, following: datetime) -> None:
    s = Schedule(cron=expr)
    assert s.previous(now) == previous
    assert s.following(now) == following


def test_cron_day_of_month_or_day_of_week() -> None:
    """As in every cron: with both fields restricted, either one matches (the 1st, and Fridays)."""
    s = Schedule(cron="0 0 1 * 5")
    fired, t = [], datetime(2026, 2, 28, tzinfo=UTC)
    while (t := s.following(t)) < datetime(2026, 4, 1, tzinfo=UTC):
        fired.append(t.day)
    assert fired == [1, 6, 13, 20, 27]  # 1 March 2026 is a Sunday
    weekdays_only = Schedule(cron="0 0 * * 5")  # day of month '*': Fridays only
    assert weekdays_only.following(at(1)) == at(6)


def test_a_rare_cron_schedule_is_found_years_away() -> None:
    """1 February on a Wednesday ('*/31' restricts the day of month, yet starts with '*': both must match): 11
    years apart here, beyond the 9 years the hand-written matcher searched."""
    s = Schedule(cron="0 0 */31 2 wed")
    assert s.following(datetime(2023, 2, 2, tzinfo=UTC)) == datetime(2034, 2, 1, tzinfo=UTC)
    assert s.previous(datetime(2034, 1, 31, tzinfo=UTC)) == datetime(2023, 2, 1, tzinfo=UTC)
    assert Schedule(cron="0 0 */31 9 sun").following(datetime(2030, 9, 2, tzinfo=UTC)) == datetime(
        2041, 9, 1, tzinfo=UTC
    )


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)))
def test_every_matches_the_equivalent_cron(naive: datetime) -> None:
    t = naive.replace(tzinfo=UTC)
    pairs = [
        (Schedule(every="7d", on="sunday", at="03:00"), Schedule(cron="0 3 * * 0")),
        (Schedule(every="1d", at="02:00"), Schedule(cron="0 2 * * *")),
        (Schedule(every="6h"), Schedule(cron="0 */6 * * *")),
        (Schedule(every="15m"), Schedule(cron="*/15 * * * *")),
        (Schedule(every="1w", on="wed", at="23:59"), Schedule(cron="59 23 * * wed")),
    ]
    for every, cron in pairs:
        assert every.previous(t) == cron.previous(t)
        assert every.following(t) == cron.following(t)
        assert every.previous(t) <= t < every.following(t)
        nxt = cron.following(t)
        assert cron.previous(nxt) == nxt


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every": "1x"}, 'expected a positive number and a unit (m, h, d or w), e.g. "6h"'),
        ({"every": "0d"}, "expected a positive number"),
        ({"every": "1d", "at": "25:00"}, "expected a UTC time of day HH:MM"),
        ({"every": "1d", "on": "sunday"}, "needs a period of whole weeks"),
        ({"every": "7d", "on": "sonntag"}, "expected a day of the week"),
        ({}, "exactly one of every"),
        ({"every": "1d", "cron": "0 0 * * *"}, "exactly one of every"),
        ({"cron": "0 3 * * 0", "at": "03:00"}, "put the time in the cron expression"),
        ({"cron": "0 3 * *"}, "expected 5 fields"),
        ({"cron": "61 * * * *"}, "minute 61 is out of range (0-59)"),
        ({"cron": "0 0 31 2 *"}, "never fires"),
        ({"cron": "0 0 * * 1-x"}, "'x' is not a valid day of week"),
        ({"cron": "*/0 * * * *"}, "bad step"),
        ({"cron": "0 20-8 * * *"}, "runs backwards"),
    ],
)
def test_schedule_errors(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError) as e:
        Schedule(**kwargs)
    assert message in str(e.value)


# -- loading -----------------------------------------------------------------------------------------------------

GOOD = """
name = "shop"
repository = "file:///var/backups/pg"
copies = ["s3://offsite/shop", {url = "gs://other/shop", storage_options = {project = "p"}}]
state_dir = "state"

[retention]
preset = "production"
keep_last = 3

[jobs.nightly]
kind = "logical"
dbname = "host=db1 dbname=shop"
every = "1d"
at = "02:00"
format = "directory"
jobs = 4
schemas = ["public"]

[jobs.weekly-base]
kind = "base"
cron = "0 3 * * 0"
method = "stream"

[jobs.check]
kind = "verify"
every = "1d"
at = "05:00"
backup_kind = "logical"
drill = true

[jobs.offsite]
kind = "copy"
every = "6h"
to = "s3://offsite/shop"

[jobs.expire]
kind = "expire"
every = "1d"
enabled = false
"""


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_load_a_full_policy(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, GOOD))
    assert policy.name == "shop"
    assert policy.repository.url == "file:///var/backups/pg"
    assert [c.url for c in policy.copies] == ["s3://offsite/shop", "gs://other/shop"]
    assert policy.copies[1].storage_options == {"project": "p"}
    assert policy.state_dir == str(tmp_path / "state")  # relative to the file
    assert policy.retention is not None
    assert (policy.retention.name, policy.retention.keep_days, policy.retention.keep_last) == ("production", 30, 3)
    assert [j.name for j in policy.jobs] == ["nightly", "weekly-base", "check", "offsite", "expire"]
    nightly = policy.job("nightly")
    assert nightly.kind == "logical"
    assert nightly.schedule == Schedule(every="1d", at="02:00")
    assert nightly.options == {
        "dbname": "host=db1 dbname=shop",
        "format": "directory",
        "jobs": 4,
        "schemas": ["public"],
    }
    assert policy.job("weekly-base").schedule.cron == "0 3 * * 0"
    assert policy.job("expire").enabled is False
    assert policy.source == str(tmp_path / "policy.toml")


def test_name_defaults_to_the_file_name_and_repository_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGRECOVERY_REPO", "file:///srv/repo")
    policy = load_policy(write(tmp_path, '[jobs.a]\nkind = "globals"\nevery = "1d"\n', "nightly.toml"))
    assert policy.name == "nightly"
    assert policy.repository.url == "file:///srv/repo"


def test_python_api_equivalent() -> None:
    policy = BackupPolicy(
        name="shop",
        repository="file:///var/backups/pg",
        jobs=[Job(name="nightly", kind="logical", schedule=Schedule(every="1d", at="02:00"), options={"dbname": "x"})],
    )
    assert policy.repository == RepositoryRef(url="file:///var/backups/pg")
    with pytest.raises(ConfigurationError, match="unknown option 'formt' for a logical job: did you mean 'format'"):
        Job(name="n", kind="logical", schedule=Schedule(every="1d"), options={"formt": "custom"})


HEADER = 'repository = "file:///r"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('repository = "file:///r"\n[jobs.a\n', ["line 2", "fix the TOML syntax"]),
        ('repository = "file:///r"\nrepos = 1\n', ["line 2", "unknown key 'repos'"]),
        ("[jobs.a]\nkind = 'logical'\nevery = '1d'\n", ["no repository", "PGRECOVERY_REPO"]),
        (HEADER + "[jobs.a]\nevery = '1d'\n", ["line 2", "[jobs.a] no kind"]),
        (HEADER + "[jobs.a]\nkind = 'logicl'\nevery = '1d'\n", ["line 3", "did you mean 'logical'"]),
        (HEADER + "[jobs.a]\nkind = 'logical'\n\nevery = '2x'\n", ["line 5", "[jobs.a] every = '2x'", '"6h"']),
        (HEADER + "[jobs.a]\nkind = 'logical'\nevery = '1d'\nformt = 'custom'\n", ["line 5", "did you mean 'format'"]),
        (HEADER + "[jobs.a]\nkind = 'logical'\nevery = '1d'\njobs = '4'\n", ["line 5", "jobs = '4': expected a whole"]),
        (HEADER + "[jobs.a]\nkind = 'logical'\nevery = '1d'\nformat = 'zip'\n", ["line 5", "format"]),
        (HEADER + "[jobs.a]\nkind = 'base'\nevery = '1d'\nmethod = 'rsync'\n", ["line 5", "method"]),
        (HEADER + "[jobs.a]\nkind = 'verify'\nevery = '1d'\ndril = true\n", ["line 5", "did you mean 'drill'"]),
        (HEADER + "[jobs.a]\nkind = 'copy'\nevery = '1d'\n", ["line 2", "no copies", "copies = ["]),
        (
            HEADER + "copies = ['s3://b/c']\n[jobs.a]\nkind = 'copy'\nevery = '1d'\nto = 's3://x/y'\n",
            ["line 6", "not one of"],
        ),
        (HEADER + "[jobs.a]\nkind = 'expire'\nevery = '1d'\n", ["no retention policy", "[retention]"]),
        (HEADER + "[retention]\npreset = 'forever'\n[jobs.a]\nkind = 'expire'\nevery = '1d'\n", ["line 3", "forever"]),
        (HEADER + "[retention]\nkeep = 3\n[jobs.a]\nkind = 'expire'\nevery = '1d'\n", ["line 3", "'keep_last'"]),
        (
            HEADER + "[jobs.a]\nkind = 'expire'\nevery = '1d'\nkeep_days = 7\nwal = false\npitr_days = 3\n",
            ["pitr_days"],
        ),
        (HEADER + "[jobs.a]\nkind = 'wal-cleanup'\nevery = '1d'\nenabled = 'no'\n", ["line 5", "true or false"]),
        (HEADER + "[jobs.a]\nkind = 'globals'\ncron = '0 3 * * 0'\nat = '03:00'\n", ["line 5", "cron expression"]),
        (HEADER, ["at least one job", "[jobs.NAME]"]),
        ('name = "a b"\n' + HEADER + "[jobs.a]\nkind = 'globals'\nevery = '1d'\n", ["line 1", "name = 'a b'"]),
    ],
)
def test_load_errors_name_the_file_line_key_and_fix(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as e:
        load_policy(path)
    message = str(e.value)
    assert message.startswith(str(path))
    for part in expected:
        assert part in message, message


def test_missing_file() -> None:
    with pytest.raises(ConfigurationError, match=r"cannot read the policy file /nonexistent/policy\.toml"):
        load_policy("/nonexistent/policy.toml")


def test_secrets_are_refused_in_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as e:
        load_policy(
            write(
                tmp_path, HEADER + "[jobs.a]\nkind = 'logical'\nevery = '1d'\ndbname = 'host=db1 password=hunter22'\n"
            )
        )
    assert "PGPASSWORD" in str(e.value)
    assert "line 5" in str(e.value)
    assert "hunter22" not in str(e.value)
    text = (
        '[repository]\nurl = "s3://b/p"\nstorage_options = {secret = "s3cr3t-value"}\n'
        '[jobs.a]\nkind = "globals"\nevery = "1d"\n'
    )
    with pytest.raises(ConfigurationError) as e:
        load_policy(write(tmp_path, text))
    assert "line 3" in str(e.value)
    assert "FSSPEC_S3_SECRET" in str(e.value)
    assert "s3cr3t-value" not in str(e.value)


# -- running -----------------------------------------------------------------------------------------------------


def repo_policy(tmp_path: Path, jobs: str, copies: int = 1) -> Path:
    copy_urls = ", ".join(f'"file://{tmp_path}/copy{i}"' for i in range(copies))
    head = f'name = "t"\nrepository = "file://{tmp_path}/repo"\ncopies = [{copy_urls}]\nstate_dir = "state"\n'
    return write(tmp_path, head + textwrap.dedent(jobs))


COPY_AND_CLEANUP = """
[jobs.offsite]
kind = "copy"
every = "1d"
at = "02:00"

[jobs.cleanup]
kind = "wal-cleanup"
every = "1d"
at = "02:00"
"""


def state_of(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "state" / "t.state.json").read_text())
    return data


def test_runs_when_due_then_not_again_until_the_next_fire_time(tmp_path: Path) -> None:
    policy = load_policy(repo_policy(tmp_path, COPY_AND_CLEANUP.replace('kind = "wal-cleanup"', 'kind = "copy"')))
    source = Repository(f"file://{tmp_path}/repo")
    first = put_logical_backup(source, at(14, 3))

    r1 = run_policy(policy, now=at(15, 2, 30))
    assert [(j.name, j.status) for j in r1.jobs] == [("offsite", "succeeded"), ("cleanup", "succeeded")]
    assert "never ran" in r1.jobs[0].reason
    copy = Repository(f"file://{tmp_path}/copy0")
    assert [m.id for m in copy.backups()] == [first.id]  # the job did what it says

    r2 = run_policy(policy, now=at(15, 23, 59))
    assert [j.status for j in r2.jobs] == ["not-due", "not-due"]
    assert r2.ran == []
    assert "next at 2026-03-16 02:00 UTC" in r2.jobs[0].reason

    second = put_logical_backup(source, at(16, 1))
    r3 = run_policy(policy, now=at(16, 2, 0))  # exactly the fire time: due
    assert [j.status for j in r3.jobs] == ["succeeded", "succeeded"]
    assert "scheduled at 2026-03-16 02:00 UTC; last success started 2026-03-15 02:30 UTC" in r3.jobs[0].reason
    assert [m.id for m in copy.backups()] == [first.id, second.id]
    assert state_of(tmp_path)["jobs"]["offsite"]["last_success"]["at"].startswith("2026-03-16T02:00")


def test_a_failed_job_is_recorded_and_retried_and_the_others_still_run(tmp_path: Path) -> None:
    policy = load_policy(repo_policy(tmp_path, COPY_AND_CLEANUP))
    r1 = run_policy(policy, now=at(15, 2, 30))
    offsite, cleanup = r1.jobs
    assert offsite.status == "succeeded"
    assert cleanup.status == "failed"
    assert cleanup.error is not None
    assert "no base backup in the repository" in cleanup.error
    assert not r1.ok
    assert r1.failed == [cleanup]
    entry = state_of(tmp_path)["jobs"]["cleanup"]
    assert entry["failures"] == 1
    assert "no base backup" in entry["last_failure"]["error"]
    assert "last_success" not in entry

    r2 = run_policy(policy, now=at(15, 2, 35))  # the next cron call: the failed job again, not the other
    assert [j.status for j in r2.jobs] == ["not-due", "failed"]
    assert "retrying after the failure at 2026-03-15 02:30 UTC: no base backup" in r2.jobs[1].reason
    assert state_of(tmp_path)["jobs"]["cleanup"]["failures"] == 2


def test_expire_job_applies_the_retention_with_the_job_keys_on_top(tmp_path: Path) -> None:
    jobs = """
    [retention]
    keep_last = 1
    wal = false

    [jobs.expire]
    kind = "expire"
    every = "1d"
    keep_last = 2
    """
    policy = load_policy(repo_policy(tmp_path, jobs))
    retention = policy.retention_of(policy.job("expire"))
    assert retention is not None
    assert (retention.keep_last, retention.wal) == (2, False)
    repo = Repository(f"file://{tmp_path}/repo")
    old, mid, new = (put_logical_backup(repo, at(day, 2)) for day in (12, 13, 14))
    (job,) = run_policy(policy, now=at(15, 1)).jobs
    assert job.status == "succeeded", job.error
    assert [m.id for m in repo.backups()] == [mid.id, new.id]
    assert job.detail["repositories"][0]["deleted"] == [old.id]


def test_the_repository_catalog_stands_in_for_a_missing_state(tmp_path: Path) -> None:
    jobs = """
    [jobs.shop]
    kind = "logical"
    dbname = "host=db1 dbname=shop"
    every = "1d"
    at = "02:00"

    [jobs.crm]
    kind = "logical"
    dbname = "postgresql://db1/crm"
    every = "1d"
    at = "02:00"
    """
    policy = load_policy(repo_policy(tmp_path, jobs))
    m = put_logical_backup(Repository(f"file://{tmp_path}/repo"), at(15, 2, 1), database="shop")
    result = run_policy(policy, now=at(15, 9), dry_run=True)
    shop, crm = result.jobs
    assert shop.status == "not-due"
    assert f"newest logical backup in the repository ({m.id}) started 2026-03-15 02:01 UTC" in shop.reason
    assert shop.last_success == at(15, 2, 1)
    assert crm.status == "due"
    assert "no logical backup in the repository" in crm.reason
    assert run_policy(policy, now=at(16, 2), dry_run=True).jobs[0].status == "due"


def test_dry_run_changes_nothing_and_says_why(tmp_path: Path) -> None:
    policy = load_policy(
        repo_policy(tmp_path, COPY_AND_CLEANUP + '\n[jobs.off]\nkind = "copy"\nevery = "1d"\nenabled = false\n')
    )
    put_logical_backup(Repository(f"file://{tmp_path}/repo"), at(14))
    result = run_policy(policy, now=at(15, 3), dry_run=True)
    assert result.dry_run
    assert [j.status for j in result.jobs] == ["due", "due", "disabled"]
    assert result.jobs[0].scheduled_at == at(15, 2)
    assert result.jobs[0].next_at == at(16, 2)
    assert not (tmp_path / "state").exists()  # no state, no lock file
    assert not (tmp_path / "copy0").exists()  # nothing copied


def test_state_file_is_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_policy(repo_policy(tmp_path, COPY_AND_CLEANUP.replace('kind = "wal-cleanup"', 'kind = "copy"')))
    run_policy(policy, now=at(15, 3))
    state_file, _ = state_paths(policy)
    before = state_file.read_bytes()
    assert oct(state_file.stat().st_mode & 0o777) == "0o600"

    def crash(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(ConfigurationError, match=r"cannot write the state file .*No space left on device"):
        run_policy(policy, now=at(16, 3))
    monkeypatch.undo()
    assert state_file.read_bytes() == before  # the old state, whole
    assert sorted(p.name for p in state_file.parent.iterdir()) == ["t.lock", "t.state.json"]  # no temporary left


def test_a_broken_state_file_is_a_clear_error(tmp_path: Path) -> None:
    policy = load_policy(repo_policy(tmp_path, COPY_AND_CLEANUP))
    state_file, _ = state_paths(policy)
    state_file.parent.mkdir()
    state_file.write_text('{"jobs": {"offsite": ')
    with pytest.raises(ConfigurationError, match=r"is not valid JSON .*delete it to start over"):
        run_policy(policy, now=at(15, 3))


HOLDER = """
import sys
from pathlib import Path
from pgrecovery.policy.state import _lock
with _lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the test closes our stdin (or kills us)
"""


def hold_lock(lock_file: Path) -> subprocess.Popen[str]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_is_refused_while_the_lock_is_held(tmp_path: Path) -> None:
    policy = load_policy(repo_policy(tmp_path, COPY_AND_CLEANUP))
    _, lock_file = state_paths(policy)
    holder = hold_lock(lock_file)
    try:
        with pytest.raises(PolicyLocked) as e:
            run_policy(policy, now=at(15, 3))
        message = str(e.value)
        assert message.startswith("another run-policy holds the lock since 2")
        assert f"(pid {holder.pid})" in message
        assert not (tmp_path / "copy0").exists()  # refused before doing anything
        assert not (tmp_path / "state" / "t.state.json").exists()
        assert [j.status for j in run_policy(policy, now=at(15, 3), dry_run=True).jobs] == ["due", "due"]
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
    assert run_policy(policy, now=at(15, 3)).jobs[0].status == "succeeded"


def test_a_killed_run_does_not_leave_the_lock_behind(tmp_path: Path) -> None:
    policy = load_policy(repo_policy(tmp_path, COPY_AND_CLEANUP))
    _, lock_file = state_paths(policy)
    holder = hold_lock(lock_file)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert run_policy(policy, now=at(15, 3)).jobs[0].status == "succeeded"


def test_only_some_jobs_and_force(tmp_path: Path) -> None:
    policy = load_policy(repo_policy(tmp_path, COPY_AND_CLEANUP))
    run_policy(policy, now=at(15, 3))
    again = run_policy(policy, now=at(15, 4), jobs=["offsite"], force=True)
    assert [(j.name, j.status, j.reason) for j in again.jobs] == [("offsite", "succeeded", "forced")]
    with pytest.raises(ConfigurationError, match="no job named 'nope' in policy t: the jobs are offsite, cleanup"):
        run_policy(policy, jobs=["nope"])


# -- the command -------------------------------------------------------------------------------------------------


def test_cli_json_shape_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = repo_policy(tmp_path, COPY_AND_CLEANUP)
    code = main(["run-policy", str(path), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1  # cleanup failed
    assert set(out) == {"policy", "source", "now", "dry_run", "state_file", "ok", "ran", "failed", "jobs"}
    assert (out["policy"], out["ok"], out["ran"], out["failed"], out["dry_run"]) == ("t", False, 2, 1, False)
    job_keys = {
        "name", "kind", "schedule", "status", "reason", "scheduled_at", "next_at", "last_success",
        "started_at", "seconds", "backup_id", "error", "detail",
    }  # fmt: skip
    assert all(set(j) == job_keys for j in out["jobs"])
    offsite, cleanup = out["jobs"]
    assert offsite["status"] == "succeeded"
    assert offsite["detail"]["copies"][0]["target"] == f"file://{tmp_path}/copy0"
    assert cleanup["status"] == "failed"
    assert "no base backup" in cleanup["error"]

    code = main(["run-policy", str(path), "--dry-run", "--now", "2026-03-15T02:30Z"])
    text = capsys.readouterr().out
    assert code == 0
    assert "policy t at 2026-03-15 02:30 UTC" in text
    assert "not-due" in text or "due" in text


def test_cli_quiet_when_nothing_is_due_and_log_lines_per_job(tmp_path: Path) -> None:
    path = repo_policy(tmp_path, COPY_AND_CLEANUP.replace('kind = "wal-cleanup"', 'kind = "copy"'))
    cmd = [sys.executable, "-m", "pgrecovery", "run-policy", str(path)]
    first = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert "INFO pgrecovery.policy: job offsite (copy) started: never ran" in first.stderr
    assert "INFO pgrecovery.policy: job offsite (copy) finished in " in first.stderr
    assert "succeeded  offsite (copy) in " in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert (second.returncode, second.stdout, second.stderr) == (0, "", "")


def test_cli_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = repo_policy(tmp_path, COPY_AND_CLEANUP)
    bad = write(tmp_path, HEADER + "[jobs.a]\nkind = 'logical'\nevery = '1x'\n", "bad.toml")
    assert main(["run-policy", str(bad)]) == 2
    assert "bad.toml, line 4: [jobs.a] every = '1x'" in capsys.readouterr().err
    assert main(["run-policy", str(path), "--now", "2026-03-15T02:00Z"]) == 2
    assert "--now goes with --dry-run only" in capsys.readouterr().err
    holder = hold_lock(tmp_path / "state" / "t.lock")
    try:
        assert main(["run-policy", str(path)]) == 1
        assert "pgrecovery: another run-policy holds the lock since 2" in capsys.readouterr().err
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()


def test_cli_repo_option_replaces_the_policy_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = repo_policy(tmp_path, COPY_AND_CLEANUP.replace('kind = "wal-cleanup"', 'kind = "copy"'))
    other = Repository(f"file://{tmp_path}/other")
    m = put_logical_backup(other, at(14))
    assert main(["run-policy", str(path), "--repo", f"file://{tmp_path}/other", "--job", "offsite"]) == 0
    capsys.readouterr()
    assert [x.id for x in Repository(f"file://{tmp_path}/copy0").backups()] == [m.id]
