"""Status reports: one JSON object per update attempt (summarised server-side by packager.fleet_status).

Reports go to `reports/<model_id>/<channel>/<device_id>/<timestamp>.json`.
They are spooled in `<data_dir>/outbox/` first (atomically) and uploaded
from there, so a store outage delays a report but never loses it or fails
an update; an upload that already happened (crash before the spool file was
removed) is recognised by the create-only write and not duplicated.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from device_agent.atomic import write_atomic
from device_agent.errors import OtaError, StoreConflictError

REPORT_FORMAT = 1
REPORTS_PREFIX = "reports/"
OUTCOMES = ("committed", "refused", "failed", "rolled_back")


def timestamp(ts: float) -> str:
    """Sortable UTC stamp with microseconds: 20250101T120000.123456Z."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(ts)) + f".{int(round(ts * 1e6)) % 1_000_000:06d}Z"


def report_key(model_id: str, channel: str, device_id: str, ts: float) -> str:
    return f"{REPORTS_PREFIX}{model_id}/{channel}/{device_id}/{timestamp(ts)}.json"


class Outbox:
    """Reports waiting for upload, oldest first."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def add(self, key: str, report: dict[str, Any]) -> None:
        name = key.replace("/", "__")
        try:
            write_atomic(self.folder / name, json.dumps({"key": key, "report": report}, sort_keys=True).encode())
        except OSError:
            pass  # disk full: the report is lost, the update outcome is not (state.json has it)

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []

    def flush(self, store) -> tuple[int, OtaError | None]:
        """Upload what is waiting; stop at the first transport error. -> (uploaded, error)."""
        sent = 0
        for path in self.pending():
            try:
                doc = json.loads(path.read_bytes())
                body = json.dumps(doc["report"], sort_keys=True, indent=1).encode()
                try:
                    store.put(doc["key"], body, if_none_match=True)
                except StoreConflictError:
                    pass  # uploaded before a crash: already there
            except (ValueError, KeyError):
                pass  # a damaged spool file can never be sent; drop it
            except OtaError as exc:
                return sent, exc
            path.unlink(missing_ok=True)
            sent += 1
        return sent, None

