"""Shared fixtures: one real SeaweedFS per test session, a fresh bucket per test.

SeaweedFS starts lazily (only when a test asks for `seaweed`, `bucket` or
`s3_store`) on loopback with free ports, and is stopped at session end.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent.errors import ConfigError
from demo.seaweed import SeaweedEndpoint, local_seaweedfs, weed_binary
from device_agent.store import FileStore, S3Store


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedEndpoint]:
    try:
        weed_binary()
    except ConfigError as exc:
        pytest.skip(str(exc))
    started = time.monotonic()
    with local_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as endpoint:
        print(f"\nSeaweedFS ready at {endpoint.endpoint_url} in {time.monotonic() - started:.1f} s")
        yield endpoint


def s3_client(endpoint: SeaweedEndpoint):  # noqa: ANN201 - a boto3 client
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint.endpoint_url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=endpoint.region,
    )


@pytest.fixture
def bucket(seaweed: SeaweedEndpoint) -> str:
    """A new, empty bucket for this test (the server is thrown away at the end)."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_client(seaweed).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_store(seaweed: SeaweedEndpoint, bucket: str) -> S3Store:
    return S3Store(
        bucket, "repo", endpoint_url=seaweed.endpoint_url,
        access_key=seaweed.access_key, secret_key=seaweed.secret_key,
    )


@pytest.fixture
def file_store(tmp_path: Path) -> FileStore:
    (tmp_path / "store").mkdir()
    return FileStore(tmp_path / "store")


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest) -> FileStore | S3Store:
    """Each test using `store` runs once per backend."""
    return request.getfixturevalue(f"{request.param}_store")
