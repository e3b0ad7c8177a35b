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

from ._format import (
    CIPHER_AES256GCM_HKDF_SHA256,
    HEADER_SIZE,
    MAGIC,
    MAX_RECORD_LOG2,
    MIN_RECORD_LOG2,
    RECORD_SIZE,
    TAG_SIZE,
    VERSION,
    Header,
    encrypted_size,
    parse_header,
    plaintext_size,
)
from ._keys import ENV_VAR, FILE_ENV_VAR, KEY_FILE_OPTION, KEY_SIZE, EncryptionKey, key_id_of
from ._reader import DecryptingReader, decrypt_bytes, open_decrypted, plain_or_encrypted
from ._writer import EncryptingWriter, encrypt_bytes

__all__ = [
    "CIPHER_AES256GCM_HKDF_SHA256",
    "ENV_VAR",
    "FILE_ENV_VAR",
    "HEADER_SIZE",
    "KEY_FILE_OPTION",
    "KEY_SIZE",
    "MAGIC",
    "MAX_RECORD_LOG2",
    "MIN_RECORD_LOG2",
    "RECORD_SIZE",
    "TAG_SIZE",
    "VERSION",
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
