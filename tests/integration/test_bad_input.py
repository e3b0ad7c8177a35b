"""Bad input, table-driven: every CLI verb and the public API's entry points, given what users get wrong.

Missing and malformed arguments (for every verb, from the parser itself), unknown backup ids, recovery targets in
the future, before the oldest backup, in a WAL gap or on a timeline that does not exist, a non-empty or
non-writable data directory, a repository with an unknown scheme, without permission or read-only, a backup of
another PostgreSQL major version, a wrong encryption key, and a disk that fills up during a restore.

Each CLI case must give exactly one line on stderr, starting ``pgrecovery: `` and naming the fix, no traceback,
exit code 1 or 2 (``wal-fetch``: 255, on purpose: as restore_command a usage error must stop recovery), and
leave nothing half-written: the repository lists the same backups and no incomplete one, a data directory is
either untouched or gone. Counts (tried / refused) go to the reliability results file under ``bad_input``.

Simulated, because only PostgreSQL 15 is installed here: "a server of another major version" is a base backup
whose manifest says it was taken from PostgreSQL 16 (the manifest rewritten, with a valid checksum); restoring it
with ``--run`` must be refused before anything is written. The full disk is a 20 MiB tmpfs (needs root to
mount; skipped otherwise).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from pgtesting import Archiving
from pgtesting import owned_tmpdir as _owned_tmpdir
from pgtesting import wait_archived as _wait_archived
from test_corruption import record_result, reset_section

from pgrecovery import (
    BackupNotFound,
    BaseBackup,
    ConfigurationError,
    DatabaseError,
    LogicalBackup,
    LogicalRestore,
    PgRecoveryError,
    RecoveryPlan,
    RecoveryTarget,
    Repository,
    TargetUnreachable,
    ToolNotFound,
    Verifier,
    WalArchiver,
)
from pgrecovery.catalog import leftovers, manifest_key
from pgrecovery.cli.main import build_parser, main
from pgrecovery.cluster import free_port
from pgrecovery.crypto import EncryptionKey
from pgrecovery.errors import WrongKey

MISSING = "20990101T000000Z-base"


@pytest.fixture(scope="module", autouse=True)
def _fresh_results() -> None:
    reset_section("bad_input")


# -- the world: a cluster, its repository with a logical and a base backup, an encrypted repository -----------------


def _mount_tmpfs(where: Path, options: str) -> bool:
    if os.getuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], capture_output=True, check=False)


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    ctx = Archiving("pgrecovery-badin")
    pg, root, url, repo = ctx.pg, ctx.root, ctx.url, ctx.repo
    scratch = _owned_tmpdir("pgrecovery-badin-")
    mounts: list[Path] = []
    try:
        ctx.start()
        pg.execute("insert into t select i, md5(i::text) from generate_series(1, 2000) i")
        logical = LogicalBackup(dbname=pg.conninfo()).run(repo)
        base = BaseBackup(dbname=pg.conninfo()).run(repo)
        for start in (2001, 3001):  # two more segments after the backup: the first of them becomes a gap
            pg.execute("select pg_switch_wal()")
            pg.execute(f"insert into t select i, md5(i::text) from generate_series({start}, {start + 999}) i")
        _wait_archived(pg)

        # a copy with a WAL gap after the base backup
        gap = scratch / "gap-repo"
        shutil.copytree(root, gap)
        assert base.physical is not None
        after = sorted(p for p in (gap / "wal" / "00000001").iterdir() if p.name[:24] > base.physical.stop_wal)
        after[0].unlink()
        # a copy whose base backup claims PostgreSQL 16 (simulated: only 15 is installed here)
        other = scratch / "v16-repo"
        shutil.copytree(root, other)
        v16 = Repository(f"file://{other}")
        claimed = attrs.evolve(base, server_version="16.4 (simulated)")
        v16.put_bytes(manifest_key(base.id), claimed.to_json().encode(), overwrite=True)
        # a copy the server's OS user owns, for commands run as that user
        theirs = scratch / "postgres-repo"
        shutil.copytree(root, theirs)
        if os.getuid() == 0:
            for path, _, files in os.walk(theirs):
                for name in [path, *(os.path.join(path, f) for f in files)]:
                    shutil.chown(name, "postgres", "postgres")
        # an encrypted repository, its key and another key
        keys = scratch / "keys"
        keys.mkdir()
        right, wrong = EncryptionKey.generate(), EncryptionKey.generate()
        right.save(keys / "right.key")
        wrong.save(keys / "wrong.key")
        enc_url = f"file://{scratch / 'enc-repo'}"
        enc = LogicalBackup(dbname=pg.conninfo()).run(Repository(enc_url, encryption=right))

        # a read-only filesystem and a small one (tmpfs, when we may mount)
        readonly, small = scratch / "readonly", scratch / "small"
        readonly.mkdir()
        small.mkdir()
        has_ro = _mount_tmpfs(readonly, "ro,size=1m,mode=0755")
        if has_ro:
            mounts.append(readonly)
        has_small = _mount_tmpfs(small, "size=20m,mode=0755")
        if has_small:
            mounts.append(small)
        yield {
            "pg": pg,
            "url": url,
            "repo": repo,
            "logical": logical,
            "base": base,
            "gap_url": f"file://{gap}",
            "their_url": f"file://{theirs}",
            "v16_url": v16.url,
            "enc_url": enc_url,
            "enc": enc,
            "right_key": str(keys / "right.key"),
            "wrong_key": str(keys / "wrong.key"),
            "readonly": readonly if has_ro else None,
            "small": small if has_small else None,
            "dead": f"host=127.0.0.1 port={free_port()} dbname=nothere password=not-a-real-secret",
        }
    finally:
        for m in mounts:
            _umount(m)
        ctx.close()
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = _owned_tmpdir("pgrecovery-badin-case-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- the table ------------------------------------------------------------------------------------------------------

W = dict[str, Any]


@attrs.frozen
class Case:
    """One bad input: the command line (built from the world and a scratch directory), the exit codes allowed,
    words the one-line message must contain (they name the fix), and what must hold afterwards."""

    id: str
    argv: Callable[[W, Path], list[str]]
    codes: tuple[int, ...] = (2,)
    says: tuple[str, ...] = ()
    needs: str | None = None  # "readonly" / "small": a tmpfs mount
    env: dict[str, str | None] = attrs.Factory(dict)
    as_postgres: bool = False
    after: Callable[[W, Path], None] | None = None
    as_root: bool = False  # the case is about a server run as another OS user than ours


def _stop(w: W) -> str:
    """The base backup's stop LSN: a target the plan accepts."""
    return str(w["base"].physical.stop_lsn)


