"""Security: secrets stay secret, extraction stays inside its directory, files are private, commands are quoted.

- Known secret strings (a password in the connection string, storage keys given as storage options, an
  encryption key) are searched for after real runs in: everything the commands printed (``--json``, ``-v``, JSON
  logs, errors), DEBUG logs of the library, exception texts, every stored object (raw and decrypted), the
  argument vectors and ``/proc/<pid>/cmdline`` of every process pgrecovery spawned (pg_dump, pg_restore, psql,
  the WAL prefetcher), every process on the machine afterwards, and the server's log. Zero leaks.
- Crafted archives (``../``, absolute paths, symbolic and hard links pointing outside) and crafted manifests
  (a tablespace that is not an OID, a dump member with a path) are refused by the extraction code restores use,
  and nothing lands outside the target directory.
- A restored data directory is 0700 and owned by the server's user; the WAL spool is private.
- archive_command and restore_command built for paths with spaces, quotes, ``$``, ``;``, backslashes and ``%``
  pass every argument intact through the shell (nothing is injected), and work end to end on a real server.

Counts (places scanned, leaks, refusals) go to the reliability results file under ``security``.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import io
import json
import logging
import os
import pwd
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pgtesting import Archiving, pg_substitute
from pgtesting import owned_tmpdir as _owned_tmpdir
from pgtesting import wait_archived as _wait_archived
from test_corruption import record_result, reset_section

from pgrecovery import (
    BackupManifest,
    BaseBackup,
    DatabaseError,
    FileEntry,
    LocalCluster,
    LogicalBackup,
    LogicalRestore,
    PgRecoveryError,
    RecoveryPlan,
    RecoveryTarget,
    Repository,
)
from pgrecovery.catalog import manifest_key
from pgrecovery.cli.main import main
from pgrecovery.cluster import free_port
from pgrecovery.copies import copy_repository
from pgrecovery.crypto import EncryptionKey
from pgrecovery.logs import configure_logging
from pgrecovery.manifest import MemberEntry, PhysicalInfo
from pgrecovery.physical.backup import restore_files
from pgrecovery.wal.archiver import WalArchiver, archive_command, restore_command


def _security_totals(cases: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "checks": len(cases),
        "passed": sum(1 for c in cases if c["ok"]),
        "places_scanned": sum(c.get("places", 0) for c in cases),
        "secrets_leaked": sum(c.get("leaks", 0) for c in cases),
    }


@pytest.fixture(scope="module", autouse=True)
def _fresh_results() -> None:
    reset_section("security")


# -- secrets --------------------------------------------------------------------------------------------------------


class Spy:
    """Records the argument vector and /proc/<pid>/cmdline of every process started through subprocess."""

    def __init__(self) -> None:
        self.argvs: list[str] = []
        self.cmdlines: list[bytes] = []
        self.environs: list[dict[str, str]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = subprocess.Popen.__init__
        spy = self

        def init(self: subprocess.Popen[Any], args: Any, *a: Any, **kw: Any) -> None:
            real(self, args, *a, **kw)
            spy.argvs.append(" ".join(map(str, args)) if isinstance(args, list | tuple) else str(args))
            spy.environs.append(dict(kw.get("env") or {}))
            try:
                with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                    spy.cmdlines.append(f.read())
            except OSError:
                spy.cmdlines.append(b"")

        monkeypatch.setattr(subprocess.Popen, "__init__", init)


def _all_cmdlines() -> list[bytes]:
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                found.append(f.read())
        except OSError:
            continue
    return found


def _fake_segment(path: Path, seed: int) -> None:
    """A file with a WAL segment's name and size (the archiver stores any content; its digest is what counts)."""
    block = secrets.token_bytes(8192) if seed else bytes(8192)
    path.write_bytes(block * 2048)


