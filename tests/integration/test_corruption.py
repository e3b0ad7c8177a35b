"""Corruption matrix: every kind of stored object, damaged four ways, is detected by name and never used.

Kinds: a logical dump, a logical manifest, a base backup bundle (tar part), a base backup's ``backup_label``, a
base manifest, a WAL segment and a timeline history file. Damages: one byte flipped, truncated to half, deleted,
and swapped with another object of its kind (contents exchanged, names kept). For each case, on a private copy
of one pristine repository:

- verification names the object: `Verifier.verify` (backup objects) or `WalArchiver.verify` (WAL objects) fails
  and its report or error carries the object's key (or, for a manifest, its backup id);
- nothing corrupt is handed on: a logical restore raises before it creates the target database, a base restore
  (`RecoveryPlan.restore`) raises and leaves no data directory behind, and ``wal-fetch`` (as restore_command)
  exits 255 (1 for a deleted file: a confirmed miss) without creating its destination.

Counts (injected / detected) go to the reliability results file (``PGRECOVERY_RELIABILITY_OUT`` or
``tests/.results/reliability.json``) under ``corruption``, for docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pgtesting import archiving_cluster
from pgtesting import owned_tmpdir as _owned_tmpdir
from pgtesting import wait_archived as _wait_archived

from pgrecovery import (
    BaseBackup,
    LocalCluster,
    LogicalBackup,
    LogicalRestore,
    PgRecoveryError,
    RecoveryPlan,
    RecoveryTarget,
    Repository,
    TargetUnreachable,
    Verifier,
)
from pgrecovery.catalog import leftovers
from pgrecovery.cli.main import main
from pgrecovery.wal.archiver import WalArchiver

HERE = Path(__file__).resolve().parent

# -- the results file (shared with test_bad_input and test_security) -----------------------------------------------


def results_path() -> Path:
    explicit = os.environ.get("PGRECOVERY_RELIABILITY_OUT")
    return Path(explicit) if explicit else HERE.parent / ".results" / "reliability.json"


def record_result(section: str, case: str, data: dict[str, Any], totals: Callable[[list[Any]], dict[str, Any]]) -> None:
    """Merge one case into ``section`` of the results file and recompute the section's totals."""
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        results = {}
    part = results.setdefault(section, {})
    part.setdefault("cases", {})[case] = data
    part["total"] = totals(list(part["cases"].values()))
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def reset_section(section: str) -> None:
    """Forget ``section``'s cases from earlier sessions (each module records afresh when it runs)."""
    path = results_path()
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if results.pop(section, None) is not None:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


def read_results() -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(results_path().read_text())
        return data
    except (OSError, ValueError):
        return {}


def _corruption_totals(cases: list[dict[str, Any]]) -> dict[str, int]:
    return {"injected": len(cases), "detected": sum(1 for c in cases if c["detected"])}


@pytest.fixture(scope="module", autouse=True)
def _fresh_results() -> None:
    reset_section("corruption")


# -- the story -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def story() -> Iterator[dict[str, Any]]:
    """A cluster archiving into a repository: two logical backups, two base backups, then a recovery that promotes
    onto timeline 2 (archiving its history file and segments into the same repository)."""
    with archiving_cluster("pgrecovery-corrupt") as ctx:
        pg, root, url, repo = ctx.pg, ctx.root, ctx.url, ctx.repo
        pg.execute("insert into t select i, md5(i::text) from generate_series(1, 5000) i")
        logical_a = LogicalBackup(dbname=pg.conninfo()).run(repo)
        pg.execute("insert into t select i, md5(i::text) from generate_series(5001, 6000) i")
        logical_b = LogicalBackup(dbname=pg.conninfo()).run(repo)
        base1 = BaseBackup(dbname=pg.conninfo(), workers=2).run(repo)
        pg.execute("insert into t select i, md5(i::text) from generate_series(6001, 7000) i")
        base2 = BaseBackup(dbname=pg.conninfo(), workers=2).run(repo)
        pg.execute("insert into t select i, md5(i::text) from generate_series(7001, 8000) i")
        _wait_archived(pg)
        pg.stop()
        scratch = ctx.pgdata()
        promoted = RecoveryPlan(repo, RecoveryTarget.latest()).run(scratch, archive=True)  # archives tl 2
        assert promoted.timeline == 2
        tl2 = LocalCluster(data_dir=scratch, port=promoted.port)
        tl2.execute("insert into t select i, md5(i::text) from generate_series(8001, 8100) i")
        _wait_archived(tl2)
        tl2.stop()
        yield {
            "root": root,
            "url": url,
            "logical": (logical_a, logical_b),
            "base": (base1, base2),
            "rows": 8100,
        }