def _r(w: W) -> list[str]:
    return ["--repo", w["url"]]


def _words(words: list[str]) -> Callable[[W, Path], list[str]]:
    """The command line ``--repo URL`` + ``words``."""
    return lambda w, t: [*_r(w), *words]


def _pgdata_untouched(w: W, tmp: Path) -> None:
    assert (tmp / "data" / "precious").read_text() == "keep me"
    assert sorted(os.listdir(tmp / "data")) == ["precious"]


def _no_pgdata(w: W, tmp: Path) -> None:
    assert not (tmp / "data").exists(), sorted(os.listdir(tmp / "data"))[:10]


def _small_is_empty(w: W, tmp: Path) -> None:
    assert os.listdir(w["small"]) == []  # the half-restored directory was removed: the space is free again


def _prepare(case: Case, w: W, tmp: Path) -> None:
    if case.after is _pgdata_untouched:
        (tmp / "data").mkdir()
        (tmp / "data" / "precious").write_text("keep me")


def _parser_cases() -> list[Case]:
    """For every verb (and kind): an unknown option, and (where it has any) its required arguments left out."""
    out = []

    def subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    for verb, parser in subparsers(build_parser()).items():
        kinds = subparsers(parser)
        for words, sub in [([verb, k], kp) for k, kp in kinds.items()] or [([verb], parser)]:
            code = (255,) if verb == "wal-fetch" else (2,)
            name = "-".join(words)
            required = [
                a
                for a in sub._actions
                if a.required
                or (
                    not a.option_strings and a.nargs not in ("?", "*") and not isinstance(a, argparse._SubParsersAction)
                )
            ]
            # argparse names missing arguments before unknown ones: either way, one line that says what is wrong
            unknown = ("the following arguments are required",) if required else ("unrecognized arguments",)
            out.append(Case(f"unknown-option/{name}", _words([*words, "--no-such-option"]), code, unknown))
            if required:
                out.append(
                    Case(f"missing-arguments/{name}", _words(words), code,
                         ("the following arguments are required",))
                )  # fmt: skip
    return out