@pytest.fixture
def secret_world(pg: LocalCluster) -> Iterator[dict[str, Any]]:
    base = _owned_tmpdir("pgrecovery-sec-secrets-")
    name = f"sec_{secrets.token_hex(4)}"
    pg.create_database(name)
    pg.execute("create table t (i int primary key, note text)", dbname=name)
    pg.execute("insert into t select i, 'n' from generate_series(1, 500) i", dbname=name)
    key = EncryptionKey.generate()
    key_file = base / "repo.key"
    key.save(key_file)
    raw_key = base64.b64decode(key.to_base64())
    world = {
        "base": base,
        "db": name,
        "password": f"pw-{secrets.token_hex(8)}",
        "storage_key": f"AKIA{secrets.token_hex(8).upper()}",
        "storage_secret": f"ss-{secrets.token_hex(12)}",
        "key": key,
        "key_file": str(key_file),
        "key_forms": [key.to_base64(), raw_key.hex()],
        "key_bytes": raw_key,
        "repo_dir": base / "repo",
    }
    try:
        yield world
    finally:
        pg.execute(f'drop database if exists "{name}" with (force)')
        pg.execute(f'drop database if exists "{name}_copy" with (force)')
        shutil.rmtree(base, ignore_errors=True)


def test_secrets_never_leak(
    secret_world: dict[str, Any],
    pg: LocalCluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = secret_world
    spy = Spy()
    spy.install(monkeypatch)
    # wal-fetch --encryption-key-file exports the key file's path for the prefetcher it starts: undo that after
    monkeypatch.setenv("PGRECOVERY_ENCRYPTION_KEY_FILE", "")
    monkeypatch.delenv("PGRECOVERY_ENCRYPTION_KEY_FILE")
    pw, skey, ssecret = w["password"], w["storage_key"], w["storage_secret"]
    texts: dict[str, str] = {}
    url = f"file://{w['repo_dir']}"
    dsn = f"{pg.conninfo(w['db'])} password={pw}"
    uri = f"postgresql://postgres:{pw}@127.0.0.1:{pg.port}/{w['db']}"
    dead = f"host=127.0.0.1 port={free_port()} dbname=x password={pw}"
    common = ["--repo", url, "--storage-option", f"key={skey}", "--storage-option", f"secret={ssecret}",
              "--encryption-key-file", w["key_file"], "-v", "--log-format", "json"]  # fmt: skip
    runs = [
        ["--json", "backup", "logical", "--dbname", dsn],
        ["--json", "backup", "logical", "--dbname", uri, "-F", "directory"],
        ["--json", "backup", "globals", "--dbname", dsn],
        ["--json", "list", "--incomplete"],
        ["--json", "show", "latest"],
        ["--json", "verify", "latest"],
        ["--json", "contents", "latest"],
        ["--json", "restore", "logical", "latest", "--dbname", f"{pg.conninfo(w['db'] + '_copy')} password={pw}",
         "--create"],
        ["--json", "restore", "table", "latest", "public.t", "--dbname", dsn, "--new-name", "t_copy"],
        ["--json", "copy", "--to", f"file://{w['base'] / 'copy-repo'}"],
        ["backup", "logical", "--dbname", dead],  # fails: cannot connect
        ["backup", "logical", "--dbname", f"postgresql://u:{pw}@[::1"],  # fails: malformed URI
        ["backup", "logical", "--dbname", f"host=127.0.0.1 password='{pw} with space' port=1"],
    ]  # fmt: skip
    codes = []
    for i, argv in enumerate(runs):
        capsys.readouterr()
        codes.append(main([*common, *argv]))
        out, err = capsys.readouterr()
        texts[f"cli {argv[1] if argv[0] == '--json' else argv[0]} #{i} stdout"] = out
        texts[f"cli #{i} stderr"] = err
    assert codes[:10] == [0] * 10, [texts[f"cli #{i} stderr"][-500:] for i in range(10)]
    assert codes[10:] == [1, 1, 1]

    # the library, with an application's DEBUG logging, and the exceptions it raises
    log = io.StringIO()
    level = logging.getLogger().level
    handler = configure_logging(logging.DEBUG, stream=log)
    try:
        repo = Repository(url, encryption=w["key"], key=skey, secret=ssecret)
        texts["repr(repo)"] = repr(repo) + " " + str(repo.display_url)
        m = LogicalBackup(dbname=dsn, format="tar").run(repo)
        LogicalRestore(repo, m.id).restore_table("t", dsn, new_name="t_api")
        copy_repository(repo, Repository(f"file://{w['base'] / 'api-copy'}", encryption=w["key"], secret=ssecret))
        with pytest.raises(DatabaseError) as caught:
            LogicalBackup(dbname=dead).run(repo)
        texts["exception str"] = str(caught.value)
        texts["exception repr"] = repr(caught.value)
        with pytest.raises(PgRecoveryError) as caught:
            LogicalBackup(dbname=f"postgresql://u:{pw}@[::1").run(repo)
        texts["exception str (URI)"] = str(caught.value) + repr(caught.value)

        # WAL: push two segments, fetch one with the storage options on the command line; the prefetcher it
        # starts gets them through its environment only
        pg_wal = w["base"] / "data" / "pg_wal"
        pg_wal.mkdir(parents=True)
        for n, name in enumerate(("000000010000000000000001", "000000010000000000000002")):
            _fake_segment(pg_wal / name, n)
            WalArchiver(repo).push(pg_wal / name)
        dest = pg_wal / "RECOVERYXLOG"
        capsys.readouterr()
        code = main([*common, "wal-fetch", "000000010000000000000001", str(dest)])
        out, err = capsys.readouterr()
        texts["wal-fetch output"] = out + err
        assert code == 0, err
        assert WalArchiver(repo).wait_for_prefetch(w["base"] / "data" / "pgrecovery_spool")
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)
    texts["DEBUG log"] = log.getvalue()
    assert texts["DEBUG log"], "the library logged nothing at DEBUG: the scan would prove nothing"
    prefetchers = [a for a in spy.argvs if "wal-prefetch" in a]
    assert prefetchers, "wal-fetch started no prefetcher: the command-line check would prove nothing"
    assert any(ssecret in json.dumps(e) for e in spy.environs), "the prefetcher did not get the options by env"

    # where the secrets could land
    blobs: dict[str, bytes] = {k: v.encode() for k, v in texts.items()}
    for path in w["repo_dir"].rglob("*"):
        if path.is_file():
            blobs[f"stored {path.relative_to(w['repo_dir'])}"] = path.read_bytes()
    for key in repo.list_keys("backups"):  # through the key: manifests, started markers, dumps in the clear
        if key.endswith(".json"):
            blobs[f"decrypted {key}"] = repo.read_bytes(key)
    for i, (spawned, cmdline) in enumerate(zip(spy.argvs, spy.cmdlines, strict=True)):
        blobs[f"argv of spawned #{i}: {spawned[:60]}"] = spawned.encode()
        blobs[f"/proc cmdline of spawned #{i}"] = cmdline
    for i, cmdline in enumerate(_all_cmdlines()):
        blobs[f"/proc cmdline of a process on this machine #{i}"] = cmdline
    if pg.log_file is not None and pg.log_file.exists():
        blobs["server log"] = pg.log_file.read_bytes()
    assert any("pg_dump" in a for a in spy.argvs)
    assert any("pg_restore" in a for a in spy.argvs)

    needles = [pw, skey, ssecret, *w["key_forms"]]
    leaks = [
        (place, needle[:6] + "…")
        for place, blob in blobs.items()
        for needle in [*(n.encode() for n in needles), w["key_bytes"]]
        if needle in blob
    ]
    record_result(
        "security",
        "secrets",
        {"ok": not leaks, "places": len(blobs), "leaks": len(leaks), "spawned": len(spy.argvs),
         "leaked_where": [p for p, _ in leaks][:10]},
        _security_totals,
    )  # fmt: skip
    assert not leaks, leaks


