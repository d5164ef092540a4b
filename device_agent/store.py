"""Blob storage by key, with conditional writes: a local directory or S3.

`Store` is the whole interface the server and the device use to move bytes;
`open_store(url)` builds one from `file:///abs/dir` or
`s3://bucket/prefix?endpoint=http://127.0.0.1:8333&region=us-east-1`.

Keys are relative `/`-separated paths (`metadata/1.root.json`). Every
failure is one of the project's errors (device_agent.errors) with a one-line
message saying what was expected:

    unreachable endpoint        -> StoreUnreachableError
    bad or missing credentials  -> StoreAuthError
    absent bucket / root / key  -> StoreNotFoundError
    failed write precondition   -> StoreConflictError
    disk full (ENOSPC)          -> DiskFullError

Conditional writes are the publish lock. `put(..., if_none_match=True)`
creates a key only if it is absent; `put(..., if_match=etag)` replaces it
only if it still has that ETag. Exactly one of several racing writers with
the same precondition succeeds; the others get StoreConflictError.

- FileStore: an exclusive `fcntl.flock` on one lock file serialises the
  check and the `os.replace` of every write and delete, so the guarantee
  holds between processes on one host (and on NFS only where flock works).
- S3Store: the precondition is sent as `If-None-Match: *` / `If-Match` on
  PutObject and CompleteMultipartUpload, so the server decides atomically.
  SeaweedFS 4.48 honours both (measured: 16 racing writers, 10 rounds, one
  winner each time); AWS S3 has since 2024. Limits: a SeaweedFS cluster with
  several filers gives the guarantee only for writes that go through the same
  filer, and a server that ignores the headers would silently break it; no
  lease protocol is needed with the servers we target.
"""
from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from device_agent.atomic import fsync_dir
from device_agent.errors import (
    ConfigError,
    OtaError,
    StoreAuthError,
    StoreConflictError,
    StoreNotFoundError,
    StoreUnreachableError,
    TransportError,
    os_error,
)

Progress = Callable[[int, int], None]
"""Called as `progress(bytes_done, bytes_total)` while a file uploads."""

_CHUNK = 1 << 20
# S3 parts must be >= 5 MiB except the last; 8 MiB keeps part counts low.
MULTIPART_THRESHOLD = 8 << 20
PART_SIZE = 8 << 20


