"""Client-side encryption at rest: AES-256-GCM in authenticated records, streamed.

An encrypted object is a 48-byte header followed by records::

    header   b"PGRE" | version 1 | cipher 1 | log2(record size) | 0 | key id (8) | salt (32)
    records  AES-256-GCM(plaintext of exactly <record size> bytes) + 16-byte tag, ...,
             then one final record of fewer than <record size> bytes (possibly none) + tag

Each object gets its own key, HKDF-SHA256(master key, salt, info = label + the whole header), so a record is only
valid in the object it was written in, and any change to the header (the salt, the record size) makes every
record fail. Record *i* is encrypted with nonce *i* and associated data (*i*, final flag): reordered, dropped,
duplicated or appended records fail authentication, and so does an object cut at a record boundary (its last
record does not carry the final flag). A record is decrypted as a whole before any of its bytes are returned,
so unauthenticated plaintext never leaves this module.

The key id stored in the header (and in manifests) is a 64-bit fingerprint of the master key under its own
label: it tells which key an object needs without revealing anything about it.

`cryptography` is imported only when an object is encrypted or decrypted (``pip install "pgrecovery[encryption]"``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import os
import re
import secrets
import stat
import struct
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal, cast

import attrs

from ._objects import ObjectWriter, StoredObject
from .errors import ConfigurationError, EncryptionError, MissingDependency, TamperedObject, WrongKey

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENV_VAR: Final = "PGRECOVERY_ENCRYPTION_KEY"
FILE_ENV_VAR: Final = "PGRECOVERY_ENCRYPTION_KEY_FILE"
KEY_FILE_OPTION: Final = "--encryption-key-file"
KEY_SIZE: Final = 32
MAGIC: Final = b"PGRE"
VERSION: Final = 1
CIPHER_AES256GCM_HKDF_SHA256: Final = 1
HEADER_SIZE: Final = 48
TAG_SIZE: Final = 16
RECORD_SIZE: Final = 1 << 20
MIN_RECORD_LOG2: Final = 12  # 4 KiB
MAX_RECORD_LOG2: Final = 24  # 16 MiB: a damaged header cannot make a reader allocate more
_HEADER: Final = struct.Struct(">4sBBBB8s32s")
_KEY_ID_LABEL: Final = b"pgrecovery key id v1\x00"
_OBJECT_KEY_LABEL: Final = b"pgrecovery object key v1\x00"
_HEX_KEY: Final = re.compile(r"[0-9a-fA-F]{64}")
_MAX_KEY_FILE: Final = 4096
_WHERE: Final = f"{ENV_VAR} or {KEY_FILE_OPTION}"


def key_id_of(material: bytes) -> str:
    """The 16-hex-digit id of a 32-byte master key (a truncated SHA-256 under a fixed label; not reversible)."""
    return hashlib.sha256(_KEY_ID_LABEL + material).hexdigest()[:16]


@attrs.frozen(repr=False, eq=False)
class EncryptionKey:
    """A 256-bit master key. Its bytes never appear in ``repr``, ``str``, messages or manifests: only `key_id`.

    >>> key = EncryptionKey.from_env()                                     # doctest: +SKIP
    >>> key = EncryptionKey.from_file("/etc/pgrecovery/key")               # doctest: +SKIP
    >>> key = EncryptionKey.generate(); key.save("/etc/pgrecovery/key")    # doctest: +SKIP

    ``from_env`` reads PGRECOVERY_ENCRYPTION_KEY; both read base64 or hex of 32 bytes.
    """

    _material: bytes = attrs.field(alias="material")
    source: str = attrs.field(default="given in code", kw_only=True)  # where it came from, for messages
    file: str | None = attrs.field(default=None, kw_only=True)  # the key file it was read from, if any

    @_material.validator
    def _check(self, _: object, value: bytes) -> None:
        if not isinstance(value, bytes) or len(value) != KEY_SIZE:
            raise ConfigurationError(f"an encryption key is {KEY_SIZE} bytes; got {_describe(value)}")

    @property
    def key_id(self) -> str:
        return key_id_of(self._material)

    def __repr__(self) -> str:
        return f"EncryptionKey(key_id={self.key_id!r}, source={self.source!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EncryptionKey):
            return NotImplemented
        return hmac.compare_digest(self._material, other._material)

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __reduce__(self) -> Any:
        raise TypeError("an EncryptionKey is not picklable (it would write the key out): pass its source instead")

    # -- constructors -----------------------------------------------------------------------------------------
    @classmethod
    def generate(cls) -> EncryptionKey:
        """A new random key (keep it: without it nothing encrypted with it can be restored)."""
        return cls(secrets.token_bytes(KEY_SIZE), source="generated")

    @classmethod
    def from_text(cls, text: str, *, source: str = "given in code") -> EncryptionKey:
        """Decode 32 bytes written as 64 hex digits or base64 (standard or URL-safe; padding optional)."""
        return cls(_decode(text, source), source=source)

    @classmethod
    def from_env(cls, var: str = ENV_VAR) -> EncryptionKey:
        """The key in environment variable ``var`` (base64 or hex of 32 bytes)."""
        value = os.environ.get(var)
        if value is None or not value.strip():
            raise ConfigurationError(
                f"environment variable {var} is not set: put a key in it (base64 or hex of {KEY_SIZE} bytes; "
                '`python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"` makes one) '
                f"or use {KEY_FILE_OPTION}"
            )
        return cls.from_text(value, source=f"environment variable {var}")

    @classmethod
    def from_environment(cls, file: str | os.PathLike[str] | None = None) -> EncryptionKey | None:
        """The key a command line or a scheduled job should use: ``file`` when given, else the file named by
        ``PGRECOVERY_ENCRYPTION_KEY_FILE``, else ``PGRECOVERY_ENCRYPTION_KEY``; None when none is set (the
        repository is not encrypted). Both variables at once is refused: it is not clear which key is meant."""
        explicit = file is not None  # an explicit file (--encryption-key-file) wins over both variables
        file = file or os.environ.get(FILE_ENV_VAR) or None
        if file is not None and not explicit and os.environ.get(ENV_VAR, "").strip():
            raise ConfigurationError(f"both {ENV_VAR} and {FILE_ENV_VAR} are set: keep one of them")
        if file is not None:
            return cls.from_file(file)
        if os.environ.get(ENV_VAR, "").strip():
            return cls.from_env()
        return None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> EncryptionKey:
        """The key in file ``path`` (base64 or hex, surrounding whitespace ignored).

        A file that every user may read (or write) is refused: keep it mode 600, or 640 for a group such as
        the PostgreSQL server's, whose archive_command needs it.
        """
        name = os.fspath(path)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ConfigurationError(f"encryption key file {name} does not exist") from None
        except OSError as e:
            raise ConfigurationError(f"cannot open encryption key file {name}: {e.strerror or e}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigurationError(f"encryption key file {name} is not a regular file")
            if st.st_mode & 0o007:
                mode = stat.S_IMODE(st.st_mode)
                raise ConfigurationError(
                    f"encryption key file {name} is accessible to every user (mode {mode:04o}): "
                    f"run `chmod 600 {name}` (or 640 to share it with a group) and try again"
                )
            if st.st_size > _MAX_KEY_FILE:
                raise ConfigurationError(f"encryption key file {name} is {st.st_size} bytes: it should hold one key")
            data = b""
            while chunk := os.read(fd, _MAX_KEY_FILE + 1 - len(data)):
                data += chunk
                if len(data) > _MAX_KEY_FILE:
                    raise ConfigurationError(f"encryption key file {name} is too large: it should hold one key")
        finally:
            os.close(fd)
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise ConfigurationError(
                f"encryption key file {name} is not text: write the key as base64 or hex of {KEY_SIZE} bytes"
            ) from None
        return cls(_decode(text, f"key file {name}"), source=f"key file {name}", file=os.path.abspath(name))

    # -- export ---------------------------------------------------------------------------------------------
    def to_base64(self) -> str:
        """The key as base64 text, to store it somewhere safe. This is the secret itself: never log it."""
        return base64.b64encode(self._material).decode("ascii")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key (base64) to a new file of mode 600; an existing file is never overwritten."""
        name = os.fspath(path)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise ConfigurationError(
                f"refusing to overwrite {name}: it exists (it may hold a key still needed)"
            ) from None
        except OSError as e:
            raise ConfigurationError(f"cannot create key file {name}: {e.strerror or e}") from None
        try:
            os.write(fd, (self.to_base64() + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- internals ------------------------------------------------------------------------------------------
    def _object_cipher(self, header: bytes) -> AESGCM:
        aead, hashes, hkdf = _crypto()
        salt = header[-32:]
        derived = hkdf(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=_OBJECT_KEY_LABEL + header)
        return cast("AESGCM", aead(derived.derive(self._material)))


def _describe(value: object) -> str:
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    return f"a {type(value).__name__}"


def _decode(text: str, source: str) -> bytes:
    s = "".join(text.split())
    if _HEX_KEY.fullmatch(s):
        return bytes.fromhex(s)
    raw: bytes | None = None
    if s and re.fullmatch(r"[A-Za-z0-9+/_-]+={0,2}", s):
        padded = s.rstrip("=") + "=" * (-len(s.rstrip("=")) % 4)
        try:
            raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != KEY_SIZE:
        got = "not base64 or hex" if raw is None else f"{len(raw)} bytes"
        raise ConfigurationError(
            f"the encryption key in {source} is not a {KEY_SIZE}-byte key written as base64 (44 characters) or "
            f"hex (64 digits): it decodes to {got}; "
            '`python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"` makes one'
        )
    return raw


def _crypto() -> tuple[Any, Any, Any]:
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    except ImportError:
        raise MissingDependency(
            'encryption needs the cryptography package: pip install "pgrecovery[encryption]"'
        ) from None
    return AESGCM, hashes, HKDF


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(index: int, final: bool) -> bytes:
    return index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def encrypted_size(plaintext_size: int, record_size: int = RECORD_SIZE) -> int:
    """How many bytes an object of ``plaintext_size`` takes encrypted (header, records and tags)."""
    records = plaintext_size // record_size + 1  # the final record is always shorter than a full one
    return HEADER_SIZE + plaintext_size + records * TAG_SIZE


def plaintext_size(stored_size: int, record_size: int = RECORD_SIZE) -> int:
    """The plaintext size of an intact encrypted object of ``stored_size`` bytes (written with ``record_size``)."""
    body = stored_size - HEADER_SIZE
    full, rest = divmod(body, record_size + TAG_SIZE)
    if body < TAG_SIZE or rest < TAG_SIZE:
        raise TamperedObject(f"an encrypted object of {stored_size} bytes cannot be intact: it was truncated")
    return full * record_size + rest - TAG_SIZE


# -- the header --------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Header:
    """What the 48 bytes in front of an encrypted object say."""

    version: int
    cipher: int
    record_size: int
    key_id: str
    raw: bytes = attrs.field(repr=False)


def parse_header(head: bytes, name: str = "object") -> Header:
    """Read an object's header; raise `EncryptionError` (naming ``name``) if it is not one this version writes."""
    if head[:4] != MAGIC:
        raise EncryptionError(
            f"{name} is not encrypted (it does not start with pgrecovery's encryption header): "
            "it was stored without encryption, or replaced"
        )
    if len(head) < HEADER_SIZE:
        raise TamperedObject(f"{name} is truncated inside its encryption header ({len(head)} bytes)")
    _magic, version, cipher, log2, _reserved, key_id, _salt = _HEADER.unpack(head[:HEADER_SIZE])
    if version != VERSION or cipher != CIPHER_AES256GCM_HKDF_SHA256:
        raise EncryptionError(
            f"{name} uses encryption format {version}/cipher {cipher}; this pgrecovery reads format "
            f"{VERSION}/cipher {CIPHER_AES256GCM_HKDF_SHA256}: upgrade pgrecovery (or the object is damaged)"
        )
    if not MIN_RECORD_LOG2 <= log2 <= MAX_RECORD_LOG2:
        raise TamperedObject(f"{name} has a damaged encryption header (record size 2**{log2}): it was altered")
    return Header(version=version, cipher=cipher, record_size=1 << log2, key_id=key_id.hex(), raw=head[:HEADER_SIZE])


def _new_header(key: EncryptionKey, record_size: int) -> bytes:
    log2 = record_size.bit_length() - 1
    if record_size != 1 << log2 or not MIN_RECORD_LOG2 <= log2 <= MAX_RECORD_LOG2:
        raise ConfigurationError(
            f"record size {record_size} is not a power of two between {1 << MIN_RECORD_LOG2} and {1 << MAX_RECORD_LOG2}"
        )
    key_id = bytes.fromhex(key.key_id)
    return _HEADER.pack(MAGIC, VERSION, CIPHER_AES256GCM_HKDF_SHA256, log2, 0, key_id, secrets.token_bytes(32))


def _check_key(header: Header, key: EncryptionKey, name: str) -> None:
    if header.key_id != key.key_id:
        raise WrongKey(
            f"{name} was encrypted with the key whose id is {header.key_id}, but the key given ({key.source}) "
            f"has id {key.key_id}: set {_WHERE} to the key with id {header.key_id}"
        )


# -- writing -----------------------------------------------------------------------------------------------------


class EncryptingWriter:
    """Encrypts what is written into another `ObjectWriter`; the object appears only on `commit`.

    ``commit()`` returns the *plaintext's* `StoredObject` (size and sha256 of what was written, which is what a
    `DecryptingReader` gives back); the inner writer's result (the stored, encrypted bytes) is in `stored`.
    """

    key: str

    def __init__(self, inner: ObjectWriter, key: EncryptionKey, *, record_size: int = RECORD_SIZE) -> None:
        self._inner = inner
        self.key = inner.key
        self.key_id = key.key_id
        self.stored: StoredObject | None = None
        self._record_size = record_size
        self._buf = bytearray()
        self._index = 0
        self._size = 0
        self._hash = hashlib.sha256()
        self._done = False
        try:  # the inner writer exists already: never leave its temporary object behind
            header = _new_header(key, record_size)
            self._cipher = key._object_cipher(header)
            inner.write(header)
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        if self._done:
            raise EncryptionError(f"write to {self.key!r} after it was committed or aborted")
        if not data:
            return
        self._hash.update(data)
        self._size += len(data)
        view = memoryview(data).cast("B")
        rs = self._record_size
        if self._buf:
            take = min(len(view), rs - len(self._buf))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) < rs:
                return
            self._seal(self._buf, final=False)
            self._buf = bytearray()
        while len(view) >= rs:
            self._seal(view[:rs], final=False)
            view = view[rs:]
        if view:
            self._buf += view

    def _seal(self, plain: bytes | bytearray | memoryview, *, final: bool) -> None:
        i = self._index
        self._inner.write(self._cipher.encrypt(_nonce(i), plain, _aad(i, final)))
        self._index = i + 1

    def commit(self) -> StoredObject:
        if self._done:
            raise EncryptionError(f"{self.key!r} was already committed or aborted")
        try:
            self._seal(self._buf, final=True)  # shorter than a record (possibly empty): marks the end
            self._buf = bytearray()
            self.stored = self._inner.commit()
        except BaseException:
            self.abort()
            raise
        self._done = True
        return StoredObject(key=self.key, size=self._size, sha256=self._hash.hexdigest())

    def abort(self) -> None:
        self._done = True
        self._buf = bytearray()
        self._inner.abort()

    def __enter__(self) -> EncryptingWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


# -- reading -----------------------------------------------------------------------------------------------------


def _read_exact(raw: BinaryIO, n: int) -> bytes:
    data = raw.read(n) or b""
    if len(data) == n or not data:
        return data
    parts, got = [data], len(data)
    while got < n:
        more = raw.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class DecryptingReader(io.RawIOBase):
    """A readable stream of an encrypted object's plaintext, authenticated record by record.

    The header is read (and the key checked: `WrongKey`) when the reader is made. A record that fails
    authentication raises `TamperedObject` before any byte of it is returned; so does an object that ends
    without its final record. The reader owns ``raw`` and closes it (also when it cannot be made).
    """

    def __init__(self, raw: BinaryIO, key: EncryptionKey, *, name: str = "object") -> None:
        super().__init__()
        self._raw = raw
        self.name = name
        try:
            self.header = parse_header(_read_exact(raw, HEADER_SIZE), name)
            _check_key(self.header, key, name)
            self._cipher = key._object_cipher(self.header.raw)
            self._invalid_tag = _invalid_tag()
        except BaseException:
            raw.close()
            raise
        self._chunk = self.header.record_size + TAG_SIZE
        self._index = 0
        self._plain = b""
        self._pos = 0
        self._eof = False

    @property
    def key_id(self) -> str:
        return self.header.key_id

    def readable(self) -> bool:
        return True

    def _next(self) -> bool:
        """Decrypt the next record into the buffer; False at the (authenticated) end."""
        if self._eof:
            return False
        i = self._index
        sealed = _read_exact(self._raw, self._chunk)
        if len(sealed) < TAG_SIZE:
            raise TamperedObject(
                f"{self.name} is truncated: it ends after {i} record(s) without its final record "
                "(restore from another backup or repository copy)"
            )
        final = len(sealed) < self._chunk
        try:
            plain = self._cipher.decrypt(_nonce(i), sealed, _aad(i, final))
        except self._invalid_tag:
            raise TamperedObject(
                f"{self.name} failed authentication at record {i}: it was altered, truncated or reordered after "
                "it was written (nothing of that record was used; restore from another backup or repository copy)"
            ) from None
        self._index = i + 1
        self._plain, self._pos, self._eof = plain, 0, final
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            return self.readall()
        while self._pos >= len(self._plain):
            if size == 0 or not self._next():
                return b""
        if self._pos == 0 and size >= len(self._plain):
            out = self._plain
            self._plain = b""
            return out
        out = self._plain[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        parts = [self._plain[self._pos :]]
        self._plain, self._pos = b"", 0
        while self._next():
            parts.append(self._plain)
        self._plain = b""
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            self._plain = b""
            self._raw.close()
        super().close()

    def __enter__(self) -> DecryptingReader:
        return self


# -- telling encrypted from plain ---------------------------------------------------------------------------------


class _Prefixed(io.RawIOBase):
    """Bytes already read from a stream that cannot seek, then the rest of the stream."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        super().__init__()
        self._head, self._raw = head, raw

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._raw.read(len(view)) or b""
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def plain_or_encrypted(stream: BinaryIO) -> tuple[Literal["plain", "encrypted"], BinaryIO]:
    """Whether ``stream`` holds an encrypted object, and a stream that reads it from its first byte again."""
    seekable = False
    try:
        seekable = stream.seekable()
        start = stream.tell() if seekable else 0
    except (OSError, ValueError):
        seekable = False
    head = _read_exact(stream, len(MAGIC))
    if seekable:
        stream.seek(start)
        again: BinaryIO = stream
    else:
        again = cast(BinaryIO, io.BufferedReader(_Prefixed(head, stream), RECORD_SIZE))
    return ("encrypted" if head == MAGIC else "plain"), again


def open_decrypted(
    stream: BinaryIO, key: EncryptionKey | None, *, name: str = "object", allow_plain: bool = False
) -> BinaryIO:
    """The readable plaintext of a stored object, whether or not it is encrypted, or a clear refusal.

    - encrypted, no key: `EncryptionError` ("encrypted with key id ...: give the key");
    - encrypted, a key: a `DecryptingReader` (`WrongKey` if it is not the key used);
    - plain, a key: `EncryptionError` unless ``allow_plain`` -- in an encrypted repository a plain object may
      have been put there by someone who wants it restored;
    - plain, no key: the stream itself.
    """
    kind, stream = plain_or_encrypted(stream)
    if kind == "encrypted":
        if key is None:
            head = _read_exact(stream, HEADER_SIZE)
            stream.close()
            try:
                key_id = parse_header(head, name).key_id
            except EncryptionError:
                key_id = "unknown (damaged header)"
            raise EncryptionError(
                f"{name} is encrypted (key id {key_id}): give the key through {_WHERE} "
                "(Python: EncryptionKey.from_env() / from_file())"
            )
        return cast(BinaryIO, io.BufferedReader(DecryptingReader(stream, key, name=name), RECORD_SIZE))
    if key is not None and not allow_plain:
        stream.close()
        raise EncryptionError(
            f"{name} is not encrypted although a key was given (the repository is encrypted): refusing to use it, "
            "as it may have been replaced; check how it got there"
        )
    return stream


def decrypt_bytes(data: bytes, key: EncryptionKey, *, name: str = "object") -> bytes:
    with DecryptingReader(cast(BinaryIO, io.BytesIO(data)), key, name=name) as r:
        return r.read()


def encrypt_bytes(data: bytes, key: EncryptionKey, *, record_size: int = RECORD_SIZE) -> bytes:
    sink = _MemorySink()
    w = EncryptingWriter(sink, key, record_size=record_size)
    w.write(data)
    w.commit()
    return b"".join(sink.parts)


class _MemorySink:
    """An `ObjectWriter` that keeps what it is given (for `encrypt_bytes`)."""

    key = "bytes"

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes, /) -> None:
        self.parts.append(bytes(data))

    def commit(self) -> StoredObject:
        data = b"".join(self.parts)
        return StoredObject(key=self.key, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def abort(self) -> None:
        self.parts.clear()

    def __enter__(self) -> _MemorySink:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        pass


__all__ = [
    "ENV_VAR",
    "HEADER_SIZE",
    "RECORD_SIZE",
    "DecryptingReader",
    "EncryptingWriter",
    "EncryptionKey",
    "Header",
    "decrypt_bytes",
    "encrypt_bytes",
    "encrypted_size",
    "key_id_of",
    "open_decrypted",
    "parse_header",
    "plain_or_encrypted",
    "plaintext_size",
]
