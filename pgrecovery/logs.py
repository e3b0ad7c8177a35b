"""Logging set-up for the command and for applications: plain text or one JSON object per line, secrets redacted.

Standard library only (``wal-push`` must start fast), so any entry point can call `configure_logging` first.

>>> configure_logging("INFO", json=True)                                     # doctest: +SKIP
>>> logging.getLogger("pgrecovery.x").info("stored %s", "k", extra={"size": 10})   # doctest: +SKIP
{"ts": "2026-11-24T10:15:00.120Z", "level": "INFO", "logger": "pgrecovery.x", "message": "stored k", "size": 10}
"""

from __future__ import annotations

import json as _json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from ._redact import redact, redact_value

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class RedactingFormatter(logging.Formatter):
    """The usual text format, with secrets redacted from the message and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, then every field
    passed with ``extra=`` (secrets redacted), and ``exc`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out: dict[str, Any] = {
            "ts": ts,
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_") and name not in out:
                out[name] = redact_value(value, name)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return _json.dumps(out, default=str, ensure_ascii=False)


class _Handler(logging.StreamHandler[TextIO]):
    """Marks the handler `configure_logging` installed, so that a second call replaces it."""


def configure_logging(
    level: int | str = logging.WARNING, json: bool = False, *, stream: TextIO | None = None
) -> logging.Handler:
    """Send log records at ``level`` and above to ``stream`` (default: stderr), as text or JSON lines.

    The handler goes on the root logger and replaces the one an earlier call installed (other handlers are left
    alone: call it instead of `logging.basicConfig`). Secrets are redacted in both formats. Returns the handler.
    """
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            from .errors import ConfigurationError

            raise ConfigurationError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        level = number
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _Handler):
            root.removeHandler(old)
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json else RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level)
    return handler


__all__ = ["JsonFormatter", "RedactingFormatter", "configure_logging", "redact", "redact_value"]
