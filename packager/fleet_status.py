"""The fleet as the server sees it: devices' heartbeats and update reports, summarised.

Everything here reads what devices wrote into the store, so everything is
untrusted: a record that is oversized, not JSON, or missing a field is
skipped and counted in `Warnings`, never raised. Reports are immutable
(create-only keys), so `ReportReader` fetches each one once and a long-running
controller re-reads only new keys.
"""
from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from device_agent.agent.heartbeat import HEARTBEATS_PREFIX, MAX_HEARTBEAT_BYTES, parse_heartbeat
from device_agent.agent.telemetry import OUTCOMES, REPORT_FORMAT, REPORTS_PREFIX
from device_agent.errors import DataError, OtaError
from device_agent.version import parse_version

MAX_REPORT_BYTES = 16 * 1024  # a report is ~1 KB; anything far larger is not one of ours
# What agents read whose heartbeats do not list their bundle formats: those from before the list, which
# read versions 1 and 2 (version 3, the compact manifest, came with it).
UNLISTED_BUNDLE_FORMATS = (1, 2)
_FETCH_THREADS = 16  # parallel GETs: the store's latency, not our CPU, bounds a full read


@dataclass
class Warnings:
    """Records skipped, by kind ("oversized heartbeat", "malformed report", ...)."""

    counts: Counter = field(default_factory=Counter)

    def add(self, kind: str) -> None:
        self.counts[kind] += 1

    def total(self) -> int:
        return sum(self.counts.values())


def parse_report(data: bytes) -> dict[str, Any] | None:
    """A device report, or None if oversized or malformed."""
    if len(data) > MAX_REPORT_BYTES:
        return None
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT or doc.get("outcome") not in OUTCOMES:
        return None
    for name in ("device_id", "model_id", "channel"):
        if not isinstance(doc.get(name), str):
            return None
    try:
        doc.update(_report_versions(doc))
    except DataError:
        return None
    for name in ("wer_before", "wer_after"):
        value = doc.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0.0 <= value < 100.0):
            doc[name] = None  # a nonsense WER is dropped, the outcome still counts
    # fields the readers compare or look up (the controller orders by finished_at and looks error_class up
    # in a set): a wrong type skips the report instead of stopping `ota fleet status` or the controller
    for name, kinds in (("finished_at", (int, float)), ("error_class", (str,)), ("kind", (str,))):
        value = doc.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            return None
    return doc


def _report_versions(doc: dict[str, Any]) -> dict[str, int]:
    """A report's versions as integers (earlier releases sent decimal strings); DataError if one is not."""
    return {name: parse_version(doc[name], name, DataError, legacy_text=True)
            for name in ("from_version", "to_version") if doc.get(name) is not None}


def _fetch_all(store, keys: list[str]) -> list[tuple[str, bytes | None]]:
    def get(key: str) -> tuple[str, bytes | None]:
        try:
            # a ranged read bounds what a hostile multi-GB "report" costs us
            return key, store.get_range(key, 0, MAX_REPORT_BYTES + 1)
        except OtaError:
            return key, None  # deleted meanwhile or unreadable: skipped
    if len(keys) < 4:
        return [get(k) for k in keys]
    with ThreadPoolExecutor(_FETCH_THREADS) as pool:
        return list(pool.map(get, keys))


class ReportReader:
    """Reads `reports/<model>/<channel>/...` incrementally: each key is fetched once."""

    def __init__(self, store, model_id: str | None = None, channel: str | None = None) -> None:
        self.store = store
        self.prefix = REPORTS_PREFIX + (f"{model_id}/" if model_id else "")
        if model_id and channel:
            self.prefix += f"{channel}/"
        self.reports: dict[str, dict[str, Any]] = {}
        self.skipped: set[str] = set()
        self.warnings = Warnings()

    def read(self) -> list[dict[str, Any]]:
        keys = [k for k in self.store.list(self.prefix) if k.endswith(".json")]
        new = [k for k in keys if k not in self.reports and k not in self.skipped]
        for key, data in _fetch_all(self.store, new):
            if data is None:
                continue
            doc = parse_report(data)
            if doc is None:
                self.skipped.add(key)
                self.warnings.add("oversized report" if len(data) > MAX_REPORT_BYTES else "malformed report")
                continue
            self.reports[key] = doc
        return list(self.reports.values())


def read_heartbeats(store, model_id: str | None, warnings: Warnings,
                    channel: str | None = None) -> list[dict[str, Any]]:
    """Heartbeats of every device, or of one model's (and one channel's: with `model_id`) devices."""
    prefix = HEARTBEATS_PREFIX + (f"{model_id}/" if model_id else "") + (f"{channel}/" if model_id and channel else "")
    beats = []
    for key, data in _fetch_all(store, [k for k in store.list(prefix) if k.endswith(".json")]):
        if data is None:
            continue
        doc = parse_heartbeat(data)
        if doc is None:
            warnings.add("oversized heartbeat" if len(data) > MAX_HEARTBEAT_BYTES else "malformed heartbeat")
            continue
        beats.append(doc)
    return beats


