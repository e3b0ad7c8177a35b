"""Master keys: where they come from (environment, key file, code), their id, and the per-object key derived
from them (HKDF-SHA256 over the object's header). A key's bytes never appear in a message, a repr or a manifest."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import stat
from typing import TYPE_CHECKING, Any, Final, cast

import attrs

from .._fsutil import write_atomic
from ..errors import ConfigurationError, MissingDependency

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENV_VAR: Final = "PGRECOVERY_ENCRYPTION_KEY"
FILE_ENV_VAR: Final = "PGRECOVERY_ENCRYPTION_KEY_FILE"
KEY_FILE_OPTION: Final = "--encryption-key-file"
KEY_SIZE: Final = 32
_KEY_ID_LABEL: Final = b"pgrecovery key id v1\x00"
_OBJECT_KEY_LABEL: Final = b"pgrecovery object key v1\x00"
_HEX_KEY: Final = re.compile(r"[0-9a-fA-F]{64}")
_MAX_KEY_FILE: Final = 4096
WHERE: Final = f"{ENV_VAR} or {KEY_FILE_OPTION}"  # where a key is given, for messages


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
        try:  # complete or absent, never over an existing file
            write_atomic(name, (self.to_base64() + "\n").encode("ascii"), mode=0o600, overwrite=False)
        except FileExistsError:
            raise ConfigurationError(
                f"refusing to overwrite {name}: it exists (it may hold a key still needed)"
            ) from None
        except OSError as e:
            raise ConfigurationError(f"cannot create key file {name}: {e.strerror or e}") from None

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
