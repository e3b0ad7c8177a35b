"""Writing an encrypted object: records sealed as the bytes come, into another writer."""

from __future__ import annotations

from .._objects import HashingWriter, ObjectWriter, StoredObject
from ..errors import EncryptionError
from ._format import RECORD_SIZE, aad, new_header, nonce
from ._keys import EncryptionKey


class EncryptingWriter(HashingWriter):
    """Encrypts what is written into another `ObjectWriter`; the object appears only on `commit`.

    ``commit()`` returns the *plaintext's* `StoredObject` (size and sha256 of what was written, which is what a
    `DecryptingReader` gives back); the inner writer's result (the stored, encrypted bytes) is in `stored`.
    A ``with`` block commits on success and aborts on an exception (`HashingWriter`'s).
    """

    def __init__(self, inner: ObjectWriter, key: EncryptionKey, *, record_size: int = RECORD_SIZE) -> None:
        super().__init__(inner.key)
        self._inner = inner
        self.key_id = key.key_id
        self.stored: StoredObject | None = None
        self._record_size = record_size
        self._buf = bytearray()
        self._index = 0
        try:  # the inner writer exists already: never leave its temporary object behind
            header = new_header(key, record_size)
            self._cipher = key._object_cipher(header)
            inner.write(header)
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        if self._done:
            raise EncryptionError(f"write to {self.key!r} after it was committed or aborted")
        super().write(data)

    def _write_raw(self, data: bytes | bytearray | memoryview) -> None:
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
        self._inner.write(self._cipher.encrypt(nonce(i), plain, aad(i, final)))
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
        return self._result()

    def abort(self) -> None:
        self._done = True
        self._buf = bytearray()
        self._inner.abort()


def encrypt_bytes(data: bytes, key: EncryptionKey, *, record_size: int = RECORD_SIZE) -> bytes:
    sink = _MemorySink()
    w = EncryptingWriter(sink, key, record_size=record_size)
    w.write(data)
    w.commit()
    return b"".join(sink.parts)


class _MemorySink(HashingWriter):
    """An `ObjectWriter` that keeps what it is given (for `encrypt_bytes`)."""

    def __init__(self) -> None:
        super().__init__("bytes")
        self.parts: list[bytes] = []

    def _write_raw(self, data: bytes | bytearray | memoryview) -> None:
        self.parts.append(bytes(data))

    def commit(self) -> StoredObject:
        return self._result()

    def abort(self) -> None:
        self._done = True
        self.parts.clear()
