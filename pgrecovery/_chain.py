"""A base backup as the chain it restores from: the full backup, the incremental backups on it, and for every file
the stored layers that rebuild it (its whole content once, then the blocks each later link changed), oldest first.

Restore, verify and the tools that keep or delete backups all read a chain the same way, from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import attrs

from .errors import ManifestError, PgRecoveryError
from .manifest import BackupManifest, MemberEntry


class _Backups(Protocol):
    def get(self, backup_id: str, kind: str | None = None) -> BackupManifest: ...


@attrs.frozen
class Layer:
    """One stored piece of a file: ``member`` in bundle ``bundle`` of backup ``source``."""

    source: str
    bundle: str
    member: MemberEntry

    @property
    def whole(self) -> bool:
        return self.member.blocks is None


def load_chain(repo: _Backups, manifest: BackupManifest) -> dict[str, BackupManifest]:
    """``manifest`` and every backup it draws on (its parents up to the full backup, and the backups its members
    are stored in), by id, oldest first. A missing or damaged link raises, naming it."""
    order = [manifest]
    seen = {manifest.id}
    cur = manifest
    while cur.physical is not None and cur.physical.parent is not None:
        parent = cur.physical.parent
        if parent in seen:
            raise ManifestError(f"backup {cur.id}: its chain of parents loops back to {parent}")
        cur = _link(repo, manifest, parent)
        order.append(cur)
        seen.add(cur.id)
    extra = sorted({x.source for m in order for x in (m.physical.members if m.physical else ())} - seen)
    chain = {m.id: m for m in [*(_link(repo, manifest, i) for i in extra), *reversed(order)]}
    return dict(sorted(chain.items(), key=lambda kv: kv[1].started_at))


def _link(repo: _Backups, manifest: BackupManifest, backup_id: str) -> BackupManifest:
    try:
        return repo.get(backup_id, "base")
    except PgRecoveryError as e:
        raise type(e)(f"backup {backup_id}, which holds files of backup {manifest.id}, is not available: {e}") from None


def file_layers(chain: Mapping[str, BackupManifest], manifest: BackupManifest) -> dict[str, list[Layer]]:
    """For each file of ``manifest``: the layers that rebuild it, the whole content first."""
    assert manifest.physical is not None
    by_backup: dict[str, dict[str, MemberEntry]] = {}

    def members(backup_id: str) -> dict[str, MemberEntry]:
        if backup_id not in by_backup:
            phys = chain[backup_id].physical
            by_backup[backup_id] = {x.path: x for x in (phys.members if phys else ())}
        return by_backup[backup_id]

    out: dict[str, list[Layer]] = {}
    for member in manifest.physical.members:
        layers: list[Layer] = []
        cur: MemberEntry | None = member
        while cur is not None and cur.blocks is not None:
            layers.append(Layer(cur.source, cur.bundle, cur))
            owner = chain.get(cur.source)
            parent = owner.physical.parent if owner is not None and owner.physical is not None else None
            if parent is None or parent not in chain:
                raise ManifestError(
                    f"backup {cur.source} stores {member.path} as changed blocks but its parent is not in the chain"
                )
            cur = members(parent).get(member.path)
        if cur is None:
            raise ManifestError(f"{member.path}: no earlier backup in the chain of {manifest.id} has the whole file")
        layers.append(Layer(cur.source, cur.bundle, cur))
        out[member.path] = layers[::-1]
    return out


def stored_pieces(layers: Iterable[list[Layer]]) -> set[tuple[str, str]]:
    """The (backup id, bundle role) pairs that hold the given layers."""
    return {(x.source, x.bundle) for stack in layers for x in stack}
