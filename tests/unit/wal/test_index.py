"""The WAL archive's index without a server: listing, history files, continuity along timelines, and the one
digest check of archived objects (pgrecovery.wal.index, pgrecovery.wal._layout). memory:// repositories only."""

from __future__ import annotations

import hashlib
import io
import uuid

import pytest

from pgrecovery import Repository
from pgrecovery._walnames import history_name, segment_name
from pgrecovery.codec import compress_bytes
from pgrecovery.errors import ChecksumMismatch, ConfigurationError, StorageError
from pgrecovery.wal import WalArchiver, WalIndex
from pgrecovery.wal._layout import object_at, object_key, parse_object_name, verified_chunks


@pytest.fixture
def repo() -> Repository:
    return Repository(f"memory://wal-index-{uuid.uuid4().hex}")


def put(repo: Repository, name: str, raw: bytes | None = None, *, digest_of: bytes | None = None) -> str:
    """Archive ``raw`` as WAL file ``name`` (named by the digest of ``digest_of`` when given: a corrupt object)."""
    raw = raw if raw is not None else name.encode() * 64
    key = object_key(name, hashlib.sha256(digest_of if digest_of is not None else raw).hexdigest(), "zstd")
    repo.put_bytes(key, compress_bytes(raw, "zstd"))
    return key


def seg(timeline: int, segno: int) -> str:
    return segment_name(timeline, segno)


def history(repo: Repository, timeline: int, *lines: str) -> None:
    put(repo, history_name(timeline), ("\n".join(lines) + "\n").encode())


def test_index_lists_each_timeline_and_ignores_foreign_names(repo: Repository) -> None:
    for n in (1, 2):
        put(repo, seg(1, n))
    put(repo, seg(2, 3))
    repo.put_bytes("wal/00000001/README", b"not ours")
    repo.put_bytes("wal/not-a-timeline/x", b"")
    index = WalIndex(repo)
    assert index.timelines() == [1, 2]
    assert sorted(index.index(1)) == [seg(1, 1), seg(1, 2)]
    assert index.list_archived() == {1: [seg(1, 1), seg(1, 2)], 2: [seg(2, 3)]}
    assert index.find(seg(1, 3)) is None
    found = index.find(seg(1, 2))
    assert found is not None
    assert found.timeline == 1
    assert found.codec == "zstd"


def test_missing_segments_on_one_timeline(repo: Repository) -> None:
    for n in (1, 2, 4, 7):
        put(repo, seg(1, n))
    index = WalIndex(repo)
    assert index.missing(seg(1, 1), seg(1, 4)) == [seg(1, 3)]
    assert index.missing(seg(1, 1)) == [seg(1, 3), seg(1, 5), seg(1, 6)]  # up to the newest archived
    report = index.verify()
    assert (report.first, report.last, report.count, report.ok) == (seg(1, 1), seg(1, 7), 4, False)
    assert report.missing == (seg(1, 3), seg(1, 5), seg(1, 6))


def test_continuity_follows_a_timeline_switch(repo: Repository) -> None:
    for n in (1, 2, 3):
        put(repo, seg(1, n))
    history(repo, 2, "1\t0/3000060\tno recovery target specified")  # timeline 2 owns segment 3 onwards
    for n in (3, 4):
        put(repo, seg(2, n))
    index = WalIndex(repo)
    assert index.lineage(2) == [(1, 0), (2, 3)]
    assert index.latest_timeline(1) == 2
    assert index.missing(seg(1, 1)) == []
    report = index.verify()
    assert report.ok
    assert report.timelines == (1, 2)
    assert report.count == 4
    assert (report.first, report.last) == (seg(1, 1), seg(2, 4))
    repo.delete(index.objects(seg(2, 3))[0].key)  # timeline 1's segment 3 does not replace it
    assert index.missing(seg(1, 1)) == [seg(2, 3)]


def test_a_timeline_without_its_history_file_is_reported(repo: Repository) -> None:
    put(repo, seg(1, 1))
    put(repo, seg(3, 2))
    index = WalIndex(repo)
    assert history_name(3) in index.verify(timeline=1).missing
    assert index.latest_timeline(1) == 1  # without a history file timeline 3 cannot be followed


def test_first_segment_outside_the_history_is_a_configuration_error(repo: Repository) -> None:
    put(repo, seg(1, 1))
    history(repo, 3, "1\t0/2000000\tx")
    put(repo, seg(3, 2))
    with pytest.raises(ConfigurationError, match="timeline 2"):
        WalIndex(repo).missing(seg(2, 2), timeline=3)
    with pytest.raises(ConfigurationError, match="not a WAL segment name"):
        WalIndex(repo).missing(history_name(3))


