"""Secrets out of every text pgrecovery shows: the one place that knows what a secret looks like.

Standard library only (errors, logs and the WAL commands' fast path import it). Used for error messages (every
`PgRecoveryError` is redacted when it is made), log records, the status table, JSON output and storage errors.

>>> redact("host=db1 password=s3cret dbname=shop")
'host=db1 password=*** dbname=shop'
>>> redact("postgresql://app:s3cret@db1/shop")
'postgresql://app:***@db1/shop'
>>> scrub("cannot read k: AccountKey=abc123;x", ["hunter2-value"])
'cannot read k: AccountKey=***;x'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

REDACTED: Final = "***"

# Names whose value is a secret, in "name=value" / "name: value" pairs: libpq conninfo, query strings (signed
# URLs), Azure connection strings, storage options.
_SECRET_NAMES: Final = (
    r"password|passwd|pgpassword|sslpassword|secret|secret_key|aws_secret_access_key|access_token|token"  # noqa: S105
    r"|accountkey|sharedaccesssignature|signature|sig|x-amz-signature|x-amz-credential|x-amz-security-token"
)
_PAIR: Final = re.compile(
    rf"""(?P<name>\b(?:{_SECRET_NAMES})["']?)(?P<sep>\s*[=:]\s*)(?P<value>'(?:[^'\\]|\\.)*'|"[^"]*"|[^\s;&,'"]+)""",
    re.IGNORECASE,
)
# Userinfo of a URL: scheme://user:password@host -> scheme://user:***@host
_USERINFO: Final = re.compile(r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^/\s:@]*):(?P<pw>[^@\s/]*)@", re.IGNORECASE)
# A field (a log record's extra, a JSON key) whose whole value is a secret. Not "key": that is an object's name.
_SECRET_FIELD: Final = re.compile(rf"^(?:{_SECRET_NAMES})$|password|secret|token|credential", re.IGNORECASE)
# A storage or policy option that holds a credential (s3fs' key and secret, adlfs' account_key and
# connection_string, gcsfs' token, sas tokens, passwords).
_SECRET_OPTION: Final = re.compile(
    r"key|secret|token|password|passwd|credential|sas|connection_string|signature", re.IGNORECASE
)
_EMBEDDED: Final = re.compile(r"(AccountKey|SharedAccessSignature)=([^;]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with passwords, keys, tokens, signatures and URL passwords replaced by ``***``."""
    text = _USERINFO.sub(rf"\g<head>:{REDACTED}@", text)
    return _PAIR.sub(rf"\g<name>\g<sep>{REDACTED}", text)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`redact`, and every one of the given secret values (say, a repository's storage options) replaced too."""
    for value in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return redact(text)


def is_secret_option(name: str) -> bool:
    """Whether a storage or policy option called ``name`` holds a credential (``key``, ``secret``, ``token``...)."""
    return bool(_SECRET_OPTION.search(name))


def secret_values(options: Mapping[str, Any]) -> list[str]:
    """The string values among (nested) options whose names say they are secrets, for `scrub`; an Azure
    connection string's key and signature count on their own too."""
    found: list[str] = []
    for name, value in options.items():
        if isinstance(value, Mapping):
            found += secret_values(value)
        elif isinstance(value, str) and len(value) >= 6 and is_secret_option(str(name)):
            found.append(value)
            found += [m.group(2) for m in _EMBEDDED.finditer(value)]
    return sorted(set(found), key=len, reverse=True)


def redact_value(value: Any, key: str = "") -> Any:
    """A structure (dicts, lists, strings) with secrets redacted; values under secret-looking keys hidden whole."""
    if key and _SECRET_FIELD.search(key) and value not in (None, ""):
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): redact_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def redact_url(url: str) -> str:
    """The URL without user info or query (which may carry credentials); local paths as they are."""
    parts = urlsplit(url)
    if not parts.scheme or parts.scheme == "file":
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


__all__ = ["REDACTED", "is_secret_option", "redact", "redact_url", "redact_value", "scrub", "secret_values"]
