"""Heartbeats: one small status record per device, left in the store after every check.

A report (telemetry.py) describes one update attempt; a heartbeat says how
the device is doing right now, including checks that never got as far as an
attempt (store unreachable, metadata expired). Each device owns one key,
`heartbeats/<model_id>/<channel>/<device_id>.json`, overwritten in place, so
the fleet's heartbeats take at most `MAX_HEARTBEAT_BYTES` per device however
long it runs. A heartbeat is sent when its content changed or when
`min_interval` seconds passed since the last one, so a fleet polling every
few minutes does not write every few minutes. Upload failures are counted and
retried on the next check; they never fail the check itself.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from device_agent.atomic import write_atomic
from device_agent.bundle import FORMAT_VERSIONS
from device_agent.errors import (
    BundleError,
    DataError,
    DiskFullError,
    MetadataExpiredError,
    StoreAuthError,
    StoreNotFoundError,
    StoreUnreachableError,
    TrustError,
    WrongBaseError,
)
from device_agent.strict_header import is_int
from device_agent.version import parse_version

HEARTBEAT_FORMAT = 1
HEARTBEATS_PREFIX = "heartbeats/"
MAX_HEARTBEAT_BYTES = 2048  # readers ignore anything larger (and count it)
_MAX_MESSAGE = 160
_MAX_REFUSED = 8
_MAX_FORMATS = 16

# Why a check failed, as a short stable code for the fleet view (most specific class first).
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (MetadataExpiredError, "metadata expired"),
    (TrustError, "metadata refused"),
    (StoreUnreachableError, "store unreachable"),
    (StoreAuthError, "store credentials refused"),
    (StoreNotFoundError, "not found in store"),
    (DiskFullError, "disk full"),
    (BundleError, "bad bundle"),
    (WrongBaseError, "diff for another base"),
)


def failure_reason(error_class: str | None, exc: BaseException | None = None) -> str | None:
    """A short reason for a failed check, from the exception (or only its class name)."""
    if exc is not None:
        for cls, reason in _REASONS:
            if isinstance(exc, cls):
                return reason
        return "other error"
    if error_class is None:
        return None
    return next((reason for cls, reason in _REASONS if cls.__name__ == error_class), "other error")


def heartbeat_key(model_id: str, channel: str, device_id: str) -> str:
    return f"{HEARTBEATS_PREFIX}{model_id}/{channel}/{device_id}.json"


@dataclass
class Heartbeat:
    device_id: str
    model_id: str
    channel: str
    at: float  # unix time of the check
    version: int | None  # active model version
    state: str  # how the last check ended: no_update, committed, refused, failed, rolled_back
    error_class: str | None = None
    reason: str | None = None  # failure_reason() of the last failed check
    error: str | None = None  # its message, truncated
    consecutive_failures: int = 0
    metadata_expires: str | None = None  # expiry of the newest timestamp the device verified (ISO 8601)
    refused: list[int] = field(default_factory=list)  # versions the device refused (newest last)
    # bundle format versions this agent reads: a publisher writes a newer format only once every device does
    bundle_formats: list[int] = field(default_factory=lambda: list(FORMAT_VERSIONS))

    def to_json(self) -> bytes:
        doc = {"format": HEARTBEAT_FORMAT, **asdict(self)}
        doc["error"] = None if self.error is None else self.error[:_MAX_MESSAGE]
        doc["refused"] = list(self.refused[-_MAX_REFUSED:])
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        if len(data) > MAX_HEARTBEAT_BYTES:  # only through absurd ids: drop the free text, keep the facts
            doc["error"], doc["refused"] = None, []
            data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return data

    def digest(self) -> str:
        """What counts as a change worth sending now (not the time, the message, the exact failure
        count, or a metadata expiry moved by a routine re-signing)."""
        doc = asdict(self)
        for volatile in ("at", "error", "metadata_expires"):
            doc.pop(volatile)
        doc["consecutive_failures"] = min(self.consecutive_failures, 3)
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


class HeartbeatSender:
    """Keeps `<data_dir>/heartbeat.json` (failure count, last send) and sends when due."""

    def __init__(self, path: Path, min_interval: float) -> None:
        self.path = Path(path)
        self.min_interval = min_interval

    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_bytes())
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self, doc: dict[str, Any]) -> None:
        try:
            write_atomic(self.path, json.dumps(doc, sort_keys=True).encode())
        except OSError:
            pass  # disk full: the count restarts, nothing else depends on it

    def record(self, beat: Heartbeat, failed: bool) -> Heartbeat:
        """Set the consecutive failure count from this check's result (persisted)."""
        doc = self._load()
        count = int(doc.get("consecutive_failures", 0)) + 1 if failed else 0
        doc["consecutive_failures"] = count
        self._save(doc)
        beat.consecutive_failures = count
        return beat

    def send(self, store, key: str, beat: Heartbeat) -> bool:
        """Upload `beat` if it changed or `min_interval` passed; True if it was uploaded.
        Raises the store's error (the caller logs it; the next check retries)."""
        doc = self._load()
        digest = beat.digest()
        last_at = doc.get("sent_at")
        due = doc.get("sent_digest") != digest or not isinstance(last_at, (int, float)) \
            or beat.at - last_at >= self.min_interval or beat.at < last_at
        if not due:
            return False
        store.put(key, beat.to_json())
        doc.update(sent_at=beat.at, sent_digest=digest)
        self._save(doc)
        return True


def metadata_expiry(metadata_dir: Path) -> str | None:
    """Expiry of the timestamp kept from the last good refresh (None if there is none)."""
    from tuf.api.metadata import Metadata

    try:
        md = Metadata.from_bytes((Path(metadata_dir) / "timestamp.json").read_bytes())
    except Exception:  # absent or unreadable: the heartbeat just says "unknown"
        return None
    expires: datetime = md.signed.expires
    return expires.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_heartbeat(data: bytes) -> dict[str, Any] | None:
    """A heartbeat read back from the store, or None if it is oversized or malformed."""
    if len(data) > MAX_HEARTBEAT_BYTES:
        return None
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != HEARTBEAT_FORMAT:
        return None
    checks = {"device_id": str, "model_id": str, "channel": str, "state": str, "at": (int, float),
              "consecutive_failures": int}
    for name, kind in checks.items():
        if not isinstance(doc.get(name), kind) or isinstance(doc.get(name), bool):
            return None
    for name in ("error_class", "reason", "error", "metadata_expires"):
        if doc.get(name) is not None and not isinstance(doc.get(name), str):
            return None
    try:  # earlier releases sent versions as decimal strings
        if doc.get("version") is not None:
            doc["version"] = parse_version(doc["version"], "heartbeat version", DataError, legacy_text=True)
        refused = doc.get("refused", [])
        if not isinstance(refused, list):
            return None
        doc["refused"] = [parse_version(v, "heartbeat refused version", DataError, legacy_text=True) for v in refused]
    except DataError:
        return None
    formats = doc.get("bundle_formats")  # absent: an agent from before heartbeats listed them
    if formats is not None and (not isinstance(formats, list) or len(formats) > _MAX_FORMATS
                                or not all(is_int(f, 1, 0xFFFF) for f in formats)):
        return None
    return doc

