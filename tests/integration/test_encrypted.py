"""An encrypted repository end to end: logical and physical backups, WAL archiving, point-in-time recovery, all
through real servers; nothing stored in the clear; a wrong key, no key or a changed byte is refused clearly."""

from __future__ import annotations

import json
import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgtesting import archiving_cluster
from pgtesting import owned_tmpdir as _owned_tmpdir
from pgtesting import wait_archived as _wait_archived

from pgrecovery import (
    BaseBackup,
    LocalCluster,
    LogicalBackup,
    LogicalRestore,
    RecoveryPlan,
    RecoveryTarget,
    Repository,
    Verifier,
)
from pgrecovery.cli.main import main
from pgrecovery.crypto import MAGIC, EncryptionKey
from pgrecovery.errors import EncryptionError, TamperedObject, WrongKey

ROWS = "select count(*), sum(length(note)), md5(string_agg(note, ',' order by i)) from secrets"


@pytest.fixture(scope="module")
def keyed() -> Iterator[dict[str, object]]:
    """A key file the server's OS user can read (mode 600, its owner), and a repository encrypted with it."""
    base = _owned_tmpdir("pgrecovery-enc-")
    key_file = base / "repo.key"
    key = EncryptionKey.generate()
    key.save(key_file)
    if os.getuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(key_file, pw.pw_uid, pw.pw_gid)
    (base / "repo").mkdir()
    shutil.chown(base / "repo", *(("postgres", "postgres") if os.getuid() == 0 else (None, None)))  # type: ignore[arg-type]
    url = f"file://{base}/repo"
    try:
        yield {"key": EncryptionKey.from_file(key_file), "key_file": str(key_file), "url": url, "root": base / "repo"}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_logical_backup_restores_and_nothing_is_in_the_clear(
    keyed: dict[str, object], pg: LocalCluster, fresh_db: str, db_name: str, tmp_path: Path
) -> None:
    marker = "very-secret-customer-note-4f1d"
    pg.execute(
        f"create table secrets (i int primary key, note text); "
        f"insert into secrets select g, '{marker} ' || g from generate_series(1, 2000) g",
        dbname=db_name,
    )
    key = keyed["key"]
    assert isinstance(key, EncryptionKey)
    repo = Repository(str(keyed["url"]), encryption=key)
    m = LogicalBackup(dbname=fresh_db, compression="none").run(repo)  # uncompressed: the marker would show
    assert m.encryption == {"cipher": "aes-256-gcm", "format": "1", "key_id": key.key_id}
    root = keyed["root"]
    assert isinstance(root, Path)
    stored = [p for p in _stored_files(root) if m.id in str(p)]
    assert stored
    for p in stored:
        data = p.read_bytes()
        assert data[:4] == MAGIC, p  # every object, the manifest included
        assert marker.encode() not in data
    assert key.to_base64().encode() not in b"".join(p.read_bytes() for p in stored)

    target = pg.create_database(f"{db_name}_copy")
    LogicalRestore(repo, m.id).run(target)
    assert pg.query(ROWS, dbname=f"{db_name}_copy") == pg.query(ROWS, dbname=db_name)
    assert Verifier(repo).verify(m.id).ok

    # without the key, with another key: clear refusals that name the key id
    with pytest.raises(EncryptionError, match=key.key_id):
        Repository(str(keyed["url"])).get(m.id)
    with pytest.raises(WrongKey, match=key.key_id):
        Repository(str(keyed["url"]), encryption=EncryptionKey.generate()).get(m.id)

    # one changed byte: verification names the object, a restore refuses before loading anything
    dump = next(p for p in stored if p.name != "manifest.json" and p.name != "started.json")
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    report = Verifier(repo).verify(m.id)
    assert not report.ok
    assert any(dump.name in c.detail for c in report.failures)
    with pytest.raises((TamperedObject, EncryptionError)):
        LogicalRestore(repo, m.id).run(pg.conninfo(f"{db_name}_tampered"), create=True)
    assert pg.query("select count(*) from pg_database where datname = %s", (f"{db_name}_tampered",))[0][0] == 0
    pg.execute(f'drop database "{db_name}_copy"')


def test_cli_reads_the_key_from_a_file_or_the_environment(
    keyed: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, key_file = str(keyed["url"]), str(keyed["key_file"])
    assert main(["list", "--repo", url, "--encryption-key-file", key_file, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["backups"]
    assert listed
    assert all(b["encryption"]["key_id"] == keyed["key"].key_id for b in listed)  # type: ignore[attr-defined]
    key = keyed["key"]
    assert isinstance(key, EncryptionKey)
    monkeypatch.setenv("PGRECOVERY_ENCRYPTION_KEY", key.to_base64())
    assert main(["list", "--repo", url, "--json"]) == 0
    capsys.readouterr()
    monkeypatch.delenv("PGRECOVERY_ENCRYPTION_KEY")
    assert main(["list", "--repo", url]) == 1
    err = capsys.readouterr().err
    assert key.key_id in err
    assert "--encryption-key-file" in err
    assert err.count("\n") == 1


def test_wal_and_base_backup_recover_to_the_last_row(keyed: dict[str, object], tmp_path: Path) -> None:
    """archive_command with the key file, a base backup, more rows, then recovery from the encrypted archive."""
    root, key_file = Path(str(keyed["root"])), str(keyed["key_file"])
    with archiving_cluster("pgrecovery-enc-pitr", root=root, key_file=key_file) as ctx:
        pg, repo, pgdata = ctx.pg, ctx.repo, ctx.pgdata()
        pg.execute("insert into t select g, md5(g::text) from generate_series(1, 500) g")
        backup = BaseBackup(dbname=pg.conninfo()).run(repo)
        assert backup.encryption is not None
        pg.execute("insert into t select g, md5(g::text) from generate_series(501, 1500) g")
        _wait_archived(pg)
        expected = pg.query("select count(*), md5(string_agg(note, ',' order by i)) from t")
        wal_objects = _stored_files(root / "wal")
        assert wal_objects
        assert all(p.read_bytes()[:4] == MAGIC for p in wal_objects)
        result = RecoveryPlan(repo, RecoveryTarget.latest()).run(pgdata, settings={"archive_mode": "off"})
        restored = LocalCluster(data_dir=pgdata, port=result.port)
        try:
            assert restored.query("select count(*), md5(string_agg(note, ',' order by i)) from t") == expected
        finally:
            restored.stop()
