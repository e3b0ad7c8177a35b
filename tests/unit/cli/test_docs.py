"""Every `pgrecovery ...` command shown in the README and docs/ parses with the real CLI parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pgrecovery.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[3]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        in_block = False
        for line in doc.read_text().splitlines():
            if line.startswith("```"):
                in_block = not in_block
                continue
            m = re.match(r"^\s*(?:\$ )?pgrecovery (.+?)(?:\s+#.*)?$", line)
            if in_block and m:
                found.append((doc.name, m.group(1).split(" > ")[0]))
    return found


@pytest.mark.parametrize(("doc", "command"), commands())
def test_documented_command_parses(doc: str, command: str) -> None:
    args = [a.replace("…", "x") for a in shlex.split(command)]
    build_parser().parse_args(args)


def test_there_are_documented_commands() -> None:
    assert len(commands()) >= 5
