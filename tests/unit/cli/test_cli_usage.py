from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgrecovery.cli.main import main


def test_no_repository_is_a_usage_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGRECOVERY_REPO", raising=False)
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "pgrecovery: no repository: pass --repo URL or set PGRECOVERY_REPO"


def test_unknown_verb(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lsit"]) == 2
    assert (
        capsys.readouterr().err == "pgrecovery: unknown verb 'lsit': did you mean 'list'? (see `pgrecovery --help`)\n"
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["backup", "logicl"], "unknown kind 'logicl': did you mean 'logical'?"),
        (["backup", "logical", "-F", "zip"], "unknown value for -F/--format 'zip': choose from custom, directory"),
        (["restore", "base"], "the following arguments are required: --pgdata"),
        (["expire", "--policy", "nightly"], "nightly"),
    ],
)
def test_usage_errors_are_one_line_with_the_fix(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_unknown_backup_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--repo", str(tmp_path), "show", "20990101T000000Z-logical"]) == 2
    err = capsys.readouterr().err
    assert "no complete backup '20990101T000000Z-logical'" in err
    assert "Traceback" not in err


def test_empty_list_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--repo", str(tmp_path), "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"repository": str(tmp_path), "backups": []}


def test_bad_storage_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--storage-option", "novalue", "list"]) == 2


def test_progress_is_plain_lines_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from pgrecovery.cli._common import progress as _progress
    from pgrecovery.progress import Progress

    show = _progress(argparse.Namespace(), every=3600)
    for done in (0, 50, 100):
        show(Progress(operation="copy", done=done * 2**20, total=100 * 2**20, elapsed=1 + done / 10))
    show(Progress(operation="copy", done=100 * 2**20, total=100 * 2**20, elapsed=12, finished=True))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2  # the first event, then nothing until the end (every=3600 s)
    assert lines[0].startswith("pgrecovery: copy: 0 B of 100.0 MiB (0%)")
    assert lines[1].startswith("pgrecovery: copy: done, 100.0 MiB of 100.0 MiB (100%) at ")
    assert "\r" not in "".join(lines)
    assert _progress(argparse.Namespace(json=True)) is None  # stdout stays JSON, stderr quiet


@pytest.mark.parametrize("option", ["--target-time", "--target-xid", "--target-name", "--target-lsn"])
@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_recovery_target_is_a_usage_error_never_latest(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unset shell variable (``--target-time "$T"``) must not become a recovery to the end of the archive."""
    pgdata = tmp_path / "data"
    assert main(["--repo", str(tmp_path / "repo"), "restore", "base", "--pgdata", str(pgdata), option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pgrecovery: {option} is empty: ")
    assert "give no --target-* option" in err  # how to ask for the end of the archive on purpose
    assert err.count("\n") == 1
    assert not pgdata.exists()


@pytest.mark.parametrize("kind", ["rows", "table"])
@pytest.mark.parametrize("option", ["--target-time", "--target-xid", "--target-name", "--target-lsn"])
def test_rescue_names_the_empty_target_option(
    kind: str, option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rest = ["--query", "select 1"] if kind == "rows" else ["public.t", "--into", "dbname=live"]
    argv = ["--repo", str(tmp_path / "repo"), "rescue", kind, *rest, option, "", "--sandbox-db", "shop"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pgrecovery: {option} is empty: give ")
    assert "cannot be empty" not in err  # the old message named a restore point whatever the option
    assert "--target-* option" not in err  # a rescue has no "end of the archive" target
    assert err.count("\n") == 1


def test_the_last_progress_line_of_a_finished_operation_is_exact(capsys: pytest.CaptureFixture[str]) -> None:
    """The total is an estimate while running; the end says what was done (not "22.5 MiB of 22.0 MiB")."""
    import argparse

    from pgrecovery.cli._common import progress as _progress
    from pgrecovery.progress import Meter

    show = _progress(argparse.Namespace(), every=3600)
    over = Meter("restore", show, total=22 * 2**20, interval=0)
    for _ in range(45):
        over.add(2**19)  # 22.5 MiB against an estimate of 22.0
    over.finish()
    under = Meter("restore", show, total=int(40.3 * 2**20), interval=3600)
    under.add(int(39.7 * 2**20))
    under.finish()
    lines = capsys.readouterr().err.splitlines()
    assert lines[-2].startswith("pgrecovery: restore: done, 22.5 MiB of 22.5 MiB (100%)")
    assert lines[-1].startswith("pgrecovery: restore: done, 39.7 MiB of 39.7 MiB (100%)")
