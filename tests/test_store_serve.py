"""`ota store serve`: a real SeaweedFS on loopback, usable with the printed exports, stopped by SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device_agent.store import open_store

ROOT = Path(__file__).resolve().parents[1]


def _exports(env_file: Path) -> dict[str, str]:
    return {k.removeprefix("export "): v.strip("'") for k, v in
            (line.split("=", 1) for line in env_file.read_text().splitlines())}


@pytest.mark.slow
def test_serve_prints_a_working_store_and_stops_on_sigterm(tmp_path: Path) -> None:
    env_file = tmp_path / "store.env"
    cmd = [sys.executable, "-m", "cli.main", "store", "serve", "--dir", str(tmp_path / "weed"), "--port", "0",
           "--env-file", str(env_file)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not env_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert env_file.exists(), proc.stderr.read() if proc.poll() is not None else "not ready in 120 s"
        exports = _exports(env_file)
        assert set(exports) >= {"OTA_STORE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        store = open_store(exports["OTA_STORE"], access_key=exports["AWS_ACCESS_KEY_ID"],
                           secret_key=exports["AWS_SECRET_ACCESS_KEY"])
        store.put("probe/hello.txt", b"hello")  # the bucket exists and the credentials work
        assert store.get("probe/hello.txt") == b"hello"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "export OTA_STORE=" in out and "store stopped" in err
    assert not env_file.exists()  # a stale env file would point at a dead store
    assert (tmp_path / "weed" / "credentials.json").stat().st_mode & 0o077 == 0


def test_serve_refuses_a_port_in_use(tmp_path: Path) -> None:
    import socket

    from click.testing import CliRunner

    from cli.exit_codes import code_for_error
    from cli.main import cli
    from device_agent.errors import ConfigError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli, ["store", "serve", "--dir", str(tmp_path / "w"), "--port", str(port)])
    assert result.exit_code == code_for_error(ConfigError("")), result.output
    assert f"port {port}" in result.output and len(result.output.strip().splitlines()) == 1
