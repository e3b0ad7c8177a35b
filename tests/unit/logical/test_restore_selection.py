"""Restore selection without a server: which entries a schema restore picks, and which option sets a backup's
format refuses (before anything is written)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pgrecovery import BackupManifest, ConfigurationError, FileEntry
from pgrecovery.logical._toc import TocEntry, belongs_to, parse_toc, schema_entries
from pgrecovery.logical.restore import _check_options
from pgrecovery.manifest import Format

LISTING = """;
; Selected TOC Entries:
;
6; 2615 16385 SCHEMA - s1 postgres
7; 2615 16386 SCHEMA - s2 postgres
216; 1259 16387 TABLE public orders postgres
218; 1259 16400 TABLE s1 t2 postgres
219; 1259 16401 TABLE s1 t3 postgres
217; 1259 16399 SEQUENCE s1 t2_id_seq postgres
3361; 0 16400 TABLE DATA s1 t2 postgres
3362; 0 16401 TABLE DATA s1 t3 postgres
3211; 2606 16395 CONSTRAINT s1 t2 t2_pkey postgres
3214; 2606 16403 FK CONSTRAINT s1 t3 t3_y_fkey postgres
3370; 0 0 COMMENT - SCHEMA s2 postgres
220; 1259 16410 TABLE s2 u postgres
"""
TOC = parse_toc(LISTING)


def ids(entries: list[TocEntry]) -> list[int]:
    return [e.dump_id for e in entries]


def test_a_schema_brings_its_entries_and_itself_when_the_target_lacks_it() -> None:
    assert ids(schema_entries(TOC, ["s1"])) == [6, 218, 219, 217, 3361, 3362, 3211, 3214]


def test_a_schema_the_target_has_is_not_created_again() -> None:
    assert ids(schema_entries(TOC, ["s1"], present=["s1"])) == [218, 219, 217, 3361, 3362, 3211, 3214]


def test_a_schemas_comment_comes_with_it() -> None:
    assert ids(schema_entries(TOC, ["s2"])) == [7, 3370, 220]


def test_tables_restrict_a_schema_to_those_tables_and_what_is_named_after_them() -> None:
    assert ids(schema_entries(TOC, ["s1"], ["t2"], present=["s1"])) == [218, 3361, 3211]
    pkey = next(e for e in TOC if e.dump_id == 3211)  # CONSTRAINT s1 "t2 t2_pkey"
    assert belongs_to(pkey, ["t2"])
    assert not belongs_to(pkey, ["t"])  # a prefix of the name is not the table


def test_unknown_schemas_are_named_sorted() -> None:
    with pytest.raises(KeyError, match="nope, zz"):
        schema_entries(TOC, ["s1", "zz", "nope"])


def backup(fmt: Format) -> BackupManifest:
    t = datetime(2026, 11, 24, tzinfo=UTC)
    return BackupManifest(
        id=f"20261124T000000Z-logical-{fmt}",
        kind="logical",
        started_at=t,
        finished_at=t + timedelta(seconds=1),
        format=fmt,
        compression="zstd",
        files=[FileEntry(path="data/dump", size=1, sha256="0" * 64, codec="zstd", role="dump")],
    )


@pytest.mark.parametrize(
    ("fmt", "whole", "jobs", "single", "refusal"),
    [
        ("plain", False, 1, False, "plain SQL: it can only be restored whole and serially"),
        ("plain", True, 2, False, "plain SQL: it can only be restored whole and serially"),
        ("custom", True, 4, True, "single_transaction cannot be combined with parallel jobs"),
        ("tar", True, 2, False, "cannot restore the tar format in parallel"),
    ],
)
def test_options_the_format_cannot_honour_are_refused(
    fmt: Format, whole: bool, jobs: int, single: bool, refusal: str
) -> None:
    with pytest.raises(ConfigurationError, match=refusal):
        _check_options(backup(fmt), whole=whole, jobs=jobs, single_transaction=single)


@pytest.mark.parametrize(
    ("fmt", "whole", "jobs", "single"),
    [("plain", True, 1, True), ("custom", False, 8, False), ("directory", False, 8, False), ("tar", False, 1, True)],
)
def test_options_the_format_honours_pass(fmt: Format, whole: bool, jobs: int, single: bool) -> None:
    _check_options(backup(fmt), whole=whole, jobs=jobs, single_transaction=single)
