"""Retrying storage operations: which errors deserve another try (`is_transient`), how patiently (`RetryPolicy`),
and `Retry`, the one loop that does it for a repository and words a lasting failure naming the object and where.

Hand-written rather than stamina or tenacity: the loop is short, and what it does besides retrying (a confirm
step after a lost answer, "already exists" as a conflict, one log line per retry naming the object, failures
worded with the repository's redacted URL) would be as long around either library.
"""

from __future__ import annotations

import errno
import logging
import random
import time
import warnings
from collections.abc import Callable
from typing import Final, TypeVar

import attrs

from .._redact import scrub
from ..errors import AlreadyExists, PgRecoveryError, StorageError

log = logging.getLogger(__package__)  # one logger per area, whichever module of it logs
_T = TypeVar("_T")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often and how patiently a storage operation is retried after a transient error.

    At most ``attempts`` tries; before try *n* (n >= 2) a pause of ``base_delay * 2**(n-2)`` seconds, capped at
    ``max_delay``, of which a random half is jitter (so that parallel workers do not retry in step). The drivers
    retry single requests themselves; this policy wraps whole operations (a listing, an existence check, a read, a
    delete, the completion of an upload) and only errors that `is_transient` accepts.
    """

    attempts: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    base_delay: float = attrs.field(default=0.25, validator=attrs.validators.ge(0))
    max_delay: float = attrs.field(default=8.0, validator=attrs.validators.ge(0))

    def delay(self, attempt: int) -> float:
        """The pause before try ``attempt + 1`` (``attempt`` counts from 1)."""
        step = min(self.max_delay, self.base_delay * float(2 ** (attempt - 1)))
        return step / 2 + random.uniform(0, step / 2)  # noqa: S311 - jitter, not cryptography


# errno values that drivers use for throttling, busy servers and broken connections (s3fs maps SlowDown, 503 and
# 409 to EBUSY and 500 to EREMOTEIO).
_TRANSIENT_ERRNO: Final = frozenset(
    {
        errno.EAGAIN,
        errno.EBUSY,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.EPIPE,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        getattr(errno, "EREMOTEIO", 121),
    }
)
_TRANSIENT_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})
# Connection-level exception classes of the drivers' HTTP stacks, by name (importing them would load the drivers).
_TRANSIENT_NAMES: Final = frozenset(
    {
        # aiohttp (s3fs, gcsfs, adlfs)
        "ClientConnectionError",
        "ClientOSError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ClientConnectorError",
        # botocore (s3fs)
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ResponseStreamingError",
        # azure-core (adlfs)
        "ServiceRequestError",
        "ServiceResponseError",
        "IncompleteReadError",
        # google-auth / requests (gcsfs)
        "TransportError",
        "ChunkedEncodingError",
    }
)
# error codes in an S3 answer's body worth retrying whatever the status: ConditionalRequestConflict (409) is
# S3's answer to two conditional writes of one key at the same moment; the retry then learns who won (412)
_TRANSIENT_CODES: Final = frozenset({"ConditionalRequestConflict", "SlowDown", "RequestTimeout"})
_PERMANENT: Final = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is worth retrying: throttling, a 5xx answer, a dropped connection.

    Missing objects, refusals (permission, precondition) and pgrecovery's own errors are never transient.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        if isinstance(current, PgRecoveryError) or isinstance(current, _PERMANENT):  # noqa: SIM101
            return False
        if isinstance(current, ConnectionError | TimeoutError):
            return True
        if isinstance(current, OSError) and current.errno in _TRANSIENT_ERRNO:
            return True
        if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(current).__mro__):
            return True
        response = getattr(current, "response", None)  # botocore's ClientError, which s3fs keeps as the cause
        if isinstance(response, dict) and response.get("Error", {}).get("Code") in _TRANSIENT_CODES:
            return True
        for attr in ("status_code", "status", "code"):
            with warnings.catch_warnings():  # some clients deprecate one of these names (urllib3: code)
                warnings.simplefilter("ignore", DeprecationWarning)
                value = getattr(current, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value in _TRANSIENT_STATUS:
                return True
        current = current.__cause__ or current.__context__
    return False


def reason(e: BaseException) -> str:
    """What went wrong, in one line (a permission or a full disk said plainly)."""
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied ({e.filename or e})"
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return "no space left on device"
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text and not isinstance(e, OSError) else text or type(e).__name__


@attrs.frozen
class Retry:
    """How one repository retries its operations and words their failures.

    ``where`` is the repository's URL without credentials; ``secrets`` are the values of its storage options
    that must never appear in a message.
    """

    policy: RetryPolicy
    where: str
    secrets: tuple[str, ...] = ()

    def reason(self, e: BaseException) -> str:
        """`reason`, with the repository's secrets scrubbed out."""
        return scrub(reason(e), self.secrets)

    def failure(self, what: str, key: str, e: BaseException, attempts: int = 1) -> StorageError:
        """The `StorageError` for a lasting failure to ``what`` ``key`` (a `StorageError` is kept as it is)."""
        if isinstance(e, StorageError):
            return e
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        return StorageError(f"cannot {what} {key!r} in {self.where}{tries}: {self.reason(e)}")

    def conflict(self, key: str) -> AlreadyExists:
        """The refusal for a name that another writer took while this one was writing."""
        return AlreadyExists(f"refusing to overwrite {key!r}: it appeared in {self.where} during the write")

    def __call__(self, what: str, key: str, op: Callable[[], _T], *, confirm: Callable[[], bool] | None = None) -> _T:
        """``op()``, retried on transient errors; a lasting error becomes a `StorageError` naming key and repo.

        ``confirm`` (for writes): after a transient failure, a retry that meets "already exists" asks it whether
        the first attempt landed after all (its answer was lost) before calling that a conflict.
        ``FileNotFoundError`` passes through for the caller to interpret.
        """
        policy = self.policy
        failed_before = False
        for attempt in range(1, policy.attempts + 1):
            try:
                return op()
            except PgRecoveryError:
                raise
            except FileNotFoundError as e:
                if confirm is None:
                    raise
                if failed_before and confirm():
                    return None  # type: ignore[return-value]  # writes return nothing of interest
                raise self.failure(what, key, e, attempt) from e
            except FileExistsError:
                if failed_before and confirm is not None and confirm():
                    return None  # type: ignore[return-value]
                raise self.conflict(key) from None
            except Exception as e:
                if not is_transient(e) or attempt == policy.attempts:
                    raise self.failure(what, key, e, attempt) from e
                failed_before = True
                pause = policy.delay(attempt)
                log.info(
                    "%s %s in %s: %s; retrying in %.2f s (attempt %d of %d)",
                    what, key, self.where, self.reason(e), pause, attempt + 1, policy.attempts,
                )  # fmt: skip
                time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover
