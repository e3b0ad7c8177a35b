"""What an incremental base backup stores of each file: nothing (unchanged since the parent: the parent's entry is
referenced), the whole file, or only the blocks that changed.

Which blocks changed since the parent, by method:

* ``wal-summaries`` (PostgreSQL 17+, ``summarize_wal = on``): the server's WAL summaries for the WAL between the
  parent's start and this backup's start name every block a record touched, and the shortest length a relation
  was truncated to. Unchanged blocks are never read.
* ``page-lsn`` (every major): each relation page is read; pages stamped after the parent's start (and never-stamped
  ones) are stored. Safe because the parent's start is a checkpoint's redo point: a page changed after it carries a
  newer LSN, and a page changed while either backup read it is rewritten whole by WAL replay (full-page writes are
  forced on during a backup). A change no WAL record covers (a hint bit) is one replay does not need either.
* ``file``: whole files compared by size and sha256, as before block-level backups.

Only the main fork of WAL-logged relations is taken block by block: the visibility map can be cleared without its
page's LSN moving, the free space map is not WAL-logged, and unlogged relations are reset from their init fork at
recovery; those, and files that are not relation data, are compared whole. A database directory created again
since the parent started (its ``PG_VERSION`` is newer: ``CREATE DATABASE … STRATEGY FILE_COPY`` copies pages with
their old LSNs) is stored whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any, Final, Literal, get_args

import attrs

from .._pgdb import first_line
from .._walnames import format_lsn, parse_lsn
from ..errors import ConfigurationError
from ..manifest import BackupManifest, MemberEntry
from ..progress import Meter
from ..storage.repository import CHUNK
from ._pages import SEGMENT_BYTES, RelationFile, changed_since, relation_file

log = logging.getLogger("pgrecovery.backup")

Incremental = Literal["auto", "wal-summaries", "page-lsn", "file"]
INCREMENTAL_METHODS: Final[tuple[Incremental, ...]] = get_args(Incremental)
SUMMARY_WAIT: Final = 60.0  # how long a backup waits for the WAL summarizer to reach its start
_RelKey = tuple[int, int, int]  # (tablespace, database, relfilenode)


@attrs.frozen
class Summary:
    """Main-fork blocks changed in a WAL range, by relation, and the shortest length each was truncated to."""

    blocks: dict[_RelKey, set[int]]
    limits: dict[_RelKey, int]


@attrs.frozen
class Decision:
    """For one file: reuse the parent's entry, store the whole file (both None), or store ``blocks``."""

    reuse: MemberEntry | None = None
    blocks: list[int] | None = None


WHOLE: Final = Decision()


@attrs.frozen
class Planner:
    """Decides, file by file, what an incremental backup stores (see the module's docstring)."""

    parent: dict[str, MemberEntry]
    method: str  # "wal-summaries", "page-lsn" or "file"
    since: int  # the parent's start LSN
    block_size: int
    segment_blocks: int
    summary: Summary | None = None
    unlogged: frozenset[_RelKey] = frozenset()
    recreated: frozenset[tuple[int, int]] = frozenset()

    def decide(self, rel: str, abspath: str, size: int, meter: Meter) -> Decision:
        before = self.parent.get(rel)
        if before is None:
            return WHOLE
        rf = relation_file(rel)
        if rf is not None and rf.directory_key in self.recreated:
            return WHOLE
        if not self._block_level(rf, size, before):
            if before.blocks is not None:
                return WHOLE
            return Decision(reuse=_unchanged(abspath, size, before, meter))
        assert rf is not None
        try:
            blocks = self._changed(rf, abspath, size, before, meter)
        except FileNotFoundError:
            return WHOLE  # dropped while we looked: the writer skips it
        if not blocks and size == before.size:
            return Decision(reuse=before)
        if 2 * len(blocks) * self.block_size >= size:
            return WHOLE  # mostly changed: whole is as small, and quicker to restore
        return Decision(blocks=blocks)

    def _block_level(self, rf: RelationFile | None, size: int, before: MemberEntry) -> bool:
        return (
            self.method != "file"
            and rf is not None
            and rf.fork == "main"
            and (rf.tablespace, rf.database, rf.relfilenode) not in self.unlogged
            and size % self.block_size == 0
            and before.size % self.block_size == 0
        )

    def _changed(self, rf: RelationFile, abspath: str, size: int, before: MemberEntry, meter: Meter) -> list[int]:
        n = size // self.block_size
        start = before.size // self.block_size  # blocks past the parent's length are new: always taken
        if self.summary is not None:
            key = (rf.tablespace, rf.database, rf.relfilenode)
            first = rf.segment * self.segment_blocks
            out = {b - first for b in self.summary.blocks.get(key, ()) if first <= b < first + n}
            limit = self.summary.limits.get(key)
            if limit is not None:
                start = min(start, max(0, limit - first))
            os.stat(abspath)  # still there (FileNotFoundError otherwise)
            meter.add(size)
            return sorted(out.union(range(start, n)))
        with open(abspath, "rb", buffering=0) as f:
            found = changed_since(f, size, self.block_size, self.since)
        meter.add(size)
        return sorted(set(found).union(range(start, n)))


