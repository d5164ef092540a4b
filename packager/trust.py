"""Repository side of TUF: create keys and metadata, sign, publish targets.

The repository lives in a `Store` under two prefixes:

    metadata/1.root.json, 2.root.json ...   every root version (chain of trust)
    metadata/root.json                        copy of the newest root (for humans)
    metadata/N.targets.json, M.snapshot.json  consistent snapshots (immutable)
    metadata/timestamp.json                   the one mutable file: the commit point
    targets/<dir>/<sha256>.<name>             target files, content addressed

Private keys stay in `keys_dir` (never in the store) as `<keyid>.pem`, next
to `root.json`: the publisher's own trusted root. Before building on the
store's metadata, a publisher verifies it (root chain from its own copy, then
threshold signatures of timestamp, snapshot and targets) so a tampered store
cannot trick it into signing an attacker's target list.

Publishing writes the target file first, then targets, then snapshot, each a
new version created with If-None-Match, and last replaces timestamp.json
with If-Match on the ETag it read. Until that last write nothing is visible
to clients, and of two racing publishers exactly one commits; the other gets
StoreConflictError and can simply run again. A publisher that dies midway
leaves unreferenced versions behind; the next publish skips past them.

Signatures, canonical JSON and key handling come from python-tuf's Metadata
API and securesystemslib; nothing here hand-rolls cryptography.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from device_agent.atomic import fsync_dir, write_atomic
from device_agent.errors import ConfigError, StoreConflictError, StoreNotFoundError, TrustError
from device_agent.store import FileStore, Store, check_key

METADATA_PREFIX = "metadata/"
TARGETS_PREFIX = "targets/"
TIMESTAMP_KEY = METADATA_PREFIX + "timestamp.json"
_HASH = "sha256"
_ROLES = ("root", "targets", "snapshot", "timestamp")
# Compact JSON: metadata is read by devices, and TUF signs the canonical form anyway.
_SERIALIZER = JSONSerializer(compact=True)


@dataclass(frozen=True)
class ExpiryPolicy:
    """How long each role's metadata stays valid after it is signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def expires(self, role: str, now: datetime | None = None) -> datetime:
        now = (now or datetime.now(timezone.utc)).replace(microsecond=0)
        return now + getattr(self, role)

    def to_json(self) -> bytes:
        return json.dumps({role: int(getattr(self, role).total_seconds()) for role in _ROLES}, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str = "expiry policy") -> ExpiryPolicy:
        try:
            doc = json.loads(data)
            periods = {role: timedelta(seconds=int(doc[role])) for role in _ROLES}
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{where} is malformed ({exc}); expected seconds per role: {list(_ROLES)}") from None
        return cls(**periods)

    def __post_init__(self) -> None:
        for role in _ROLES:
            period = getattr(self, role)
            if not isinstance(period, timedelta) or period < timedelta(seconds=1):
                raise ConfigError(f"{role} expiry {period!r}: expected at least one second")
        # A device must be able to see a refreshed timestamp before the snapshot it names expires.
        if not self.timestamp <= self.snapshot <= self.targets <= self.root:
            raise ConfigError("expiry periods: expected timestamp <= snapshot <= targets <= root, got "
                              + ", ".join(f"{r} {getattr(self, r)}" for r in ("timestamp", "snapshot", "targets", "root")))


