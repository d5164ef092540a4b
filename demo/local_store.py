"""`ota store serve`: a local SeaweedFS S3 store that runs until Ctrl-C or SIGTERM.

Unlike the throw-away servers of tests and the demo, it listens on a known
port (8333 by default) and keeps its data and credentials in one folder, so a
restart serves the same store with the same keys.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from demo.seaweed import SeaweedEndpoint, SeaweedServer
from device_agent.errors import ConfigError, StoreUnreachableError

CREDENTIALS = "credentials.json"


def serve_local_store(data_dir: str | os.PathLike[str], *, port: int = 8333, bucket: str = "updates",
                      prefix: str = "speech", ready: Callable[[dict[str, str]], None] = lambda _: None) -> None:
    """Run until SIGINT/SIGTERM; `ready(exports)` gets OTA_STORE and the AWS_* variables once
    the store accepts writes and `bucket` exists."""
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    if port:
        _check_port_free(port)
    access_key, secret_key = _credentials(data)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with SeaweedServer(data, access_key=access_key, secret_key=secret_key, s3_port=port or None) as server:
            _ensure_bucket(server.endpoint, bucket)
            ready({"OTA_STORE": f"s3://{bucket}/{prefix}?endpoint={server.endpoint.endpoint_url}",
                   **server.endpoint.aws_env()})
            while not stop.wait(0.5):
                if not server.running:
                    raise StoreUnreachableError(f"the weed server stopped by itself; see {data / 'weed.log'}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(f"port {port} on 127.0.0.1 is in use; expected a free port "
                              "(another store running? --port 0 picks a free one)") from None


def _credentials(data: Path) -> tuple[str, str]:
    """The store's S3 keys, made once and kept (0600) with its data."""
    path = data / CREDENTIALS
    if path.is_file():
        doc = json.loads(path.read_text())
        return doc["access_key"], doc["secret_key"]
    access_key, secret_key = "ota" + secrets.token_hex(8), secrets.token_hex(20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # secret from the first byte
    with os.fdopen(fd, "w") as f:
        json.dump({"access_key": access_key, "secret_key": secret_key}, f)
    return access_key, secret_key


def _ensure_bucket(endpoint: SeaweedEndpoint, bucket: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint.endpoint_url, aws_access_key_id=endpoint.access_key,
                          aws_secret_access_key=endpoint.secret_key, region_name=endpoint.region)
    try:
        client.create_bucket(Bucket=bucket)
    except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
        pass