def _unchanged(abspath: str, size: int, before: MemberEntry, meter: Meter) -> MemberEntry | None:
    """The parent's entry when the file still has its size and sha256 (then it is not stored)."""
    if before.size != size:
        return None
    h = hashlib.sha256()
    left = size
    try:
        with open(abspath, "rb", buffering=0) as f:
            while left > 0 and (chunk := f.read(min(CHUNK, left))):
                h.update(chunk)
                left -= len(chunk)
                meter.add(len(chunk))
    except FileNotFoundError:
        return None
    return before if left == 0 and h.hexdigest() == before.sha256 else None


def plan_incremental(
    conn: Any, parent: BackupManifest, method: Incremental, start_lsn: str, timeline: int, files: list[Any]
) -> Planner:
    """The `Planner` for a backup on ``parent`` whose own start is ``start_lsn`` on ``timeline`` (``conn``: the
    backup's session, for the server's settings and WAL summaries); ``files``: the scan (``rel``, ``abspath``)."""
    assert parent.physical is not None
    phys = parent.physical
    row = conn.execute(
        "select current_setting('block_size')::int, "
        "(select setting::bigint from pg_settings where name = 'segment_size'), "
        "current_setting('server_version_num')::int"
    ).fetchone()
    block_size, segment_blocks, version = int(row[0]), int(row[1]), int(row[2])
    files_only = Planner(
        parent={m.path: m for m in phys.members},
        method="file",
        since=parse_lsn(phys.start_lsn),
        block_size=block_size,
        segment_blocks=segment_blocks,
    )
    why = _blocks_impossible(phys, start_lsn, timeline, block_size, segment_blocks)
    if method == "file" or why:
        if why and method in ("wal-summaries", "page-lsn"):
            raise ConfigurationError(f"incremental={method!r} is not possible: {why}")
        if why:
            log.warning("incremental backup compares whole files: %s", why)
        return files_only
    unlogged, recreated = _scan_facts(files, files_only.parent, parent.started_at.timestamp())
    planner = attrs.evolve(files_only, method="page-lsn", unlogged=unlogged, recreated=recreated)
    summary: Summary | str | None = None
    if method in ("auto", "wal-summaries") and version >= 170000:
        summary = wal_summaries(conn, timeline, phys.start_lsn, start_lsn)
        if isinstance(summary, Summary):
            return attrs.evolve(planner, method="wal-summaries", summary=summary)
    if method == "wal-summaries":
        raise ConfigurationError(
            "incremental='wal-summaries' is not possible: "
            + (summary if isinstance(summary, str) else "WAL summaries need PostgreSQL 17 or newer")
        )
    if isinstance(summary, str):
        log.warning("incremental backup reads every relation page (page LSNs): %s", summary)
    return planner


