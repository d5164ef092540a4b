"""Device side of TUF: verify repository metadata and targets read from a Store.

`TrustedUpdater` wraps python-tuf's ngclient `Updater` (which does all the
checks of the TUF client workflow) with:

- `StoreFetcher`, a `FetcherInterface` that reads keys from a `Store` (file
  or S3) in bounded chunks, so the ngclient's length caps stop endless data
  after at most one chunk;
- all-or-nothing refreshes: the ngclient runs on a staging copy of the
  metadata dir, and only a refresh that completes is copied back (roots
  first, timestamp last, each file by temp file + os.replace). A refresh that
  fails leaves `metadata_dir` exactly as it was; the cost is that verified
  but unused newer metadata is downloaded again next time;
- the project's errors: any tuf RepositoryError (bad signature, version,
  expiry, hash, length) -> TrustError with tuf's message; more bytes than the
  signed length -> TrustError; transport failures keep their Store error
  (StoreUnreachableError, StoreAuthError, StoreNotFoundError ...).

Delegated targets roles are not supported (the repository never makes them).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from device_agent.atomic import fsync_dir, write_atomic
from device_agent.errors import (MetadataExpiredError, OtaError, StoreNotFoundError,
                                 StoreUnreachableError, TransportError, TrustError, os_error)
from device_agent.store import Store

_URL_SCHEME = "store:"
METADATA_URL = _URL_SCHEME + "metadata/"
TARGETS_PREFIX = "targets/"
DEFAULT_CHUNK = 1 << 20


@dataclass(frozen=True)
class TargetInfo:
    """A target as the signed targets metadata describes it."""

    name: str
    length: int
    hashes: dict[str, str]
    custom: dict[str, Any] = field(default_factory=dict)

    @property
    def store_key(self) -> str:
        """Hash-prefixed key of the file in the store (consistent snapshots)."""
        directory, sep, base = self.name.rpartition("/")
        first_hash = next(iter(self.hashes.values()))  # the same choice ngclient makes
        return f"{TARGETS_PREFIX}{directory}{sep}{first_hash}.{base}"


def verify_target(info: TargetInfo, data: bytes | IO[bytes]) -> None:
    """Raise TrustError unless `data` (bytes or a file object at offset 0) has the
    signed length and hashes. Usable on its own, e.g. after a resumed download."""
    try:
        TargetFile(info.length, info.hashes, info.name).verify_length_and_hashes(data)
    except tuf_exc.LengthOrHashMismatchError as exc:
        raise TrustError(f"target {info.name}: {exc}; expected the signed length {info.length} and hashes") from None


class StoreFetcher(FetcherInterface):
    """Serve ngclient's `store:<key>` URLs from a Store, `chunk_size` bytes per request."""

    def __init__(self, store: Store, chunk_size: int = DEFAULT_CHUNK) -> None:
        self.store = store
        self.chunk_size = chunk_size
        # Named in error messages: tuf's own messages do not say which file failed.
        self.last_key: str | None = None

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(_URL_SCHEME):
            raise tuf_exc.DownloadError(f"expected a {_URL_SCHEME} URL, got {url}")
        key = url[len(_URL_SCHEME):]
        self.last_key = key
        # The first read is eager so a missing key surfaces as the 404 that
        # ngclient expects (it ends the search for newer root versions).
        first = self._read(key, 0)
        return self._chunks(key, first)

    def _read(self, key: str, start: int) -> bytes:
        try:
            return self.store.get_range(key, start, start + self.chunk_size)
        except StoreNotFoundError as exc:
            raise tuf_exc.DownloadHTTPError(str(exc), 404) from exc

    def _chunks(self, key: str, chunk: bytes) -> Iterator[bytes]:
        offset = 0
        while chunk:
            yield chunk
            offset += len(chunk)
            if len(chunk) < self.chunk_size:
                return
            chunk = self._read(key, offset)


@contextlib.contextmanager
def _project_errors(what: str, fetcher: StoreFetcher | None = None) -> Iterator[None]:
    """Re-raise tuf and OS errors as the project's errors, keeping tuf's message
    (and naming the last file read from the store, which tuf does not)."""
    try:
        yield
    except OtaError:
        raise
    except tuf_exc.ExpiredMetadataError as exc:
        where = f" (last file read: {fetcher.last_key})" if fetcher and fetcher.last_key else ""
        raise MetadataExpiredError(f"{what}: ExpiredMetadataError: {exc}{where}; expected the repository to re-sign it "
                                   "(ota repo refresh)") from None
    except tuf_exc.RepositoryError as exc:
        where = f" (last file read: {fetcher.last_key})" if fetcher and fetcher.last_key else ""
        raise TrustError(f"{what}: {type(exc).__name__}: {exc}{where}") from None
    except tuf_exc.DownloadLengthMismatchError as exc:
        # More bytes than the signed (or configured maximum) length: hostile data.
        where = f" from {fetcher.last_key}" if fetcher and fetcher.last_key else ""
        raise TrustError(f"{what}: endless data{where}: {exc}") from None
    except tuf_exc.DownloadHTTPError as exc:
        if exc.status_code == 404:
            raise StoreNotFoundError(f"{what}: {exc}") from None
        raise TransportError(f"{what}: {exc}") from None
    except tuf_exc.DownloadError as exc:
        cause = exc.__cause__
        if isinstance(cause, OtaError):
            raise cause from None
        raise StoreUnreachableError(f"{what}: {exc} ({cause})") from None
    except OSError as exc:
        raise os_error(exc, f"{what}: {exc.filename}" if exc.filename else what) from None


