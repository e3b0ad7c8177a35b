"""The ``schedule`` verb: run a backup policy from inside the database with pg_cron (see docs/pg_cron.md).

``schedule install`` puts (or replaces) a pg_cron job that runs ``run-policy`` through ``COPY ... TO PROGRAM``;
``schedule remove`` takes it away (nothing to remove is fine); ``schedule show`` prints the job and its latest runs
from ``cron.job_run_details``. Exit code 0, or 2 with one line when pg_cron is missing or the role lacks the
privilege; ``show`` exits 1 when the job is not installed or its latest run failed.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ._common import add_kinds, add_verb, emit, status_options, table
from .exitcodes import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from ..policy.pg_cron import ScheduleStatus


def _target(p: argparse.ArgumentParser, *, install: bool) -> None:
    p.add_argument(
        "-d",
        "--dbname",
        required=True,
        help="the database pg_cron lives in (cron.database_name), as the role that owns and runs the job",
    )
    p.add_argument(
        "--policy", metavar="FILE", required=install, help="the policy file (an absolute path on the server)"
    )
    p.add_argument("--name", help="the pg_cron job name (default: pgrecovery-<the policy's name>)")


def add_verbs(verbs: Any, common: argparse.ArgumentParser) -> None:
    p = add_verb(verbs, "schedule", common, "run a policy from inside the database with pg_cron")
    kinds = add_kinds(p, dest="action")
    ins = add_verb(
        kinds,
        "install",
        common,
        "install or replace the pg_cron job that runs run-policy",
        description="Install (or replace: one job per name) a pg_cron job that runs `run-policy FILE` as the "
        "server's OS user through COPY ... TO PROGRAM. Needs a superuser or pg_execute_server_program.",
    )
    _target(ins, install=True)
    ins.add_argument("--cron", required=True, metavar="EXPR", help="pg_cron schedule, e.g. '*/5 * * * *'")
    ins.add_argument(
        "--python",
        metavar="PATH",
        help="the interpreter the server's OS user runs (default: this one; it must be executable by that user)",
    )
    ins.add_argument(
        "--no-trial",
        action="store_true",
        help="skip the trial (the command run once with --dry-run by the server, as pg_cron will run it)",
    )
    ins.add_argument("--state-dir", metavar="DIR", help="run-policy's state directory (default: the policy's)")
    status_options(ins)
    rm = add_verb(kinds, "remove", common, "remove the pg_cron job (nothing to remove is fine)")
    _target(rm, install=False)
    show = add_verb(kinds, "show", common, "show the pg_cron job and its latest runs")
    _target(show, install=False)
    show.add_argument("--runs", type=int, default=5, help="how many of the latest runs to show (default 5)")


def _name(args: argparse.Namespace) -> str:
    from ..errors import ConfigurationError
    from ..policy.pg_cron import JOB_PREFIX

    if args.name:
        return str(args.name)
    if not args.policy:
        raise ConfigurationError("give --name JOB or --policy FILE (the job is named after the policy)")
    from ..policy import load_policy

    return JOB_PREFIX + load_policy(args.policy).name


# Common options that mean something to this process only, not to the job pg_cron runs: refused, not ignored.
_NOT_PASSED_ON = {
    "--repo": "repo",
    "--storage-option": "storage_option",
    "--encryption-key-file": "encryption_key_file",
}


def _install(args: argparse.Namespace) -> int:
    from .._redact import redact
    from ..errors import ConfigurationError
    from ..policy.pg_cron import CronSchedule, install_schedule

    given = [o for o, a in _NOT_PASSED_ON.items() if getattr(args, a, None)]
    if given:
        raise ConfigurationError(
            f"schedule install: {', '.join(given)} would not reach the job, which runs on the server with its "
            "environment: put the repository in the policy file, and credentials and keys in the environment or "
            "files of the server's OS user (see docs/pg_cron.md)"
        )
    if not args.status_dbname and redact(args.dbname) != args.dbname:
        raise ConfigurationError(
            "--dbname carries a password, and the job would record its runs with it on its command line: give "
            "--status-dbname without one (the server's OS user reads passwords from its ~/.pgpass)"
        )
    options: dict[str, Any] = {"python": args.python} if args.python else {}
    schedule = CronSchedule(
        policy_file=args.policy,
        cron=args.cron,
        name=args.name,
        status_dbname=args.status_dbname or args.dbname,  # default: the status table beside pg_cron
        status_table=args.status_table,
        state_dir=args.state_dir,
        **options,
    )
    job = install_schedule(args.dbname, schedule, trial=not args.no_trial)
    text = f"installed pg_cron job {job.name} (id {job.jobid}, '{job.schedule}', as {job.username}): {job.command}"
    emit(args, job.to_dict(), text)
    return EXIT_OK


def _show_text(status: ScheduleStatus) -> str:
    if status.job is None:
        return f"no pg_cron job {status.name}"
    job = status.job
    lines = [
        f"job:      {job.name} (id {job.jobid}{'' if job.active else ', inactive'})",
        f"schedule: {job.schedule} in database {job.database} as {job.username}",
        f"command:  {job.command}",
    ]
    if not status.runs:
        return "\n".join([*lines, "runs:     none yet"])
    rows = [("run", "status", "started", "seconds", "message")]
    for r in status.runs:
        seconds = f"{(r.end_time - r.start_time).total_seconds():.1f}" if r.start_time and r.end_time else "-"
        started = r.start_time.strftime("%Y-%m-%d %H:%M:%S") if r.start_time else "-"
        rows.append((str(r.runid), r.status, started, seconds, (r.message or "").splitlines()[0] if r.message else ""))
    return "\n".join(lines) + "\n" + table(rows)


def run(args: argparse.Namespace) -> int:
    from ..policy.pg_cron import remove_schedule, show_schedule

    if args.action == "install":
        return _install(args)
    name = _name(args)
    if args.action == "remove":
        removed = remove_schedule(args.dbname, name)
        text = f"removed pg_cron job {name}" if removed else f"no pg_cron job {name}: nothing to remove"
        emit(args, {"name": name, "removed": removed}, text)
        return EXIT_OK
    status = show_schedule(args.dbname, name, runs=args.runs)
    emit(args, status.to_dict(), lambda: _show_text(status))
    healthy = status.job is not None and (not status.runs or status.runs[0].status != "failed")
    return EXIT_OK if healthy else EXIT_FAILED


__all__ = ["add_verbs", "run"]
