"""Names a package loads on first use (PEP 562), from a table of ``name -> module``: the public API without the
cost of importing every module (``import pgrecovery`` loads nothing heavy)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, table: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``table[name]`` is the submodule (relative to the package) that
    defines ``name``; the value is cached in the package's ``namespace`` so that it is looked up once."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    return __getattr__


__all__ = ["lazy_getattr"]