def bundle_formats(beat: dict[str, Any]) -> tuple[int, ...]:
    """The bundle format versions a device's agent reads, from its heartbeat."""
    listed = beat.get("bundle_formats")
    return UNLISTED_BUNDLE_FORMATS if listed is None else tuple(listed)


def devices_unable_to_read(store, model_id: str, channel: str, format_version: int) -> tuple[list[str], int]:
    """(ids of the devices on `channel` whose agents do not read bundle format `format_version`, devices
    on the channel), from their heartbeats. A device that never sent one is not known here."""
    # only that channel's keys are fetched: a publish reads one channel's devices, not the whole fleet's
    beats = [b for b in read_heartbeats(store, model_id, Warnings(), channel) if b["channel"] == channel]
    return sorted(b["device_id"] for b in beats if format_version not in bundle_formats(b)), len(beats)


def distribution(values: Iterable[float]) -> dict[str, float] | None:
    """n, min, p10, median, p90, max of `values` (None if empty)."""
    xs = sorted(values)
    if not xs:
        return None

    def q(p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))], 4)

    return {"n": len(xs), "min": round(xs[0], 4), "p10": q(0.1), "median": q(0.5), "p90": q(0.9),
            "max": round(xs[-1], 4)}


def _release_order(group: tuple[tuple[str, str, int | None], Any]) -> tuple[str, str, int]:
    mid, channel, version = group[0]
    return mid, channel, -1 if version is None else version


def release_rows(reports: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, channel, version): attempts by outcome, devices, WER before/after."""
    groups: dict[tuple[str, str, int | None], list[dict[str, Any]]] = {}
    for r in reports:
        # an operator rollback counts against the version it left
        version = r.get("from_version") if r.get("kind") == "rollback" else r.get("to_version")
        groups.setdefault((r["model_id"], r["channel"], version), []).append(r)
    rows = []
    for (mid, channel, version), rs in sorted(groups.items(), key=_release_order):
        counts = {o: sum(r["outcome"] == o for r in rs) for o in OUTCOMES}
        after = [r["wer_after"] for r in rs if r.get("wer_after") is not None]
        before = [r["wer_before"] for r in rs if r.get("wer_before") is not None]
        deltas = [r["wer_after"] - r["wer_before"] for r in rs
                  if r.get("wer_after") is not None and r.get("wer_before") is not None]
        rows.append({"model_id": mid, "channel": channel, "version": version, "attempts": len(rs), **counts,
                     "devices": len({r["device_id"] for r in rs}),
                     "median_wer_after": statistics.median(after) if after else None,
                     "median_wer_before": statistics.median(before) if before else None,
                     "wer_before": distribution(before), "wer_after": distribution(after),
                     "wer_change": distribution(deltas)})
    return rows


def _expired(beat: dict[str, Any], now: datetime) -> bool:
    text = beat.get("metadata_expires")
    if not text:
        return False
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) <= now
    except ValueError:
        return False


def fleet_summary(store, model_id: str | None = None, *, now: datetime | None = None,
                  reader: ReportReader | None = None) -> dict[str, Any]:
    """Versions per channel, failing devices and why, releases with WER distributions,
    and how many records were ignored."""
    now = now or datetime.now(timezone.utc)
    reader = reader or ReportReader(store, model_id)
    reports = reader.read()
    warnings = Warnings(Counter(reader.warnings.counts))
    beats = read_heartbeats(store, model_id, warnings)

    versions: dict[str, Counter] = {}
    formats: dict[str, Counter] = {}  # per channel: devices by the newest bundle format their agent reads
    failing = []
    reasons: Counter = Counter()
    for b in beats:
        channel = f"{b['model_id']}/{b['channel']}"
        versions.setdefault(channel, Counter())[str(b.get("version"))] += 1
        formats.setdefault(channel, Counter())[str(max(bundle_formats(b), default=0))] += 1
        if b["consecutive_failures"] > 0:
            reason = b.get("reason") or "other error"
            if reason != "metadata expired" and _expired(b, now):
                reason = "metadata expired"  # the trusted copy ran out, whatever the last error said
            reasons[reason] += 1
            failing.append({"device_id": b["device_id"], "channel": b["channel"], "version": b.get("version"),
                            "reason": reason, "error_class": b.get("error_class"),
                            "consecutive_failures": b["consecutive_failures"], "error": b.get("error")})
    failing.sort(key=lambda f: (-f["consecutive_failures"], f["device_id"]))
    return {"devices": len(beats),
            "versions": {ch: dict(sorted(c.items())) for ch, c in sorted(versions.items())},
            "newest_bundle_format": {ch: dict(sorted(c.items())) for ch, c in sorted(formats.items())},
            "failing": {"devices": len(failing), "by_reason": dict(reasons.most_common()), "worst": failing[:20]},
            "releases": release_rows(reports),
            "ignored": dict(warnings.counts)}
