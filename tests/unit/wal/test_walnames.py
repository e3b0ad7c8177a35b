"""WAL file names, LSNs and timeline history files (pgrecovery._walnames), and the WAL object names of wal.py."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from pgrecovery import _fastpath, _spool
from pgrecovery import _walnames as wn
from pgrecovery.wal.archiver import archive_command, object_key, parse_object_name, restore_command

MiB = 1024 * 1024


def test_parse_and_format_segment() -> None:
    assert wn.parse_segment("00000002000000A3000000FF") == (2, 0xA3, 0xFF)
    assert wn.format_segment(2, 0xA3, 0xFF) == "00000002000000A3000000FF"
    assert wn.segment_number("000000010000000100000002") == 0x102
    assert wn.segment_name(1, 0x102) == "000000010000000100000002"


@pytest.mark.parametrize(
    ("name", "size", "expected"),
    [
        ("000000010000000000000001", 16 * MiB, "000000010000000000000002"),
        ("0000000100000000000000FF", 16 * MiB, "000000010000000100000000"),  # 256 segments of 16 MiB per log
        ("0000000300000005000000FF", 16 * MiB, "000000030000000600000000"),
        ("000000010000000000000FFF", 1 * MiB, "000000010000000100000000"),  # 4096 per log at 1 MiB
        ("000000010000000000000003", 1024 * MiB, "000000010000000100000000"),  # 4 per log at 1 GiB
        ("000000010000000000000001", 64 * MiB, "000000010000000000000002"),
    ],
)
def test_next_segment_crosses_log_boundaries(name: str, size: int, expected: str) -> None:
    assert wn.next_segment(name, size) == expected


def test_segment_range() -> None:
    assert wn.segment_range("0000000100000000000000FE", "000000010000000100000001") == [
        "0000000100000000000000FE",
        "0000000100000000000000FF",
        "000000010000000100000000",
        "000000010000000100000001",
    ]


def test_segment_not_valid_for_size() -> None:
    with pytest.raises(ValueError, match="not a valid segment name"):
        wn.segment_number("000000010000000000000004", 1024 * MiB)


@pytest.mark.parametrize("size", [0, 3 * MiB, MiB // 2, 2048 * MiB])
def test_bad_segment_size(size: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        wn.segments_per_log(size)


def test_lsn_round_trip() -> None:
    assert wn.parse_lsn("0/3000060") == 0x3000060
    assert wn.parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert wn.format_lsn(0x3000060) == "0/3000060"
    assert wn.format_lsn((0x16 << 32) | 0xB374D848) == "16/B374D848"
    for bad in ("3000060", "0/", "x/1", "0/123456789"):
        with pytest.raises(ValueError, match="not an LSN"):
            wn.parse_lsn(bad)


def test_segment_for_lsn() -> None:
    assert wn.segment_for_lsn("0/3000060") == "000000010000000000000003"
    assert wn.segment_for_lsn("0/2FFFFFF", timeline=2) == "000000020000000000000002"
    assert wn.segment_for_lsn("1/0") == "000000010000000100000000"
    assert wn.segment_for_lsn("16/B374D848") == "0000000100000016000000B3"
    assert wn.segment_for_lsn("0/3000060", segment_size=1 * MiB) == "000000010000000000000030"
    assert wn.segment_for_lsn("1/C0000000", segment_size=1024 * MiB) == "000000010000000100000003"
    assert wn.segment_for_lsn(0x3000060, 3) == "000000030000000000000003"


def test_classification() -> None:
    seg, hist = "000000010000000000000003", "00000002.history"
    backup, partial = "000000010000000000000002.00000028.backup", "000000010000000000000005.partial"
    assert [wn.is_segment(n) for n in (seg, hist, backup, partial)] == [True, False, False, False]
    assert [wn.is_history(n) for n in (seg, hist, backup, partial)] == [False, True, False, False]
    assert [wn.is_backup(n) for n in (seg, hist, backup, partial)] == [False, False, True, False]
    assert [wn.is_partial(n) for n in (seg, hist, backup, partial)] == [False, False, False, True]
    for name in (seg, hist, backup, partial):
        assert wn.is_wal_file(name)
    for name in ("RECOVERYXLOG", "00000001000000000000000g", "000000010000000000000003.tmp", "0000000A.HISTORY", ""):
        assert not wn.is_wal_file(name)
    assert [wn.timeline_of(n) for n in (seg, hist, backup, partial, "0000000A.history")] == [1, 2, 1, 1, 10]
    assert wn.parse_segment(partial) == (1, 0, 5)
    with pytest.raises(ValueError):
        wn.timeline_of("pg_wal/000000010000000000000003")


def test_history_file_parsing() -> None:
    text = (
        "1\t0/3000060\tno recovery target specified\n"
        "\n"
        "# a comment\n"
        "2\t0/50000A0\tbefore 2026-03-15 14:30:00+00\n"
        '4\t1/0\tat restore point "before upgrade"\n'
    )
    entries = wn.parse_history(text)
    assert entries == [
        (1, "0/3000060", "no recovery target specified"),
        (2, "0/50000A0", "before 2026-03-15 14:30:00+00"),
        (4, "1/0", 'at restore point "before upgrade"'),
    ]
    assert (entries[1].parent_timeline, entries[1].switch_lsn) == (2, "0/50000A0")
    assert wn.parse_history("") == []
    assert wn.history_name(2) == "00000002.history"
    assert wn.history_name(26) == "0000001A.history"


@pytest.mark.parametrize("text", ["x\t0/1\treason", "1\tnot-an-lsn\treason", "2\t0/1\ta\n1\t0/2\tb"])
def test_bad_history_files(text: str) -> None:
    with pytest.raises(ValueError, match="history file line"):
        wn.parse_history(text)


def test_object_names() -> None:
    digest = "ab" * 32
    key = object_key("000000020000000000000003", digest, "zstd")
    assert key == f"wal/00000002/000000020000000000000003-{digest}.zst"
    assert parse_object_name(key.rsplit("/", 1)[1]) == ("000000020000000000000003", digest, "zstd")
    assert object_key("00000002.history", digest, "none") == f"wal/00000002/00000002.history-{digest}"
    assert parse_object_name(f"00000002.history-{digest}") == ("00000002.history", digest, "none")
    assert parse_object_name(f"000000010000000000000002.00000028.backup-{digest}.gz")[2] == "gzip"  # type: ignore[index]
    for bad in (f".000000010000000000000003-{digest}.zst.1234.tmp", "000000010000000000000003", f"x-{digest}"):
        assert parse_object_name(bad) is None


def test_command_lines_quote_safely() -> None:
    cmd = archive_command("s3://bucket/it's here%2F", python="/opt/my venv/bin/python", fast=False)
    assert cmd.endswith(" %p")
    # PostgreSQL turns %% into %; the shell then sees exactly the interpreter and URL we gave.
    words = shlex.split(cmd.replace("%%", "%"))
    assert words == [
        "/opt/my venv/bin/python",
        "-m",
        "pgrecovery",
        "wal-push",
        "--repo",
        "s3://bucket/it's here%2F",
        "%p",
    ]
    cmd = restore_command("file:///backups/pg", python="/usr/bin/python3", spool_dir="/var/spool/pg", fast=False)
    assert shlex.split(cmd) == [
        "/usr/bin/python3",
        *("-m", "pgrecovery", "wal-fetch", "--repo", "file:///backups/pg", "--spool", "/var/spool/pg", "%f", "%p"),
    ]


def test_fast_command_lines_run_the_spool_script() -> None:
    script = str(Path(_spool.__file__).resolve().with_name("_walcmd.py"))
    shell, _, command = archive_command("file:///b", python="/usr/bin/python3").partition("exec ")
    assert "-ef" in shell
    assert shlex.split(command.removesuffix(")")) == [
        *("/usr/bin/python3", "-S", script, "wal-push", "--repo", "file:///b", "%p"),
    ]
    assert shlex.split(restore_command("file:///b", python="/usr/bin/python3", prefetch=False)) == [
        *("/usr/bin/python3", "-S", script, "wal-fetch", "--repo", "file:///b", "--no-prefetch", "%f", "%p"),
    ]


def test_fast_arguments() -> None:
    assert _fastpath._fast_args(["wal-push", "--repo", "file:///b", "pg_wal/x"]) == (
        "wal-push",
        {"--repo": "file:///b"},
        ["pg_wal/x"],
        set(),
    )
    assert _fastpath._fast_args(["wal-fetch", "--no-prefetch", "--spool", "/s", "a", "b"]) == (
        "wal-fetch",
        {"--spool": "/s"},
        ["a", "b"],
        {"--no-prefetch"},
    )
    # Anything the fast path does not know goes to the full CLI.
    for argv in (["wal-push", "--storage-option", "a=b", "p"], ["wal-verify"], [], ["wal-push", "--repo"]):
        assert _fastpath._fast_args(argv) is None