EXPIRY_FILE = "expiry.json"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_period(text: str) -> timedelta:
    """'90s', '30m', '12h', '1d', '2w' -> timedelta (ConfigError otherwise)."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", str(text))
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"period {text!r}: expected a positive number with a unit s, m, h, d or w (e.g. 1d, 12h)")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def format_period(period: timedelta) -> str:
    """timedelta -> what parse_period reads, in the largest whole unit of d, h, m, s ('7d', '12h', '90s')."""
    seconds = int(period.total_seconds())
    unit = next(u for u in ("d", "h", "m", "s") if seconds % _UNITS[u] == 0)
    return f"{seconds // _UNITS[unit]}{unit}"


def load_expiry(keys_dir: str | os.PathLike[str]) -> ExpiryPolicy:
    """The expiry periods chosen at `init_repository` (kept next to the keys), or the defaults."""
    path = Path(keys_dir) / EXPIRY_FILE
    try:
        return ExpiryPolicy.from_json(path.read_bytes(), str(path))
    except FileNotFoundError:
        return ExpiryPolicy()


@dataclass(frozen=True)
class Published:
    """What a commit wrote: the versions now live, and the target (if any)."""

    targets_version: int
    snapshot_version: int
    timestamp_version: int
    target_name: str | None = None
    length: int | None = None
    hashes: dict[str, str] = field(default_factory=dict)


# --- keys -------------------------------------------------------------------------
def _generate_key(keys_dir: Path) -> CryptoSigner:
    signer = CryptoSigner.generate_ed25519()
    _write_private(keys_dir / f"{signer.public_key.keyid}.pem", signer.private_bytes)
    return signer


def _write_private(path: Path, data: bytes) -> None:
    if path.exists():  # a key file is named by its key id: never replace one
        raise ConfigError(f"{path} already exists; expected a new key file")
    write_atomic(path, data, mode=0o600)  # private from the first byte (mkstemp), durable before it is used


def load_signers(keys_dir: str | os.PathLike[str], key_ids: Iterable[str] | None = None) -> dict[str, CryptoSigner]:
    """Load private keys from `keys_dir` as signers, by key id (all, or only `key_ids`)."""
    keys_path = Path(keys_dir)
    wanted = None if key_ids is None else set(key_ids)
    signers: dict[str, CryptoSigner] = {}
    for pem in sorted(keys_path.glob("*.pem")):
        if wanted is not None and pem.stem not in wanted:
            continue
        private = load_pem_private_key(pem.read_bytes(), password=None)
        public = SSlibKey.from_crypto(private.public_key(), scheme="ed25519")  # type: ignore[arg-type]
        if public.keyid != pem.stem:
            raise ConfigError(f"key file {pem}: expected the file name to be its key id {public.keyid}")
        signers[public.keyid] = CryptoSigner(private, public)
    if wanted is not None and wanted - set(signers):
        raise ConfigError(f"keys {sorted(wanted - set(signers))} not found in {keys_path}; expected <keyid>.pem files")
    return signers


def role_key_ids(keys_dir: str | os.PathLike[str], role: str) -> list[str]:
    """Key ids the publisher's trusted root assigns to `role` (e.g. to pick a subset to sign with)."""
    root = _read_local_root(Path(keys_dir))
    return list(root.signed.roles[role].keyids)


def _sign(md: Metadata, signers: Iterable[CryptoSigner]) -> None:
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)


def _role_signers(root: Root, role: str, keys_dir: Path, key_ids: Iterable[str] | None = None) -> list[CryptoSigner]:
    """The signers for `role` found in keys_dir; all of them must reach the threshold
    unless `key_ids` asks for a specific (possibly smaller) set."""
    role_ids = set(root.roles[role].keyids)
    if key_ids is not None:
        stray = set(key_ids) - role_ids
        if stray:
            raise ConfigError(f"keys {sorted(stray)} are not {role} keys in root v{root.version}")
        return list(load_signers(keys_dir, key_ids).values())
    available = load_signers(keys_dir, role_ids & {p.stem for p in keys_dir.glob("*.pem")})
    threshold = root.roles[role].threshold
    if len(available) < threshold:
        raise ConfigError(
            f"{role} needs {threshold} signing key(s) but {keys_dir} holds {len(available)} of "
            f"its {len(role_ids)}; expected the private keys of root v{root.version}"
        )
    return list(available.values())


