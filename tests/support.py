"""Helpers shared by tests (and benchmarks) that drive real parts the way the device does."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from device_agent.agent.download import RangeDownloader, RetryPolicy, download_signed
from device_agent.store import Store
from device_agent.trust_client import TargetInfo, verify_target

if TYPE_CHECKING:
    from packager.trust import ExpiryPolicy

HOUR = timedelta(hours=1)


class SimClock:
    """A clock the test moves by hand (`clock.now += HOUR`); starts at the current whole second, UTC."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


def fast_expiry() -> "ExpiryPolicy":
    """Short metadata lifetimes (timestamp 1 h, snapshot and targets 2 h) so several expiries
    fit in a few simulated hours."""
    from packager.trust import ExpiryPolicy  # server side: only the tests that publish need it

    return ExpiryPolicy(root=timedelta(days=365), targets=2 * HOUR, snapshot=2 * HOUR, timestamp=HOUR)


def agent_download(store: Store, info: TargetInfo, folder: Path, chunk_size: int = 64 << 10) -> Path:
    """Download a signed target exactly as the agent does: ranged GETs capped at the signed length
    with the streamed hashes checked (download_signed, the DOWNLOADING step), then verify_target on
    the file (the VERIFYING step). Returns the file; TrustError if the bytes are not the signed ones."""
    final = folder / info.store_key.rsplit("/", 1)[-1]
    downloader = RangeDownloader(store, chunk_size, RetryPolicy(2, 0.01, 0.02))
    download_signed(downloader, info.store_key, info.name, info.length, dict(info.hashes),
                    final.with_name(final.name + ".part"), final)
    with open(final, "rb") as f:
        verify_target(info, f)
    return final