# -- crafted archives and manifests ---------------------------------------------------------------------------------


def _tar(members: list[tarfile.TarInfo], data: bytes = b"payload") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in members:
            if info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return out.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o600
    return info


CRAFTED = {
    "dot-dot": [_member("ok_file"), _member("../escaped")],
    "dot-dot-inside": [_member("base/../../escaped")],
    "absolute": [_member("/tmp/pgrecovery-escaped-absolute")],
    "symlink-out": [_member("global/evil", tarfile.SYMTYPE, "/etc"), _member("global/evil/passwd")],
    "hardlink-out": [_member("global/pg_control", tarfile.LNKTYPE, "/etc/passwd")],
    "directory-out": [_member("../escaped-dir", tarfile.DIRTYPE)],
    "device": [_member("global/dev", tarfile.CHRTYPE)],
}


def _fake_base_backup(
    root: Path, backup_id: str, members: list[tarfile.TarInfo], method: str = "stream", **physical: Any
) -> tuple[Repository, Any]:
    """A base backup made by hand: one tar of ``members`` (a stream-method ``base`` tar, whose every member is
    restored, or a local-method bundle whose manifest lists them all), and its manifest."""
    repo = Repository(f"file://{root}")
    role = "base" if method == "stream" else "bundle-0"
    obj = repo.put_bytes(f"backups/{backup_id}/data/{role}.tar", _tar(members))
    now = datetime.now(UTC)
    listed = [
        MemberEntry(path=m.name, size=7, mtime=0, sha256=hashlib.sha256(b"payload").hexdigest(), bundle=role,
                    source=backup_id)
        for m in members
    ] if method == "local" else []  # fmt: skip
    info: dict[str, Any] = {
        "method": method, "label": "crafted", "start_lsn": "0/2000028", "stop_lsn": "0/2000100", "timeline": 1,
        "start_wal": "000000010000000000000002", "stop_wal": "000000010000000000000002", "system_identifier": "1",
        "data_checksums": True, "wal_segment_size": 16 << 20, "members": listed, **physical,
    }  # fmt: skip
    manifest = BackupManifest(
        id=backup_id,
        kind="base",
        started_at=now,
        finished_at=now,
        format="tar",
        compression="none",
        files=[FileEntry(path=f"data/{role}.tar", size=obj.size, sha256=obj.sha256, codec="none", role=role)],
        physical=PhysicalInfo(**info),
    )
    repo.put_bytes(manifest_key(backup_id), manifest.to_json().encode())
    return repo, repo.get(backup_id)


