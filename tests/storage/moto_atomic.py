"""moto's S3 server with its conditional writes made atomic, as S3's are.

moto checks ``If-None-Match: *`` and then stores the object, in two steps that concurrent requests interleave:
two conditional PUTs of one key can both succeed, which S3 never allows (one gets 412). The tests that claim names
with conditional writes from many threads at once (backup ids) would then fail because of the emulator. Here each
PUT and each POST (which completes multipart uploads, with the same check) of an object runs under one lock.

Run as ``python moto_atomic.py -H 127.0.0.1 -p PORT`` (moto.server's arguments).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from moto.s3.responses import S3Response
from moto.server import main

_lock = threading.Lock()


def _serialised(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _lock:
            return method(*args, **kwargs)

    return locked


S3Response.put_object = _serialised(S3Response.put_object)  # type: ignore[method-assign]
S3Response._key_response_post = _serialised(S3Response._key_response_post)  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
