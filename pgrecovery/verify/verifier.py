"""`Verifier`: does a backup restore? Checksums, readability, and a real restore drill with counts.

>>> report = Verifier(repo).verify("latest", drill=True)        # doctest: +SKIP
>>> report.ok, [(c.name, c.status) for c in report.checks]      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from .._chain import file_layers, load_chain, stored_pieces
from ..cluster import free_port, port_choice, temporary_cluster
from ..errors import PgRecoveryError
from ..logical.restore import LogicalRestore
from ..manifest import BackupManifest
from ..progress import ProgressCallback
from ..repository import Repository
from ._counts import port_of
from ._drills import drill_base, drill_logical
from .report import Check, Status, VerificationReport


class Verifier:
    """Verifies backups in a repository. Restore drills run in a sandbox cluster unless a server is given.

    ``ports``: the port, or ports (``range(55000, 55100)``), that every sandbox server of a drill may listen on,
    for hosts that allow only some; default: any free port.
    """

    def __init__(
        self, repo: Repository, *, workdir: str | None = None, ports: int | Iterable[int] | None = None
    ) -> None:
        self.repo = repo
        self.workdir = workdir
        self.ports = port_choice(ports)

    def verify(
        self,
        backup_id: str = "latest",
        *,
        checksums: bool = True,
        readable: bool = True,
        drill: bool = False,
        drill_server: str | None = None,
        source: str | None = None,
        compare_source: bool = True,
        jobs: int = 1,
        progress: ProgressCallback | None = None,
    ) -> VerificationReport:
        """Run the checks and return the report (it does not raise on a failed check: see ``raise_for_failure``).

        ``drill`` restores the backup (a logical one into a temporary database on ``drill_server``, or in a
        sandbox cluster started and removed here; a base backup into a sandbox recovered to consistency), checks
        it (invalid indexes against those recorded at backup time, amcheck on B-tree indexes where the server has
        it), and compares per-table row counts with the source (``source``, else the connection recorded in the
        manifest) when it is reachable.
        """
        m = self.repo.get(backup_id)
        if drill and self.ports is not None and (m.kind == "base" or drill_server is None):
            free_port(self.ports)  # none free: say so now, not after a long restore
        started = datetime.now(UTC)
        checks: list[Check] = []

        def step(name: str, fn: Callable[[], tuple[Status, str]]) -> bool:
            t0 = time.monotonic()
            try:
                status, detail = fn()
            except PgRecoveryError as e:
                status, detail = "fail", str(e)
            checks.append(Check(name=name, status=status, detail=detail, seconds=time.monotonic() - t0))
            return status != "fail"

        intact = True
        if checksums:
            intact = step("checksums", lambda: self._checksums(m))
        if readable and m.kind == "logical" and m.format != "plain":
            intact = step("readable", lambda: self._readable(m)) and intact
        if drill:
            if not intact:
                checks.append(
                    Check(
                        name="restore-drill",
                        status="skip",
                        detail="skipped: stored files are damaged",
                        seconds=0.0,
                    )
                )
            else:
                extra: list[Check] = []
                if m.kind == "base":
                    step(
                        "restore-drill",
                        lambda: drill_base(
                            self.repo,
                            m,
                            workdir=self.workdir,
                            ports=self.ports,
                            source=source,
                            compare_source=compare_source,
                            checks=extra,
                        ),
                    )
                else:
                    with self._server(drill_server) as server:
                        place = "" if drill_server is not None else f" on a sandbox at port {port_of(server)}"
                        step(
                            "restore-drill",
                            lambda: drill_logical(
                                self.repo, m, self.workdir, server, place, source, compare_source, jobs, extra
                            ),
                        )
                checks.extend(extra)
        return VerificationReport(backup_id=m.id, kind=m.kind, started_at=started, checks=checks)

    # -- checks ------------------------------------------------------------------------------------------------
    def _checksums(self, m: BackupManifest) -> tuple[Status, str]:
        bad = []
        files = [(m.id, f) for f in m.files]
        if m.physical is not None and m.physical.parent is not None:  # every piece of the chain it restores from
            try:
                chain = load_chain(self.repo, m)
                wanted = stored_pieces(file_layers(chain, m).values())
            except PgRecoveryError as e:
                return "fail", str(e)
            files += [(i, f) for i, e in chain.items() if i != m.id for f in e.files if (i, f.role) in wanted]
        for owner, f in files:
            key = f"backups/{owner}/{f.path}"
            try:
                size, digest = self.repo.digest(key)
            except PgRecoveryError as e:
                bad.append(f"{key}: {e}")
                continue
            if size != f.size:
                bad.append(f"{key}: size {size}, manifest says {f.size}")
            elif digest != f.sha256:
                bad.append(f"{key}: sha256 differs from the manifest")
        if bad:
            return "fail", "; ".join(bad)
        extra = len(files) - len(m.files)
        return "pass", f"{len(m.files)} file(s), {m.size} bytes match the manifest" + (
            f"; {extra} file(s) it takes from earlier backups match theirs" if extra else ""
        )

    def _readable(self, m: BackupManifest) -> tuple[Status, str]:
        entries = LogicalRestore(self.repo, m.id, workdir=self.workdir).list_contents()
        if m.summary is not None and len(entries) != m.summary.objects:
            return (
                "fail",
                f"table of contents lists {len(entries)} entries, the manifest recorded {m.summary.objects}",
            )
        return "pass", f"table of contents lists {len(entries)} entries"

    @contextlib.contextmanager
    def _server(self, drill_server: str | None) -> Iterator[str]:
        if drill_server is not None:
            yield drill_server
            return
        with temporary_cluster(parent=self.workdir, ports=self.ports) as sandbox:
            yield sandbox.conninfo()


__all__ = ["Verifier"]