@pytest.fixture
def damaged_copy(story: dict[str, Any]) -> Iterator[Path]:
    """A private copy of the pristine repository (owned by the server's user, like the original)."""
    copy = _owned_tmpdir("pgrecovery-corrupt-case-")
    shutil.copytree(story["root"], copy, dirs_exist_ok=True)
    if os.getuid() == 0:
        for here, _dirs, files in os.walk(copy):
            for name in [here, *(os.path.join(here, f) for f in files)]:
                shutil.chown(name, "postgres", "postgres")
    try:
        yield copy
    finally:
        shutil.rmtree(copy, ignore_errors=True)


@pytest.fixture
def pgdata() -> Iterator[Path]:
    base = _owned_tmpdir("pgrecovery-corrupt-pgdata-")
    yield base / "data"
    cluster = LocalCluster(data_dir=base / "data")
    if (base / "data" / "postmaster.pid").exists() and cluster.is_running():
        cluster.stop(mode="immediate")
    shutil.rmtree(base, ignore_errors=True)


# -- damage --------------------------------------------------------------------------------------------------------


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _swap(a: Path, b: Path) -> None:
    first, second = a.read_bytes(), b.read_bytes()
    assert first != second, f"{a.name} and {b.name} hold the same bytes: a swap would change nothing"
    a.write_bytes(second)
    b.write_bytes(first)


def damage(how: str, victim: Path, partner: Path) -> None:
    if how == "flip":
        _flip(victim)
    elif how == "truncate":
        _truncate(victim)
    elif how == "delete":
        victim.unlink()
    else:
        _swap(victim, partner)


def _wal_object(root: Path, name: str) -> Path:
    timeline = name[:8] if not name.endswith(".history") else f"{int(name.split('.')[0], 16):08X}"
    (found,) = [p for p in (root / "wal" / timeline).iterdir() if p.name.startswith(f"{name}-")]
    return found


def victims(story: dict[str, Any], root: Path, kind: str) -> tuple[Path, Path, str]:
    """(the object to damage, another of its kind to swap with, the name a report must carry)."""
    a, b = story["logical"]
    base1, base2 = story["base"]
    if kind == "dump":
        victim = root / "backups" / a.id / a.file("dump").path
        return victim, root / "backups" / b.id / b.file("dump").path, f"backups/{a.id}/{a.file('dump').path}"
    if kind == "manifest-logical":
        return root / "backups" / a.id / "manifest.json", root / "backups" / b.id / "manifest.json", a.id
    if kind == "bundle":
        one, two = base1.file("bundle-0").path, base1.file("bundle-1").path
        return root / "backups" / base1.id / one, root / "backups" / base1.id / two, f"backups/{base1.id}/{one}"
    if kind == "backup_label":
        label = base1.file("backup_label").path
        return (
            root / "backups" / base1.id / label,
            root / "backups" / base2.id / base2.file("backup_label").path,
            f"backups/{base1.id}/{label}",
        )
    if kind == "manifest-base":
        return root / "backups" / base1.id / "manifest.json", root / "backups" / base2.id / "manifest.json", base1.id
    if kind == "wal-segment":
        name = base2.physical.start_wal  # needed by any recovery from the newest backup
        other = "000000010000000000000001"
        return _wal_object(root, name), _wal_object(root, other), name
    if kind == "history":
        backup_file = next(p for p in (root / "wal" / "00000001").iterdir() if ".backup-" in p.name)
        return _wal_object(root, "00000002.history"), backup_file, "00000002.history"
    raise AssertionError(kind)


KINDS = ["dump", "manifest-logical", "bundle", "backup_label", "manifest-base", "wal-segment", "history"]
DAMAGES = ["flip", "truncate", "delete", "swap"]
_seen: dict[str, bool] = {}


# -- the matrix ----------------------------------------------------------------------------------------------------


def _verify_names(repo: Repository, backup_id: str, name: str) -> str:
    """Run `Verifier.verify` (checksums and readability); return the failure text, which must name ``name``."""
    try:
        report = Verifier(repo).verify(backup_id)
    except PgRecoveryError as e:
        text = str(e)
    else:
        assert not report.ok, f"verify passed a damaged backup: {report.to_dict()}"
        text = "; ".join(f"{c.name}: {c.detail}" for c in report.failures)
    assert name in text, text
    return text


