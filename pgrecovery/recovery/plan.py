"""Point-in-time recovery: `RecoveryTarget` says where to stop, `RecoveryPlan` chooses a base backup, proves the
archive can get there, then restores a data directory and (optionally) runs the recovery.

>>> plan = RecoveryPlan(repo, RecoveryTarget.time("2026-03-15 14:30:00+00"))     # doctest: +SKIP
>>> plan.validate()              # TargetUnreachable / WalGap naming the problem, before touching anything
>>> plan.restore("/var/lib/postgresql/restore")                                  # doctest: +SKIP
>>> with plan.run("/var/lib/postgresql/restore") as result:                      # doctest: +SKIP
...     result.cluster.query("select count(*) from orders", dbname="shop")      # stopped on leaving the block

A restored server does not archive WAL unless asked (``archive=True``, for a server that replaces the source):
a copy restored to look at must not write its new timeline into the source's repository.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import attrs

from .._walnames import HistoryEntry, history_name, parse_lsn
from ..cluster import LocalCluster, default_run_as
from ..errors import (
    AlreadyExists,
    ClusterError,
    ConfigurationError,
    PgRecoveryError,
    RestoreError,
    TargetUnreachable,
    WalGap,
)
from ..manifest import BackupManifest, PhysicalInfo
from ..physical.backup import chown_tree, lsn_value, restore_files, wal_file_name
from ..progress import ProgressCallback
from ..repository import Repository

log = logging.getLogger(__package__)  # one logger per area, whichever module of it logs

_TARGET_SETTINGS = (
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_target_action",
)

TargetKind = Literal["time", "xid", "name", "lsn", "immediate", "latest"]
Action = Literal["promote", "pause", "shutdown"]


def _restored_wal(cluster: LocalCluster) -> list[str]:
    """The WAL files the server says it restored from the archive, in order (from its log)."""
    if cluster.log_file is None or not cluster.log_file.exists():
        return []
    found = re.findall(r'restored log file "([0-9A-F]{24})" from archive', cluster.log_file.read_text(errors="replace"))
    return list(dict.fromkeys(found))


def _major(server_version: str) -> int | None:
    """The major version in a manifest's ``server_version`` ("15.18 (Debian ...)" -> 15), None if unknown."""
    found = re.match(r"\s*(\d+)", server_version)
    return int(found.group(1)) if found else None


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


def _given(value: str, what: str) -> str:
    """``value`` stripped; an empty or blank one is refused (it must never mean "the end of the archive")."""
    text = value.strip()
    if not text:
        raise ConfigurationError(
            f"the target {what} is empty: give one, or ask for the end of the archive with RecoveryTarget.latest()"
        )
    return text


def _archive_settings(archive: bool, settings: dict[str, object] | None) -> dict[str, object]:
    """The settings a restore writes after the recovery target: ``archive_mode = off`` unless ``archive``, then the
    caller's ``settings``. An archive_mode among them that says the opposite of ``archive`` is refused."""
    extra = dict(settings or {})
    asked = {k.lower(): v for k, v in extra.items()}.get("archive_mode")
    if asked is not None:
        off = str(asked).strip().lower() in ("off", "false", "0", "no")
        if archive and off:
            raise ConfigurationError(
                "settings ask for archive_mode = off but archive=True: pass archive=False to turn archiving off"
            )
        if not archive and not off:
            raise ConfigurationError(
                f"settings ask for archive_mode = {asked!r} but archive=False (the default) turns archiving off: "
                "pass archive=True to archive"
            )
    return extra if archive else {"archive_mode": "off", **extra}


def _aware(when: datetime | str) -> datetime:
    if isinstance(when, str):
        when = _given(when, "time")
    try:
        dt = datetime.fromisoformat(when.strip()) if isinstance(when, str) else when
    except ValueError:
        raise ConfigurationError(
            f"target time {when!r} is not a timestamp: write it as '2026-03-15 14:30:00+00' (ISO 8601, with a zone)"
        ) from None
    if dt.tzinfo is None:
        raise ConfigurationError(f"target time {when!s} has no time zone: add one, e.g. '+00' or 'Z'")
    return dt.astimezone(UTC)


