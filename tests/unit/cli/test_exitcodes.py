"""Exit codes live in one table (`pgrecovery.cli.exitcodes`), and only the entry points exit or print."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pgrecovery.cli import exitcodes
from pgrecovery.errors import ConfigurationError, PgRecoveryError

PACKAGE = Path(exitcodes.__file__).resolve().parents[1]
ENTRY_POINTS = {"cli", "__main__.py", "_walcmd.py", "demo.py"}  # demo prints its story through the `out` callback


def _modules(entry_points: bool) -> list[Path]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top = path.relative_to(PACKAGE).parts[0]
        if (top in ENTRY_POINTS) == entry_points:
            found.append(path)
    return found


def test_the_table() -> None:
    assert exitcodes.exit_code_for(ConfigurationError("x")) == exitcodes.EXIT_USAGE == 2
    assert exitcodes.exit_code_for(PgRecoveryError("x")) == exitcodes.EXIT_FAILED == 1
    assert exitcodes.EXIT_FATAL > 125  # PostgreSQL stops recovery on it instead of taking it for "not archived"


@pytest.mark.parametrize("path", _modules(entry_points=True), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_exit_code_outside_the_table(path: Path) -> None:
    """No literal exit code and no table of one's own in the entry points: each comes from `exitcodes`."""
    if path.name == "exitcodes.py":
        return
    wrong = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) and type(node.value.value) is int:
            wrong.append(f"line {node.lineno}: return {node.value.value}")
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            wrong += [f"line {node.lineno}: {n} =" for n in names if n.startswith(("EXIT_", "_EXIT"))]
    assert not wrong, f"{path.name}: exit codes belong in pgrecovery/cli/exitcodes.py: {wrong}"


@pytest.mark.parametrize("path", _modules(entry_points=False), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_library_neither_exits_nor_prints(path: Path) -> None:
    wrong = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None and "SystemExit" in ast.unparse(node.exc):
            wrong.append(f"line {node.lineno}: raise SystemExit")
        if isinstance(node, ast.Call):
            call = ast.unparse(node.func)
            if call in ("print", "sys.exit", "exit", "os._exit", "sys.stdout.write", "sys.stderr.write"):
                wrong.append(f"line {node.lineno}: {call}()")
    assert not wrong, f"{path.name}: only pgrecovery/cli exits and prints: {wrong}"


def test_every_verb_has_a_handler() -> None:
    import argparse

    from pgrecovery.cli.main import _VERBS, EXTENSION_VERBS, build_parser

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(actions[0].choices) == set(_VERBS) | set(EXTENSION_VERBS)


def test_a_wal_fetch_that_cannot_start_stops_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As restore_command, anything but a delivery (0) or a confirmed miss (1) is 255: PostgreSQL stops instead of
    ending recovery at the wrong point (a bad log format would otherwise be a usage error, 2)."""
    from pgrecovery.cli.main import main

    monkeypatch.setenv("PGRECOVERY_LOG_FORMAT", "yaml")
    argv = ["--repo", str(tmp_path), "wal-fetch", "000000010000000000000001", str(tmp_path / "x")]
    assert main(argv) == exitcodes.EXIT_FATAL
    assert main(["--repo", str(tmp_path), "list"]) == exitcodes.EXIT_USAGE
    assert "PGRECOVERY_LOG_FORMAT='yaml'" in capsys.readouterr().err
