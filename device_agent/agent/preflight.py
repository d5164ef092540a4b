"""Checks an agent runs at start (and `ota agent check-config` runs on demand): everything an
update will need is there now, rather than found missing in the middle of an update."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

from device_agent.agent.config import ENV_PREFIX, AgentConfig
from device_agent.errors import ConfigError, OtaError

# Environment variables with the agent's prefix that are not config keys but are still meant.
_OTHER_AGENT_VARIABLES = {"OTA_AGENT_CONFIG"}


def unknown_env_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """OTA_AGENT_* variables that set nothing (a misspelt key would otherwise be ignored silently)."""
    env = os.environ if env is None else env
    known = {ENV_PREFIX + f.name.upper() for f in fields(AgentConfig)} | _OTHER_AGENT_VARIABLES
    return sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known)


def check_config(cfg: AgentConfig) -> list[str]:
    """Raise ConfigError naming the first unusable setting; returns one line per check that passed."""
    passed = [_check_trust_root(cfg.trust_root), _check_validation(cfg.validation_manifest),
              _check_data_dir(cfg.data_dir)]
    from device_agent.store import open_store  # URL syntax only: nothing is contacted

    for key in ("store_url", "report_store_url"):
        url = getattr(cfg, key)
        if url is not None:
            try:
                open_store(url)
            except OtaError as exc:
                raise ConfigError(f"agent config {key}: {exc}") from None
    passed.append(f"store_url {cfg.store_url}: well-formed")
    return passed


def _check_trust_root(path: Path) -> str:
    try:
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"agent config trust_root: cannot read {path} ({exc.strerror or exc}); "
                          "expected the repository's root.json (ota repo init --root-out)") from None
    except ValueError:
        raise ConfigError(f"agent config trust_root: {path} is not JSON; expected TUF root metadata") from None
    signed = doc.get("signed") if isinstance(doc, dict) else None
    if not isinstance(signed, dict) or signed.get("_type") != "root":
        raise ConfigError(f"agent config trust_root: {path} is not TUF root metadata (expected signed._type 'root')")
    return f"trust_root {path}: root metadata version {signed.get('version')}"


def _check_validation(path: Path) -> str:
    from device_agent.manifest import read_manifest

    try:
        utterances = read_manifest(path, check_audio=True)
    except OtaError as exc:
        raise ConfigError(f"agent config validation_manifest: {exc}") from None
    if not utterances:
        raise ConfigError(f"agent config validation_manifest: {path} has no utterances; the WER gate needs some")
    return f"validation_manifest {path}: {len(utterances)} utterances, audio present"


def _check_data_dir(path: Path) -> str:
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"agent config data_dir: {path} cannot be created or written (at {existing}); "
                          "expected a writable folder")
    return f"data_dir {path}: writable"
