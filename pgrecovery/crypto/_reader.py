"""Reading an encrypted object: authenticated record by record, and telling encrypted objects from plain ones."""

from __future__ import annotations

import io
from typing import Any, BinaryIO, Literal, cast

from ..errors import EncryptionError, TamperedObject
from ._format import HEADER_SIZE, MAGIC, RECORD_SIZE, TAG_SIZE, aad, check_key, invalid_tag, nonce, parse_header
from ._keys import WHERE, EncryptionKey


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
            check_key(self.header, key, name)
            self._cipher = key._object_cipher(self.header.raw)
            self._invalid_tag = invalid_tag()
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
            plain = self._cipher.decrypt(nonce(i), sealed, aad(i, final))
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
                f"{name} is encrypted (key id {key_id}): give the key through {WHERE} "
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