def _one_of(choices: tuple[str, ...]) -> Any:
    """An attrs validator that refuses anything outside ``choices`` with a `ConfigurationError` naming them."""

    def check(_: object, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in choices:
            raise ConfigurationError(f"recovery target {attribute.name} {value!r}: use {', '.join(choices)}")

    return check


def _check_value(target: RecoveryTarget, _: attrs.Attribute[str | None], value: str | None) -> None:
    """A time, xid, name or LSN target carries a non-blank value; ``immediate`` and ``latest`` carry none."""
    if target.kind in ("immediate", "latest"):
        if value is not None:
            raise ConfigurationError(f"a target of {target.kind} takes no value (got {value!r})")
    elif value is None or not value.strip():
        raise ConfigurationError(
            f"the target {target.kind} is empty: give one, or ask for the end of the archive with "
            "RecoveryTarget.latest()"
        )


@attrs.frozen(kw_only=True)
class RecoveryTarget:
    """Where recovery stops. Build one with the class methods: ``RecoveryTarget.time("2026-03-15 14:30+00")``.

    Every kind but ``latest`` and ``immediate`` needs a value: an empty or blank one is a `ConfigurationError`,
    never a recovery to the end of the archive (that is asked for with ``RecoveryTarget.latest()``).
    """

    kind: TargetKind = attrs.field(validator=_one_of(get_args(TargetKind)))
    value: str | None = attrs.field(default=None, validator=_check_value)
    inclusive: bool = True
    action: Action = attrs.field(default="promote", validator=_one_of(get_args(Action)))
    timeline: str = "latest"

    @classmethod
    def time(cls, when: datetime | str, *, inclusive: bool = True, action: Action = "promote") -> RecoveryTarget:
        return cls(kind="time", value=_aware(when).isoformat(), inclusive=inclusive, action=action)

    @classmethod
    def xid(cls, xid: int | str, *, inclusive: bool = True, action: Action = "promote") -> RecoveryTarget:
        xid = _given(str(xid), "xid")
        if not xid.isdigit():
            raise ConfigurationError(f"target xid {xid!r} is not a transaction id (a positive integer)")
        return cls(kind="xid", value=str(xid), inclusive=inclusive, action=action)

    @classmethod
    def name(cls, name: str, *, action: Action = "promote") -> RecoveryTarget:
        """A restore point (``pg_create_restore_point``), matched exactly as given."""
        _given(name, "restore point name")
        return cls(kind="name", value=name, action=action)

    @classmethod
    def lsn(cls, lsn: str, *, inclusive: bool = True, action: Action = "promote") -> RecoveryTarget:
        lsn = _given(lsn, "LSN")
        try:
            lsn_value(lsn)
        except ValueError:
            raise ConfigurationError(f"target LSN {lsn!r} is not of the form X/Y (hexadecimal)") from None
        return cls(kind="lsn", value=lsn.upper(), inclusive=inclusive, action=action)

    @classmethod
    def immediate(cls, *, action: Action = "promote") -> RecoveryTarget:
        """Stop as soon as the base backup is consistent."""
        return cls(kind="immediate", action=action)

    @classmethod
    def latest(cls) -> RecoveryTarget:
        """Replay everything the archive holds."""
        return cls(kind="latest")

    def with_timeline(self, timeline: str | int) -> RecoveryTarget:
        """The same target on timeline ``latest``, ``current`` or a number."""
        value = str(timeline)
        if value not in ("latest", "current") and not value.isdigit():
            raise ConfigurationError(f"target timeline {timeline!r}: use latest, current or a timeline number")
        return attrs.evolve(self, timeline=value)

    def settings(self) -> dict[str, str]:
        """The recovery_target_* settings for postgresql.auto.conf."""
        out = {"recovery_target_timeline": self.timeline}
        if self.kind == "latest":
            return out
        if self.kind == "immediate":
            out["recovery_target"] = "immediate"
        else:
            assert self.value is not None
            out[f"recovery_target_{self.kind}"] = self.value
            if self.kind != "name":
                out["recovery_target_inclusive"] = "on" if self.inclusive else "off"
        out["recovery_target_action"] = self.action
        return out

    def describe(self) -> str:
        if self.kind in ("latest", "immediate"):
            return self.kind
        return f"{self.kind} {self.value}" + ("" if self.inclusive or self.kind == "name" else " (exclusive)")


@attrs.frozen(kw_only=True)
class RecoveryResult:
    """What a recovery reached, and how long it took (the recovery time, for RTO reporting).

    ``incident`` is the record of the run (see `Incident`); ``incident_key`` where it was stored in the
    repository (None when it could not be written there: the recovery itself is not failed for that).

    The recovered server is left running (unless ``run(keep_running=False)`` or a ``shutdown`` action):
    ``cluster`` is it as a `LocalCluster` (connect, query, promote), ``stop()`` stops it, and the result is a
    context manager that stops it on leaving the block. Stopping never removes the data directory:

    >>> with plan.run("/srv/restore") as result:                                     # doctest: +SKIP
    ...     print(result.cluster.query("select count(*) from orders", dbname="shop"))
    """

    backup_id: str
    target: str
    pgdata: str
    port: int
    state: str  # promoted, paused, shut down
    end_lsn: str | None
    timeline: int | None
    last_transaction_time: str | None
    restore_seconds: float
    recovery_seconds: float
    wal_restored: int = 0
    incident: Incident | None = None
    incident_key: str | None = None
    _cluster: LocalCluster | None = attrs.field(default=None, alias="cluster", repr=False, eq=False)

    @property
    def cluster(self) -> LocalCluster:
        """The recovered server (running or not) as a `LocalCluster`, on ``port``."""
        return self._cluster if self._cluster is not None else LocalCluster(data_dir=Path(self.pgdata), port=self.port)

    def stop(self, mode: str = "fast") -> None:
        """Stop the recovered server (a no-op when it is not running); its data directory stays."""
        self.cluster.stop(mode=mode)

    def __enter__(self) -> RecoveryResult:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, filter=lambda a, _: a.name != "_cluster")


