"""Client-side encryption: round trips, wrong keys, and every way an attacker could alter a stored object."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path
from typing import BinaryIO, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgrecovery import Repository, StoredObject
from pgrecovery.crypto import (
    ENV_VAR,
    HEADER_SIZE,
    RECORD_SIZE,
    DecryptingReader,
    EncryptingWriter,
    EncryptionKey,
    decrypt_bytes,
    encrypt_bytes,
    encrypted_size,
    key_id_of,
    open_decrypted,
    parse_header,
    plain_or_encrypted,
    plaintext_size,
)
from pgrecovery.errors import (
    ChecksumMismatch,
    ConfigurationError,
    EncryptionError,
    MissingDependency,
    TamperedObject,
    WrongKey,
)

SMALL = 4096  # a small record size, so that tamper tests cover many records cheaply
SEALED = SMALL + 16
MATERIAL = bytes(range(32))


@pytest.fixture
def key() -> EncryptionKey:
    return EncryptionKey.generate()


def payload(n: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    block = seed.to_bytes(8, "big")
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def read_until_error(blob: bytes, key: EncryptionKey, step: int = 1000) -> tuple[bytes, Exception | None]:
    """Everything a reader hands out before it raises (and what it raised)."""
    got = bytearray()
    try:
        with DecryptingReader(cast(BinaryIO, io.BytesIO(blob)), key, name="backups/x/data/obj") as r:
            while chunk := r.read(step):
                got += chunk
    except EncryptionError as e:
        return bytes(got), e
    return bytes(got), None


# -- round trips -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, RECORD_SIZE - 1, RECORD_SIZE, RECORD_SIZE + 1, 2 * RECORD_SIZE, 5 * RECORD_SIZE + 12345]
)
@pytest.mark.parametrize("write_size", [7, 65536, 3 * RECORD_SIZE])
def test_round_trip(key: EncryptionKey, size: int, write_size: int) -> None:
    data = payload(size)
    blob = io.BytesIO()

    sink = _BytesWriter(blob)
    w = EncryptingWriter(sink, key)
    for i in range(0, size, write_size):
        w.write(data[i : i + write_size])
    stored = w.commit()
    assert sink.committed
    assert not sink.aborted
    assert (stored.size, stored.sha256) == (size, hashlib.sha256(data).hexdigest())
    ciphertext = blob.getvalue()
    assert len(ciphertext) == encrypted_size(size)
    assert plaintext_size(len(ciphertext)) == size
    if size >= 64:
        assert data[:64] not in ciphertext
    assert decrypt_bytes(ciphertext, key) == data
    with DecryptingReader(cast(BinaryIO, io.BytesIO(ciphertext)), key) as r:
        assert r.key_id == key.key_id
        parts = []
        while chunk := r.read(300_000):
            parts.append(chunk)
        assert b"".join(parts) == data
        assert r.read() == b""


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3 * SMALL + 50), cuts=st.lists(st.integers(0, 3 * SMALL + 50), max_size=8))
def test_any_write_split_round_trips(data: bytes, cuts: list[int]) -> None:
    key = EncryptionKey(MATERIAL)
    sink = io.BytesIO()
    w = EncryptingWriter(_BytesWriter(sink), key, record_size=SMALL)
    prev = 0
    for c in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
        w.write(data[prev:c])
        prev = c
    w.commit()
    assert decrypt_bytes(sink.getvalue(), key) == data
    buffered = io.BufferedReader(DecryptingReader(cast(BinaryIO, io.BytesIO(sink.getvalue())), key), 1000)
    assert buffered.read() == data


class _BytesWriter:
    """An `ObjectWriter` into a BytesIO (the encrypted bytes, for inspection)."""

    key = "obj"

    def __init__(self, out: io.BytesIO) -> None:
        self.out = out
        self.committed = self.aborted = False

    def write(self, b: bytes, /) -> None:
        self.out.write(b)

    def commit(self) -> StoredObject:
        self.committed = True
        data = self.out.getvalue()
        return StoredObject(key=self.key, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def abort(self) -> None:
        self.aborted = True

    def __enter__(self) -> _BytesWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        pass


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_through_a_repository(key: EncryptionKey, tmp_path: Path, scheme: str) -> None:
    url = f"file://{tmp_path}/r" if scheme == "file" else f"memory://r-{uuid.uuid4().hex}"
    repo = Repository(url, encryption=key)
    data = payload(3 * RECORD_SIZE + 5)
    obj = repo.put_bytes("backups/b1/data/dump.zst", data)
    assert (obj.size, obj.sha256) == (len(data), hashlib.sha256(data).hexdigest())  # what was written
    assert repo.digest("backups/b1/data/dump.zst") == (obj.size, obj.sha256)
    assert repo.size("backups/b1/data/dump.zst") == len(data)
    assert repo.stored_size("backups/b1/data/dump.zst") == encrypted_size(len(data))
    assert repo.local_path("backups/b1/data/dump.zst") is None  # never read around the decryption
    assert repo.read_bytes("backups/b1/data/dump.zst") == data
    stored = Repository(url)  # the same objects, seen without the key
    with pytest.raises(EncryptionError, match=f"encrypted \\(key id {key.key_id}\\)"):
        stored.read_bytes("backups/b1/data/dump.zst")
    with pytest.raises(WrongKey):
        Repository(url, encryption=EncryptionKey.generate()).read_bytes("backups/b1/data/dump.zst")
    Repository(url).put_bytes("planted", b"plain bytes")
    with pytest.raises(EncryptionError, match="not encrypted although a key was given"):
        repo.read_bytes("planted")
    assert key.key_id in repr(repo)
    assert key.to_base64() not in repr(repo)


def test_aborted_write_stores_nothing(key: EncryptionKey) -> None:
    repo = Repository(f"memory://r-{uuid.uuid4().hex}")
    w = EncryptingWriter(repo.writer("k"), key)

    def produce() -> None:
        with w:
            w.write(b"half")
            raise RuntimeError("producer died")

    with pytest.raises(RuntimeError):
        produce()
    assert not repo.exists("k")
    with pytest.raises(EncryptionError, match="after it was committed or aborted"):
        w.write(b"more")


# -- keys ----------------------------------------------------------------------------------------------------------


def test_wrong_key_is_named(key: EncryptionKey) -> None:
    blob = encrypt_bytes(b"secret rows", key)
    other = EncryptionKey.from_text(base64.b64encode(os.urandom(32)).decode(), source="key file /etc/pgr/key")
    with pytest.raises(WrongKey) as info:
        decrypt_bytes(blob, other, name="backups/b1/data/dump.zst")
    msg = str(info.value)
    assert key.key_id in msg
    assert other.key_id in msg
    assert "backups/b1/data/dump.zst" in msg
    assert "key file /etc/pgr/key" in msg
    assert ENV_VAR in msg
    assert "--encryption-key-file" in msg
    assert other.to_base64() not in msg


def test_key_id_is_stable_and_distinct() -> None:
    assert EncryptionKey(MATERIAL).key_id == "82733a35c59aad30"  # fixed forever: manifests record it
    assert key_id_of(MATERIAL) == "82733a35c59aad30"
    ids = {EncryptionKey.generate().key_id for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert MATERIAL.hex()[:16] not in ids


def test_key_equality_and_sizes() -> None:
    assert EncryptionKey(MATERIAL) == EncryptionKey.from_text(MATERIAL.hex())
    assert EncryptionKey(MATERIAL) != EncryptionKey.generate()
    with pytest.raises(ConfigurationError, match="32 bytes; got 16 bytes"):
        EncryptionKey(bytes(16))


@pytest.mark.parametrize(
    "text",
    [
        MATERIAL.hex(),
        MATERIAL.hex().upper(),
        base64.b64encode(MATERIAL).decode(),
        base64.urlsafe_b64encode(MATERIAL).decode().rstrip("="),
        "  " + base64.b64encode(MATERIAL).decode() + "\n",
    ],
)
def test_key_from_env(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv(ENV_VAR, text)
    k = EncryptionKey.from_env()
    assert k == EncryptionKey(MATERIAL)
    assert k.source == f"environment variable {ENV_VAR}"


@pytest.mark.parametrize(
    "text", ["too short", MATERIAL.hex()[:-2], base64.b64encode(bytes(31)).decode(), "é" * 44, MATERIAL.hex() + "00"]
)
def test_bad_key_text_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("MY_KEY", text)
    with pytest.raises(ConfigurationError, match=r"base64 .* or hex") as info:
        EncryptionKey.from_env("MY_KEY")
    assert "MY_KEY" in str(info.value)
    assert text.strip() not in str(info.value)


def test_missing_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(ConfigurationError, match=f"{ENV_VAR} is not set.*--encryption-key-file"):
        EncryptionKey.from_env()


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640])
def test_key_file_accepted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key"
    path.write_text(base64.b64encode(MATERIAL).decode() + "\n")
    path.chmod(mode)
    k = EncryptionKey.from_file(path)
    assert k == EncryptionKey(MATERIAL)
    assert k.source == f"key file {path}"


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o666, 0o602])
def test_key_file_readable_by_everyone_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key"
    path.write_text(MATERIAL.hex())
    path.chmod(mode)
    with pytest.raises(ConfigurationError, match=f"accessible to every user .*chmod 600 {path}"):
        EncryptionKey.from_file(path)


def test_key_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        EncryptionKey.from_file(tmp_path / "nope")
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff" * 32)
    binary.chmod(0o600)
    with pytest.raises(ConfigurationError, match="not text"):
        EncryptionKey.from_file(binary)
    short = tmp_path / "short"
    short.write_text("abcd")
    short.chmod(0o600)
    with pytest.raises(ConfigurationError, match=f"key file {short} is not a 32-byte key"):
        EncryptionKey.from_file(short)
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(ConfigurationError, match="not a regular file"):
        EncryptionKey.from_file(tmp_path / "dir")


def test_save_writes_a_private_file_once(tmp_path: Path) -> None:
    k = EncryptionKey.generate()
    path = tmp_path / "key"
    k.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert EncryptionKey.from_file(path) == k
    with pytest.raises(ConfigurationError, match="refusing to overwrite"):
        EncryptionKey.generate().save(path)
    assert EncryptionKey.from_file(path) == k


def test_key_never_shown(key: EncryptionKey) -> None:
    secrets_forms = [key.to_base64(), base64.b64decode(key.to_base64()).hex(), repr(base64.b64decode(key.to_base64()))]
    blob = encrypt_bytes(payload(2 * SMALL), key, record_size=SMALL)
    writer = EncryptingWriter(_BytesWriter(io.BytesIO()), key)
    reader = DecryptingReader(cast(BinaryIO, io.BytesIO(blob)), key)
    shown = [repr(key), str(key), f"{key}", repr(writer), repr(reader), repr(reader.header), repr([key])]
    for err_call in (
        lambda: decrypt_bytes(blob, EncryptionKey.generate()),
        lambda: decrypt_bytes(blob[:-1], key),
        lambda: open_decrypted(cast(BinaryIO, io.BytesIO(blob)), None),
    ):
        with pytest.raises(EncryptionError) as info:
            err_call()
        shown.append(str(info.value))
    for text in shown:
        for form in secrets_forms:
            assert form not in text
    assert key.key_id in repr(key)
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(key)


# -- tampering -----------------------------------------------------------------------------------------------------


def test_every_flipped_byte_is_detected_and_no_bad_record_is_returned() -> None:
    key = EncryptionKey(MATERIAL)
    data = payload(3 * SMALL + 100)
    blob = encrypt_bytes(data, key, record_size=SMALL)
    assert len(blob) == HEADER_SIZE + 3 * SEALED + 100 + 16
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        got, err = read_until_error(bytes(bad), key)
        assert err is not None, f"flip at {pos} went unnoticed"
        if pos < HEADER_SIZE:
            assert got == b"", f"flip at header byte {pos} returned data"
            if 8 <= pos < 16:
                assert isinstance(err, WrongKey)
        else:
            assert isinstance(err, TamperedObject), f"flip at {pos}: {err!r}"
            record = (pos - HEADER_SIZE) // SEALED
            assert got == data[: record * SMALL], f"flip at {pos} (record {record}) leaked plaintext"
            assert f"record {record}" in str(err)
            assert "backups/x/data/obj" in str(err)


def test_tampered_object_is_a_checksum_mismatch(key: EncryptionKey) -> None:
    blob = bytearray(encrypt_bytes(b"x" * 100, key))
    blob[-1] ^= 0x80
    with pytest.raises(ChecksumMismatch, match="failed authentication"):
        decrypt_bytes(bytes(blob), key)


@pytest.mark.parametrize("records", [0, 1, 2, 3])
def test_truncation_at_a_record_boundary_is_detected(records: int) -> None:
    key = EncryptionKey(MATERIAL)
    data = payload(3 * SMALL + 100)
    blob = encrypt_bytes(data, key, record_size=SMALL)
    cut = blob[: HEADER_SIZE + records * SEALED]
    got, err = read_until_error(cut, key)
    assert isinstance(err, TamperedObject)
    assert "truncated" in str(err)
    assert got == data[: records * SMALL]


def test_exact_multiple_truncation_is_detected() -> None:
    """An object of exactly N records ends with an empty final record: dropping it is noticed."""
    key = EncryptionKey(MATERIAL)
    data = payload(2 * SMALL)
    blob = encrypt_bytes(data, key, record_size=SMALL)
    assert len(blob) == HEADER_SIZE + 2 * SEALED + 16
    got, err = read_until_error(blob[:-16], key)
    assert isinstance(err, TamperedObject)
    assert got == data


@pytest.mark.parametrize("cut", [0, 3, HEADER_SIZE - 1, HEADER_SIZE + 5, HEADER_SIZE + SEALED + 17])
def test_truncation_anywhere_is_detected(cut: int) -> None:
    key = EncryptionKey(MATERIAL)
    blob = encrypt_bytes(payload(2 * SMALL + 10), key, record_size=SMALL)
    _, err = read_until_error(blob[:cut], key)
    assert isinstance(err, EncryptionError)


def test_swapped_records_are_detected() -> None:
    key = EncryptionKey(MATERIAL)
    data = payload(3 * SMALL + 100)
    blob = encrypt_bytes(data, key, record_size=SMALL)
    head, body = blob[:HEADER_SIZE], blob[HEADER_SIZE:]
    r = [body[i * SEALED : (i + 1) * SEALED] for i in range(3)]
    swapped = head + r[0] + r[2] + r[1] + body[3 * SEALED :]
    got, err = read_until_error(swapped, key)
    assert isinstance(err, TamperedObject)
    assert "record 1" in str(err)
    assert got == data[:SMALL]


def test_record_from_another_object_is_detected() -> None:
    key = EncryptionKey(MATERIAL)
    a = encrypt_bytes(payload(3 * SMALL, seed=1), key, record_size=SMALL)
    b = encrypt_bytes(payload(3 * SMALL, seed=2), key, record_size=SMALL)
    spliced = (
        a[: HEADER_SIZE + SEALED] + b[HEADER_SIZE + SEALED : HEADER_SIZE + 2 * SEALED] + a[HEADER_SIZE + 2 * SEALED :]
    )
    got, err = read_until_error(spliced, key)
    assert isinstance(err, TamperedObject)
    assert got == payload(SMALL, seed=1)
    # the header of one object in front of the records of another
    _, err = read_until_error(a[:HEADER_SIZE] + b[HEADER_SIZE:], key)
    assert isinstance(err, TamperedObject)


@pytest.mark.parametrize("extra", [b"\x00", b"garbage" * 1000])
def test_appended_bytes_are_detected(extra: bytes) -> None:
    key = EncryptionKey(MATERIAL)
    data = payload(2 * SMALL + 10)
    blob = encrypt_bytes(data, key, record_size=SMALL)
    got, err = read_until_error(blob + extra, key)
    assert isinstance(err, TamperedObject)
    assert got == data[: 2 * SMALL]


def test_appended_record_is_detected() -> None:
    """Another object's final record, appended: the old final record now reads as a middle one."""
    key = EncryptionKey(MATERIAL)
    data = payload(SMALL)  # one full record, then an empty final record
    blob = encrypt_bytes(data, key, record_size=SMALL)
    _, err = read_until_error(blob + blob[-16:], key)
    assert isinstance(err, TamperedObject)


