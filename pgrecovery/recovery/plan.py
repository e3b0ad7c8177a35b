"""Point-in-time recovery: `RecoveryTarget` says where to stop, `RecoveryPlan` chooses a base backup, proves the
archive can get there, then restores a data directory and (optionally) runs the recovery.

>>> plan = RecoveryPlan(repo, RecoveryTarget.time("2026-03-15 14:30:00+00"))     # doctest: +SKIP
>>> plan.validate()              # TargetUnreachable / WalGap naming the problem, before touching anything
>>> plan.restore("/var/lib/postgresql/restore")                                  # doctest: +SKIP
>>> with plan.run("/var/lib/postgresql/restore") as result:                      # doctest: +SKIP
...     result.cluster.query("select count(*) from orders", dbname="shop")      # stopped on leaving the block

A restored server does not archive WAL unless asked (``archive=True``, for a server that replaces the source):
a copy restored to look at must not write its new timeline into the source's repository.

The target lives in `pgrecovery.recovery.target`, running a recovery in `pgrecovery.recovery.run`; their public
names are importable from here too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from .._walnames import HistoryEntry, history_name, parse_lsn, segment_for_lsn
from ..cluster import LocalCluster, check_data_dir_major, default_run_as, require_server_programs
from ..errors import ConfigurationError, RestoreError, TargetUnreachable, WalGap
from ..manifest import BackupManifest, PhysicalInfo
from ..physical.restore import chown_tree, restore_files
from ..progress import ProgressCallback
from ..repository import Repository
from ..wal.commands import restore_command
from ..wal.index import WalIndex
from ..wal.restore_points import RestorePoint
from ._points import PointSearch, check_backup, choose_backup
from ._target_dir import _prepare_directory, _remove_partial
from .run import EarlyWorker, Incident, IncidentStep, Journal, RecoveryResult, RecoveryRun, recover, server_major
from .target import Action, RecoveryTarget, TargetKind

__all__ = [
    "Action",
    "Incident",
    "IncidentStep",
    "RecoveryPlan",
    "RecoveryResult",
    "RecoveryTarget",
    "TargetKind",
]

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
        self.restore_point: RestorePoint | None = None
        """For a name target: the occurrence of the restore point recovery stops at (LSN, timeline, time, and
        ``source``: ``recorded`` by pgrecovery, or found in the archived ``wal``), found before anything is written."""
        self.backup = self._choose(backup_id)

    # -- choosing and validating -------------------------------------------------------------------------------
    def _choose(self, backup_id: str | None) -> BackupManifest:
        if backup_id is not None:
            m = self.repo.get(backup_id, "base")
            self._check_before_target(m)
            if not self._on_target_timeline(m):
                raise TargetUnreachable(
                    f"backup {m.id} (timeline {self._phys(m).timeline}) is not on the history of target timeline "
                    f"{self.target.timeline}: choose a backup of that timeline or its ancestors",
                    backup_id=m.id,
                    target=self.target.describe(),
                )
            if self.target.kind == "name":
                self.restore_point = check_backup(self._search([m]), m)
            return m
        backups = [m for m in self.repo.backups("base") if m.physical is not None]
        if not backups:
            raise TargetUnreachable(
                f"no base backup in {self.repo.display_url}: take one with BaseBackup first",
                target=self.target.describe(),
            )
        t = self.target
        on_history = [m for m in backups if self._on_target_timeline(m)]
        if not on_history:
            raise TargetUnreachable(
                f"no base backup in {self.repo.display_url} lies on the history of target timeline {t.timeline} "
                "(each was taken on another timeline, or after that timeline branched off): choose another timeline",
                target=t.describe(),
            )
        backups = on_history
        if t.kind in ("latest", "immediate"):
            return backups[-1]
        if t.kind == "name":  # where the point lies is known before anything is written: recorded, or in the WAL
            return self._choose_for_name(backups)
        fits = [m for m in backups if self._ends_before_target(m)]
        if not fits:
            oldest = backups[0]
            raise TargetUnreachable(
                f"target {t.describe()} is before the end of the oldest base backup {oldest.id} "
                f"({self._end_point(oldest)}): nothing in {self.repo.display_url} can recover to it",
                backup_id=oldest.id,
                target=t.describe(),
            )
        return fits[-1]

    def _choose_for_name(self, backups: list[BackupManifest]) -> BackupManifest:
        """The newest of ``backups`` that reaches the restore point, searched along the timeline each recovery
        follows (one search per timeline: with target timeline ``current`` each backup follows its own)."""
        groups: dict[int, list[BackupManifest]] = {}
        for m in reversed(backups):
            groups.setdefault(self._target_timeline(m), []).insert(0, m)
        found, refusals = [], []
        for group in groups.values():  # the group of the newest backup first
            try:
                found.append(choose_backup(self._search(group), group))
            except TargetUnreachable as e:
                refusals.append(e)
        if not found:
            raise refusals[0]
        chosen, self.restore_point = max(found, key=lambda pair: backups.index(pair[0]))
        return chosen

    def _search(self, backups: list[BackupManifest]) -> PointSearch:
        """The search for the target's restore point along the timeline recovery from the newest of ``backups``
        follows, back to the start of the oldest backup on that history."""
        newest = self._phys(backups[-1])
        timeline = self._target_timeline(backups[-1])
        on_history = [b for b in self.repo.backups("base") if b.physical is not None and self._on_target_timeline(b)]
        first = min((self._phys(b).start_wal[8:] for b in [*on_history, *backups]), default=newest.start_wal[8:])
        assert self.target.value is not None
        return PointSearch(
            self.repo,
            self.target.value,
            timeline=timeline,
            history=self._history(timeline) or [],
            first_segment=f"{timeline:08X}{first}",
            segment_size=newest.wal_segment_size,
            system_identifier=newest.system_identifier,
        )

    def _phys(self, m: BackupManifest) -> PhysicalInfo:
        assert m.physical is not None
        return m.physical

    def _history(self, timeline: int) -> list[HistoryEntry] | None:
        """``timeline``'s history entries as archived (None when its history file is not in the archive)."""
        if timeline not in self._histories:
            index = WalIndex(self.repo)
            if timeline > 1 and not index.objects(history_name(timeline)):
                self._histories[timeline] = None
            else:  # a damaged history file raises: never follow another timeline than the archive says
                self._histories[timeline] = index.history(timeline)
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
        return switch is not None and parse_lsn(phys.stop_lsn) <= parse_lsn(switch)

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
            return parse_lsn(phys.stop_lsn) <= parse_lsn(t.value)
        if t.kind == "xid":
            return phys.next_xid is not None and phys.next_xid <= int(t.value)
        return True

    def _check_before_target(self, m: BackupManifest) -> None:
        if m.physical is None:
            raise ConfigurationError(f"backup {m.id} is not a base backup", backup_id=m.id)
        if self.target.kind in ("time", "lsn", "xid") and not self._ends_before_target(m):
            raise TargetUnreachable(
                f"target {self.target.describe()} is before the end of backup {m.id} ({self._end_point(m)}): "
                "choose an older backup or a later target",
                backup_id=m.id,
                target=self.target.describe(),
            )

    def validate(self) -> None:
        """Raise `TargetUnreachable` or `WalGap` (naming the missing segment) unless the target is reachable."""
        t, phys = self.target, self._phys(self.backup)
        if t.kind == "time" and t.value is not None and datetime.fromisoformat(t.value) > datetime.now(UTC):
            raise TargetUnreachable(f"target time {t.value} is in the future", target=t.describe())
        archive = WalIndex(self.repo)
        fields = {"backup_id": self.backup.id, "target": t.describe()}
        last = None
        if t.kind == "lsn" and t.value is not None:
            last = segment_for_lsn(t.value, phys.timeline, phys.wal_segment_size)
        elif t.kind == "immediate":
            last = phys.stop_wal
        elif self.restore_point is not None:  # the segment holding the point's record
            last = segment_for_lsn(self.restore_point.position - 1, phys.timeline, phys.wal_segment_size)
        # along the timeline recovery will follow ("latest" resolved now: the segment holding an LSN on a newer
        # timeline is not on the backup's, and the backup's timeline may end before it)
        follow = self._target_timeline(self.backup)
        if t.timeline == "latest":  # a newer timeline whose history file is gone would be passed over silently
            for tli in archive.timelines():
                if tli > follow and not archive.objects(history_name(tli)):
                    raise WalGap(
                        f"{history_name(tli)} is missing from {self.repo.display_url}: timeline {tli} holds WAL that "
                        f"recovery cannot follow without it; put the file back, or choose target timeline {follow}",
                        key=history_name(tli),
                        **fields,
                    )
        if last is not None:
            last = f"{follow:08X}{last[8:]}"
        missing = archive.missing(phys.start_wal, last, timeline=follow)
        if missing:
            raise WalGap(
                f"WAL segment {missing[0]} is missing from {self.repo.display_url}"
                + (f" ({len(missing)} missing in all)" if len(missing) > 1 else "")
                + f": recovery from backup {self.backup.id} cannot pass it; "
                f"the latest reachable point is just before it",
                segment=missing[0],
                **fields,
            )
        archived = archive.list_archived().get(phys.timeline, [])
        if phys.stop_wal not in {n for n in archived}:
            raise WalGap(
                f"WAL segment {phys.stop_wal}, needed to make backup {self.backup.id} consistent, is not archived",
                segment=phys.stop_wal,
                **fields,
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
        return self._restore(
            pgdata,
            overwrite=overwrite,
            delta=delta,
            standby=standby,
            archive=archive,
            run_as=run_as,
            tablespace_map=tablespace_map,
            settings=settings,
            progress=progress,
        )

    def _restore(
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
        ahead: bool = False,
    ) -> Path:
        """`restore`; ``ahead``: start the data directory's WAL worker as soon as its directories exist, when the
        server is to recover through pgrecovery's restore_command (`EarlyWorker`; `run` asks for it)."""
        conf_extra = _archive_settings(archive, settings)
        self.validate()
        target = Path(pgdata).absolute()
        who = run_as if run_as is not None else default_run_as()
        major = server_major(self.backup.server_version)
        if major is not None:  # never mix majors in one data directory (delta, overwrite)
            check_data_dir_major(target, major, what=f"backup {self.backup.id}")
        created = _prepare_directory(target, overwrite=overwrite, delta=delta)
        early = None
        if ahead and not (delta or standby):
            early = EarlyWorker.wanted(self.backup, target, conf_extra, self._key_file_or_none())
        try:
            restore_files(
                self.repo,
                self.backup,
                target,
                tablespace_map=tablespace_map,
                delta=delta,
                progress=progress,
                directories_made=None if early is None else lambda: early.start(self.repo, who, self.python),
            )
            self._configure(target, who, conf_extra, standby=standby)
            spaces = [
                Path((tablespace_map or {}).get(o, loc)) for o, loc in self._phys(self.backup).tablespaces.items()
            ]
            chown_tree([target, *spaces], who)
        except BaseException as e:
            if early is not None:  # before its directory goes
                early.cancel()
            if not delta:  # a half-restored data directory must not be mistaken for a restored one: remove it
                _remove_partial(target, created)
            if isinstance(e, OSError):
                raise RestoreError(
                    f"restoring backup {self.backup.id} into {target} failed: {e.strerror or e}"
                    + (f" ({e.filename})" if e.filename else "")
                    + ("" if delta else "; what was written is removed")
                    + ": free space there or choose another directory",
                    backup_id=self.backup.id,
                    path=e.filename if isinstance(e.filename, str) else target,
                ) from None
            raise
        return target

    def _configure(self, target: Path, who: str | None, conf_extra: dict[str, object], *, standby: bool) -> None:
        """Configure the restored ``target`` for recovery: restore_command, the target, the signal file."""
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

    def _key_file_or_none(self) -> str | None:
        try:
            return self._key_file()
        except ConfigurationError:  # restore() refuses such a key; a data directory prepared otherwise is the caller's
            return None

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
        ``incidents/<id>.json`` in the repository. The steps, in order, are in `pgrecovery.recovery.run`."""
        if not restore and (archive or settings):
            raise ConfigurationError(
                "archive= and settings= apply when run() restores: with restore=False pass them to restore()"
            )
        _archive_settings(archive, settings)  # a contradiction is refused before anything is written
        journal = Journal()
        run = RecoveryRun(
            repo=self.repo,
            backup=self.backup,
            target=self.target,
            pgdata=pgdata,
            major=server_major(self.backup.server_version),
            port=port or 0,
            ports=ports,
            timeout=timeout,
            keep_running=keep_running,
            record_incident=record_incident,
            python=self.python,
            key_file=self._key_file_or_none(),
        )
        journal.step("plan", f"target {self.target.describe()}; backup {self.backup.id}")
        if run.major is not None:  # before anything is written: this host must have the backup's server programs
            require_server_programs(run.major, what=f"backup {self.backup.id}")
        t0 = time.monotonic()
        if restore:
            self._restore(
                pgdata,
                overwrite=overwrite,
                delta=delta,
                archive=archive,
                settings=settings,
                tablespace_map=tablespace_map,
                progress=progress,
                ahead=True,
            )
            journal.step("restore", f"base backup {self.backup.id} restored into {run.pgdata}")
        return recover(run, journal, time.monotonic() - t0)
