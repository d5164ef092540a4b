"""`ota agent check-config` and the agent's start-up checks: missing pieces are found before an update."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from cli.exit_codes import code_for_error
from cli.main import cli
from device_agent.errors import ConfigError
from device_agent.store import FileStore
from packager.trust import init_repository

ROOT = Path(__file__).resolve().parents[1]


def _device(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    init_repository(FileStore(store, create=True), tmp_path / "keys")
    shutil.copytree(ROOT / "samples", tmp_path / "samples")
    (tmp_path / "samples" / "root.json").write_bytes((tmp_path / "keys" / "root.json").read_bytes())
    config = tmp_path / "samples" / "agent.toml"
    text = config.read_text().replace('"../work/root.json"', '"root.json"')
    text = text.replace("s3://updates/speech?endpoint=http://127.0.0.1:8333", f"file://{store}")
    config.write_text(text)
    return config


def test_check_config_passes_on_a_complete_device(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["agent", "check-config", "--config", str(_device(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "trust_root" in result.output and "12 utterances" in result.output


def test_missing_validation_audio_and_trust_root_are_config_errors(tmp_path: Path) -> None:
    config = _device(tmp_path)
    (tmp_path / "samples" / "audio" / "sample_01.wav").unlink()
    result = CliRunner().invoke(cli, ["agent", "check-config", "--config", str(config)])
    assert result.exit_code == code_for_error(ConfigError("")), result.output
    assert "validation_manifest" in result.output and len(result.output.strip().splitlines()) == 1
    (tmp_path / "samples" / "root.json").write_text(json.dumps({"signed": {"_type": "targets"}}))
    result = CliRunner().invoke(cli, ["agent", "run", "--config", str(config)])  # the daemon checks at start
    assert result.exit_code == code_for_error(ConfigError("")) and "trust_root" in result.output, result.output
    assert not (tmp_path / "work" / "device").exists()  # stopped before touching its data folder


def test_a_misspelt_agent_variable_is_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OTA_AGENT_CHANEL", "beta")
    result = CliRunner().invoke(cli, ["agent", "check-config", "--config", str(_device(tmp_path))])
    assert result.exit_code == 0 and "OTA_AGENT_CHANEL" in result.output and "warning" in result.output