def test_unreadable_history_files(repo: Repository) -> None:
    history(repo, 2, "garbage")
    with pytest.raises(StorageError, match="cannot be parsed"):
        WalIndex(repo).history(2)
    assert WalIndex(repo).history(1) == []


def test_verify_with_digests_names_the_corrupt_segment(repo: Repository) -> None:
    put(repo, seg(1, 1))
    put(repo, seg(1, 2), b"what was stored", digest_of=b"what was archived")
    report = WalIndex(repo).verify(check_digests=True)
    assert report.corrupt == (seg(1, 2),)
    assert not report.ok
    assert WalIndex(repo).verify().ok  # presence alone


def test_verify_with_digests_checks_every_archived_object(repo: Repository) -> None:
    """Not only the segments on the followed path: .backup and .partial files, and other timelines' files."""
    put(repo, seg(1, 1))
    put(repo, seg(1, 2))
    backup_file = f"{seg(1, 1)}.00000028.backup"
    put(repo, backup_file, b"START WAL LOCATION: 0/1000028\n", digest_of=b"the label as archived")
    put(repo, f"{seg(1, 3)}.partial", b"half", digest_of=b"other half")
    put(repo, seg(3, 9), b"on a timeline nobody follows", digest_of=b"x")
    history(repo, 3, "1\t0/9000000\tno recovery target specified")
    report = WalIndex(repo).verify(timeline=1, check_digests=True)
    assert set(report.corrupt) == {backup_file, f"{seg(1, 3)}.partial", seg(3, 9)}
    assert WalIndex(repo).verify(timeline=1).ok  # presence alone


def test_reading_checks_the_digest_in_the_name(repo: Repository) -> None:
    name = history_name(2)
    key = put(repo, name, b"1\t0/3000000\tx\n", digest_of=b"other")
    with pytest.raises(ChecksumMismatch, match=f"{key} does not match the sha256 in its name"):
        WalIndex(repo).read(name)
    repo.delete(key)
    digest = hashlib.sha256(b"x").hexdigest()
    key = object_key(name, digest, "zstd")
    repo.put_bytes(key, b"not zstd at all")
    with pytest.raises(ChecksumMismatch, match="cannot be decompressed"):
        WalIndex(repo).read(name)
    with pytest.raises(StorageError, match="not in the WAL archive"):
        WalIndex(repo).read(history_name(5))


def test_one_name_archived_twice_with_different_content_is_refused(repo: Repository) -> None:
    put(repo, seg(1, 1), b"a")
    put(repo, seg(1, 1), b"b")
    with pytest.raises(StorageError, match="more than once with different content"):
        WalIndex(repo).find(seg(1, 1))


def test_verified_chunks_adds_where_and_what_happened() -> None:
    raw = b"segment" * 1000
    obj = object_at(object_key(seg(1, 1), hashlib.sha256(b"else").hexdigest(), "zstd"))
    assert obj is not None
    with pytest.raises(ChecksumMismatch, match=r"in s3://x does not match .* corrupt; nothing was delivered$"):
        b"".join(
            verified_chunks(
                io.BytesIO(compress_bytes(raw, "zstd")), obj, where=" in s3://x", then="; nothing was delivered"
            )
        )
    good = object_at(object_key(seg(1, 1), hashlib.sha256(raw).hexdigest(), "zstd"))
    assert good is not None
    assert b"".join(verified_chunks(io.BytesIO(compress_bytes(raw, "zstd")), good)) == raw


@pytest.mark.parametrize(
    "name",
    [
        "README",
        f"{seg(1, 1)}-{'a' * 63}.zst",
        f"{seg(1, 1)}-{'A' * 64}.zst",
        f"{seg(1, 1)}-{'a' * 64}.unknown",
        f"notawalfile-{'a' * 64}.zst",
    ],
)
def test_foreign_object_names_are_not_parsed(name: str) -> None:
    assert parse_object_name(name) is None
    assert object_at(f"wal/00000001/{name}") is None


def test_the_archiver_is_an_index(repo: Repository) -> None:
    put(repo, seg(1, 1))
    archiver = WalArchiver(repo)
    assert isinstance(archiver, WalIndex)
    assert archiver.find(seg(1, 1)) is not None
    with pytest.raises(ConfigurationError, match="segment size"):
        WalIndex(repo, segment_size=3)