@dataclass(frozen=True)
class ObjectInfo:
    """What `head` knows about an object: its size and an opaque version tag."""

    size: int
    etag: str


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative path, else raise ConfigError."""
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or any(p in ("", ".", "..") for p in parts)
        or parts[0] == FileStore.INTERNAL_DIR
    ):
        raise ConfigError(f"store key {key!r}: expected a relative path like 'a/b.json' without '.', '..' or empty parts")
    return key


class Store(abc.ABC):
    """Blob storage by key. Implementations raise only device_agent.errors."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Return the whole object; StoreNotFoundError if absent."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Return bytes [start, end) like a slice: shorter (or empty) past the end of the object."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Return size and ETag, or None if the key is absent."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> ObjectInfo:
        """Write atomically; with a precondition, StoreConflictError if it does not hold."""

    @abc.abstractmethod
    def put_file(
        self,
        key: str,
        path: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        """Upload a local file (streamed; multipart on S3 when large)."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Return the sorted keys that start with `prefix` (a plain string prefix)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; deleting an absent key is not an error (as on S3)."""

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The URL `open_store` would take to open this store again."""


def _check_preconditions(if_match: str | None, if_none_match: bool) -> None:
    if if_match is not None and if_none_match:
        raise ConfigError("put: expected at most one of if_match and if_none_match")


def _os_error(exc: OSError, what: str) -> OtaError:
    """The project's mapping (errors.os_error), where a missing file is an absent object and
    a forbidden one a store that refuses us."""
    return os_error(exc, what, missing=StoreNotFoundError, denied=StoreAuthError)


# --- local directory ------------------------------------------------------------
class FileStore(Store):
    """A directory as a store. Writes are temp file + fsync + `os.replace`.

    `root_dir` must exist unless `create=True` (like a bucket, a missing root
    is an error rather than silently created). Internal files (the lock and
    temp files) live under `root_dir/.ota-store/`, which `list` never shows.
    The ETag is the MD5 of the content, as S3 gives for single-part uploads
    (a stat-based tag could repeat when an inode is reused within one clock
    tick, letting a stale If-Match through); `head` therefore reads the file.
    """

    INTERNAL_DIR = ".ota-store"

    def __init__(self, root_dir: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = Path(root_dir).absolute()
        self._create = create

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    # -- helpers
    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _check_root(self) -> None:
        if self.root.is_dir():
            return
        if self._create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                return
            except OSError as exc:
                raise _os_error(exc, f"creating store root {self.root}") from exc
        raise StoreNotFoundError(f"store root {self.root} does not exist; expected an existing directory")

    def _internal(self) -> Path:
        path = self.root / self.INTERNAL_DIR
        path.mkdir(exist_ok=True)
        return path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One lock for the whole store: writes are rare and short (only the
        # check and the rename happen under it), and one lock file leaves no litter.
        with open(self._internal() / "lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _info(path: Path) -> ObjectInfo | None:
        try:
            with open(path, "rb") as f:
                digest = hashlib.md5(usedforsecurity=False)
                size = 0
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return ObjectInfo(size, f'"{digest.hexdigest()}"')

    # -- reads
    def get(self, key: str) -> bytes:
        return self._read(key, 0, None)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        if start < 0 or end < start:
            raise ConfigError(f"get_range {key}: expected 0 <= start <= end, got {start}, {end}")
        return self._read(key, start, end)

    def _read(self, key: str, start: int, end: int | None) -> bytes:
        path = self._path(key)
        self._check_root()
        try:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read() if end is None else f.read(end - start)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise StoreNotFoundError(f"key {key!r} not found in {self.url}") from None
        except OSError as exc:
            raise _os_error(exc, f"reading {path}") from exc

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        self._check_root()
        return self._info(path)

    def list(self, prefix: str = "") -> list[str]:
        self._check_root()
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            if rel == ".":
                rel = ""
                dirnames[:] = [d for d in dirnames if d != self.INTERNAL_DIR]
            for name in filenames:
                key = f"{rel}/{name}" if rel else name
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    # -- writes
    def put(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> ObjectInfo:
        def write(f: Any) -> None:
            f.write(data)

        return self._write(key, write, if_match, if_none_match)

    def put_file(
        self,
        key: str,
        path: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        try:
            total = os.path.getsize(path)
            src = open(path, "rb")
        except OSError as exc:
            raise _os_error(exc, f"reading {path}") from exc

        def write(f: Any) -> None:
            done = 0
            with src:
                while chunk := src.read(_CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)

        return self._write(key, write, if_match, if_none_match)

    def _write(self, key: str, write: Callable[[Any], None], if_match: str | None, if_none_match: bool) -> ObjectInfo:
        _check_preconditions(if_match, if_none_match)
        dest = self._path(key)
        self._check_root()
        tmp_name = None
        try:
            # 1) write the new bytes outside the lock (may be slow)
            with tempfile.NamedTemporaryFile(dir=self._internal(), prefix="tmp-", delete=False) as tmp:
                tmp_name = tmp.name
                write(tmp)
                tmp.flush()
                os.fsync(tmp.fileno())
            dest.parent.mkdir(parents=True, exist_ok=True)
            # 2) check the precondition and publish under the lock
            with self._locked():
                current = self._info(dest)
                if if_none_match and current is not None:
                    raise StoreConflictError(f"key {key!r} already exists in {self.url}; expected it to be absent")
                if if_match is not None and (current is None or current.etag != if_match):
                    found = "absent" if current is None else f"ETag {current.etag}"
                    raise StoreConflictError(f"key {key!r} in {self.url} changed: expected ETag {if_match}, found {found}")
                os.replace(tmp_name, dest)
                tmp_name = None
                info = self._info(dest)
            fsync_dir(dest.parent)
        except OSError as exc:
            raise _os_error(exc, f"writing {dest}") from exc
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
        assert info is not None
        return info

    def delete(self, key: str) -> None:
        path = self._path(key)
        self._check_root()
        try:
            with self._locked():
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise _os_error(exc, f"deleting {path}") from exc


# --- S3 ---------------------------------------------------------------------------
class _RangeNotSatisfiable(TransportError):
    """HTTP 416; never escapes S3Store.get_range, which returns b"" instead."""


class S3Store(Store):
    """An S3 bucket (optionally under a key prefix) via boto3.

    Credentials come from boto3's standard chain (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, profiles) unless passed.
    The bucket must exist: it is checked once per instance before the first
    operation, because some servers (SeaweedFS) silently create a bucket on
    PutObject, which would hide a typo in the URL.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
        max_attempts: int = 2,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.region = region
        session = boto3.session.Session(
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=session_token,
            region_name=region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
        )
        self._client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
                # path-style works with SeaweedFS/MinIO and plain IP endpoints
                s3={"addressing_style": "path"},
            ),
        )
        self._bucket_checked = False

    @property
    def url(self) -> str:
        base = f"s3://{self.bucket}/{self.prefix}"
        return base + (f"?endpoint={self.endpoint_url}" if self.endpoint_url else "")

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    @property
    def _where(self) -> str:
        return self.endpoint_url or "the default AWS S3 endpoint"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, op: str, key: str | None, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """Run one botocore call; re-raise every failure as a project error."""
        from botocore import exceptions as bx

        if not self._bucket_checked and op != "head_bucket":
            self._check_bucket()
        what = f"{op} s3://{self.bucket}/{self.prefix}{key or ''}"
        try:
            return fn(**kwargs)
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError, bx.ConnectionClosedError) as exc:
            raise StoreUnreachableError(
                f"{what}: cannot reach S3 endpoint {self._where}; expected an S3 server answering there ({exc})"
            ) from None
        except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
            raise StoreAuthError(
                f"{what}: no usable credentials ({exc}); expected AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from None
        except bx.ClientError as exc:
            raise self._client_error(what, key, exc) from None
        except bx.BotoCoreError as exc:
            raise TransportError(f"{what}: {exc}") from None

    def _client_error(self, what: str, key: str | None, exc: Any) -> OtaError:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = err.get("Message", "")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken", "ExpiredToken") or status == 403:
            return StoreAuthError(f"{what}: access denied by {self._where} ({code}); expected valid credentials with access to bucket {self.bucket!r}")
        if code == "NoSuchBucket":
            return StoreNotFoundError(f"{what}: bucket {self.bucket!r} does not exist at {self._where}; expected an existing bucket")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return StoreNotFoundError(f"{what}: key not found; expected an existing object")
        if code == "InvalidRange" or status == 416:
            return _RangeNotSatisfiable(f"{what}: range starts past the end of the object")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return StoreConflictError(f"{what}: another writer changed the key first ({code}); expected the precondition to hold")
        return TransportError(f"{what}: S3 error {code} (HTTP {status}): {message}")

    def _check_bucket(self) -> None:
        try:
            self._call("head_bucket", None, self._client.head_bucket, Bucket=self.bucket)
        except StoreNotFoundError:
            raise StoreNotFoundError(f"bucket {self.bucket!r} does not exist at {self._where}; expected an existing bucket") from None
        self._bucket_checked = True

    # -- reads
    def get(self, key: str) -> bytes:
        resp = self._call("get", key, self._client.get_object, Bucket=self.bucket, Key=self._key(key))
        return self._read_body(key, resp)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        if start < 0 or end < start:
            raise ConfigError(f"get_range {key}: expected 0 <= start <= end, got {start}, {end}")
        if end == start:
            return b""
        try:
            resp = self._call(
                "get_range", key, self._client.get_object,
                Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end - 1}",
            )
        except _RangeNotSatisfiable:
            # 416: start is at or past the end of the object -> empty, like a slice.
            return b""
        return self._read_body(key, resp)

    def _read_body(self, key: str, resp: Any) -> bytes:
        from botocore import exceptions as bx

        try:
            return resp["Body"].read()
        except (bx.BotoCoreError, OSError) as exc:
            raise StoreUnreachableError(f"reading s3://{self.bucket}/{self._key(key)} from {self._where} failed mid-body: {exc}") from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self._call("head", key, self._client.head_object, Bucket=self.bucket, Key=self._key(key))
        except StoreNotFoundError:
            return None
        return ObjectInfo(int(resp["ContentLength"]), resp["ETag"])

    def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
            if token:
                kwargs["ContinuationToken"] = token
            resp = self._call("list", prefix, self._client.list_objects_v2, **kwargs)
            keys += [obj["Key"][len(self.prefix):] for obj in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                return sorted(keys)
            token = resp["NextContinuationToken"]

    # -- writes
    @staticmethod
    def _conditions(if_match: str | None, if_none_match: bool) -> dict[str, str]:
        _check_preconditions(if_match, if_none_match)
        if if_none_match:
            return {"IfNoneMatch": "*"}
        return {"IfMatch": if_match} if if_match is not None else {}

    def put(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> ObjectInfo:
        cond = self._conditions(if_match, if_none_match)
        resp = self._call("put", key, self._client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data, **cond)
        return ObjectInfo(len(data), resp["ETag"])

    def put_file(
        self,
        key: str,
        path: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        cond = self._conditions(if_match, if_none_match)
        try:
            total = os.path.getsize(path)
            src = open(path, "rb")
        except OSError as exc:
            raise _os_error(exc, f"reading {path}") from exc
        with src:
            if total < MULTIPART_THRESHOLD:
                data = src.read()
                info = self.put(key, data, if_match=if_match, if_none_match=if_none_match)
                if progress:
                    progress(total, total)
                return info
            return self._multipart(key, src, total, cond, progress)

    def _multipart(self, key: str, src: Any, total: int, cond: dict[str, str], progress: Progress | None) -> ObjectInfo:
        full = self._key(key)
        upload = self._call("create_multipart_upload", key, self._client.create_multipart_upload, Bucket=self.bucket, Key=full)
        upload_id = upload["UploadId"]
        try:
            parts = []
            done = 0
            number = 1
            while chunk := src.read(PART_SIZE):
                resp = self._call(
                    "upload_part", key, self._client.upload_part,
                    Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=chunk,
                )
                parts.append({"PartNumber": number, "ETag": resp["ETag"]})
                done += len(chunk)
                number += 1
                if progress:
                    progress(done, total)
            # The precondition goes on Complete: that is the moment the key changes.
            resp = self._call(
                "complete_multipart_upload", key, self._client.complete_multipart_upload,
                Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}, **cond,
            )
        except BaseException:
            # Abort so the server frees the parts; never mask the original error.
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise
        return ObjectInfo(total, resp["ETag"])

    def delete(self, key: str) -> None:
        self._call("delete", key, self._client.delete_object, Bucket=self.bucket, Key=self._key(key))


# --- URLs -------------------------------------------------------------------------
def _check_endpoint(url: str, endpoint: str) -> None:
    """An endpoint must be http(s)://host[:port] (boto3 raises a bare ValueError otherwise)."""
    try:
        parsed = urlparse(endpoint)
        ok = parsed.scheme in ("http", "https") and bool(parsed.hostname) and (parsed.port is None or parsed.port > 0)
    except ValueError:  # bad port, unbalanced IPv6 brackets
        ok = False
    if not ok:
        raise ConfigError(f"store URL {url!r:.200}: endpoint {endpoint!r:.80} is not a URL; "
                          "expected endpoint=http://host:port")


def open_store(url: str, **s3_options: Any) -> Store:
    """Open `file:///abs/dir` or `s3://bucket/prefix?endpoint=URL&region=R`.

    S3 credentials come from the standard AWS environment variables unless
    passed in `s3_options` (access_key=, secret_key=, ...).
    """
    if not isinstance(url, str):
        raise ConfigError(f"store URL {url!r:.80}: expected a file:// or s3:// URL string")
    try:
        parsed = urlparse(url)
    except ValueError as exc:
        raise ConfigError(f"store URL {url!r:.200}: {exc}; expected a file:// or s3:// URL") from None
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path:
            raise ConfigError(f"store URL {url!r}: expected file:///absolute/path")
        return FileStore(unquote(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"store URL {url!r}: expected s3://bucket[/prefix][?endpoint=http://host:port]")
        query = parse_qs(parsed.query)
        unknown = set(query) - {"endpoint", "region"}
        if unknown:
            raise ConfigError(f"store URL {url!r}: unknown parameter(s) {sorted(unknown)}; expected endpoint= and region=")
        endpoint = query.get("endpoint", [None])[0]
        if endpoint is not None:
            _check_endpoint(url, endpoint)
        return S3Store(
            parsed.netloc,
            unquote(parsed.path),
            endpoint_url=endpoint,
            region=query.get("region", [None])[0],
            **s3_options,
        )
    raise ConfigError(f"store URL {url!r}: expected a file:// or s3:// URL")
