"""Resumable bundle downloads: ranged GETs into `<name>.part`, capped at the signed length.

The `.part` file is named after the target's signed hash, so a partial file
is only ever resumed for exactly the bytes it was started for. Each chunk is
written and fsynced before the next request, so after a crash or an outage
at most the one chunk in flight is requested again. The signed length caps
every request; hashes are computed while streaming (and on resume over the
bytes already on disk), so a wrong file is caught without a second read.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from device_agent.atomic import fsync_dir
from device_agent.errors import Stopped, StoreAuthError, StoreNotFoundError, TransportError, TrustError, os_error

Progress = Callable[[int, int], None]  # (bytes on disk, total)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    backoff: float = 1.0
    backoff_max: float = 30.0

    def delay(self, failures: int) -> float:
        return min(self.backoff * 2 ** (failures - 1), self.backoff_max)


@dataclass
class DownloadStats:
    resumed_from: int  # bytes already on disk when this run started
    received: int  # bytes received and kept in this run
    refetched: int  # bytes of chunk ranges that had to be requested again
    failed_requests: int
    hashes: dict[str, str]  # streaming hashes of the whole file


class Throttle:
    """Average-rate limiter: sleeps so `bytes / elapsed` stays under `rate`."""

    def __init__(self, rate: int | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self._clock, self._sleep = rate, clock, sleep
        self._start = clock()
        self._bytes = 0

    def account(self, n: int) -> None:
        if not self.rate:
            return
        self._bytes += n
        ahead = self._bytes / self.rate - (self._clock() - self._start)
        if ahead > 0:
            self._sleep(ahead)


class RangeDownloader:
    """Fetch one store object into a file by ranged GETs (the I/O half of downloading)."""

    def __init__(self, store, chunk_size: int, retry: RetryPolicy, bandwidth: int | None = None, *,
                 should_stop: Callable[[], bool] = lambda: False, sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = store
        self.chunk_size = chunk_size
        self.retry = retry
        self.bandwidth = bandwidth
        self.should_stop = should_stop
        self.sleep = sleep
        # Offsets of chunk requests that failed: the caller persists them across runs so a
        # chunk re-requested after an outage or restart is counted as re-sent.
        self.failed_offsets: set[int] = set()
        self.stats = DownloadStats(0, 0, 0, 0, {})  # live: still valid when fetch raises

    def fetch(self, key: str, length: int, hash_names: list[str], part: Path,
              progress: Progress | None = None, failed_before: set[int] | frozenset[int] = frozenset()) -> DownloadStats:
        """Download `key` into `part` until it holds `length` bytes; returns stats.

        TrustError if the store holds more than `length` bytes (an oversized
        target is refused before a byte of it is kept); TransportError after
        `retry.attempts` failures of one chunk; DiskFullError on ENOSPC.
        """
        info = self.store.head(key)
        if info is None:
            raise StoreNotFoundError(f"bundle {key} is listed in the signed targets but absent from the store")
        if info.size != length:
            raise TrustError(f"bundle {key} is {info.size} bytes in the store, the signed length is {length}; "
                             "refusing to download it")
        hashers = {name: hashlib.new(name) for name in hash_names}
        try:
            part.parent.mkdir(parents=True, exist_ok=True)
            f = open(part, "ab+")
        except OSError as exc:
            raise os_error(exc, f"opening {part}") from None
        with f:
            done = _rehash(f, length, hashers)
            stats = self.stats = DownloadStats(done, 0, 0, 0, {})
            throttle = Throttle(self.bandwidth)
            self.failed_offsets = set(failed_before)
            failed_ranges = self.failed_offsets
            while done < length:
                if self.should_stop():
                    raise Stopped(f"stopped at {done}/{length} bytes of {key}")
                end = min(done + self.chunk_size, length)
                data = self._get(key, done, end, stats, failed_ranges)
                if done in failed_ranges:
                    stats.refetched += len(data)
                try:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                except OSError as exc:
                    raise os_error(exc, f"writing {part}") from None
                for h in hashers.values():
                    h.update(data)
                done += len(data)
                stats.received += len(data)
                throttle.account(len(data))
                if progress:
                    progress(done, length)
        stats.hashes = {name: h.hexdigest() for name, h in hashers.items()}
        return stats

    def _get(self, key: str, start: int, end: int, stats: DownloadStats, failed_ranges: set[int]) -> bytes:
        failures = 0
        while True:
            try:
                data = self.store.get_range(key, start, end)
                if len(data) != end - start:
                    # Head said the object was long enough: a short read means it changed or was truncated.
                    raise TrustError(f"bundle {key}: range [{start}, {end}) returned {len(data)} bytes; "
                                     "the object in the store changed or is truncated")
                return data
            except (StoreNotFoundError, StoreAuthError):
                raise  # retrying does not fix a missing object or bad credentials
            except TransportError as exc:
                failures += 1
                stats.failed_requests += 1
                failed_ranges.add(start)
                if failures >= self.retry.attempts:
                    raise type(exc)(f"{exc} (gave up after {failures} attempts at bytes {start}-{end}; "
                                    "the partial download is kept and resumes on the next check)") from None
                wait = self.retry.delay(failures)
                end_wait = time.monotonic() + wait
                while time.monotonic() < end_wait:  # stay responsive to stop requests while backing off
                    if self.should_stop():
                        raise Stopped(f"stopped while retrying {key}") from None
                    self.sleep(min(0.1, max(end_wait - time.monotonic(), 0.0)))


def _rehash(f, length: int, hashers: dict) -> int:
    """Hash the bytes already in a partial file; drop anything past `length` (never expected)."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size > length:
        f.truncate(0)
        size = 0
    f.seek(0)
    left = size
    while left:
        block = f.read(min(left, 1 << 20))
        if not block:
            break
        for h in hashers.values():
            h.update(block)
        left -= len(block)
    f.seek(0, os.SEEK_END)
    return size - left


def download_signed(downloader: RangeDownloader, key: str, target: str, length: int, hashes: dict[str, str],
                    part: Path, final: Path, failed_before: set[int] | frozenset[int] = frozenset()) -> DownloadStats:
    """The agent's download of one signed target: ranged GETs of store `key` into `part`
    (resumed, capped at the signed `length`), the streamed hashes checked against the signed
    `hashes`, then `part` renamed to `final`. TrustError, with `part` removed, if the bytes are
    not the signed ones; the caller then checks `final` with trust_client.verify_target."""
    stats = downloader.fetch(key, length, sorted(hashes), part, failed_before=failed_before)
    if stats.hashes != hashes:
        part.unlink(missing_ok=True)  # never resume from bytes that are known to be wrong
        raise TrustError(f"bundle {target}: downloaded bytes hash to {stats.hashes}, the signed hashes are {hashes}")
    try:
        os.replace(part, final)
        fsync_dir(final.parent)
    except OSError as exc:
        raise os_error(exc, f"finishing download {final}") from None
    return stats
