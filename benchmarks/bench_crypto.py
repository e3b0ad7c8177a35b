"""Benchmark: client-side encryption throughput against a plain sha256 pass over the same bytes.

What it measures
    For one buffer of random bytes (what compressed backup data looks like to a cipher), in one process:

    * ``sha256``  -- hashlib.sha256 over the buffer in 1 MiB pieces: what pgrecovery already does to every byte
      it stores, so the natural yardstick;
    * ``encrypt`` -- `EncryptingWriter` fed 1 MiB writes into a sink that drops the output (AES-256-GCM per 1 MiB
      record, plus the sha256 of the plaintext that the writer returns);
    * ``decrypt`` -- `DecryptingReader` over the encrypted bytes in memory, read 1 MiB at a time (authenticating
      every record).

    No storage is involved: the figures are the CPU cost per byte on one core. Each is the median of the rounds;
    a ratio above 1 means faster than sha256. Run ``python benchmarks/bench_crypto.py`` (256 MiB, 3 rounds, a few
    seconds) or ``--quick`` (32 MiB, 1 round).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO, cast

from pgrecovery import StoredObject
from pgrecovery.crypto import RECORD_SIZE, DecryptingReader, EncryptingWriter, EncryptionKey

MiB = 1 << 20
MB = 1e6


class _Discard:
    """An ObjectWriter that counts and drops what it is given."""

    key = "bench"

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes, /) -> None:
        self.size += len(data)

    def commit(self) -> StoredObject:
        return StoredObject(key=self.key, size=self.size, sha256="")

    def abort(self) -> None:
        pass

    def __enter__(self) -> _Discard:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        pass


class _Keep(_Discard):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []

    def write(self, data: bytes, /) -> None:
        super().write(data)
        self.parts.append(data)


def _sha256(data: memoryview) -> None:
    h = hashlib.sha256()
    for i in range(0, len(data), MiB):
        h.update(data[i : i + MiB])
    h.hexdigest()


def _encrypt(data: memoryview, key: EncryptionKey) -> None:
    w = EncryptingWriter(_Discard(), key)
    for i in range(0, len(data), MiB):
        w.write(data[i : i + MiB])
    w.commit()


def _decrypt(blob: bytes, key: EncryptionKey, expect: int) -> None:
    got = 0
    with DecryptingReader(cast(BinaryIO, io.BytesIO(blob)), key) as r:
        while chunk := r.read(MiB):
            got += len(chunk)
    if got != expect:
        raise SystemExit(f"decrypted {got} bytes, expected {expect}")


def _timed(fn: Callable[[], None], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--size-mib", type=int, default=None, help="bytes to process, in MiB (default 256; --quick: 32)")
    p.add_argument("--rounds", type=int, default=None, help="repetitions; the median is reported (default 3)")
    p.add_argument("--quick", action="store_true", help="a small buffer and one round, for a smoke test")
    args, _ = p.parse_known_args(argv)  # `nox -s bench -- ...` hands every benchmark the same options
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    size = (args.size_mib or (32 if args.quick else 256)) * MiB
    rounds = args.rounds or (1 if args.quick else 3)
    key = EncryptionKey.generate()
    data = memoryview(os.urandom(size))

    keep = _Keep()
    w = EncryptingWriter(keep, key)
    for i in range(0, size, MiB):
        w.write(data[i : i + MiB])
    w.commit()
    blob = b"".join(keep.parts)
    keep.parts.clear()

    t_sha = _timed(lambda: _sha256(data), rounds)
    t_enc = _timed(lambda: _encrypt(data, key), rounds)
    t_dec = _timed(lambda: _decrypt(blob, key, size), rounds)

    print(f"encryption benchmark: {size // MiB} MiB of random bytes, {rounds} round(s), median, one core")
    print(f"python {platform.python_version()} on {platform.machine()}, record size {RECORD_SIZE // MiB} MiB")
    print(f"{'pass':<10}{'MB/s':>10}{'vs sha256':>12}")
    for label, t in (("sha256", t_sha), ("encrypt", t_enc), ("decrypt", t_dec)):
        print(f"{label:<10}{size / MB / t:>10.0f}{t_sha / t:>11.2f}x")
    print(f"stored overhead: {len(blob) - size} bytes ({(len(blob) - size) / size:.4%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
