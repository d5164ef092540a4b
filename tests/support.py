"""Helpers shared by tests (and benchmarks) that drive real parts the way the device does."""
from __future__ import annotations

from pathlib import Path

from device_agent.agent.download import RangeDownloader, RetryPolicy, download_signed
from device_agent.store import Store
from device_agent.trust_client import TargetInfo, verify_target


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
