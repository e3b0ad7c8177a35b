from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgrecovery.cli import main


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

    from pgrecovery.cli import _progress
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
