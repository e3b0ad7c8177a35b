"""Running a backup policy from inside the database with pg_cron (see docs/pg_cron.md).

A pg_cron job is SQL that the server runs on a schedule. The job installed here is one statement,

    COPY (SELECT 1) TO PROGRAM '<python> -m pgrecovery run-policy <policy file> --status-dbname ...'

so the server starts ``run-policy`` as its own OS user, pg_cron records whether it exited 0 in
``cron.job_run_details``, and ``run-policy`` records each job it ran in the status table, where ``check`` reads
them. The command is the job's text itself (no SQL function of ours in between): what runs is visible in
``cron.job``, and nobody gains a way to start programs as the server's user by being granted a function.

>>> job = install_schedule("dbname=postgres", CronSchedule(policy_file="/etc/pgrecovery/shop.toml",
...                        cron="*/5 * * * *"))                                      # doctest: +SKIP
>>> remove_schedule("dbname=postgres", job.name)                                   # doctest: +SKIP
True

Installing is idempotent (a job of the same name is replaced, not added) and first runs the command once with
``--dry-run`` as the server will; removing a job that is not there is not an error; all refuse with one line
when pg_cron is not loaded, and installing when the role may not run programs or the trial run fails.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import attrs

from .. import pgtools
from .._pgdb import connect, first_line
from .._redact import redact
from ..errors import ConfigurationError, DatabaseError
from .loader import load_policy

if TYPE_CHECKING:
    import psycopg

JOB_PREFIX: Final = "pgrecovery-"  # the default job name is this plus the policy's name
_LAUNCHER: Final = "pg_cron launcher"


def _absolute(value: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(value))


def _stripped(value: str) -> str:
    return value.strip()


def _no_secret(_instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and redact(value) != value:
        raise ConfigurationError(
            f"{attribute.name.replace('_', '-')} carries a secret, and the job's command line is readable in "
            "cron.job and by every OS user (ps): keep the password in ~/.pgpass or PGPASSFILE of the server's OS user"
        )


@attrs.frozen(kw_only=True)
class CronSchedule:
    """What to schedule: ``run-policy`` of ``policy_file`` (an absolute path on the database server, readable by
    the server's OS user) at the times of ``cron`` (pg_cron's 5-field syntax, in GMT; pg_cron 1.5 and later
    honour ``cron.timezone``), run by ``python`` (default: this interpreter; the server's OS user must be
    able to execute it). ``status_dbname`` / ``status_table``: where run-policy records its runs. ``name``: the
    pg_cron job name (default: ``pgrecovery-`` plus the policy's name)."""

    policy_file: str = attrs.field(converter=_absolute)
    cron: str = attrs.field(converter=_stripped)
    name: str | None = None
    python: str = attrs.field(default=sys.executable, converter=_absolute)
    status_dbname: str | None = attrs.field(default=None, validator=_no_secret)
    status_table: str | None = None
    state_dir: str | None = attrs.field(default=None, converter=attrs.converters.optional(_absolute))

    def job_name(self) -> str:
        """The job's name: ``name``, else ``pgrecovery-<policy name>`` (reads and checks the policy file)."""
        return self.name or JOB_PREFIX + load_policy(self.policy_file).name

    def command(self) -> str:
        """The shell command the job runs (arguments quoted for /bin/sh)."""
        words = [self.python, "-m", "pgrecovery", "run-policy", self.policy_file]
        for option, value in (
            ("--status-dbname", self.status_dbname),
            ("--status-table", self.status_table),
            ("--state-dir", self.state_dir),
        ):
            if value:
                words += [option, value]
        return shlex.join(words)

    def statement(self) -> str:
        """The SQL statement of the job: ``COPY (SELECT 1) TO PROGRAM '<command>'``."""
        return "COPY (SELECT 1) TO PROGRAM " + _literal(self.command())


def _literal(text: str) -> str:
    """A standard SQL string literal (standard_conforming_strings is on by default since PostgreSQL 9.1)."""
    if "\\" in text:
        return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + text.replace("'", "''") + "'"


@attrs.frozen(kw_only=True)
class CronJob:
    """A row of ``cron.job``."""

    jobid: int
    name: str
    schedule: str
    command: str
    username: str
    database: str
    active: bool

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class CronRun:
    """A row of ``cron.job_run_details``: one run of a job (``status``: starting, running, succeeded, failed)."""

    runid: int
    status: str
    message: str | None
    start_time: datetime | None
    end_time: datetime | None

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        for key in ("start_time", "end_time"):
            d[key] = d[key].isoformat() if d[key] is not None else None
        return d


@attrs.frozen(kw_only=True)
class ScheduleStatus:
    """What `show_schedule` finds: the job (None when there is none of that name) and its latest runs, newest
    first."""

    name: str
    job: CronJob | None
    runs: tuple[CronRun, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "installed": self.job is not None,
            "job": self.job.to_dict() if self.job is not None else None,
            "runs": [r.to_dict() for r in self.runs],
        }


# -- the server: is pg_cron there, may this role run programs ----------------------------------------------------


@contextmanager
def _session(dbname: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the database pg_cron lives in, after the checks every operation needs."""
    import psycopg

    with connect(dbname, what="connect for pg_cron to") as conn:
        try:
            _require_pg_cron(conn, dbname)
            yield conn
        except psycopg.Error as e:
            raise DatabaseError(f"pg_cron on {pgtools.describe(dbname)}: {first_line(e)}") from None


def _cron_database(conn: psycopg.Connection[Any]) -> str | None:
    """``cron.database_name`` when this role may read it (superusers, pg_read_all_settings), else None."""
    import psycopg

    try:
        with conn.transaction():
            row = conn.execute("select current_setting('cron.database_name', true)").fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row and row[0] else None


def _loaded(conn: psycopg.Connection[Any]) -> bool:
    """Whether pg_cron runs on this server. A role that sees other roles' sessions looks for its launcher; any
    other asks for one of pg_cron's settings: defined (hence refused to it, being superuser-only) only when loaded.
    """
    import psycopg

    row = conn.execute(
        "select pg_has_role(current_user, 'pg_read_all_stats', 'usage'),"
        " exists (select from pg_stat_activity where backend_type = %s)",
        [_LAUNCHER],
    ).fetchone()
    assert row is not None
    if row[0]:
        return bool(row[1])
    try:
        with conn.transaction():
            conn.execute("select current_setting('cron.log_run', true)").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False  # unknown, or a placeholder set in postgresql.conf without the library


def _require_pg_cron(conn: psycopg.Connection[Any], dbname: str) -> None:
    here = pgtools.describe(dbname)
    row = conn.execute(
        "select exists (select from pg_extension where extname = 'pg_cron'), current_database()"
    ).fetchone()
    assert row is not None
    created, database = row
    loaded = _loaded(conn)
    if not loaded:
        then = "" if created else ", then CREATE EXTENSION pg_cron"
        raise ConfigurationError(
            f"pg_cron is not loaded on {here}: set shared_preload_libraries = 'pg_cron' and "
            f"cron.database_name = '{database}', restart the server{then}"
        )
    if not created:
        where = _cron_database(conn)
        hint = f"point --dbname at database {where!r} (cron.database_name)" if where and where != database else ""
        raise ConfigurationError(
            f"pg_cron is loaded but not created in database {database!r}: "
            + (hint or "CREATE EXTENSION pg_cron there (in the database cron.database_name names)")
        )


def _require_program_privilege(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "select current_user, rolsuper or pg_has_role(current_user, 'pg_execute_server_program', 'usage'),"
        " pg_is_in_recovery() from pg_roles where rolname = current_user"
    ).fetchone()
    assert row is not None
    user, allowed, standby = row
    if standby:
        raise ConfigurationError("this server is a standby (in recovery): install the schedule on the primary")
    if not allowed:
        raise ConfigurationError(
            f"role {user!r} may not run programs on the server (COPY ... TO PROGRAM): connect as a superuser, or "
            f"GRANT pg_execute_server_program TO {user}"
        )


# -- the jobs ----------------------------------------------------------------------------------------------------

_JOB_COLUMNS: Final = "jobid, jobname, schedule, command, username, database, active"


def _jobs(conn: psycopg.Connection[Any], name: str) -> list[CronJob]:
    # cron.job shows a role its own jobs only (row security); a superuser sees everyone's: keep to our own.
    rows = conn.execute(
        f"select {_JOB_COLUMNS} from cron.job where jobname = %s and username = current_user order by jobid", [name]
    ).fetchall()
    return [
        CronJob(jobid=r[0], name=r[1], schedule=r[2], command=r[3], username=r[4], database=r[5], active=r[6])
        for r in rows
    ]


_EXIT_MARK: Final = "pgrecovery-trial-exit="


def _trial_run(conn: psycopg.Connection[Any], schedule: CronSchedule) -> None:
    """Run the job's command once with ``--dry-run`` (which runs no job, takes no lock, writes nothing) the way
    pg_cron will, as the server's OS user, reading its output back (COPY ... FROM PROGRAM): an interpreter that
    user cannot execute, a policy file it cannot read, a bad option, are refused now, in the program's words."""
    conn.execute("create temporary table pg_temp.pgrecovery_trial (n serial, line text) on commit drop")
    program = f"{schedule.command()} --dry-run 2>&1; echo {_EXIT_MARK}$?"
    # csv with a delimiter and quote that never occur: every line arrives as it is, backslashes included
    conn.execute(
        "COPY pg_temp.pgrecovery_trial (line) FROM PROGRAM "
        + _literal(program)
        + " WITH (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')"
    )
    lines = [str(r[0]) for r in conn.execute("select line from pg_temp.pgrecovery_trial order by n").fetchall() if r[0]]
    status = lines[-1].removeprefix(_EXIT_MARK) if lines and lines[-1].startswith(_EXIT_MARK) else "?"
    if status == "0":
        return
    said = redact(lines[-2].strip()) if len(lines) > 1 else "no output"
    hint = ""
    if status in ("126", "127"):
        hint = ": give --python an interpreter with pgrecovery installed that the server's OS user can execute"
    raise ConfigurationError(f"the job fails when the server runs it as its OS user (exit code {status}): {said}{hint}")


def install_schedule(dbname: str, schedule: CronSchedule, *, trial: bool = True) -> CronJob:
    """Install (or replace) the pg_cron job that runs ``schedule``'s policy; returns the job as stored.

    ``dbname`` is the database pg_cron lives in (``cron.database_name``), reached as the role that will own the
    job and run it: a superuser, or a role granted ``pg_execute_server_program``. Running it twice leaves one
    job (pg_cron replaces a job of the same name and owner). ``trial``: first run the command with ``--dry-run``
    as the server will, and install nothing when it fails.
    """
    import psycopg

    policy = load_policy(schedule.policy_file)  # a mistake in it is found now, not at the first run
    name = schedule.name or JOB_PREFIX + policy.name
    statement = schedule.statement()
    with _session(dbname) as conn:
        _require_program_privilege(conn)
        try:
            with conn.transaction():  # a failed trial leaves cron.job as it was
                conn.execute("select cron.schedule(%s, %s, %s)", [name, schedule.cron, statement])
                if trial:
                    _trial_run(conn, schedule)
        except psycopg.errors.InvalidParameterValue as e:
            raise ConfigurationError(
                f"cron schedule {schedule.cron!r} refused by pg_cron ({first_line(e)}): use 5 fields such as "
                "'*/5 * * * *' (minute, hour, day of month, month, day of week)"
            ) from None
        except psycopg.errors.InsufficientPrivilege as e:
            hint = ": GRANT USAGE ON SCHEMA cron TO this role" if "schema cron" in str(e) else ""
            raise ConfigurationError(f"cannot schedule with pg_cron: {first_line(e)}{hint}") from None
        for job in _jobs(conn, name)[1:]:  # cron.schedule replaced ours; a copy inserted by hand goes too
            conn.execute("select cron.unschedule(%s::bigint)", [job.jobid])
        (job,) = _jobs(conn, name)[:1]
    return job


def remove_schedule(dbname: str, name: str) -> bool:
    """Remove this role's pg_cron jobs called ``name``; False when there was none (not an error)."""
    with _session(dbname) as conn:
        jobs = _jobs(conn, name)
        for job in jobs:
            conn.execute("select cron.unschedule(%s::bigint)", [job.jobid])
    return bool(jobs)


def show_schedule(dbname: str, name: str, *, runs: int = 5) -> ScheduleStatus:
    """This role's job called ``name`` and its ``runs`` latest runs from ``cron.job_run_details``."""
    with _session(dbname) as conn:
        jobs = _jobs(conn, name)
        if not jobs:
            return ScheduleStatus(name=name, job=None)
        rows = conn.execute(
            "select runid, status, return_message, start_time, end_time from cron.job_run_details"
            " where jobid = %s order by runid desc limit %s",
            [jobs[0].jobid, runs],
        ).fetchall()
    found = tuple(CronRun(runid=r[0], status=r[1], message=r[2], start_time=r[3], end_time=r[4]) for r in rows)
    return ScheduleStatus(name=name, job=jobs[0], runs=found)


__all__ = [
    "JOB_PREFIX",
    "CronJob",
    "CronRun",
    "CronSchedule",
    "ScheduleStatus",
    "install_schedule",
    "remove_schedule",
    "show_schedule",
]