def _cli_verify(url: str, backup_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code = main(["--repo", url, "verify", backup_id])
    out, err = capsys.readouterr()
    assert code in (1, 2), (code, out, err)
    assert backup_id in out + err
    assert "Traceback" not in err


def _logical_restore_refused(pg: LocalCluster, repo: Repository, backup_id: str, name: str) -> None:
    target = f"corrupt_{os.getpid()}_{time.monotonic_ns()}"
    try:
        with pytest.raises(PgRecoveryError) as caught:
            LogicalRestore(repo, backup_id).run(pg.conninfo(target), create=True)
        assert name in str(caught.value) or backup_id in str(caught.value), str(caught.value)
        assert pg.query("select 1 from pg_database where datname = %s", (target,)) == []
    finally:
        pg.execute(f'drop database if exists "{target}" with (force)')


def _base_restore_refused(repo: Repository, backup_id: str, pgdata: Path, name: str) -> None:
    with pytest.raises(PgRecoveryError) as caught:
        RecoveryPlan(repo, RecoveryTarget.immediate(), backup_id=backup_id).restore(pgdata)
    assert name in str(caught.value) or backup_id in str(caught.value), str(caught.value)
    assert not pgdata.exists(), f"a half-restored data directory was left: {sorted(os.listdir(pgdata))[:10]}"


def _wal_fetch_refused(url: str, name: str, how: str, capsys: pytest.CaptureFixture[str], where: Path) -> None:
    dest = where / "RECOVERYXLOG"
    capsys.readouterr()
    code = main(["--repo", url, "wal-fetch", "--no-prefetch", name, str(dest)])
    err = capsys.readouterr().err
    assert code == (1 if how == "delete" else 255), (code, err)  # a deleted file is a confirmed miss
    assert not dest.exists()
    assert [p.name for p in where.iterdir()] == [], "wal-fetch left a temporary file"
    if how != "delete":
        assert err.count("\n") == 1, err
        assert name in err, err
        assert "corrupt" in err, err


def _wal_verify_names(repo: Repository, name: str, how: str) -> str:
    archiver = WalArchiver(repo)
    try:
        report = archiver.verify(check_digests=True)
    except PgRecoveryError as e:  # a damaged history file: the archive cannot even be followed
        text = str(e)
    else:
        text = ""
    if text:
        assert name in text, text
        return text
    assert not report.ok
    listed = report.missing if how == "delete" else report.corrupt
    assert name in listed, report.to_dict()
    return f"missing {report.missing}, corrupt {report.corrupt}"


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_damage_is_detected_and_never_used(
    story: dict[str, Any],
    damaged_copy: Path,
    pgdata: Path,
    pg: LocalCluster,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    how: str,
) -> None:
    root = damaged_copy
    repo = Repository(f"file://{root}")
    url = repo.url
    victim, partner, name = victims(story, root, kind)
    damage(how, victim, partner)
    a = story["logical"][0]
    base1, base2 = story["base"]
    outcome: dict[str, Any] = {"kind": kind, "damage": how, "object": str(victim.relative_to(root)), "detected": False}
    try:
        if kind in ("dump", "manifest-logical"):
            outcome["verify"] = _verify_names(repo, a.id, name)
            _cli_verify(url, a.id, capsys)
            _logical_restore_refused(pg, repo, a.id, name)
            outcome["refused"] = "logical restore"
            if kind == "manifest-logical" and how == "delete":  # the backup is no longer complete, and says so
                assert a.id in [x.id for x in leftovers(repo)]
        elif kind in ("bundle", "backup_label", "manifest-base"):
            outcome["verify"] = _verify_names(repo, base1.id, name)
            _cli_verify(url, base1.id, capsys)
            _base_restore_refused(repo, base1.id, pgdata, name)
            outcome["refused"] = "base restore"
        else:
            outcome["verify"] = _wal_verify_names(repo, name, how)
            fetch_dir = _owned_tmpdir("pgrecovery-corrupt-fetch-")
            try:
                _wal_fetch_refused(url, name, how, capsys, fetch_dir)
            finally:
                shutil.rmtree(fetch_dir, ignore_errors=True)
            outcome["refused"] = "wal-fetch"
            if how == "delete" or kind == "history":
                # what wal-fetch cannot know (a file that is simply gone), planning does; and a damaged history
                # file is never read as "no newer timeline": nothing is restored
                with pytest.raises(PgRecoveryError, match=re.escape(name)):
                    RecoveryPlan(repo, RecoveryTarget.latest(), backup_id=base2.id).restore(pgdata)
                assert not pgdata.exists()
        outcome["detected"] = True
    finally:
        outcome["verify"] = str(outcome.get("verify", ""))[:300]
        record_result("corruption", f"{kind}/{how}", outcome, _corruption_totals)
        _seen[f"{kind}/{how}"] = bool(outcome["detected"])


@pytest.mark.parametrize("how", ["flip", "truncate", "swap"])
def test_wal_verify_check_digests_covers_backup_history_files(
    story: dict[str, Any], damaged_copy: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    """A damaged ``.backup`` file is not on any timeline's segment path, so only the periodic check can find it:
    ``wal-verify --check-digests`` must name it and exit 1 (presence alone still passes)."""
    backups = sorted(p for p in damaged_copy.joinpath("wal").rglob("*") if ".backup-" in p.name)
    assert len(backups) >= 2, "the story archives a .backup file per base backup"
    victim, partner = backups[0], backups[1]
    name = victim.name.split("-")[0]
    damage(how, victim, partner)
    url = f"file://{damaged_copy}"
    assert main(["--repo", url, "wal-verify", "--json"]) == 0
    capsys.readouterr()
    assert main(["--repo", url, "wal-verify", "--check-digests", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert name in report["corrupt"], report
    assert not report["ok"]


def test_history_damage_stops_planning_instead_of_following_another_timeline(
    story: dict[str, Any], damaged_copy: Path, pgdata: Path
) -> None:
    """With its history file damaged, timeline 2 must not be silently passed over for timeline 1."""
    repo = Repository(f"file://{damaged_copy}")
    _flip(_wal_object(damaged_copy, "00000002.history"))
    with pytest.raises(PgRecoveryError, match=r"00000002\.history"):
        RecoveryPlan(repo, RecoveryTarget.latest())
    assert not pgdata.exists()


def test_recovery_stops_at_a_corrupt_segment_instead_of_promoting(
    story: dict[str, Any], damaged_copy: Path, pgdata: Path
) -> None:
    """End to end: restore_command refuses the damaged segment (exit 255), so the server stops with an error
    rather than ending recovery early and promoting at the wrong point."""
    repo = Repository(f"file://{damaged_copy}")
    base2 = story["base"][1]
    newest = WalArchiver(repo).verify(base2.physical.start_wal).last
    _flip(_wal_object(damaged_copy, newest))
    with pytest.raises(TargetUnreachable) as caught:
        RecoveryPlan(repo, RecoveryTarget.latest(), backup_id=base2.id).run(pgdata, settings={"archive_mode": "off"})
    text = str(caught.value)
    assert "exit code 255" in text or newest in text, text
    cluster = LocalCluster(data_dir=pgdata)
    assert not cluster.is_running()
    log = (pgdata.parent / "data.log").read_text(errors="replace")
    assert "archive recovery complete" not in log  # it never promoted
    assert "selected new timeline ID" not in log


def test_every_single_byte_change_in_a_manifest_is_refused(story: dict[str, Any], damaged_copy: Path) -> None:
    """A manifest carries the sha256 of its own content: no changed byte (a name, a time, a count, a role) is
    read as a valid manifest. Every byte of a logical manifest, and an even sample of a base manifest's."""
    repo = Repository(f"file://{damaged_copy}")
    tried = refused = 0
    for m, limit in ((story["logical"][0], None), (story["base"][0], 400)):
        path = damaged_copy / "backups" / m.id / "manifest.json"
        pristine = path.read_bytes()
        positions = range(len(pristine)) if limit is None else range(0, len(pristine), max(1, len(pristine) // limit))
        accepted = []
        for i in positions:
            for bit in (0x01, 0x20):
                data = bytearray(pristine)
                data[i] ^= bit
                path.write_bytes(bytes(data))
                tried += 1
                try:
                    repo.get(m.id)
                except PgRecoveryError:
                    refused += 1
                else:
                    accepted.append((i, bit, pristine[max(0, i - 20) : i + 5]))
        path.write_bytes(pristine)
        assert repo.get(m.id) == m
        assert not accepted, accepted[:5]
    record_result(
        "corruption",
        "manifest/every-byte",
        {"kind": "manifest", "damage": "one bit flipped at each position", "tried": tried, "refused": refused,
         "detected": refused == tried},
        _corruption_totals,
    )  # fmt: skip


def test_corruption_summary() -> None:
    """All the matrix's cases were detected (printed for the reliability report)."""
    if not _seen:
        pytest.skip("the matrix did not run in this session")
    detected = sum(_seen.values())
    print(f"\ncorruption matrix: {detected}/{len(_seen)} injected damages detected ({results_path()})")
    assert detected == len(_seen), sorted(k for k, v in _seen.items() if not v)
