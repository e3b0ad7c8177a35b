"""The deployment examples in docs/deploy/ parse, and every pgrecovery command in them exists with valid options.

Each command is parsed with the real CLI parser; each cron schedule with pgrecovery's own cron matcher; each
policy file (the one beside the examples and the one inside the Kubernetes ConfigMap) with `load_policy`, and
then dry-run against an empty repository so that every job is known to be runnable.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from pgrecovery.cli.main import build_parser
from pgrecovery.policy import RepositoryRef, Schedule, load_policy, run_policy

DEPLOY = Path(__file__).resolve().parents[3] / "docs" / "deploy"
_OPERATORS = {";", "&&", "||", "|", "&", ">", ">>", "<", ">&", "2>", "2>&1"}
_FIELD = r"[\d*][\d*/,-]*"  # minute and hour: digits, stars, lists, ranges, steps
_CRON_LINE = re.compile(rf"^(?P<disabled>#\s*)?(?P<when>{_FIELD}\s+{_FIELD}(?:\s+[\w*/,-]+){{3}})\s+(?P<cmd>.*)$")


def pgrecovery_commands(script: str) -> list[list[str]]:
    """The argument lists of every ``pgrecovery ...`` (or ``python -m pgrecovery ...``) in a shell command line."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    found = []
    for i, token in enumerate(tokens):
        is_program = token == "pgrecovery" or token.endswith("/pgrecovery")
        after_m = token == "pgrecovery" and i > 0 and tokens[i - 1] == "-m"
        at_start = i == 0 or tokens[i - 1] in _OPERATORS or tokens[i - 1] in ("do", "then", "else")
        if is_program and (at_start or after_m):
            args = []
            for t in tokens[i + 1 :]:
                if t in _OPERATORS or set(t) <= set(";&|<>"):
                    break
                args.append(t)
            found.append(args)
    return found


def assert_parses(args: list[str]) -> None:
    build_parser().parse_args(args)  # argparse exits (failing the test) on an unknown verb or option


# -- crontab -----------------------------------------------------------------------------------------------------


def cron_entries() -> list[tuple[str, str, bool]]:
    """(schedule, command, enabled) of each crontab entry, the commented-out alternatives included."""
    out = []
    for line in (DEPLOY / "crontab").read_text().splitlines():
        text = line.strip()
        if not text or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", text):
            continue
        m = _CRON_LINE.match(text)
        if m and "pgrecovery" in m["cmd"]:
            out.append((" ".join(m["when"].split()), m["cmd"], not m["disabled"]))
        else:
            assert text.startswith("#"), f"crontab line is neither a comment, a variable nor an entry: {line!r}"
    return out


def test_crontab_entries_parse() -> None:
    entries = cron_entries()
    assert len(entries) >= 5
    for when, command, _ in entries:
        Schedule(cron=when)
        commands = pgrecovery_commands(command)
        assert commands, command
        for args in commands:
            assert_parses(args)


def test_crontab_schedules_are_the_ones_promised() -> None:
    by_verb = {}
    for when, command, enabled in cron_entries():
        if enabled:
            (args,) = pgrecovery_commands(command)
            by_verb[" ".join(a for a in args[:2] if not a.startswith("-"))] = Schedule(cron=when)
    sunday_0430 = datetime(2026, 3, 15, 4, 30, tzinfo=UTC)  # a Sunday
    monday_0730 = datetime(2026, 3, 16, 7, 30, tzinfo=UTC)
    assert by_verb["backup logical"].previous(monday_0730) == datetime(2026, 3, 16, 2, 0, tzinfo=UTC)
    assert by_verb["backup base"].previous(monday_0730) == datetime(2026, 3, 15, 3, 0, tzinfo=UTC)
    assert by_verb["backup base"].following(sunday_0430) == datetime(2026, 3, 22, 3, 0, tzinfo=UTC)
    assert by_verb["verify latest"].previous(monday_0730) == datetime(2026, 3, 16, 5, 0, tzinfo=UTC)
    cleanup = by_verb["wal-cleanup"]
    assert cleanup.previous(monday_0730).weekday() == 6
    assert cleanup.following(monday_0730) - cleanup.previous(monday_0730) == (
        datetime(2026, 3, 22, tzinfo=UTC) - datetime(2026, 3, 15, tzinfo=UTC)
    )


# -- YAML -----------------------------------------------------------------------------------------------------


