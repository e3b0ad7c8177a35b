"""An archive_command that fails like a bad storage link would, for the soak test.

    archive_command = '<python> -S faulty_archive.py <config.json> %p'

It runs the real archive command (``command`` in the JSON config, with ``%p``, ``%f`` and ``%%`` as PostgreSQL writes
them) but, at random and each call anew, it

* ``refuse``: fails without doing anything (the storage cannot be reached);
* ``lost``: archives the segment, then fails anyway (the storage's answer was lost: the retry must be a success
  for identical content, never a conflict);
* ``kill``: kills the real command at a random moment, mid-upload if it is still running (a crash: the retry
  must succeed, and no half-written object may ever be seen as archived).

Each fault is appended as one line (``<fault> <file>``) to the ``log`` file. ``enabled: false`` turns faults off.
The config is read at every call, so the test can change it while the server runs. Only the standard library is
used: the server's OS user runs this with ``python -S``.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time


def _command(template: str, wal_path: str) -> str:
    """``template`` with PostgreSQL's placeholders replaced: ``%p`` by the (quoted) path, ``%f`` by its file
    name, ``%%`` by ``%``."""
    out, i = [], 0
    while i < len(template):
        if template.startswith("%p", i):
            out.append(shlex.quote(wal_path))
            i += 2
        elif template.startswith("%f", i):
            out.append(shlex.quote(os.path.basename(wal_path)))
            i += 2
        elif template.startswith("%%", i):
            out.append("%")
            i += 2
        else:
            out.append(template[i])
            i += 1
    return "".join(out)


def _note(config: dict[str, object], fault: str, wal_path: str) -> None:
    line = f"{fault} {os.path.basename(wal_path)}\n".encode()
    fd = os.open(str(config["log"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)  # one short O_APPEND write: lines from concurrent calls never interleave
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    config_path, wal_path = argv[1], argv[2]
    with open(config_path) as f:
        config = json.load(f)
    command = _command(config["command"], wal_path)
    if not config.get("enabled", True):
        return subprocess.call(command, shell=True)
    rng = random.Random()  # seeded from the OS: every call rolls anew
    roll = rng.random()
    if roll < config["refuse"]:
        _note(config, "refuse", wal_path)
        return 1
    roll -= config["refuse"]
    if roll < config["lost"]:
        done = subprocess.call(command, shell=True) == 0
        _note(config, "lost" if done else "lost-failed", wal_path)
        return 1
    roll -= config["lost"]
    if roll < config["kill"]:
        proc = subprocess.Popen(command, shell=True, start_new_session=True)
        time.sleep(rng.uniform(0, config.get("kill_within", 0.3)))
        finished = proc.poll() is not None
        if not finished:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _note(config, "kill-late" if finished else "kill", wal_path)
        return 1
    return subprocess.call(command, shell=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