# --- local trusted root -----------------------------------------------------------
def _read_local_root(keys_dir: Path) -> Metadata[Root]:
    path = keys_dir / "root.json"
    try:
        return Metadata[Root].from_bytes(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; expected a keys folder made by `ota repo init`") from None


def _write_local_root(keys_dir: Path, data: bytes) -> None:
    _write_local_file(keys_dir, "root.json", data)


def _write_local_file(keys_dir: Path, name: str, data: bytes) -> None:
    write_atomic(keys_dir / name, data, mode=0o600)  # the keys folder stays private


def trusted_root_bytes(keys_dir: str | os.PathLike[str]) -> bytes:
    """The publisher's current root metadata: what devices embed as their trust anchor."""
    return (Path(keys_dir) / "root.json").read_bytes()


def _check_keys_outside_store(store: Store, keys_dir: Path) -> None:
    if isinstance(store, FileStore):
        root, keys = store.root.resolve(), keys_dir.resolve()
        if keys == root or root in keys.parents:
            raise ConfigError(f"keys dir {keys_dir} is inside the store {root}; expected private keys kept out of the store")


# --- reading and verifying the repository -----------------------------------------
def _parse(data: bytes, key: str) -> Metadata:
    try:
        return Metadata.from_bytes(data)
    except RepositoryError as exc:
        raise TrustError(f"{key} in the store is not valid TUF metadata: {exc}") from None


def _verified(store: Store, root: Root, role: str, key: str, data: bytes | None = None) -> Metadata:
    md = _parse(store.get(key) if data is None else data, key)
    if md.signed.type != role:
        raise TrustError(f"{key}: expected {role} metadata, found {md.signed.type}")
    try:
        root.verify_delegate(role, md.signed_bytes, md.signatures)
    except RepositoryError as exc:
        raise TrustError(
            f"{key} in the store is not signed by the {role} keys of root v{root.version} ({exc}); "
            "refusing to build on tampered metadata"
        ) from None
    return md


def _store_root(store: Store, keys_dir: Path) -> Metadata[Root]:
    """Walk the store's root chain from the publisher's copy; keep the copy current."""
    trusted = _read_local_root(keys_dir)
    while True:
        key = f"{METADATA_PREFIX}{trusted.signed.version + 1}.root.json"
        try:
            data = store.get(key)
        except StoreNotFoundError:
            return trusted
        new = _parse(data, key)
        try:
            if new.signed.type != "root" or new.signed.version != trusted.signed.version + 1:
                raise RepositoryError(f"expected root version {trusted.signed.version + 1}")
            trusted.signed.verify_delegate("root", new.signed_bytes, new.signatures)
            new.signed.verify_delegate("root", new.signed_bytes, new.signatures)
        except RepositoryError as exc:
            raise TrustError(f"{key} in the store does not chain from root v{trusted.signed.version}: {exc}") from None
        _write_local_root(keys_dir, data)
        trusted = new


def _next_version(store: Store, role: str, current: int) -> int:
    # Versions only need to grow: skip any left behind by a publisher that died midway.
    pattern = re.compile(rf"^{re.escape(METADATA_PREFIX)}(\d+)\.{role}\.json$")
    found = [int(m.group(1)) for k in store.list(METADATA_PREFIX) if (m := pattern.match(k))]
    return max([current, *found]) + 1


class _Repo:
    """The verified current state of a repository, and the one way to change it."""

    def __init__(self, store: Store, keys_dir: Path) -> None:
        _check_keys_outside_store(store, keys_dir)
        self.store = store
        self.keys_dir = keys_dir
        self.root = _store_root(store, keys_dir)
        root = self.root.signed
        # ETag first, body second: if they disagree the If-Match below fails safely.
        info = store.head(TIMESTAMP_KEY)
        if info is None:
            raise StoreNotFoundError(f"{TIMESTAMP_KEY} not found in {store.url}; expected a repository made by "
                                     "`ota repo init` (is the store URL right?)")
        self.timestamp_etag = info.etag
        self.timestamp: Metadata[Timestamp] = _verified(store, root, "timestamp", TIMESTAMP_KEY)
        snap_version = self.timestamp.signed.snapshot_meta.version
        self.snapshot: Metadata[Snapshot] = _verified(store, root, "snapshot", f"{METADATA_PREFIX}{snap_version}.snapshot.json")
        targets_version = self.snapshot.signed.meta["targets.json"].version
        self.targets: Metadata[Targets] = _verified(store, root, "targets", f"{METADATA_PREFIX}{targets_version}.targets.json")
        for md, expected in ((self.snapshot, snap_version), (self.targets, targets_version)):
            if md.signed.version != expected:
                raise TrustError(
                    f"{md.signed.type} in the store has version {md.signed.version}; expected {expected} "
                    "as referenced by the metadata above it"
                )

    def read_target(self, name: str) -> bytes | None:
        """The bytes of target `name` as listed by this verified snapshot (None if unlisted)."""
        info = self.targets.signed.targets.get(name)
        if info is None:
            return None
        data = self.store.get(target_store_key(name, info.hashes))
        try:
            info.verify_length_and_hashes(data)
        except Exception as exc:  # tuf raises LengthOrHashMismatchError
            raise TrustError(f"stored target {name} does not match its signed length/hashes: {exc}") from None
        return data

    def _create(self, key: str, data: bytes, what: str) -> None:
        try:
            self.store.put(key, data, if_none_match=True)
        except StoreConflictError:
            raise StoreConflictError(
                f"{what}: {key} was created by another publisher first; nothing was "
                "committed, re-run to publish on top of the new state"
            ) from None

    def _new_version(self, md: Metadata, role: str, expiry: ExpiryPolicy, what: str, now: datetime | None) -> bytes:
        """Bump, re-sign and create the next `<version>.<role>.json` (create-only); returns its bytes."""
        signed = md.signed
        signed.version = _next_version(self.store, role, signed.version)
        signed.expires = expiry.expires(role, now)
        _sign(md, _role_signers(self.root.signed, role, self.keys_dir))
        data = md.to_bytes(_SERIALIZER)
        self._create(f"{METADATA_PREFIX}{signed.version}.{role}.json", data, what)
        return data

    def commit(self, *, new_targets: bool, expiry: ExpiryPolicy | None, what: str, new_snapshot: bool = True,
               now: datetime | None = None) -> Published:
        """Sign and write targets (if changed), snapshot (unless only the timestamp is
        being renewed), then timestamp last."""
        expiry = expiry or load_expiry(self.keys_dir)
        if new_targets:
            data = self._new_version(self.targets, "targets", expiry, what, now)
            self.snapshot.signed.meta["targets.json"] = MetaFile(self.targets.signed.version, len(data), _hashes(data))
        snapshot = self.snapshot.signed
        if new_targets or new_snapshot:
            snap_data = self._new_version(self.snapshot, "snapshot", expiry, what, now)
            snapshot_meta = MetaFile(snapshot.version, len(snap_data), _hashes(snap_data))
        else:
            snapshot_meta = self.timestamp.signed.snapshot_meta

        timestamp = self.timestamp.signed
        timestamp.version += 1
        timestamp.expires = expiry.expires("timestamp", now)
        timestamp.snapshot_meta = snapshot_meta
        _sign(self.timestamp, _role_signers(self.root.signed, "timestamp", self.keys_dir))
        try:
            self.store.put(TIMESTAMP_KEY, self.timestamp.to_bytes(_SERIALIZER), if_match=self.timestamp_etag)
        except StoreConflictError:
            raise StoreConflictError(
                f"{what}: timestamp.json changed while publishing (another publisher committed "
                "first); nothing was committed, re-run to publish on top of the new state"
            ) from None
        return Published(self.targets.signed.version, snapshot.version, timestamp.version)


def _hashes(data: bytes) -> dict[str, str]:
    import hashlib

    return {_HASH: hashlib.sha256(data).hexdigest()}


def target_store_key(target_name: str, hashes: dict[str, str]) -> str:
    """Where a target lives in the store: hash-prefixed name (consistent snapshots)."""
    directory, sep, base = target_name.rpartition("/")
    return f"{TARGETS_PREFIX}{directory}{sep}{hashes[_HASH]}.{base}"


def _check_canonical(value: Any, where: str, path: str = "custom") -> None:
    """Refuse what TUF's canonical JSON cannot sign, naming the offending field.

    Floats are the usual surprise (canonical JSON has no floats): store a WER
    of 0.123 as the string "0.123" or as an integer in basis points.
    """
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: key {k!r} in {path}: expected string keys")
            _check_canonical(v, where, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_canonical(v, where, f"{path}[{i}]")
    elif isinstance(value, float):
        raise ConfigError(
            f"{where}: {path} = {value!r} is a float, which TUF canonical JSON cannot sign; "
            "expected a string (e.g. \"0.123\") or an integer (e.g. basis points)"
        )
    elif value is not None and not isinstance(value, (str, int, bool)):
        raise ConfigError(f"{where}: {path} has type {type(value).__name__}; expected JSON types without floats")


# --- public operations ------------------------------------------------------------
def init_repository(
    store: Store,
    keys_dir: str | os.PathLike[str],
    *,
    expiry: ExpiryPolicy = ExpiryPolicy(),
    threshold: int = 1,
    num_root_keys: int = 1,
) -> bytes:
    """Create keys (root: `threshold` of `num_root_keys`; one each for targets,
    snapshot, timestamp) and version-1 metadata. Returns the root bytes that
    devices must embed. StoreConflictError if the store already has a repository."""
    if not 1 <= threshold <= num_root_keys:
        raise ConfigError(f"root threshold {threshold} of {num_root_keys} keys: expected 1 <= threshold <= keys")
    keys = Path(keys_dir)
    _check_keys_outside_store(store, keys)
    if keys.exists() and (not keys.is_dir() or any(keys.iterdir())):
        raise ConfigError(f"keys folder {keys} is not empty; expected a new or empty folder "
                          "(each repository has its own keys: choose another --keys)")
    # Checked before any key exists: reachability, credentials, bucket (StoreNotFoundError).
    if store.head(f"{METADATA_PREFIX}1.root.json") is not None:
        raise StoreConflictError(f"{store.url} already holds a TUF repository; expected an empty store")
    # Keys are written to a staging folder next to KEYS and moved into place only once
    # the store has accepted the repository, so a failed init leaves no orphaned keys.
    keys.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=keys.parent, prefix=f".{keys.name}-init-"))
    try:
        root_data, rest = _init_metadata(staging, expiry, threshold, num_root_keys)
        # 1.root.json is created first and exclusively: it is the "repository exists" lock.
        store.put(f"{METADATA_PREFIX}1.root.json", root_data, if_none_match=True)
        if keys.exists():
            keys.rmdir()  # empty, checked above
        os.replace(staging, keys)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(keys.parent)
    store.put(f"{METADATA_PREFIX}root.json", root_data)
    for key, data in rest:
        store.put(key, data, if_none_match=True)
    return root_data