def command_strings(node: Any) -> Iterator[str]:
    """Shell command lines found under ``command``, ``args`` and ``entrypoint`` keys, however nested."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("command", "args", "entrypoint"):
                if isinstance(value, str):
                    yield value
                elif isinstance(value, list):
                    items = [str(v) for v in value]
                    if len(items) > 2 and items[0] in ("sh", "bash", "/bin/sh", "/bin/bash") and items[1] == "-c":
                        yield items[2]
                    else:
                        yield shlex.join(items)
                        yield from (i for i in items if " " in i)  # e.g. "archive_command=... -m pgrecovery ..."
            else:
                yield from command_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from command_strings(item)


def yaml_commands(name: str) -> list[list[str]]:
    docs = list(yaml.safe_load_all((DEPLOY / name).read_text()))
    return [args for doc in docs for script in command_strings(doc) for args in pgrecovery_commands(script)]


def test_kubernetes_cronjob() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "cronjob.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) >= {"CronJob", "ConfigMap"}
    cron = kinds["CronJob"]
    assert cron["apiVersion"] == "batch/v1"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    Schedule(cron=cron["spec"]["schedule"])
    commands = yaml_commands("cronjob.yaml")
    assert commands
    assert all(args[0] == "run-policy" for args in commands)
    for args in commands:
        assert_parses(args)
    # Secrets come from a Secret, never written in the manifest.
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    for env in container["env"]:
        if re.search(r"PASSWORD|SECRET|KEY", env["name"]):
            assert "valueFrom" in env, env
            assert "value" not in env, env


def test_kubernetes_configmap_policy(tmp_path: Path) -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "cronjob.yaml").read_text())}
    path = tmp_path / "policy.toml"
    path.write_text(docs["ConfigMap"]["data"]["policy.toml"])
    dry_run_everything(path, tmp_path)


def test_docker_compose() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert "pgrecovery" in compose["services"]
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{source} is mounted but does not exist"
            else:
                assert source in compose["volumes"], f"volume {source} is not declared"
    commands = yaml_commands("docker-compose.yml")
    verbs = {args[0] if not args[0].startswith("-") else args[2] for args in commands}
    assert verbs == {"run-policy", "wal-push"}
    for args in commands:
        assert_parses(args)


# -- policy.toml ----------------------------------------------------------------------------------------------


def dry_run_everything(path: Path, tmp_path: Path) -> None:
    policy = load_policy(path)
    copies = [RepositoryRef(url=f"file://{tmp_path}/copy{i}") for i in range(len(policy.copies))]
    local = attrs.evolve(policy, repository=RepositoryRef(url=f"file://{tmp_path}/repo"), copies=copies)
    result = run_policy(local, dry_run=True, state_dir=tmp_path / "state")
    assert [j.status for j in result.jobs] == ["due"] * len(local.jobs)
    assert all("never ran" in j.reason for j in result.jobs)


def test_policy_example(tmp_path: Path) -> None:
    policy = load_policy(DEPLOY / "policy.toml")
    kinds = {j.kind for j in policy.jobs}
    assert kinds == {"globals", "logical", "base", "verify", "copy", "expire", "wal-cleanup"}
    by_name = {j.name: j for j in policy.jobs}
    sunday_0430 = datetime(2026, 3, 15, 4, 30, tzinfo=UTC)
    assert by_name["shop-logical"].schedule.previous(sunday_0430) == datetime(2026, 3, 15, 2, 0, tzinfo=UTC)
    assert by_name["weekly-base"].schedule.previous(sunday_0430) == datetime(2026, 3, 15, 3, 0, tzinfo=UTC)
    assert policy.retention is not None
    assert policy.retention.keep_last == 7
    dry_run_everything(DEPLOY / "policy.toml", tmp_path)


def test_the_examples_are_all_checked() -> None:
    assert {p.name for p in DEPLOY.iterdir()} == {"crontab", "cronjob.yaml", "docker-compose.yml", "policy.toml"}


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("pgrecovery list --json > out 2>&1", [["list", "--json"]]),
        ("while true; do pgrecovery run-policy p.toml; sleep 300; done", [["run-policy", "p.toml"]]),
        (
            "archive_command=/v/bin/python -m pgrecovery --repo file:///r wal-push %p",
            [["--repo", "file:///r", "wal-push", "%p"]],
        ),
        ("pgrecovery verify latest || echo failed", [["verify", "latest"]]),
        ("echo pgrecovery-policy", []),
    ],
)
def test_command_extraction(script: str, expected: list[list[str]]) -> None:
    assert pgrecovery_commands(script) == expected