@attrs.frozen(kw_only=True)
class IncidentStep:
    """One step of a recovery, with when it ended."""

    at: datetime
    step: str
    detail: str = ""


@attrs.frozen(kw_only=True)
class Incident:
    """The record of one recovery, for the incident report: what was asked, what was used, what came back, and
    the timeline of steps. Stored as JSON under ``incidents/`` in the repository."""

    id: str
    host: str
    target: str
    backup_id: str
    backup_finished_at: datetime
    pgdata: str
    started_at: datetime
    finished_at: datetime
    state: str
    end_lsn: str | None
    timeline: int | None
    last_transaction_time: str | None
    wal_restored: int
    first_wal: str | None
    last_wal: str | None
    restore_seconds: float
    recovery_seconds: float
    steps: tuple[IncidentStep, ...]

    def to_dict(self) -> dict[str, Any]:
        def value(_: Any, __: Any, v: Any) -> Any:
            return v.isoformat() if isinstance(v, datetime) else v

        return attrs.asdict(self, value_serializer=value)


class RecoveryPlan:
    """A plan to recover a cluster from ``repo`` to ``target``: which backup, and whether the archive suffices."""

    def __init__(
        self,
        repo: Repository,
        target: RecoveryTarget | None = None,
        *,
        backup_id: str | None = None,
        python: str | None = None,
    ) -> None:
        self.repo = repo
        self.target = target or RecoveryTarget.latest()
        self.python = python
        self._histories: dict[int, list[HistoryEntry] | None] = {}  # timeline -> its archived history, read once
        self.backup = self._choose(backup_id)

    # -- choosing and validating -------------------------------------------------------------------------------
    def _choose(self, backup_id: str | None) -> BackupManifest:
        if backup_id is not None:
            m = self.repo.get(backup_id, "base")
            self._check_before_target(m)
            if not self._on_target_timeline(m):
                raise TargetUnreachable(
                    f"backup {m.id} (timeline {self._phys(m).timeline}) is not on the history of target timeline "
                    f"{self.target.timeline}: choose a backup of that timeline or its ancestors"
                )
            return m
        backups = [m for m in self.repo.backups("base") if m.physical is not None]
        if not backups:
            raise TargetUnreachable(f"no base backup in {self.repo.display_url}: take one with BaseBackup first")
        t = self.target
        on_history = [m for m in backups if self._on_target_timeline(m)]
        if not on_history:
            raise TargetUnreachable(
                f"no base backup in {self.repo.display_url} lies on the history of target timeline {t.timeline} "
                "(each was taken on another timeline, or after that timeline branched off): choose another timeline"
            )
        backups = on_history
        if t.kind in ("latest", "immediate"):
            return backups[-1]
        if t.kind == "name":
            return backups[0]  # a restore point's position is unknown until replay: the oldest backup reaches any
        fits = [m for m in backups if self._ends_before_target(m)]
        if not fits:
            oldest = backups[0]
            raise TargetUnreachable(
                f"target {t.describe()} is before the end of the oldest base backup {oldest.id} "
                f"({self._end_point(oldest)}): nothing in {self.repo.display_url} can recover to it"
            )
        return fits[-1]

    def _phys(self, m: BackupManifest) -> PhysicalInfo:
        assert m.physical is not None
        return m.physical

    def _history(self, timeline: int) -> list[HistoryEntry] | None:
        """``timeline``'s history entries as archived (None when its history file is not in the archive)."""
        if timeline not in self._histories:
            from ..wal.archiver import WalArchiver

            archiver = WalArchiver(self.repo)
            if timeline > 1 and not archiver.objects(history_name(timeline)):
                self._histories[timeline] = None
            else:  # a damaged history file raises: never follow another timeline than the archive says
                self._histories[timeline] = archiver.history(timeline)
        return self._histories[timeline]

    def _target_timeline(self, m: BackupManifest) -> int:
        """The timeline recovery from ``m`` follows: the target's number, the backup's own for ``current``, and for
        ``latest`` the last of the consecutive history files after the backup's timeline (PostgreSQL's rule)."""
        wanted = self.target.timeline
        if wanted.isdigit():
            return int(wanted)
        tli = self._phys(m).timeline
        while wanted == "latest" and self._history(tli + 1) is not None:
            tli += 1
        return tli

    def _on_target_timeline(self, m: BackupManifest) -> bool:
        """Whether recovery from ``m`` can follow the target's timeline: the backup's timeline must be in that
        timeline's history and must not have branched off before the backup ended (else PostgreSQL refuses it)."""
        phys, target_tli = self._phys(m), self._target_timeline(m)
        if target_tli == phys.timeline:
            return True
        switch = next(
            (e.switch_lsn for e in self._history(target_tli) or [] if e.parent_timeline == phys.timeline), None
        )
        return switch is not None and lsn_value(phys.stop_lsn) <= parse_lsn(switch)

    def _end_point(self, m: BackupManifest) -> str:
        t = self.target
        if t.kind == "lsn":
            return f"LSN {self._phys(m).stop_lsn}"
        if t.kind == "xid":
            return f"next xid {self._phys(m).next_xid}"
        return f"{m.finished_at.isoformat()}"

    def _ends_before_target(self, m: BackupManifest) -> bool:
        t, phys = self.target, self._phys(m)
        assert t.value is not None
        if t.kind == "time":
            return m.finished_at <= datetime.fromisoformat(t.value)
        if t.kind == "lsn":
            return lsn_value(phys.stop_lsn) <= lsn_value(t.value)
        if t.kind == "xid":
            return phys.next_xid is not None and phys.next_xid <= int(t.value)
        return True

    def _check_before_target(self, m: BackupManifest) -> None:
        if m.physical is None:
            raise ConfigurationError(f"backup {m.id} is not a base backup")
        if self.target.kind in ("time", "lsn", "xid") and not self._ends_before_target(m):
            raise TargetUnreachable(
                f"target {self.target.describe()} is before the end of backup {m.id} ({self._end_point(m)}): "
                "choose an older backup or a later target"
            )

    def validate(self) -> None:
        """Raise `TargetUnreachable` or `WalGap` (naming the missing segment) unless the target is reachable."""
        from ..wal.archiver import WalArchiver

        t, phys = self.target, self._phys(self.backup)
        if t.kind == "time" and t.value is not None and datetime.fromisoformat(t.value) > datetime.now(UTC):
            raise TargetUnreachable(f"target time {t.value} is in the future")
        archiver = WalArchiver(self.repo)
        last = None
        if t.kind == "lsn" and t.value is not None:
            last = wal_file_name(phys.timeline, t.value, phys.wal_segment_size)
        elif t.kind == "immediate":
            last = phys.stop_wal
        # along the timeline recovery will follow ("latest" resolved now: the segment holding an LSN on a newer
        # timeline is not on the backup's, and the backup's timeline may end before it)
        follow = self._target_timeline(self.backup)
        if t.timeline == "latest":  # a newer timeline whose history file is gone would be passed over silently
            for tli in archiver.timelines():
                if tli > follow and not archiver.objects(history_name(tli)):
                    raise WalGap(
                        f"{history_name(tli)} is missing from {self.repo.display_url}: timeline {tli} holds WAL that "
                        f"recovery cannot follow without it; put the file back, or choose target timeline {follow}"
                    )
        if last is not None:
            last = f"{follow:08X}{last[8:]}"
        missing = archiver.missing(phys.start_wal, last, timeline=follow)
        if missing:
            raise WalGap(
                f"WAL segment {missing[0]} is missing from {self.repo.display_url}"
                + (f" ({len(missing)} missing in all)" if len(missing) > 1 else "")
                + f": recovery from backup {self.backup.id} cannot pass it; "
                f"the latest reachable point is just before it"
            )
        archived = archiver.list_archived().get(phys.timeline, [])
        if phys.stop_wal not in {n for n in archived}:
            raise WalGap(
                f"WAL segment {phys.stop_wal}, needed to make backup {self.backup.id} consistent, is not archived"
            )

    # -- restoring and running ---------------------------------------------------------------------------------
    def restore(
        self,
        pgdata: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        delta: bool = False,
        standby: bool = False,
        archive: bool = False,
        run_as: str | None = None,
        tablespace_map: dict[str, str] | None = None,
        settings: dict[str, object] | None = None,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """Materialise the data directory and configure recovery (restore_command, target, recovery.signal).

        Refuses a non-empty ``pgdata`` unless ``overwrite`` (emptied first) or ``delta`` (only files whose
        checksum differs from the backup are rewritten, files the backup lacks are removed). The directory ends
        0700 and owned by the server's OS user (``run_as``; default ``postgres`` when we are root).

        ``archive`` says whether the restored server archives WAL. By default (False) it does not
        (``archive_mode = off``): a copy restored to look at, test or rescue from never writes its new timeline
        into the source's repository, where a later recovery to timeline ``latest`` would follow it. With True
        it keeps the backup's own archiving settings (the source's ``archive_command``, into the source's
        repository): what a restore that replaces the production server wants, so that its new timeline is
        archived. ``settings`` are written last (``postgresql.auto.conf``); an ``archive_mode`` among them that
        contradicts ``archive`` is refused (`ConfigurationError`, before anything is written).
        """
        from ..wal.archiver import restore_command

        conf_extra = _archive_settings(archive, settings)
        self.validate()
        target = Path(pgdata).absolute()
        who = run_as if run_as is not None else default_run_as()
        if target.exists() and any(target.iterdir()) and not delta:
            if not overwrite:
                raise ConfigurationError(
                    f"{target} is not empty: choose an empty directory, or pass overwrite=True (empty it) or "
                    "delta=True (rewrite only the files that differ)"
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
                f"cannot create {target}: {e.strerror or e}: choose a writable directory"
            ) from None
        try:
            restore_files(self.repo, self.backup, target, tablespace_map=tablespace_map, delta=delta, progress=progress)
            for leftover in ("postmaster.pid", "recovery.signal", "standby.signal"):
                (target / leftover).unlink(missing_ok=True)
            cluster = LocalCluster(data_dir=target, run_as=who)
            # a backup of a cluster that was itself recovered carries that recovery's target in postgresql.auto.conf:
            # drop every recovery_target* setting first, or PostgreSQL sees two targets (or stops at the old one)
            conf: dict[str, object | None] = dict.fromkeys(_TARGET_SETTINGS)
            conf["restore_command"] = restore_command(self.repo.url, self.python, key_file=self._key_file())
            conf.update(self.target.settings())
            conf.update(conf_extra)
            cluster.configure(**conf)
            (target / ("standby.signal" if standby else "recovery.signal")).touch(mode=0o600)
            spaces = [
                Path((tablespace_map or {}).get(o, loc)) for o, loc in self._phys(self.backup).tablespaces.items()
            ]
            chown_tree([target, *spaces], who)
        except BaseException as e:
            if not delta:  # a half-restored data directory must not be mistaken for a restored one: remove it
                _remove_partial(target, created)
            if isinstance(e, OSError):
                raise RestoreError(
                    f"restoring backup {self.backup.id} into {target} failed: {e.strerror or e}"
                    + (f" ({e.filename})" if e.filename else "")
                    + ("" if delta else "; what was written is removed")
                    + ": free space there or choose another directory"
                ) from None
            raise
        return target

    def _key_file(self) -> str | None:
        """How the recovering server's restore_command gets an encrypted repository's key: its file's path on the
        command line, or (a key from the environment) the same variable, which the server inherits."""
        key = self.repo.encryption
        if key is None or key.file is not None:
            return None if key is None else key.file
        if os.environ.get("PGRECOVERY_ENCRYPTION_KEY", "").strip():
            return None
        raise ConfigurationError(
            f"the repository is encrypted with a key {key.source}: the recovering server's restore_command cannot "
            "get it; use a key file (EncryptionKey.from_file, --encryption-key-file) or PGRECOVERY_ENCRYPTION_KEY"
        )

    def run(
        self,
        pgdata: str | os.PathLike[str],
        *,
        restore: bool = True,
        overwrite: bool = False,
        delta: bool = False,
        port: int | None = None,
        ports: int | Iterable[int] | None = None,
        timeout: float = 600,
        keep_running: bool = True,
        archive: bool = False,
        settings: dict[str, object] | None = None,
        tablespace_map: dict[str, str] | None = None,
        record_incident: bool = True,
        progress: ProgressCallback | None = None,
    ) -> RecoveryResult:
        """Restore (unless ``restore=False``), start the server, wait until the target is reached and the action
        applied, and report what was recovered. The server keeps running unless ``keep_running=False``: stop it
        with ``result.stop()``, or use the result as a context manager (see `RecoveryResult`).

        ``port`` is where the server listens (default: a free port); ``ports`` confines it, and any port it moves
        to when that one is taken at start, to a range (``range(55000, 55100)``).

        ``archive`` (default False: the recovered server does not archive) and ``settings`` are as in
        `restore`; with ``restore=False`` the data directory is started as it was prepared, and they must be
        left at their defaults.

        The run is recorded as an `Incident` (the timeline of its steps, the backup used, the WAL replayed, the
        position reached, the recovery time), returned in the result and, with ``record_incident``, stored as
        ``incidents/<id>.json`` in the repository."""
        import psycopg

        if not restore and (archive or settings):
            raise ConfigurationError(
                "archive= and settings= apply when run() restores: with restore=False pass them to restore()"
            )
        _archive_settings(archive, settings)  # a contradiction is refused before anything is written

        started_at = datetime.now(UTC)
        steps: list[IncidentStep] = []

        def step(what: str, detail: str = "") -> None:
            steps.append(IncidentStep(at=datetime.now(UTC), step=what, detail=detail))

        step("plan", f"target {self.target.describe()}; backup {self.backup.id}")
        major = _major(self.backup.server_version)
        if major is not None:  # before anything is written: this host must have the backup's server programs
            from ..pgtools import find_tool

            find_tool("pg_ctl", major=major)
        t0 = time.monotonic()
        if restore:
            self.restore(
                pgdata,
                overwrite=overwrite,
                delta=delta,
                archive=archive,
                settings=settings,
                tablespace_map=tablespace_map,
                progress=progress,
            )
            step("restore", f"base backup {self.backup.id} restored into {Path(pgdata).absolute()}")
        restored = time.monotonic() - t0
        t1 = time.monotonic()
        cluster = LocalCluster(data_dir=Path(pgdata), port=port or 0, ports=ports, major=major)
        action = self.target.action if self.target.kind != "latest" else "promote"
        try:
            cluster.start(timeout=int(timeout))
        except ClusterError as e:
            log = cluster.log_file.read_text(errors="replace") if cluster.log_file and cluster.log_file.exists() else ""
            # with action=shutdown the server may reach the target and stop before pg_ctl sees it ready
            if not (action == "shutdown" and "recovery stopping" in log and not cluster.is_running()):
                raise self._failure(str(e)) from None
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if not cluster.is_running():
                if action == "shutdown":
                    state = "shut down"
                    break
                raise self._failure(cluster.log_tail())
            try:
                with psycopg.connect(cluster.conninfo(), autocommit=True, connect_timeout=5) as conn:
                    row = conn.execute("select pg_is_in_recovery()").fetchone()
                    in_recovery = bool(row and row[0])
                    pause = ""
                    if in_recovery and action == "pause":  # the pause state exists only during recovery
                        row = conn.execute("select pg_get_wal_replay_pause_state()").fetchone()
                        pause = str(row[0]) if row else ""
            except psycopg.OperationalError:
                time.sleep(0.1)
                continue
            if not in_recovery:
                state = "promoted"
                break
            if action == "pause" and pause == "paused":
                state = "paused"
                break
            time.sleep(0.1)
        else:
            raise TargetUnreachable(f"recovery did not reach {self.target.describe()} within {timeout:.0f} s")
        recovered = time.monotonic() - t1
        wal = _restored_wal(cluster)
        step(
            "replay", f"{len(wal)} WAL file(s) restored from the archive" + (f", {wal[0]} .. {wal[-1]}" if wal else "")
        )
        end_lsn = timeline = last_time = None
        if state != "shut down":
            with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
                row = conn.execute(
                    "select coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text, "
                    "(select timeline_id from pg_control_checkpoint()), pg_last_xact_replay_timestamp()::text"
                ).fetchone()
            if row:
                end_lsn, timeline, last_time = row[0], int(row[1]), row[2]
            if not keep_running:
                cluster.stop()
        step(state, f"at {end_lsn} on timeline {timeline}" if end_lsn else "")
        incident = Incident(
            id=f"{started_at:%Y%m%dT%H%M%SZ}-recovery",
            host=socket.gethostname(),
            target=self.target.describe(),
            backup_id=self.backup.id,
            backup_finished_at=self.backup.finished_at,
            pgdata=str(Path(pgdata).absolute()),
            started_at=started_at,
            finished_at=datetime.now(UTC),
            state=state,
            end_lsn=end_lsn,
            timeline=timeline,
            last_transaction_time=last_time,
            wal_restored=len(wal),
            first_wal=wal[0] if wal else None,
            last_wal=wal[-1] if wal else None,
            restore_seconds=round(restored, 3),
            recovery_seconds=round(recovered, 3),
            steps=tuple(steps),
        )
        return RecoveryResult(
            backup_id=self.backup.id,
            target=self.target.describe(),
            pgdata=str(Path(pgdata).absolute()),
            port=cluster.port,
            state=state,
            end_lsn=end_lsn,
            timeline=timeline,
            last_transaction_time=last_time,
            restore_seconds=round(restored, 3),
            recovery_seconds=round(recovered, 3),
            wal_restored=len(wal),
            incident=incident,
            incident_key=self._record(incident) if record_incident else None,
            cluster=cluster,
        )

    def _record(self, incident: Incident) -> str | None:
        """Store the incident record in the repository; a failure here is logged, not raised."""
        import json

        key = f"incidents/{incident.id}.json"
        text = json.dumps(incident.to_dict(), indent=2, sort_keys=True).encode()
        for n in range(100):
            candidate = key if n == 0 else f"incidents/{incident.id}-{n}.json"
            try:
                self.repo.put_bytes(candidate, text)
                return candidate
            except AlreadyExists:
                continue
            except PgRecoveryError as e:
                log.warning("could not store the incident record in %s: %s", self.repo.display_url, e)
                return None
        return None

    def _failure(self, log: str) -> TargetUnreachable:
        if "recovery ended before configured recovery target was reached" in log:
            return TargetUnreachable(
                f"the archive ends before {self.target.describe()}: recovery from {self.backup.id} replayed "
                f"everything archived without reaching it{log}"
            )
        sep = "" if log.startswith("\n") else ": "
        return TargetUnreachable(f"recovery to {self.target.describe()} failed{sep}{log}")