SEMANTIC: list[Case] = [
    # the repository
    Case("no-repository", lambda w, t: ["list"], (2,), ("--repo URL", "PGRECOVERY_REPO"),
         env={"PGRECOVERY_REPO": None}),
    Case("repository-bad-scheme", lambda w, t: ["--repo", "foo://bucket/x", "list"], (2,),
         ("unknown storage protocol",)),
    Case("copy-to-bad-scheme", lambda w, t: [*_r(w), "copy", "--to", "nope://x"], (2,), ("unknown storage protocol",)),
    Case("repository-no-permission", lambda w, t: ["--repo", f"file://{t / 'private'}", "list"], (1,),
         ("permission denied", "backups"), as_postgres=True),
    Case("backup-into-read-only-repository", lambda w, t: ["--repo", f"file://{w['readonly']}", "backup", "logical",
         "--dbname", w["pg"].conninfo()], (1,), ("Read-only file system",), needs="readonly"),
    # unknown backup ids, and ids that are not ids
    *[
        Case(f"unknown-id/{'-'.join(v)}", _words(v), (2,), ("no complete backup", MISSING))
        for v in (["show", MISSING], ["contents", MISSING], ["verify", MISSING], ["delete", MISSING],
                  ["restore", "logical", MISSING, "--dbname", "dbname=x"],
                  ["restore", "table", MISSING, "t", "--dbname", "dbname=x"])
    ],
    Case("unknown-id/restore-base", lambda w, t: [*_r(w), "restore", "base", MISSING, "--pgdata", str(t / "data")],
         (2,), ("no complete backup", MISSING), after=_no_pgdata),
    Case("path-as-backup-id", lambda w, t: [*_r(w), "show", "../../etc"], (2,), ("is not a backup id",)),
    Case("logical-id-as-base", lambda w, t: [*_r(w), "restore", "base", w["logical"].id, "--pgdata", str(t / "data")],
         (2,), ("not a base backup",), after=_no_pgdata),
    # malformed values
    Case("target-time-malformed", lambda w, t: [*_r(w), "restore", "base", "--pgdata", str(t / "data"),
         "--target-time", "yesterday"], (2,), ("not a timestamp", "2026-03-15 14:30:00+00"), after=_no_pgdata),
    Case("target-time-without-zone", lambda w, t: [*_r(w), "restore", "base", "--pgdata", str(t / "data"),
         "--target-time", "2026-01-01 10:00:00"], (2,), ("no time zone",), after=_no_pgdata),
    Case("target-xid-malformed", lambda w, t: [*_r(w), "restore", "base", "--pgdata", str(t / "data"),
         "--target-xid", "abc"], (2,), ("not a transaction id",), after=_no_pgdata),
    Case("target-lsn-malformed", lambda w, t: [*_r(w), "restore", "base", "--pgdata", str(t / "data"),
         "--target-lsn", "zz"], (2,), ("X/Y",), after=_no_pgdata),
    Case("target-timeline-malformed", lambda w, t: [*_r(w), "restore", "base", "--pgdata", str(t / "data"),
         "--target-timeline", "newest"], (2,), ("latest, current or a timeline number",), after=_no_pgdata),
    # an empty or blank target (an unset shell variable) is never a recovery to the end of the archive
    *[
        Case(f"target-empty/restore-base{option}{'-blank' if value else ''}", lambda w, t, o=option, v=value: [
             *_r(w), "restore", "base", "--pgdata", str(t / "data"), o, v, "--run"], (2,),
             (f"{option} is empty", "give no --target-* option"), after=_no_pgdata)
        for option in ("--target-time", "--target-xid", "--target-name", "--target-lsn") for value in ("", "  ")
    ],
    Case("target-empty/rescue-rows", _words(["rescue", "rows", "--target-time", "", "--sandbox-db", "postgres",
         "--query", "select 1"]), (2,), ("--target-time is empty", "timestamp")),
    Case("target-empty/rescue-table", lambda w, t: [*_r(w), "rescue", "table", "t", "--target-lsn", " ",
         "--sandbox-db", "postgres", "--into", w["pg"].conninfo()], (2,), ("--target-lsn is empty", "WAL position")),
    # a logical restore into a connection that names no database would land in libpq's default one
    Case("restore-logical-no-database", lambda w, t: [*_r(w), "restore", "logical", "latest", "--dbname",
         f"host={w['pg'].host} port={w['pg'].port} user=postgres"], (2,), ("names no database", "dbname=NAME"),
         env={"PGDATABASE": None, "PGSERVICE": None}),
    Case("restore-table-no-database", lambda w, t: [*_r(w), "restore", "table", "latest", "t", "--new-name", "t2",
         "--dbname", f"host={w['pg'].host} port={w['pg'].port} user=postgres"], (2,), ("names no database",),
         env={"PGDATABASE": None, "PGSERVICE": None}),
    # a sandbox directory that cannot be made (the target is reachable: a name is looked up before the sandbox)
    Case("rescue-rows-workdir-not-writable", lambda w, t: ["--repo", w["their_url"], "rescue", "rows",
         "--target-lsn", _stop(w), "--sandbox-db", "postgres", "--query", "select 1", "--workdir",
         str(t / "private")], (2,),
         ("cannot create the sandbox's directory in", "private", "Permission denied", "--workdir"),
         as_postgres=True),
    Case("rescue-table-workdir-not-writable", lambda w, t: ["--repo", w["their_url"], "rescue", "table", "t",
         "--target-lsn", _stop(w), "--sandbox-db", "postgres", "--into", w["pg"].conninfo(), "--workdir",
         str(t / "private")], (2,),
         ("cannot create the sandbox's directory in", "--workdir"), as_postgres=True),
    Case("rescue-workdir-unreachable-by-the-server", lambda w, t: [*_r(w), "rescue", "rows", "--target-lsn",
         _stop(w), "--sandbox-db", "postgres", "--query", "select 1", "--workdir", str(t / "private")], (2,),
         ("OS user 'postgres' cannot reach", "private", "--workdir"), as_root=True),
    Case("rescue-workdir-on-a-read-only-filesystem", lambda w, t: [*_r(w), "rescue", "rows", "--target-lsn",
         _stop(w), "--sandbox-db", "postgres", "--query", "select 1", "--workdir", str(w["readonly"])], (2,),
         ("cannot create the sandbox's directory in", "Read-only file system", "--workdir"), needs="readonly"),
    Case("storage-option-malformed", lambda w, t: [*_r(w), "list", "--storage-option", "novalue"], (2,),
         ("KEY=VALUE",)),
    Case("compression-level-out-of-range", lambda w, t: [*_r(w), "backup", "logical", "--level", "99",
         "--dbname", w["pg"].conninfo()], (2,), ("out of range",)),
    Case("jobs-zero", lambda w, t: [*_r(w), "backup", "logical", "--jobs", "0", "--dbname", w["pg"].conninfo()],
         (2,), ("jobs must be",)),
    Case("workers-zero", lambda w, t: [*_r(w), "backup", "base", "--workers", "0", "--dbname", w["pg"].conninfo()],
         (2,), ("workers must be",)),
    Case("segment-size-malformed", lambda w, t: [*_r(w), "wal-verify", "--segment-size", "3MB"], (2,),
         ("power of two",)),
    Case("wal-verify-from-malformed", lambda w, t: [*_r(w), "wal-verify", "--from", "nothex"], (2,),
         ("not a WAL file name",)),
    Case("wal-cleanup-keep-from-malformed", lambda w, t: [*_r(w), "wal-cleanup", "--keep-from", "x", "--dry-run"],
         (2,), ("not a segment name",)),
    Case("wal-cleanup-past-the-oldest-backup", lambda w, t: [*_r(w), "wal-cleanup", "--keep-from",
         "0000000100000000000000FF", "--dry-run"], (2,), ("needs", "force")),
    Case("wal-fetch-not-a-wal-name", lambda w, t: [*_r(w), "wal-fetch", "notawal", str(t / "RECOVERYXLOG")], (255,),
         ("not a WAL file name",)),
    Case("wal-push-missing-file", lambda w, t: [*_r(w), "wal-push", str(t / "000000010000000000000001")], (1,),
         ("no such file",)),
    Case("restore-point-empty-name", lambda w, t: [*_r(w), "restore-point", "", "--dbname", w["pg"].conninfo()],
         (2,), ("1 to 63 characters",)),
    Case("use-list-missing-file", lambda w, t: [*_r(w), "restore", "logical", "latest", "--use-list",
         str(t / "nothere.txt"), "--dbname", "dbname=x"], (2,), ("--use-list",)),
    Case("log-format-unknown", lambda w, t: [*_r(w), "--log-format", "xml", "list"], (2,), ("text, json",)),
    Case("key-file-missing", lambda w, t: [*_r(w), "--encryption-key-file", str(t / "no.key"), "list"], (2,),
         ("does not exist",)),
    Case("policy-file-missing", lambda w, t: [*_r(w), "run-policy", str(t / "nothere.toml")], (2,),
         ("policy file",)),
    Case("metrics-output-unwritable", lambda w, t: [*_r(w), "metrics", "--output", str(t / "no" / "x.prom")], (2,),
         ("exists",)),
    # unreachable servers (and a password that must not be echoed)
    Case("backup-from-dead-server", lambda w, t: [*_r(w), "backup", "logical", "--dbname", w["dead"]], (1,),
         ("cannot connect", "--dbname")),
    Case("restore-table-into-dead-server", lambda w, t: [*_r(w), "restore", "table", "latest", "t",
         "--dbname", w["dead"]], (1,), ("cannot connect",)),
    # recovery targets the repository cannot reach
    Case("target-in-the-future", lambda w, t: [*_r(w), "restore", "base", "--pgdata", str(t / "data"),
         "--target-time", "2999-01-01 00:00:00+00"], (1,), ("in the future",), after=_no_pgdata),
    Case("target-before-the-oldest-backup", lambda w, t: [*_r(w), "restore", "base", "--pgdata", str(t / "data"),
         "--target-time", "2000-01-01 00:00:00+00"], (1,), ("before the end of the oldest base backup",),
         after=_no_pgdata),
    Case("target-lsn-before-the-backup", lambda w, t: [*_r(w), "restore", "base", w["base"].id, "--pgdata",
         str(t / "data"), "--target-lsn", "0/10"], (1,), ("choose an older backup or a later target",),
         after=_no_pgdata),
    Case("target-in-a-wal-gap", lambda w, t: ["--repo", w["gap_url"], "restore", "base", "--pgdata",
         str(t / "data")], (1,), ("is missing", "cannot pass it"), after=_no_pgdata),
    Case("target-timeline-that-does-not-exist", lambda w, t: [*_r(w), "restore", "base", "--pgdata",
         str(t / "data"), "--target-timeline", "7"], (1,), ("timeline 7",), after=_no_pgdata),
    # the data directory
    Case("pgdata-not-empty", lambda w, t: [*_r(w), "restore", "base", "--pgdata", str(t / "data")], (2,),
         ("not empty", "overwrite"), after=_pgdata_untouched),
    Case("pgdata-under-a-file", lambda w, t: [*_r(w), "restore", "base", "--pgdata", str(t / "file" / "data")],
         (2,), ("cannot create", "writable directory")),
    Case("pgdata-on-a-read-only-filesystem", lambda w, t: [*_r(w), "restore", "base", "--pgdata",
         str(w["readonly"] / "data")], (2,), ("cannot create", "Read-only file system"), needs="readonly"),
    Case("disk-fills-up-during-restore", lambda w, t: [*_r(w), "restore", "base", "--pgdata",
         str(w["small"] / "data")], (1,), ("No space left on device", "free space"), needs="small",
         after=_small_is_empty),
    # another major version (simulated) and keys
    Case("backup-of-another-major-version", lambda w, t: ["--repo", w["v16_url"], "restore", "base", w["base"].id,
         "--pgdata", str(t / "data"), "--run", "--no-archive"], (1,),
         ("is PostgreSQL 16 but the server programs here are PostgreSQL 15",), after=_no_pgdata),
    Case("wrong-encryption-key", lambda w, t: ["--repo", w["enc_url"], "--encryption-key-file", w["wrong_key"],
         "show", "latest"], (1,), ("key",)),
    Case("no-encryption-key", lambda w, t: ["--repo", w["enc_url"], "verify", w["enc"].id], (1,),
         ("encrypted", "key")),
]  # fmt: skip