def test_plaintext_size_of_a_truncated_object() -> None:
    with pytest.raises(TamperedObject, match="truncated"):
        plaintext_size(HEADER_SIZE + 10)
    assert plaintext_size(encrypted_size(3 * RECORD_SIZE)) == 3 * RECORD_SIZE


def test_record_size_in_header_is_bounded(key: EncryptionKey) -> None:
    blob = bytearray(encrypt_bytes(b"abc", key))
    blob[6] = 40  # 2**40-byte records would make a reader allocate that much
    with pytest.raises(TamperedObject, match="damaged encryption header"):
        decrypt_bytes(bytes(blob), key)
    with pytest.raises(ConfigurationError, match="power of two"):
        encrypt_bytes(b"abc", key, record_size=5000)


def test_newer_format_is_explained(key: EncryptionKey) -> None:
    blob = bytearray(encrypt_bytes(b"abc", key))
    blob[4] = 2
    with pytest.raises(EncryptionError, match="upgrade pgrecovery"):
        decrypt_bytes(bytes(blob), key)


# -- plain or encrypted -------------------------------------------------------------------------------------------


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        data = self._src.read(min(len(b), 5))  # short reads, like a pipe
        b[: len(data)] = data
        return len(data)


@pytest.mark.parametrize("seekable", [True, False])
def test_plain_or_encrypted(key: EncryptionKey, seekable: bool) -> None:
    plain = b"PGDMP custom dump bytes"
    enc = encrypt_bytes(plain, key)

    def stream(b: bytes) -> BinaryIO:
        return cast(BinaryIO, io.BytesIO(b) if seekable else _Unseekable(b))

    kind, s = plain_or_encrypted(stream(plain))
    assert kind == "plain"
    assert s.read() == plain
    kind, s = plain_or_encrypted(stream(enc))
    assert kind == "encrypted"
    assert s.read() == enc
    kind, s = plain_or_encrypted(stream(b"PG"))
    assert (kind, s.read()) == ("plain", b"PG")


