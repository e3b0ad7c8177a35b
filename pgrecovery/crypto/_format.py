"""The record format: constants, sizes, and the 48-byte header (see the package docstring for the layout)."""

from __future__ import annotations

import secrets
import struct
from typing import TYPE_CHECKING, Final

import attrs

from ..errors import ConfigurationError, EncryptionError, TamperedObject, WrongKey
from ._keys import WHERE

if TYPE_CHECKING:
    from ._keys import EncryptionKey

MAGIC: Final = b"PGRE"
VERSION: Final = 1
CIPHER_AES256GCM_HKDF_SHA256: Final = 1
HEADER_SIZE: Final = 48
TAG_SIZE: Final = 16
RECORD_SIZE: Final = 1 << 20
MIN_RECORD_LOG2: Final = 12  # 4 KiB
MAX_RECORD_LOG2: Final = 24  # 16 MiB: a damaged header cannot make a reader allocate more
_HEADER: Final = struct.Struct(">4sBBBB8s32s")


def invalid_tag() -> type[Exception]:
    """cryptography's ``InvalidTag`` (imported when an object is decrypted)."""
    from cryptography.exceptions import InvalidTag

    return InvalidTag


def nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def aad(index: int, final: bool) -> bytes:
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


def new_header(key: EncryptionKey, record_size: int) -> bytes:
    log2 = record_size.bit_length() - 1
    if record_size != 1 << log2 or not MIN_RECORD_LOG2 <= log2 <= MAX_RECORD_LOG2:
        raise ConfigurationError(
            f"record size {record_size} is not a power of two between {1 << MIN_RECORD_LOG2} and {1 << MAX_RECORD_LOG2}"
        )
    key_id = bytes.fromhex(key.key_id)
    return _HEADER.pack(MAGIC, VERSION, CIPHER_AES256GCM_HKDF_SHA256, log2, 0, key_id, secrets.token_bytes(32))


def check_key(header: Header, key: EncryptionKey, name: str) -> None:
    if header.key_id != key.key_id:
        raise WrongKey(
            f"{name} was encrypted with the key whose id is {header.key_id}, but the key given ({key.source}) "
            f"has id {key.key_id}: set {WHERE} to the key with id {header.key_id}"
        )
