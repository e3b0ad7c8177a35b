"""The directory a base backup is restored into: made ready (empty, emptied, or kept for a delta restore), and
what a failed restore wrote removed again."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ConfigurationError


def _remove_partial(target: Path, created: bool) -> None:
    """Best effort: remove ``target`` (we created it) or what was written into it (it was empty)."""
    if created:
        shutil.rmtree(target, ignore_errors=True)
        return
    for child in list(target.iterdir()) if target.is_dir() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _prepare_directory(target: Path, *, overwrite: bool, delta: bool) -> bool:
    """Make ``target`` ready to restore into (emptied with ``overwrite``, kept with ``delta``, else it must be
    empty); whether it was created here."""
    if target.exists() and any(target.iterdir()) and not delta:
        if not overwrite:
            raise ConfigurationError(
                f"{target} is not empty: choose an empty directory, or pass overwrite=True (empty it) or "
                "delta=True (rewrite only the files that differ)",
                path=target,
            )
        for child in target.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise ConfigurationError(
            f"cannot create {target}: {e.strerror or e}: choose a writable directory", path=target
        ) from None
    return created


__all__ = ["_prepare_directory", "_remove_partial"]
