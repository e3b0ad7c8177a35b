"""What counts as transient, how retries are paced, and what error texts keep secret (no emulator needed)."""

from __future__ import annotations

import errno
import uuid
from typing import Any

import fsspec
import pytest
from flaky_fs import ServerDisconnectedError, ServiceUnavailable

from pgrecovery import AlreadyExists, Repository, StorageError
from pgrecovery._redact import scrub
from pgrecovery.storage import RetryPolicy, is_transient


@pytest.mark.parametrize(
    "error",
    [
        ConnectionResetError(errno.ECONNRESET, "reset"),
        TimeoutError("read timed out"),
        OSError(errno.EBUSY, "SlowDown"),  # how s3fs reports throttling and 503
        OSError(121, "InternalError"),  # s3fs: a 500 answer (EREMOTEIO)
        ServerDisconnectedError("gone"),  # aiohttp's, recognised by name
        ServiceUnavailable("503"),  # an exception carrying an HTTP status
    ],
)
def test_transient_errors(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError("no such key"),
        PermissionError("AccessDenied"),
        FileExistsError("precondition failed"),
        OSError(errno.EINVAL, "bad request"),
        ValueError("a bug"),
        AlreadyExists("a pgrecovery refusal"),
    ],
)
def test_permanent_errors(error: BaseException) -> None:
    assert not is_transient(error)


def test_a_cause_makes_an_error_transient() -> None:
    outer = RuntimeError("driver wrapper")
    outer.__cause__ = ConnectionResetError("reset")
    assert is_transient(outer)


def test_s3s_answer_to_two_conditional_writes_at_once_is_retried() -> None:
    """Real S3 answers 409 ConditionalRequestConflict when two conditional writes of one key race (moto never
    does); s3fs keeps botocore's error as the cause of an EIO OSError. The retry then learns who won (412)."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    def answer(code: str, status: int) -> BaseException:
        body = {"Error": {"Code": code, "Message": "..."}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return translate_boto_error(ClientError(body, "PutObject"))  # type: ignore[arg-type]

    assert is_transient(answer("ConditionalRequestConflict", 409))
    assert not is_transient(answer("PreconditionFailed", 412))
    assert not is_transient(answer("AccessDenied", 403))


def test_pauses_grow_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(attempts=8, base_delay=0.5, max_delay=4.0)
    for attempt in range(1, 8):
        step = min(4.0, 0.5 * 2 ** (attempt - 1))
        pauses = {policy.delay(attempt) for _ in range(50)}
        assert all(step / 2 <= p <= step for p in pauses)
        assert len(pauses) > 1  # jittered


class _Failing:
    """Raises the queued errors, then delegates."""

    def __init__(self, real: Any, errors: list[BaseException]) -> None:
        self.real, self.errors, self.calls = real, errors, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.real(*args, **kwargs)


def _memory_repo() -> Repository:
    return Repository(
        fs=fsspec.filesystem("memory"),
        root=f"/retry-{uuid.uuid4().hex[:8]}",
        retry_policy=RetryPolicy(attempts=4, base_delay=0, max_delay=0),
    )


def test_transient_failures_are_retried_until_success(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _memory_repo()
    repo.put_bytes("k", b"v")
    failing = _Failing(repo.fs.exists, [TimeoutError("t"), OSError(errno.EBUSY, "SlowDown")])
    monkeypatch.setattr(repo.fs, "exists", failing)
    assert repo.exists("k")
    assert failing.calls == 3


def test_permanent_failures_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _memory_repo()
    failing = _Failing(repo.fs.find, [PermissionError(errno.EACCES, "AccessDenied")])
    monkeypatch.setattr(repo.fs, "find", failing)
    with pytest.raises(StorageError, match=r"cannot list '/' in memory://retry-\w+: permission denied"):
        repo.list_keys()
    assert failing.calls == 1


def test_retries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _memory_repo()
    failing = _Failing(repo.fs.ls, [ConnectionResetError("reset")] * 10)
    monkeypatch.setattr(repo.fs, "ls", failing)
    with pytest.raises(StorageError, match=r"cannot list 'wal' in memory://retry-\w+ \(after 4 attempts\): reset"):
        repo.children("wal")
    assert failing.calls == 4


def test_a_read_failing_midway_resumes_where_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _memory_repo()
    data = bytes(range(256)) * 4096
    repo.put_bytes("obj", data)
    opened = repo.fs.open

    def open_flaky(*args: Any, **kwargs: Any) -> Any:
        f = opened(*args, **kwargs)
        f.read = _Failing(f.read, [ConnectionResetError("reset"), TimeoutError("t")])
        return f

    monkeypatch.setattr(repo.fs, "open", open_flaky)
    monkeypatch.setattr(repo, "capabilities", type(repo.capabilities)(object_store=True))  # read as a store
    with repo.open("obj") as f:
        got = f.read(1000) + f.read()
    assert got == data


def test_scrub_removes_credentials() -> None:
    text = (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5;EndpointSuffix=x "
        "https://h/b/o?X-Amz-Credential=AKIA&X-Amz-Signature=0123abcd&x=1 https://a/c?sv=1&sig=ZZZ%3D "
        "token hunter2-value"
    )
    out = scrub(text, ["hunter2-value"])
    for secret in ("c2VjcmV0a2V5", "0123abcd", "AKIA", "ZZZ%3D", "hunter2-value"):
        assert secret not in out
    assert "AccountName=acct" in out
    assert "x=1" in out


def test_storage_errors_never_show_the_options_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Repository("memory://scrub-test", retry_policy=RetryPolicy(attempts=1))
    monkeypatch.setattr(repo, "_secrets", ("s3cr3t-value",))
    failing = _Failing(repo.fs.find, [OSError(errno.EIO, "signature for s3cr3t-value does not match")])
    monkeypatch.setattr(repo.fs, "find", failing)
    with pytest.raises(StorageError) as caught:
        repo.list_keys()
    assert "s3cr3t-value" not in str(caught.value)
    assert "signature for *** does not match" in str(caught.value)