def _tree(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_symlink() or p.is_file()}


def _commit_order(rel: str) -> tuple[int, str]:
    # Roots first and timestamp last: a crash midway leaves a state that
    # ngclient itself could have left (it re-verifies everything it loads).
    if rel.startswith("root_history/"):
        return (0, rel)
    return {"root.json": 1, "snapshot.json": 3, "timestamp.json": 4}.get(rel, 2), rel


def _same(a: Path, b: Path) -> bool:
    if a.is_symlink() or b.is_symlink():
        return a.is_symlink() and b.is_symlink() and os.readlink(a) == os.readlink(b)
    return b.exists() and a.read_bytes() == b.read_bytes()


def _install(src: Path, dest: Path) -> None:
    """Copy one file or symlink into place atomically and durably (metadata files are small:
    their sizes are capped by the updater config)."""
    if not src.is_symlink():
        write_atomic(dest, src.read_bytes())
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(os.readlink(src), tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
    fsync_dir(dest.parent)


class TrustedUpdater:
    """Verified access to the targets of a TUF repository kept in a Store.

    `trusted_root` is the root metadata the device shipped with; `metadata_dir`
    is where verified metadata is kept between runs. Not safe for two
    processes sharing one metadata_dir (the same rule as ngclient).
    """

    def __init__(
        self,
        store: Store,
        metadata_dir: str | os.PathLike[str],
        trusted_root: bytes,
        *,
        config: UpdaterConfig | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        target_chunk_size: int = 8 * DEFAULT_CHUNK,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.store = store
        self.metadata_dir = Path(metadata_dir)
        self._trusted_root = trusted_root
        self._config = config or UpdaterConfig()
        # Metadata has small caps (16 KiB for timestamp): small reads bound what
        # endless data costs. Targets have a signed length: bigger reads, fewer requests.
        self._fetcher = StoreFetcher(store, chunk_size)
        self._target_fetcher = StoreFetcher(store, target_chunk_size)
        self._targets: dict[str, TargetFile] | None = None
        self._clock = clock  # None: the real time (a simulated clock for fleet simulations and tests)
        self.timestamp_expires: datetime | None = None  # of the newest timestamp verified (after refresh)

    def local_timestamp_expires(self) -> datetime | None:
        """Expiry of the timestamp kept from the last good refresh (unverified: for reports only)."""
        try:
            md = Metadata.from_bytes((self.metadata_dir / "timestamp.json").read_bytes())
        except (OSError, tuf_exc.RepositoryError, ValueError):
            return None
        return md.signed.expires

    def refresh(self) -> None:
        """Fetch and verify root, timestamp, snapshot and targets (all or nothing)."""
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.metadata_dir.name}.refresh-", dir=self.metadata_dir.parent))
        try:
            self._fetcher.last_key = None
            with _project_errors(f"refreshing metadata from {self.store.url}", self._fetcher):
                shutil.copytree(self.metadata_dir, staging, symlinks=True, dirs_exist_ok=True)
                updater = Updater(
                    str(staging), METADATA_URL, fetcher=self._fetcher, config=self._config,
                    bootstrap=self._trusted_root,
                )
                if self._clock is not None:
                    # ngclient takes its reference time once, at construction, and has no
                    # parameter for it: the one place a simulated clock must reach inside.
                    updater._trusted_set.reference_time = self._clock()
                updater.refresh()
                # ngclient persisted exactly the bytes it verified.
                targets = Metadata[Targets].from_bytes((staging / "targets.json").read_bytes())
                timestamp = Metadata.from_bytes((staging / "timestamp.json").read_bytes())
                self._commit(staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._targets = dict(targets.signed.targets)
        self.timestamp_expires = timestamp.signed.expires

    def _commit(self, staging: Path) -> None:
        for rel, src in sorted(_tree(staging).items(), key=lambda item: _commit_order(item[0])):
            dest = self.metadata_dir / rel
            if not _same(src, dest):
                _install(src, dest)

    def _require_targets(self) -> dict[str, TargetFile]:
        if self._targets is None:
            self.refresh()
        assert self._targets is not None
        return self._targets

    def list_targets(self) -> list[TargetInfo]:
        """Every target in the signed targets metadata, sorted by name."""
        return [self._info(tf) for _, tf in sorted(self._require_targets().items())]

    def get_target(self, name: str) -> TargetInfo | None:
        """The signed description of target `name`, or None if it is not listed."""
        tf = self._require_targets().get(name)
        return None if tf is None else self._info(tf)

    @staticmethod
    def _info(tf: TargetFile) -> TargetInfo:
        custom = tf.custom if isinstance(tf.custom, dict) else {}
        return TargetInfo(tf.path, tf.length, dict(tf.hashes), dict(custom))

    def _stream(self, info: TargetInfo, out: IO[bytes]) -> None:
        received = 0
        with _project_errors(f"downloading target {info.name}"):
            for chunk in self._target_fetcher.fetch(_URL_SCHEME + info.store_key):
                received += len(chunk)
                if received > info.length:
                    raise TrustError(
                        f"downloading target {info.name}: endless data: more than the signed "
                        f"length of {info.length} bytes arrived"
                    )
                out.write(chunk)

    def read_target(self, info: TargetInfo) -> bytes:
        """Download a (small) target into memory and verify it."""
        with tempfile.SpooledTemporaryFile(max_size=16 << 20) as buf:
            self._stream(info, buf)  # type: ignore[arg-type]
            buf.seek(0)
            data = buf.read()
        verify_target(info, data)
        return data