@pytest.mark.parametrize("method", ["stream", "local"])
@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_extraction_refuses_paths_that_escape(case: str, method: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "inside" / "data"
    target.mkdir(parents=True)
    repo, manifest = _fake_base_backup(tmp_path / "repo", "20260101T000000Z-base", CRAFTED[case], method)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    refused = False
    try:
        with pytest.raises(PgRecoveryError, match=r"refusing|escapes"):
            restore_files(repo, manifest, target)
        after = sorted(str(p) for p in tmp_path.rglob("*"))
        new = [p for p in after if p not in before]
        assert all(p.startswith(str(target)) for p in new), new  # whatever was written is inside the target
        assert not Path("/tmp/pgrecovery-escaped-absolute").exists()
        assert Path("/etc/passwd").stat().st_nlink == 1
        refused = True
    finally:
        record_result("security", f"crafted-archive/{case}/{method}", {"ok": refused}, _security_totals)


def test_crafted_manifests_cannot_place_files_outside(tmp_path: Path, pg: LocalCluster) -> None:
    """A tablespace "OID" with a path (the link under pg_tblspc would land outside), a dump member with a path."""
    target = tmp_path / "inside" / "data"
    target.mkdir(parents=True)
    repo, manifest = _fake_base_backup(
        tmp_path / "repo", "20260101T000000Z-base", [_member("ok_file")],
        tablespaces={"../../../evil": str(tmp_path / "evil-target")},
    )  # fmt: skip
    with pytest.raises(PgRecoveryError, match="not an OID"):
        restore_files(repo, manifest, target)
    assert not (tmp_path / "evil").exists()
    assert not list(target.iterdir())

    # a directory-format logical dump whose member is named with a path
    name = f"sec_dir_{secrets.token_hex(3)}"
    pg.create_database(name)
    try:
        pg.execute("create table t (i int)", dbname=name)
        real = Repository(f"file://{tmp_path / 'logical'}")
        m = LogicalBackup(dbname=pg.conninfo(name), format="directory").run(real)
        member = next(f for f in m.files if f.role != "dump/toc.dat")
        files = [
            {"path": f.path, "size": f.size, "sha256": f.sha256, "codec": f.codec, "raw_size": f.raw_size,
             "role": "dump/../../../escaped.dat" if f == member else f.role}
            for f in m.files
        ]  # fmt: skip
        crafted = BackupManifest.from_dict({**m.to_dict(), "files": files})
        real.put_bytes(manifest_key(m.id), crafted.to_json().encode(), overwrite=True)
        (tmp_path / "work").mkdir()
        with pytest.raises(PgRecoveryError, match="refusing member"):
            LogicalRestore(real, m.id, workdir=str(tmp_path / "work")).run(pg.conninfo(f"{name}_x"), create=True)
        assert not list(tmp_path.rglob("escaped.dat"))
        assert not Path("/tmp/escaped.dat").exists()
        assert pg.query("select 1 from pg_database where datname = %s", (f"{name}_x",)) == []
    finally:
        pg.execute(f'drop database if exists "{name}" with (force)')
        pg.execute(f'drop database if exists "{name}_x" with (force)')
    record_result("security", "crafted-manifests", {"ok": True}, _security_totals)


# -- quoting, private files, and the whole WAL path on a real server ------------------------------------------------

HOSTILE = "sp ace 'quote' \"dq\" $HOME `id` $(touch INJECTED) ; touch INJECTED2 & back\\slash %p %f %% #"


def test_generated_commands_pass_arguments_intact_through_the_shell(tmp_path: Path) -> None:
    """The interpreter replaced by a recorder: each argument must arrive exactly, and nothing else must run."""
    recorder = tmp_path / f"py {HOSTILE[:12]}"
    record = tmp_path / "argv.json"
    recorder.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    recorder.chmod(0o755)
    work = tmp_path / "cwd"
    work.mkdir()
    url = f"file://{tmp_path}/repo {HOSTILE}"
    spool = f"{tmp_path}/spool {HOSTILE}"
    key = f"{tmp_path}/key {HOSTILE}"
    wal = "pg_wal/000000010000000000000003"
    checked = 0
    builds: list[tuple[Callable[[], str], list[str]]] = [
        (lambda: archive_command(url, str(recorder), spool_dir=spool, key_file=key), [wal]),
        (lambda: archive_command(url, str(recorder), fast=False), [wal]),
        (lambda: restore_command(url, str(recorder), spool_dir=spool, key_file=key, prefetch=False),
         ["000000010000000000000003", "pg_wal/RECOVERYXLOG"]),
        (lambda: restore_command(url, str(recorder)), ["00000002.history", "pg_wal/RECOVERYHISTORY"]),
    ]  # fmt: skip
    for build, tail in builds:
        command = build()
        f_name = tail[0] if len(tail) == 2 else Path(wal).name
        p_path = tail[-1]
        shell = pg_substitute(command, p_path, f_name)
        done = subprocess.run(["/bin/sh", "-c", shell], cwd=work, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        argv = json.loads(record.read_text())
        assert argv[-len(tail) :] == tail
        assert url in argv
        assert argv[argv.index("--repo") + 1] == url
        if "--spool" in argv:
            assert argv[argv.index("--spool") + 1] == spool
            assert argv[argv.index("--encryption-key-file") + 1] == key
        assert os.listdir(work) == [], "the shell ran something injected"
        checked += 1
    record_result("security", "quoting-through-the-shell", {"ok": checked == 4, "commands": checked}, _security_totals)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner (and its group) can read ``path``: it and every parent let them."""
    if _mode(path) & 0o004 == 0:
        return False
    return all(_mode(parent) & 0o001 for parent in path.parents)


@pytest.fixture
def hostile_dirs() -> Iterator[dict[str, Path]]:
    base = _owned_tmpdir("pgrecovery-sec-quote-")
    repo = base / f"repo {HOSTILE.replace('INJECTED', 'NO')}"
    repo.mkdir()
    if os.getuid() == 0:
        shutil.chown(repo, "postgres", "postgres")
    key = EncryptionKey.generate()
    key_file = base / "key 'k' $x.key"
    key.save(key_file)
    if os.getuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(key_file, pw.pw_uid, pw.pw_gid)
    restore_parent = _owned_tmpdir("pgrecovery-sec-restore-")
    try:
        yield {"base": base, "repo": repo, "key_file": key_file, "spool": base / "spool 'q' $x ; y",
               "restore": restore_parent}  # fmt: skip
    finally:
        for parent in (base, restore_parent):
            data = parent / "data"
            if (data / "postmaster.pid").exists():
                LocalCluster(data_dir=data).stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(restore_parent, ignore_errors=True)


def test_wal_through_hostile_paths_on_a_real_server(hostile_dirs: dict[str, Path]) -> None:
    """archive_command and restore_command with a repository, spool and key file whose paths hold spaces, quotes,
    ``$``, ``;``, a backslash and ``%``: a real server archives through them, a base backup restores and recovers
    through them; the restored directory and the spool are private; the key appears in no setting or log."""
    d = hostile_dirs
    url = f"file://{d['repo']}"
    key = EncryptionKey.from_file(d["key_file"])
    raw_key = base64.b64decode(key.to_base64())
    ctx = Archiving("pgrecovery-sec-quote", root=d["repo"], spool_dir=str(d["spool"]), key_file=str(d["key_file"]))
    pg = ctx.pg
    checks: dict[str, bool] = {}
    try:
        ctx.start(table=None)
        wanted = archive_command(url, spool_dir=str(d["spool"]), key_file=str(d["key_file"]))
        checks["setting read back intact"] = pg.query("show archive_command")[0][0] == wanted
        repo = Repository(url, encryption=key)
        pg.execute("create table t (i int primary key); insert into t select generate_series(1, 1000)")
        backup = BaseBackup(dbname=pg.conninfo()).run(repo)
        pg.execute("insert into t select generate_series(1001, 1500)")
        _wait_archived(pg)
        archived = WalArchiver(repo).list_archived()[1]
        checks["server archived through the hostile path"] = backup.physical is not None and (
            backup.physical.stop_wal in archived
        )
        spool = d["spool"]
        checks["spool created private"] = spool.is_dir() and _mode(spool) & 0o077 == 0
        spool_files = [p for p in spool.rglob("*") if p.is_file()]
        checks["spool files unreadable by others"] = bool(spool_files) and not any(
            _reachable_by_others(p) for p in spool_files
        )
        pg.stop()

        pgdata = d["restore"] / "data"
        result = RecoveryPlan(repo, RecoveryTarget.latest()).run(pgdata, settings={"archive_mode": "off"})
        restored = LocalCluster(data_dir=pgdata, port=result.port)
        checks["recovered every row through restore_command"] = restored.query("select count(*) from t")[0][0] == 1500
        owner = pwd.getpwnam("postgres").pw_uid if os.getuid() == 0 else os.getuid()
        checks["restored data directory is 0700"] = _mode(pgdata) == 0o700
        checks["restored files belong to the server's user"] = all(
            p.lstat().st_uid == owner for p in [pgdata, *pgdata.rglob("*")]
        )
        checks["restored files are not readable by others"] = not any(
            _mode(p) & 0o007 for p in [pgdata, *pgdata.rglob("*")] if not p.is_symlink()
        )
        shown = restored.query("show restore_command")[0][0]
        words = shlex.split(shown)
        checks["restore_command names the key file, not the key"] = shown == restore_command(
            url, key_file=str(d["key_file"])
        ) and words[words.index("--encryption-key-file") + 1] == str(d["key_file"])
        local_spool = pgdata / "pgrecovery_spool"
        checks["restore spool private"] = not local_spool.exists() or _mode(local_spool) & 0o077 == 0
        restored.stop()
        settings = (pgdata / "postgresql.auto.conf").read_text()
        server_log = (pg.log_file.read_text(errors="replace") if pg.log_file else "") + (
            (d["restore"] / "data.log").read_text(errors="replace")
        )
        leak_places = [
            name
            for name, blob in (("auto.conf", settings.encode()), ("server logs", server_log.encode()))
            for needle in (key.to_base64().encode(), raw_key.hex().encode(), raw_key)
            if needle in blob
        ]
        checks["no key in settings or logs"] = not leak_places
        # the commands run in the data directory: that is where `$(touch NO)` or `; touch NO2` would have landed
        checks["nothing injected"] = not [p for p in (pg.data_dir, pgdata) for n in ("NO", "NO2") if (p / n).exists()]
    finally:
        ctx.close()
        record_result(
            "security",
            "hostile-paths-real-server",
            {"ok": all(checks.values()) and len(checks) == 12, "checks": checks},
            _security_totals,
        )
    failed = [k for k, v in checks.items() if not v]
    assert not failed, failed
    assert len(checks) == 12


def test_spool_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """wal-push and wal-fetch run by hand (umask 022) still keep the spool private."""
    repo_dir = tmp_path / "repo"
    data = tmp_path / "data"
    (data / "pg_wal" / "archive_status").mkdir(parents=True)
    names = ["000000010000000000000001", "000000010000000000000002", "000000010000000000000003"]
    for n, name in enumerate(names):
        _fake_segment(data / "pg_wal" / name, n)
        (data / "pg_wal" / "archive_status" / f"{name}.ready").touch()
    old = os.umask(0o022)
    try:
        archiver = WalArchiver(Repository(f"file://{repo_dir}"), parallel=2)
        archiver.push(data / "pg_wal" / names[0])  # archives the others ahead: markers in the spool
        out = tmp_path / "restore" / "pg_wal"
        out.mkdir(parents=True)
        assert archiver.fetch(names[0], out / "RECOVERYXLOG")
        assert archiver.wait_for_prefetch(tmp_path / "restore" / "pgrecovery_spool", timeout=60)
    finally:
        os.umask(old)
    files = [p for p in (data / "pgrecovery_spool").rglob("*") if p.is_file()]
    files += [p for p in (tmp_path / "restore" / "pgrecovery_spool").rglob("*") if p.is_file()]
    assert files
    exposed = [str(p) for p in files if _reachable_by_others(p)]
    for spool in (data / "pgrecovery_spool", tmp_path / "restore" / "pgrecovery_spool"):
        assert _mode(spool) & 0o077 == 0
    record_result("security", "spool-private-under-umask-022", {"ok": not exposed, "files": len(files)},
                  _security_totals)  # fmt: skip
    assert not exposed, exposed


def test_security_summary() -> None:
    from test_corruption import read_results

    part = read_results().get("security", {}).get("total")
    if not part:
        pytest.skip("no security check ran in this session")
    print(f"\nsecurity: {part}")
    assert part["secrets_leaked"] == 0