CASES = _parser_cases() + SEMANTIC
PROGRESS = re.compile(r"^pgrecovery: \w+: (done, )?[\d.]+ [KMGT]?i?B")  # progress lines of long operations
_tried: dict[str, bool] = {}


def _totals(cases: list[dict[str, Any]]) -> dict[str, int]:
    return {"tried": len(cases), "refused": sum(1 for c in cases if c["refused"])}


def _run_as_postgres(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", sys.executable, "-m", "pgrecovery", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=120,
        check=False,
    )
    return done.returncode, done.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_in_one_line(
    world: W, scratch: Path, case: Case, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if case.needs and world[case.needs] is None:
        pytest.skip(f"cannot mount a tmpfs here (needs root): the {case.needs} filesystem case is not run")
    if (case.as_postgres or case.as_root) and os.getuid() != 0:
        pytest.skip("needs root, to run the command or the server as another OS user")
    monkeypatch.setenv("PGRECOVERY_ENCRYPTION_KEY_FILE", "")  # restored afterwards, whatever a verb exports
    monkeypatch.delenv("PGRECOVERY_ENCRYPTION_KEY_FILE")
    for name, value in case.env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    (scratch / "private").mkdir(mode=0o700)  # root's: the postgres user may not look inside
    (scratch / "file").write_text("a file, not a directory")
    _prepare(case, world, scratch)
    repo: Repository = world["repo"]
    before = ([m.id for m in repo.backups()], [x.id for x in leftovers(repo)])
    argv = case.argv(world, scratch)
    refused, message = False, ""
    try:
        capsys.readouterr()
        if case.as_postgres:
            code, err = _run_as_postgres(argv, dict(os.environ))
        else:
            code = main(argv)
            err = capsys.readouterr().err
        assert "Traceback" not in err, err
        lines = [ln for ln in err.splitlines() if not PROGRESS.match(ln)]
        message = lines[0].replace(str(scratch), "<tmp>")[:240] if lines else ""
        assert len(lines) == 1, err
        assert lines[0].startswith("pgrecovery: "), err
        assert code in case.codes, (code, err)
        for word in case.says:
            assert word in lines[0], (word, lines[0])
        assert "not-a-real-secret" not in err
        # nothing half-written: the same complete backups, no incomplete one
        assert ([m.id for m in repo.backups()], [x.id for x in leftovers(repo)]) == before
        if case.after is not None:
            case.after(world, scratch)
        refused = True
    finally:
        record_result(
            "bad_input",
            case.id,
            {"argv": [a.replace(str(scratch), "<tmp>") for a in argv[2:]][:12], "refused": refused, "says": message},
            _totals,
        )
        _tried[case.id] = refused


# -- the public API -------------------------------------------------------------------------------------------------


def _api_calls(w: W, tmp: Path) -> list[tuple[str, Callable[[], object], type[PgRecoveryError], str]]:
    repo: Repository = w["repo"]
    future = RecoveryTarget.time("2999-01-01 00:00:00+00")
    return [
        ("target-time-malformed", lambda: RecoveryTarget.time("yesterday"), ConfigurationError, "not a timestamp"),
        ("target-lsn-malformed", lambda: RecoveryTarget.lsn("zz"), ConfigurationError, "X/Y"),
        ("target-xid-malformed", lambda: RecoveryTarget.xid("abc"), ConfigurationError, "transaction id"),
        ("target-time-empty", lambda: RecoveryTarget.time(""), ConfigurationError, "is empty"),
        ("target-xid-blank", lambda: RecoveryTarget.xid(" "), ConfigurationError, "is empty"),
        ("target-name-blank", lambda: RecoveryTarget.name("  "), ConfigurationError, "is empty"),
        ("target-lsn-empty", lambda: RecoveryTarget.lsn(""), ConfigurationError, "is empty"),
        ("restore-logical-no-database", lambda: LogicalRestore(repo, w["logical"].id).run(
         f"host={w['pg'].host} port={w['pg'].port} user=postgres"), ConfigurationError, "names no database"),
        ("recovery-archive-contradiction", lambda: RecoveryPlan(repo).run(tmp / "data",
         settings={"archive_mode": "on"}), ConfigurationError, "archive=True"),
        ("repository-bad-scheme", lambda: Repository("foo://x"), ConfigurationError, "unknown storage protocol"),
        ("logical-jobs-zero", lambda: LogicalBackup(dbname="", jobs=0), ConfigurationError, "jobs"),
        ("base-workers-zero", lambda: BaseBackup(workers=0), ConfigurationError, "workers"),
        ("wal-parallel-zero", lambda: WalArchiver(repo, parallel=0), ConfigurationError, "parallel"),
        ("unknown-id-restore", lambda: LogicalRestore(repo, MISSING), BackupNotFound, MISSING),
        ("unknown-id-verify", lambda: Verifier(repo).verify(MISSING), BackupNotFound, MISSING),
        ("unknown-id-delete", lambda: repo.delete_backup(MISSING), BackupNotFound, MISSING),
        ("unknown-id-plan", lambda: RecoveryPlan(repo, backup_id=MISSING), BackupNotFound, MISSING),
        ("target-in-the-future", lambda: RecoveryPlan(repo, future).restore(tmp / "data"), TargetUnreachable,
         "in the future"),
        ("dead-server", lambda: LogicalBackup(dbname=w["dead"]).run(repo), DatabaseError, "cannot connect"),
        ("wrong-key", lambda: Repository(w["enc_url"], encryption=EncryptionKey.from_file(w["wrong_key"]))
         .get(w["enc"].id), WrongKey, "key"),
        ("other-major-version", lambda: RecoveryPlan(Repository(w["v16_url"]), backup_id=w["base"].id)
         .run(tmp / "data"), ToolNotFound, "PostgreSQL 16 but"),
    ]  # fmt: skip


def test_api_entry_points_raise_the_documented_errors(world: W, scratch: Path) -> None:
    repo: Repository = world["repo"]
    before = ([m.id for m in repo.backups()], [x.id for x in leftovers(repo)])
    failures = []
    for name, call, kind, words in _api_calls(world, scratch):
        refused = False
        try:
            call()
        except kind as e:
            refused = words in str(e) and "not-a-real-secret" not in str(e) + repr(e)
            if not refused:
                failures.append(f"{name}: {type(e).__name__}: {e}")
        except BaseException as e:  # noqa: BLE001 - reported below: the wrong kind of error
            failures.append(f"{name}: expected {kind.__name__}, got {type(e).__name__}: {e}")
        else:
            failures.append(f"{name}: no error")
        record_result("bad_input", f"api/{name}", {"refused": refused}, _totals)
        _tried[f"api/{name}"] = refused
    assert not failures, "\n".join(failures)
    assert ([m.id for m in repo.backups()], [x.id for x in leftovers(repo)]) == before
    assert not (scratch / "data").exists()


def test_check_reports_unknown_not_a_traceback(world: W, capsys: pytest.CaptureFixture[str]) -> None:
    """``check`` speaks Nagios: a server it cannot reach is UNKNOWN (3), said on stdout, one line per check."""
    code = main([*_r(world), "check", "--dbname", world["dead"]])
    out, err = capsys.readouterr()
    assert code == 3
    assert err == ""
    assert out.splitlines()[-1].startswith("UNKNOWN - pgrecovery:")
    assert "not-a-real-secret" not in out


def test_bad_input_summary() -> None:
    if not _tried:
        pytest.skip("the table did not run in this session")
    refused = sum(_tried.values())
    print(f"\nbad input: {refused}/{len(_tried)} refused cleanly")
    assert refused == len(_tried), sorted(k for k, v in _tried.items() if not v)
