"""Agent configuration: a flat TOML file plus OTA_AGENT_<KEY> environment overrides.

Every value is checked in `__post_init__`; a bad one raises ConfigError
naming the key and what was expected. Relative paths resolve against the
config file's folder, so a device image can ship `agent.toml` next to its data.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from device_agent.errors import ConfigError

ENV_PREFIX = "OTA_AGENT_"
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_PATH_KEYS = ("data_dir", "trust_root", "validation_manifest")


@dataclass(frozen=True)
class AgentConfig:
    # where updates come from and who this device is
    store_url: str
    model_id: str
    device_id: str
    data_dir: Path
    trust_root: Path  # root.json the device shipped with
    validation_manifest: Path  # local JSONL for the WER gate and self-test
    channel: str = "stable"
    report_store_url: str | None = None  # telemetry destination; default: store_url
    # polling
    poll_interval: float = 300.0  # seconds between checks
    poll_jitter: float = 30.0  # + uniform [0, jitter) so a fleet does not poll in lockstep
    # WER gate
    max_wer: float = 0.5  # absolute ceiling for the candidate on local data
    max_wer_regression: float = 0.02  # candidate may be at most this much worse than the current model
    expected_wer_slack: float | None = 0.10  # candidate <= publisher's expected WER + slack (None: ignore)
    # transport
    bandwidth_limit: int | None = None  # bytes/s for bundle downloads (None: unlimited)
    chunk_size: int = 1 << 20  # bytes per ranged GET (and the most a store outage costs again)
    retry_limit: int = 5  # attempts per chunk before TransportError
    retry_backoff: float = 1.0  # seconds, doubled per retry
    retry_backoff_max: float = 30.0
    max_hops: int = 8  # bundles applied in one check (a plan may chain full + diffs)
    heartbeat_interval: float = 3600.0  # seconds between unchanged heartbeats (a change is sent at once)

    def __post_init__(self) -> None:
        for key in ("store_url", "model_id", "device_id", "channel"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"agent config {key}: expected a non-empty string, got {value!r}")
        for key in ("model_id", "device_id", "channel"):
            if not _NAME.fullmatch(getattr(self, key)) or getattr(self, key) in (".", ".."):
                raise ConfigError(f"agent config {key}: expected 1-128 of [A-Za-z0-9_.-], got {getattr(self, key)!r}")
        if not self.store_url.startswith(("file://", "s3://")):
            raise ConfigError(f"agent config store_url: expected file:///dir or s3://bucket/..., got {self.store_url!r}")
        if self.report_store_url is not None and (not isinstance(self.report_store_url, str)
                                                  or not self.report_store_url.startswith(("file://", "s3://"))):
            raise ConfigError(f"agent config report_store_url: expected a file:// or s3:// URL, got {self.report_store_url!r}")
        for key in _PATH_KEYS:
            if not isinstance(getattr(self, key), Path):
                raise ConfigError(f"agent config {key}: expected a path, got {getattr(self, key)!r}")
        _number(self, "poll_interval", 0.0, 86400.0 * 7)
        _number(self, "poll_jitter", 0.0, 86400.0)
        _number(self, "max_wer", 0.0, 10.0)
        _number(self, "max_wer_regression", 0.0, 10.0)
        if self.expected_wer_slack is not None:
            _number(self, "expected_wer_slack", 0.0, 10.0)
        if self.bandwidth_limit is not None:
            _integer(self, "bandwidth_limit", 1, 1 << 40)
        _integer(self, "chunk_size", 4096, 1 << 30)
        _integer(self, "retry_limit", 1, 1000)
        _number(self, "retry_backoff", 0.0, 3600.0)
        _number(self, "retry_backoff_max", 0.0, 86400.0)
        _integer(self, "max_hops", 1, 100)
        _number(self, "heartbeat_interval", 0.0, 86400.0 * 7)

    @property
    def reports_url(self) -> str:
        return self.report_store_url or self.store_url

    def to_json(self) -> dict[str, Any]:
        return {f.name: (str(v) if isinstance(v, Path) else v)
                for f in fields(self) for v in [getattr(self, f.name)]}


def _number(cfg: AgentConfig, key: str, low: float, high: float) -> None:
    value = getattr(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ConfigError(f"agent config {key}: expected a number in [{low:g}, {high:g}], got {value!r}")


def _integer(cfg: AgentConfig, key: str, low: int, high: int) -> None:
    value = getattr(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"agent config {key}: expected an integer in [{low}, {high}], got {value!r}")


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(AgentConfig)}


def _from_env(key: str, text: str) -> Any:
    """Environment strings -> the field's type (the check itself stays in __post_init__)."""
    kind = _field_types()[key]
    if "None" in kind and text.strip().lower() in ("", "none"):
        return None
    try:
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise ConfigError(f"agent config {key} (from {ENV_PREFIX}{key.upper()}): expected a number, got {text!r}") from None
    return text


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
                **overrides: Any) -> AgentConfig:
    """TOML file (optional) <- OTA_AGENT_* environment <- keyword overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"agent config file not found: {path} (expected a TOML file)") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"agent config {path}: invalid TOML: {exc}") from None
        base = path.resolve().parent
    known = set(_field_types())
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"agent config has unknown keys {sorted(unknown)}; expected a subset of {sorted(known)}")
    for key in known:
        name = ENV_PREFIX + key.upper()
        if name in env:
            values[key] = _from_env(key, env[name])
    values.update(overrides)
    missing = [f.name for f in fields(AgentConfig)
               if f.default is dataclasses.MISSING and f.name not in values]
    if missing:
        raise ConfigError(f"agent config is missing {missing}; set them in the TOML file or as "
                          f"{', '.join(ENV_PREFIX + m.upper() for m in missing)}")
    for key in _PATH_KEYS:
        value = values[key]
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise ConfigError(f"agent config {key}: expected a path string, got {value!r}")
        p = Path(value).expanduser()
        values[key] = p if p.is_absolute() else base / p
    return AgentConfig(**values)