def test_open_decrypted_policy(key: EncryptionKey) -> None:
    enc = encrypt_bytes(b"rows", key)
    with pytest.raises(EncryptionError, match=f"is encrypted \\(key id {key.key_id}\\): give the key.*{ENV_VAR}"):
        open_decrypted(cast(BinaryIO, io.BytesIO(enc)), None, name="backups/b/manifest.json")
    assert open_decrypted(cast(BinaryIO, io.BytesIO(enc)), key).read() == b"rows"
    with pytest.raises(EncryptionError, match="obj is not encrypted although a key was given"):
        open_decrypted(cast(BinaryIO, io.BytesIO(b"plain rows")), key, name="obj")
    assert open_decrypted(cast(BinaryIO, io.BytesIO(b"plain rows")), key, allow_plain=True).read() == b"plain rows"
    assert open_decrypted(cast(BinaryIO, io.BytesIO(b"plain rows")), None).read() == b"plain rows"
    with pytest.raises(EncryptionError, match="is not encrypted"):
        decrypt_bytes(b"plain rows", key)


def test_header_says_which_key(key: EncryptionKey) -> None:
    header = parse_header(encrypt_bytes(b"", key)[:HEADER_SIZE])
    assert (header.key_id, header.record_size, header.version) == (key.key_id, RECORD_SIZE, 1)


def test_two_encryptions_differ(key: EncryptionKey) -> None:
    assert encrypt_bytes(b"same", key) != encrypt_bytes(b"same", key)  # a fresh salt, so a fresh key, each time


# -- the optional dependency --------------------------------------------------------------------------------------


def test_missing_cryptography_names_the_extra(key: EncryptionKey, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(MissingDependency, match=r'pip install "pgrecovery\[encryption\]"'):
        encrypt_bytes(b"x", key)


def test_import_does_not_load_cryptography() -> None:
    code = "import sys, pgrecovery.crypto; print('cryptography' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_failed_writer_setup_aborts_the_inner_write(key: EncryptionKey, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    inner = _BytesWriter(io.BytesIO())
    with pytest.raises(MissingDependency):
        EncryptingWriter(inner, key)
    assert inner.aborted
    assert not inner.committed