def _blocks_impossible(phys: Any, start_lsn: str, timeline: int, block_size: int, segment_blocks: int) -> str:
    """Why block-level deltas cannot be taken against this parent ("" when they can)."""
    if parse_lsn(start_lsn) < parse_lsn(phys.stop_lsn):
        return (
            f"the parent ends at {phys.stop_lsn}, after this backup's start {start_lsn} (a standby behind the "
            "server the parent was taken from): its pages may be newer than this backup's"
        )
    if phys.timeline != timeline:
        return (
            f"the parent is on timeline {phys.timeline} and the server on {timeline} (page changes on an abandoned "
            "timeline would be missed): take a full backup on the new timeline"
        )
    if phys.block_size != block_size:
        return f"the parent's block size is {phys.block_size}, the server's {block_size}"
    if segment_blocks * block_size != SEGMENT_BYTES:
        return f"the server's relation segments are {segment_blocks * block_size} bytes, not 1 GB"
    return ""


def _scan_facts(
    files: list[Any], members: dict[str, MemberEntry], since: float
) -> tuple[frozenset[_RelKey], frozenset[tuple[int, int]]]:
    """Unlogged relations (those with an init fork) and database directories created again since the parent
    started (``since``): their ``PG_VERSION`` is another than the parent's and newer than that. (A standby's
    files all have other times than its primary's; its databases, made before the parent, still count as the
    same.)"""
    unlogged = set()
    recreated = set()
    for f in files:
        rf = relation_file(f.rel)
        if rf is not None and rf.fork == "init":
            unlogged.add((rf.tablespace, rf.database, rf.relfilenode))
        elif f.rel.endswith("/PG_VERSION") and (rf := relation_file(f.rel[: -len("PG_VERSION")] + "1")):
            before = members.get(f.rel)
            try:
                mtime = int(os.stat(f.abspath).st_mtime)
            except FileNotFoundError:
                continue
            if (before is None or before.mtime != mtime) and mtime >= since - 1:
                recreated.add(rf.directory_key)
    return frozenset(unlogged), frozenset(recreated)


def wal_summaries(conn: Any, timeline: int, since: str, until: str, wait: float = SUMMARY_WAIT) -> Summary | str:
    """The server's WAL summaries of ``since``..``until`` on ``timeline`` (waiting up to ``wait`` seconds for the
    summarizer to get there), or one line saying why they cannot be had."""
    import psycopg

    try:
        if conn.execute("select current_setting('summarize_wal')").fetchone()[0] != "on":
            return "summarize_wal is off (set summarize_wal = on to read only changed blocks)"
        low, high = parse_lsn(since), parse_lsn(until)
        deadline = time.monotonic() + wait
        while (
            parse_lsn(str(conn.execute("select summarized_lsn::text from pg_get_wal_summarizer_state()").fetchone()[0]))
            < high
        ):
            if time.monotonic() > deadline:
                return f"the WAL summarizer did not reach {until} within {wait:.0f} s"
            time.sleep(0.05)
        rows = conn.execute(
            "select start_lsn::text, end_lsn::text from pg_available_wal_summaries() "
            "where tli = %s and end_lsn > %s::pg_lsn and start_lsn < %s::pg_lsn",
            (timeline, since, until),
        ).fetchall()
        rows.sort(key=lambda row: parse_lsn(row[0]))  # in LSN order (as text, 0/10000000 sorts before 0/F000000)
        covered = low
        for start, end in rows:
            if parse_lsn(start) > covered:
                break
            covered = max(covered, parse_lsn(end))
        if covered < high:
            return (
                f"the server's WAL summaries do not cover {since}..{until} from {format_lsn(covered)} on "
                "(summarization started later, or wal_summary_keep_time removed them)"
            )
        blocks: dict[_RelKey, set[int]] = {}
        limits: dict[_RelKey, int] = {}
        for start, end in rows:
            for space, db, node, block, is_limit in conn.execute(
                "select reltablespace, reldatabase, relfilenode, relblocknumber, is_limit_block "
                "from pg_wal_summary_contents(%s, %s::pg_lsn, %s::pg_lsn) where relforknumber = 0",
                (timeline, start, end),
            ):
                key = (int(space), int(db), int(node))
                if is_limit:
                    limits[key] = min(int(block), limits.get(key, int(block)))
                else:
                    blocks.setdefault(key, set()).add(int(block))
        return Summary(blocks=blocks, limits=limits)
    except psycopg.Error as e:
        return f"cannot read the server's WAL summaries: {first_line(e)}"
