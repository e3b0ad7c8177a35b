"""A small HTTP/1.1 proxy between the library and a store emulator that breaks the network on purpose.

Each request is read whole from the client, then (by the proxy's plan, seeded) either forwarded as it is or hit
by one fault:

* ``reset``: the connection is reset instead of an answer, the request never forwarded (the store never saw it);
* ``lost``: the request is forwarded and executed, then the connection is reset instead of the answer (the write
  happened, the client cannot know);
* ``cut``: half the answer is sent, then the connection is reset (a read dropped mid-body);
* ``stall``: the answer is held back for ``stall`` seconds (past a short read timeout, the client gives up);
* ``503`` / ``500``: the store's own throttling / internal error answer, without forwarding.

Every request goes upstream on a connection of its own (``Connection: close``), so that a fault never leaves a
half-used upstream connection behind. ``Expect: 100-continue`` is answered by the proxy itself. ``down()`` refuses
connections for a while, as a store that restarts would.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

KINDS = ("reset", "lost", "cut", "stall", "503", "500")


def _xml(code: str, message: str) -> bytes:
    return f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()


def _json(code: int, message: str) -> bytes:
    return f'{{"error": {{"code": {code}, "message": "{message}"}}}}'.encode()


_XML, _JSON = "application/xml", "application/json"
_ERRORS = {  # (status line, content type, body) per store dialect and kind
    "s3": {
        "503": ("503 Slow Down", _XML, _xml("SlowDown", "Reduce your request rate.")),
        "500": ("500 Internal Server Error", _XML, _xml("InternalError", "We encountered an internal error.")),
    },
    "azure": {
        "503": ("503 Server Busy", _XML, _xml("ServerBusy", "The server is busy.")),
        "500": ("500 Internal Server Error", _XML, _xml("InternalError", "The server encountered an internal error.")),
    },
    "gcs": {
        "503": ("503 Service Unavailable", _JSON, _json(503, "Backend Error")),
        "500": ("500 Internal Server Error", _JSON, _json(500, "Internal Error")),
    },
}


@dataclass
class Plan:
    """Which requests get a fault: each with probability ``rate``, of a kind drawn from ``kinds``; the first
    ``spare`` requests pass untouched (the client's set-up)."""

    rate: float = 0.2
    kinds: tuple[str, ...] = KINDS
    seed: int = 20261205
    spare: int = 0
    stall: float = 3.0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def pick(self, seen: int) -> str | None:
        if seen < self.spare or self.rng.random() >= self.rate:
            return None
        return self.rng.choice(self.kinds)


class FaultProxy:
    """Listens on 127.0.0.1:``port`` and forwards to 127.0.0.1:``upstream`` (see the module)."""

    def __init__(self, upstream: int, dialect: str, plan: Plan | None = None) -> None:
        self.upstream, self.dialect = upstream, dialect
        self.plan = plan or Plan(rate=0.0)
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self, seconds: float) -> None:
        """Refuse (reset) every connection for ``seconds``: the store is restarting."""
        self._down_until = time.monotonic() + seconds

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()

    # -- serving -----------------------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(120)
            buffered = b""
            while True:
                if time.monotonic() < self._down_until:
                    self.injected["down"] += 1
                    return _reset(conn)
                try:
                    head, body, buffered, keep = _read_request(conn, buffered)
                except (OSError, ValueError):
                    return None
                if head is None:
                    return None
                with self._lock:
                    kind = self.plan.pick(self.requests)
                    self.requests += 1
                    if kind:
                        self.injected[kind] += 1
                if not self._answer(conn, head, body, kind) or not keep:
                    return None

    def _answer(self, conn: socket.socket, head: bytes, body: bytes, kind: str | None) -> bool:
        """Answer one request (with ``kind``'s fault); False when the client connection is finished."""
        if kind == "reset":
            return bool(_reset(conn))
        if kind in ("503", "500"):
            status, ctype, text = _ERRORS[self.dialect][kind]
            conn.sendall(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(text)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + text
            )
            return False
        try:
            response = self._forward(head, body)
        except OSError:
            return bool(_reset(conn))
        if kind == "lost":
            return bool(_reset(conn))
        if kind == "cut":
            conn.sendall(response[: max(1, len(response) // 2)])
            return bool(_reset(conn))
        if kind == "stall":
            time.sleep(self.plan.stall)
        conn.sendall(response)
        return False  # the answer says Connection: close (see _forward)

    def _forward(self, head: bytes, body: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.upstream), timeout=120) as up:
            up.sendall(_close_head(head) + body)
            chunks = []
            while data := up.recv(1 << 16):
                chunks.append(data)
        return _close_head(b"".join(chunks), response=True)


def _reset(conn: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees "connection reset", not an orderly end."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    except OSError:
        pass


def _read_request(conn: socket.socket, buffered: bytes) -> tuple[bytes | None, bytes, bytes, bool]:
    """(head, body, what was read past this request, keep-alive) of the next request; head None at EOF."""
    data = buffered
    while b"\r\n\r\n" not in data:
        more = conn.recv(1 << 16)
        if not more:
            return None, b"", b"", False
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    if headers.get(b"expect", b"").lower() == b"100-continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        lines = [line for line in lines if not line.lower().startswith(b"expect:")]
    keep = headers.get(b"connection", b"").lower() != b"close"
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        body, rest = _read_chunked(conn, rest)
        lines = [line for line in lines if not line.lower().startswith(b"transfer-encoding:")]
        lines.append(b"Content-Length: " + str(len(body)).encode())
    else:
        length = int(headers.get(b"content-length", b"0") or 0)
        while len(rest) < length:
            more = conn.recv(1 << 16)
            if not more:
                raise ValueError("the client left mid-body")
            rest += more
        body, rest = rest[:length], rest[length:]
    return b"\r\n".join(lines) + b"\r\n\r\n", body, rest, keep


def _read_chunked(conn: socket.socket, data: bytes) -> tuple[bytes, bytes]:
    body = b""
    while True:
        while b"\r\n" not in data:
            data += conn.recv(1 << 16)
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(data) < size + 2:
            data += conn.recv(1 << 16)
        body, data = body + data[:size], data[size + 2 :]
        if size == 0:
            return body, data


def _close_head(message: bytes, *, response: bool = False) -> bytes:
    """``message`` with its Connection header set to close (one request per upstream connection)."""
    head, sep, rest = message.partition(b"\r\n\r\n")
    if not sep:
        return message
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith((b"connection:", b"keep-alive:"))]
    lines.append(b"Connection: close")
    if response and lines[0].split(b" ")[1:2] == [b"100"]:  # a 100 Continue the proxy already answered
        return _close_head(rest, response=True)
    return b"\r\n".join(lines) + b"\r\n\r\n" + rest
