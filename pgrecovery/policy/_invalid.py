"""The error a policy's parts raise for a bad value, with the key it belongs to."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from ..errors import ConfigurationError


class _Invalid(ConfigurationError):
    """A bad value, with the key it belongs to (so that `load_policy` can point at its line)."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key


def _unknown(key: str, where: str, valid: Iterable[str]) -> _Invalid:
    names = sorted(valid)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return _Invalid(key, f"unknown option {key!r} {where}: {hint}valid ones are {', '.join(names)}")