def _init_metadata(keys: Path, expiry: ExpiryPolicy, threshold: int,
                   num_root_keys: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """New keys in `keys`; the version-1 root and the other version-1 metadata (key, bytes) to store."""
    os.chmod(keys, 0o700)
    _write_local_file(keys, EXPIRY_FILE, expiry.to_json())
    signers = {
        "root": [_generate_key(keys) for _ in range(num_root_keys)],
        **{role: [_generate_key(keys)] for role in ("targets", "snapshot", "timestamp")},
    }
    root = Root(expires=expiry.expires("root"), consistent_snapshot=True)
    for role, role_signers in signers.items():
        for signer in role_signers:
            root.add_key(signer.public_key, role)
    root.roles["root"] = Role(root.roles["root"].keyids, threshold)

    root_md = Metadata(root)
    _sign(root_md, signers["root"])
    root_data = root_md.to_bytes(_SERIALIZER)
    targets_md = Metadata(Targets(expires=expiry.expires("targets")))
    _sign(targets_md, signers["targets"])
    targets_data = targets_md.to_bytes(_SERIALIZER)
    snapshot_md = Metadata(Snapshot(expires=expiry.expires("snapshot")))
    snapshot_md.signed.meta["targets.json"] = MetaFile(1, len(targets_data), _hashes(targets_data))
    _sign(snapshot_md, signers["snapshot"])
    snapshot_data = snapshot_md.to_bytes(_SERIALIZER)
    timestamp_md = Metadata(Timestamp(expires=expiry.expires("timestamp"), snapshot_meta=MetaFile(1, len(snapshot_data), _hashes(snapshot_data))))
    _sign(timestamp_md, signers["timestamp"])

    _write_local_root(keys, root_data)
    return root_data, [(f"{METADATA_PREFIX}1.targets.json", targets_data),
                       (f"{METADATA_PREFIX}1.snapshot.json", snapshot_data),
                       (TIMESTAMP_KEY, timestamp_md.to_bytes(_SERIALIZER))]


def publish_target(
    store: Store,
    keys_dir: str | os.PathLike[str],
    target_name: str,
    data_or_path: bytes | str | os.PathLike[str],
    custom: dict[str, Any] | None = None,
    *,
    expiry: ExpiryPolicy | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Published:
    """Upload a target (bytes or a file path) and commit new targets, snapshot and
    timestamp metadata listing it with `custom`. Replaces an earlier entry of the
    same name. StoreConflictError if another publisher committed first."""
    check_key(target_name)
    custom = dict(custom or {})
    _check_canonical(custom, f"custom metadata for {target_name}")
    repo = _Repo(store, Path(keys_dir))

    # 1) the target file: content addressed, so an unconditional write is idempotent
    #    (and heals a blob someone tampered with under the same name).
    if isinstance(data_or_path, bytes):
        info = TargetFile.from_data(target_name, data_or_path, [_HASH])
        store.put(target_store_key(target_name, info.hashes), data_or_path)
        if progress:
            progress(info.length, info.length)
    else:
        try:
            info = TargetFile.from_file(target_name, os.fspath(data_or_path), [_HASH])
        except FileNotFoundError:
            raise ConfigError(f"target file {data_or_path} not found") from None
        store.put_file(target_store_key(target_name, info.hashes), data_or_path, progress=progress)

    # 2) targets -> snapshot -> timestamp
    info.unrecognized_fields["custom"] = custom
    repo.targets.signed.targets[target_name] = info
    published = repo.commit(new_targets=True, expiry=expiry, what=f"publishing {target_name}")
    return Published(
        published.targets_version, published.snapshot_version, published.timestamp_version,
        target_name, info.length, dict(info.hashes),
    )


TargetBuilder = Callable[[Callable[[str], "bytes | None"]], list[tuple[str, bytes, dict[str, Any]]]]


def publish_targets(store: Store, keys_dir: str | os.PathLike[str], build: TargetBuilder, *,
                    expiry: ExpiryPolicy | None = None, now: datetime | None = None) -> Published:
    """Read-modify-write several targets in ONE commit.

    `build(read)` gets a reader of the current targets (the same verified
    snapshot the commit will replace) and returns (name, bytes, custom) to
    publish. If another publisher commits in between, the timestamp's
    conditional write fails and StoreConflictError says so: nothing is lost
    silently. `now` (default: the real time) dates the new expiry periods.
    """
    repo = _Repo(store, Path(keys_dir))
    files = build(repo.read_target)
    for name, data, custom in files:
        check_key(name)
        custom = dict(custom)
        _check_canonical(custom, f"custom metadata for {name}")
        info = TargetFile.from_data(name, data, [_HASH])
        store.put(target_store_key(name, info.hashes), data)  # content addressed: idempotent
        info.unrecognized_fields["custom"] = custom
        repo.targets.signed.targets[name] = info
    return repo.commit(new_targets=True, expiry=expiry, what=f"publishing {', '.join(n for n, _, _ in files)}",
                       now=now)


def current_target_bytes(store: Store, keys_dir: str | os.PathLike[str], name: str) -> bytes | None:
    """The publisher's read of a target from its own (verified) repository."""
    return _Repo(store, Path(keys_dir)).read_target(name)


def list_published(store: Store, keys_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Every target: name -> {length, hashes, custom}."""
    repo = _Repo(store, Path(keys_dir))
    return {name: {"length": t.length, "hashes": dict(t.hashes), "custom": t.unrecognized_fields.get("custom", {})}
            for name, t in sorted(repo.targets.signed.targets.items())}


def refresh_expiry(
    store: Store,
    keys_dir: str | os.PathLike[str],
    *,
    include_targets: bool = False,
    expiry: ExpiryPolicy | None = None,
) -> Published:
    """Re-sign snapshot and timestamp (and targets if asked) with fresh expiry
    dates now, whether or not they are due (see `refresh_repository`)."""
    repo = _Repo(store, Path(keys_dir))
    return repo.commit(new_targets=include_targets, expiry=expiry, what="refreshing expiry")


@dataclass(frozen=True)
class RefreshResult:
    """What `refresh_repository` re-signed (empty: nothing was due) and when each role now expires."""

    resigned: tuple[str, ...]
    expires: dict[str, datetime]
    published: Published | None = None


def refresh_repository(
    store: Store,
    keys_dir: str | os.PathLike[str],
    *,
    renew_before: float = 0.5,
    now: datetime | None = None,
) -> RefreshResult:
    """Re-sign what expires soon: a role is due when less than `renew_before` of its
    expiry period is left (by default half: a one-day timestamp is renewed after
    12 hours). Targets due -> targets, snapshot and timestamp; snapshot due ->
    snapshot and timestamp; timestamp due -> timestamp only (it keeps naming the
    same snapshot). Nothing due -> nothing is written, so running it every few
    minutes from cron is harmless.

    Safe against a concurrent publisher: snapshot and targets versions are
    created with If-None-Match and the timestamp replaced with If-Match, so if
    anyone commits in between, this refresh writes nothing visible and raises
    StoreConflictError (re-run it; the other commit usually renewed everything).
    The root is never re-signed here (its keys should be offline): a root due
    for renewal is reported in `expires` and by `ota repo refresh`.
    """
    if not 0.0 < renew_before < 1.0:
        raise ConfigError(f"renew_before {renew_before}: expected a share of the expiry period in (0, 1)")
    now = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    keys = Path(keys_dir)
    expiry = load_expiry(keys)
    repo = _Repo(store, keys)

    def due(md: Metadata, role: str) -> bool:
        return md.signed.expires - now < getattr(expiry, role) * renew_before

    targets_due = due(repo.targets, "targets")
    snapshot_due = targets_due or due(repo.snapshot, "snapshot")
    timestamp_due = snapshot_due or due(repo.timestamp, "timestamp")
    published = None
    if timestamp_due:
        published = repo.commit(new_targets=targets_due, new_snapshot=snapshot_due, expiry=expiry,
                                what="refreshing expiry", now=now)
    resigned = tuple(role for role, flag in (("targets", targets_due), ("snapshot", snapshot_due),
                                             ("timestamp", timestamp_due)) if flag)
    expires = {"root": repo.root.signed.expires, "targets": repo.targets.signed.expires,
               "snapshot": repo.snapshot.signed.expires, "timestamp": repo.timestamp.signed.expires}
    return RefreshResult(resigned, expires, published)


@dataclass(frozen=True)
class Rotation:
    """A completed key rotation: the new root version, and the key ids in and out."""

    role: str
    root_version: int
    added: tuple[str, ...]
    revoked: tuple[str, ...]
    published: Published | None
    threshold: int  # signatures the role now needs


def rotate_keys(
    store: Store,
    keys_dir: str | os.PathLike[str],
    role: str,
    *,
    num_keys: int = 1,
    threshold: int = 1,
    now: datetime | None = None,
) -> Rotation:
    """Replace every key of `role` with `num_keys` new ones (`threshold` of them
    required), publish root version N+1 and re-sign the online metadata.

    The new root is signed by a threshold of the old root keys and of the new
    ones (TUF's rule), so a device holding any earlier root walks the chain
    N -> N+1 and from then on trusts only the new keys; metadata signed by a
    revoked key alone is refused. Revoked private keys move to
    `<keys_dir>/revoked/` (keep them offline or destroy them). The order makes a
    crash harmless: new keys are written first, then the root (create-only),
    then the online metadata signed by the new keys; a re-run after a crash in
    between rotates again from the published root.
    """
    if role not in _ROLES:
        raise ConfigError(f"role {role!r}: expected one of {list(_ROLES)}")
    if not 1 <= threshold <= num_keys:
        raise ConfigError(f"{role} threshold {threshold} of {num_keys} keys: expected 1 <= threshold <= keys")
    keys = Path(keys_dir)
    expiry = load_expiry(keys)
    repo = _Repo(store, keys)  # verifies the current metadata under the current root
    current = repo.root
    old_root_signers = _role_signers(current.signed, "root", keys)

    new_md = Metadata[Root].from_bytes(current.to_bytes())
    new_root = new_md.signed
    old_ids = tuple(new_root.roles[role].keyids)
    for keyid in old_ids:
        new_root.revoke_key(keyid, role)
    added = [_generate_key(keys) for _ in range(num_keys)]
    for signer in added:
        new_root.add_key(signer.public_key, role)
    new_root.roles[role].threshold = threshold
    new_root.version += 1
    new_root.expires = expiry.expires("root", now)
    signers = {s.public_key.keyid: s for s in old_root_signers}
    if role == "root":
        signers.update({s.public_key.keyid: s for s in added})
    _sign(new_md, signers.values())
    try:
        new_root.verify_delegate("root", new_md.signed_bytes, new_md.signatures)
        current.signed.verify_delegate("root", new_md.signed_bytes, new_md.signatures)
    except RepositoryError as exc:  # not reachable with keys from _role_signers; kept as a guard
        raise ConfigError(f"root v{new_root.version} does not verify: {exc}") from None
    data = new_md.to_bytes(_SERIALIZER)
    key = f"{METADATA_PREFIX}{new_root.version}.root.json"
    try:
        store.put(key, data, if_none_match=True)
    except StoreConflictError:
        raise StoreConflictError(f"{key} was created by another publisher first; nothing was rotated, "
                                 "re-run on top of it") from None
    _write_local_root(keys, data)
    store.put(f"{METADATA_PREFIX}root.json", data)
    _retire_keys(keys, [k for k in old_ids if k not in _all_key_ids(new_root)])

    published = None
    if role != "root":
        # Clients check every online role against the newest root: re-sign now so the
        # fleet never sees a timestamp signed by a revoked key.
        repo.root = new_md
        published = repo.commit(new_targets=role == "targets", expiry=expiry, what=f"rotating {role} keys", now=now)
    return Rotation(role, new_root.version, tuple(s.public_key.keyid for s in added), old_ids, published, threshold)


def _all_key_ids(root: Root) -> set[str]:
    return {k for r in root.roles.values() for k in r.keyids}


def _retire_keys(keys_dir: Path, key_ids: Iterable[str]) -> None:
    revoked = keys_dir / "revoked"
    for keyid in key_ids:
        pem = keys_dir / f"{keyid}.pem"
        if pem.exists():
            revoked.mkdir(mode=0o700, exist_ok=True)
            os.replace(pem, revoked / pem.name)


def resign_root(
    store: Store,
    keys_dir: str | os.PathLike[str],
    *,
    expiry: ExpiryPolicy | None = None,
    key_ids: Iterable[str] | None = None,
    allow_below_threshold: bool = False,
) -> int:
    """Publish root version N+1 (same keys, new expiry), signed with all root keys
    in keys_dir or only `key_ids`. Returns the new version.

    Signing below the threshold is refused unless `allow_below_threshold`, which
    exists to simulate a holder of too few compromised keys: clients must (and
    do) reject such a root, and it blocks root updates until removed.
    """
    keys = Path(keys_dir)
    _check_keys_outside_store(store, keys)
    current = _store_root(store, keys)
    new = Metadata[Root].from_bytes(current.to_bytes())
    new.signed.version += 1
    new.signed.expires = (expiry or load_expiry(keys)).expires("root")
    signers = _role_signers(current.signed, "root", keys, key_ids)
    _sign(new, signers)
    threshold = current.signed.roles["root"].threshold
    if len(new.signatures) < threshold and not allow_below_threshold:
        raise ConfigError(f"root v{new.signed.version} signed by {len(new.signatures)} key(s); expected at least {threshold}")
    data = new.to_bytes(_SERIALIZER)
    key = f"{METADATA_PREFIX}{new.signed.version}.root.json"
    try:
        store.put(key, data, if_none_match=True)
    except StoreConflictError:
        raise StoreConflictError(f"{key} was created by another publisher first; re-run on top of it") from None
    if len(new.signatures) >= threshold:
        _write_local_root(keys, data)
        store.put(f"{METADATA_PREFIX}root.json", data)
    return new.signed.version
