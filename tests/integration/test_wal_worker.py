"""The WAL worker under a real server: killed again and again (SIGKILL) and hung (SIGSTOP) while the server
archives, it never costs a segment and never has one acknowledged that is not in the repository whole; a
recovery from that archive replays every segment (with the worker serving restore_command) to the exact rows."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

from pgtesting import FINGERPRINT, archiving_cluster, wait_archived, wal_workers

from pgrecovery import BaseBackup, RecoveryPlan, RecoveryTarget
from pgrecovery.wal.archiver import WalArchiver


def test_a_worker_killed_or_hung_while_the_server_archives_costs_no_segment() -> None:
    os.environ["PGRECOVERY_WAL_WORKER_TIMEOUT"] = "2"  # the server inherits it: a hung worker is left after 2 s
    try:
        with archiving_cluster("pgrecovery-worker") as ctx:
            pg = ctx.pg
            spool = Path(pg.data_dir) / "pgrecovery_spool"
            stop = threading.Event()
            seen: set[int] = set()
            rng = random.Random(20261205)

            def chaos() -> None:
                while not stop.is_set():
                    time.sleep(rng.uniform(0.05, 0.4))
                    for pid in wal_workers(spool):
                        seen.add(pid)
                        try:
                            if rng.random() < 0.2:  # hung for a while, then killed
                                os.kill(pid, signal.SIGSTOP)
                                time.sleep(2.5)
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass

            killer = threading.Thread(target=chaos, daemon=True)
            killer.start()
            try:
                for n in range(40):
                    first = n * 1000 + 1
                    pg.execute(f"insert into t select g, md5(g::text) from generate_series({first}, {first + 999}) g")
                    pg.execute("select pg_switch_wal()")
                last = wait_archived(pg)  # the chaos goes on until the server has archived everything
            finally:
                stop.set()
                killer.join()
            assert len(seen) >= 3, f"the chaos killed too few workers ({len(seen)})"
            report = WalArchiver(ctx.repo).verify(check_digests=True)
            assert report.ok, report.to_dict()
            assert report.last >= last
            # every segment the server counts as archived is in the repository whole: recover from it
            backup = BaseBackup(dbname=pg.conninfo()).run(ctx.repo)
            pg.execute("insert into t values (-1, 'after the backup')")
            want = pg.query(FINGERPRINT)
            wait_archived(pg)
            plan = RecoveryPlan(ctx.repo, RecoveryTarget.latest(), backup_id=backup.id)
            with plan.run(ctx.pgdata()) as result:
                assert result.cluster.query(FINGERPRINT) == want
    finally:
        os.environ.pop("PGRECOVERY_WAL_WORKER_TIMEOUT", None)
