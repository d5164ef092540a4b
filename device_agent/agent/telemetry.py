"""Status reports: one JSON object per update attempt, and the fleet summary.

Reports go to `reports/<model_id>/<channel>/<device_id>/<timestamp>.json`.
They are spooled in `<data_dir>/outbox/` first (atomically) and uploaded
from there, so a store outage delays a report but never loses it or fails
an update; an upload that already happened (crash before the spool file was
removed) is recognised by the create-only write and not duplicated.
"""
from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from device_agent.atomic import write_atomic
from device_agent.errors import OtaError, StoreConflictError, StoreNotFoundError

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


def load_reports(store, model_id: str | None = None) -> Iterable[dict[str, Any]]:
    prefix = REPORTS_PREFIX + (f"{model_id}/" if model_id else "")
    for key in store.list(prefix):
        if not key.endswith(".json"):
            continue
        try:
            doc = json.loads(store.get(key))
        except (ValueError, StoreNotFoundError):
            continue  # deleted meanwhile, or not ours: a summary skips it
        if isinstance(doc, dict) and doc.get("format") == REPORT_FORMAT:
            yield doc


def fleet_status(store, model_id: str | None = None) -> list[dict[str, Any]]:
    """One row per (model_id, channel, to_version): attempts by outcome, devices,
    median WER after (candidates that were decoded) and before."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in load_reports(store, model_id):
        # an operator rollback counts against the version it left, like a failed update of it
        version = r.get("from_version") if r.get("kind") == "rollback" else r.get("to_version")
        key = (str(r.get("model_id")), str(r.get("channel")), str(version))
        groups.setdefault(key, []).append(r)
    rows = []
    for (mid, channel, version), reports in sorted(groups.items()):
        counts = {o: sum(r.get("outcome") == o for r in reports) for o in OUTCOMES}
        after = [r["wer_after"] for r in reports if isinstance(r.get("wer_after"), (int, float))]
        before = [r["wer_before"] for r in reports if isinstance(r.get("wer_before"), (int, float))]
        rows.append({"model_id": mid, "channel": channel, "version": version, "attempts": len(reports),
                     **counts, "devices": len({r.get("device_id") for r in reports}),
                     "median_wer_after": statistics.median(after) if after else None,
                     "median_wer_before": statistics.median(before) if before else None})
    return rows
