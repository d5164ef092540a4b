"""Publishing releases: a bundle becomes a signed TUF target, then the
channel file is updated to list it (and, by default, to make it current).

Target names: `bundles/<model>/<from>-<to>-<hash>.otab` for diffs and
`bundles/<model>/full-<to>-<hash>.otab` for full bundles, `<hash>` the first 16
hex digits of the model the bundle produces (`bundle_target_name`). The bundle's custom TUF
metadata carries what a device needs before downloading: model, versions,
content hashes, method, and the publisher's expected WER.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Callable

from device_agent.bundle import BundleManifest, read_bundle_manifest
from device_agent.channels import ChannelState, UpdateEdge, channel_target_name
from device_agent.errors import ConfigError, StoreNotFoundError, UnreadableFormatError, WrongBaseError
from device_agent.store import Store
from packager.fleet_status import UNLISTED_BUNDLE_FORMATS, devices_unable_to_read
from packager.trust import Published, current_target_bytes, publish_target, publish_targets


def bundle_target_name(manifest: BundleManifest) -> str:
    """Named by the model it produces: two channels can each ship their own 1 -> 2 (e.g. a sparse
    diff on stable, a hashed one on beta) without one overwriting the other's bundle."""
    start = "full" if manifest.kind == "full" else str(manifest.base_version)
    return f"bundles/{manifest.model_id}/{start}-{manifest.target_version}-{manifest.target_hash[:16]}.otab"


def bundle_custom(manifest: BundleManifest, expected_wer: float | None) -> dict[str, Any]:
    """TUF custom metadata for a bundle. WER is a string: TUF's canonical JSON has no floats."""
    return {
        "model_id": manifest.model_id, "kind": manifest.kind, "method": manifest.method or "full",
        "base_version": manifest.base_version, "base_hash": manifest.base_hash,
        "target_version": manifest.target_version, "target_hash": manifest.target_hash,
        "expected_wer": None if expected_wer is None else f"{expected_wer:.4f}",
    }


def read_channel(store: Store, keys_dir: str | os.PathLike[str], model_id: str, channel: str) -> ChannelState | None:
    """The publisher's view of a channel from its own verified repository (None if absent).

    Publishers hold the keys and write the metadata; devices always read
    through the TUF client instead.
    """
    data = current_target_bytes(store, keys_dir, channel_target_name(model_id, channel))
    return None if data is None else ChannelState.from_json(data)


def _channel_custom(state: ChannelState) -> dict[str, Any]:
    return {"kind": "channel", "model_id": state.model_id, "channel": state.channel, "version": state.current_version}


def _load_state(read: Callable[[str], bytes | None], model_id: str, channel: str) -> ChannelState | None:
    data = read(channel_target_name(model_id, channel))
    return None if data is None else ChannelState.from_json(data)


def _check_base_hash(read: Callable[[str], bytes | None], manifest: BundleManifest, state: ChannelState,
                     channel: str) -> None:
    """A diff must start from the exact model the channel's signed version is: same version number
    is not enough (a diff trained on another base fails on every device of the channel)."""
    version = manifest.base_version
    shipped = set()
    for edge in state.edges:
        if edge.to_version == version:
            data = read(edge.target)
            if data is not None:
                shipped.add(read_bundle_manifest(io.BytesIO(data)).target_hash)
    if shipped and manifest.base_hash not in shipped:
        raise WrongBaseError(f"diff starts from model hash {manifest.base_hash[:16]}, but version {version} on channel "
                        f"{channel} is hash {', '.join(sorted(h[:16] for h in shipped))}; expected a diff trained "
                        "against the model the channel ships")


def check_fleet_reads(fleet_store: Store, manifest: BundleManifest, channel: str) -> None:
    """UnreadableFormatError if a device on the channel sent a heartbeat saying its agent does not read this
    bundle's format: it would refuse the update (and keep its model), never reaching the release."""
    if manifest.format_version in UNLISTED_BUNDLE_FORMATS:
        return  # every agent reads these: no need to read the fleet's heartbeats
    unable, total = devices_unable_to_read(fleet_store, manifest.model_id, channel, manifest.format_version)
    if unable:
        raise UnreadableFormatError(
            f"bundle format {manifest.format_version}: {len(unable)} of {total} devices on channel {channel} do not "
            f"read it (e.g. {', '.join(unable[:3])}); update their agents, or publish a bundle they read (ota diff "
            "train without --compact)")


@dataclass(frozen=True)
class Release:
    target: str
    channel: str
    published: Published
    state: ChannelState


def publish_bundle(store: Store, keys_dir: str | os.PathLike[str], bundle: bytes, *, channel: str = "stable",
                   expected_wer: float | None = None, make_current: bool = True,
                   rollout_percent: float | None = None, now: datetime | None = None,
                   fleet_store: Store | None = None, check_fleet: bool = True) -> Release:
    """Publish a bundle and the channel file that lists it, in one TUF commit.

    The channel is read from the same verified snapshot the commit replaces,
    so a racing publisher makes this one fail with StoreConflictError rather
    than dropping either release. A bundle in a format newer than every agent
    reads is refused unless every device on the channel says in its heartbeat
    (in `fleet_store`, default `store`) that it reads it (`check_fleet`).
    """
    manifest = read_bundle_manifest(io.BytesIO(bundle))
    if check_fleet:
        check_fleet_reads(fleet_store or store, manifest, channel)
    name = bundle_target_name(manifest)
    edge = UpdateEdge(None if manifest.kind == "full" else manifest.base_version, manifest.target_version,
                      name, len(bundle))
    result: dict[str, ChannelState] = {}

    def build(read: Callable[[str], bytes | None]) -> list[tuple[str, bytes, dict[str, Any]]]:
        state = _load_state(read, manifest.model_id, channel)
        if manifest.kind == "diff":
            known = {e.to_version for e in state.edges} if state else set()
            if manifest.base_version not in known:
                raise ConfigError(f"channel {channel} has no version {manifest.base_version} for this diff to start "
                                  f"from (published: {sorted(known) or 'none'}); publish that version first")
            _check_base_hash(read, manifest, state, channel)
        edges = tuple(e for e in (state.edges if state else ()) if e.target != name) + (edge,)
        if state is None:
            state = ChannelState(manifest.model_id, channel, manifest.target_version, 100.0, edges)
        else:
            current = manifest.target_version if make_current else state.current_version
            state = replace(state, current_version=current, edges=edges)
        if rollout_percent is not None:
            state = replace(state, rollout_percent=rollout_percent)
        result["state"] = state
        return [(name, bundle, bundle_custom(manifest, expected_wer)),
                (state.target_name, state.to_json(), _channel_custom(state))]

    published = publish_targets(store, keys_dir, build, now=now)
    return Release(name, channel, published, result["state"])


def set_rollout(store: Store, keys_dir: str | os.PathLike[str], model_id: str, channel: str,
                percent: float, version: int | None = None, *, now: datetime | None = None) -> ChannelState:
    """Change the rollout percentage (and optionally which published version is current)."""
    result: dict[str, ChannelState] = {}

    def build(read: Callable[[str], bytes | None]) -> list[tuple[str, bytes, dict[str, Any]]]:
        state = _load_state(read, model_id, channel)
        if state is None:
            raise StoreNotFoundError(f"channel {channel_target_name(model_id, channel)} does not exist; publish first")
        if version is not None:
            if not any(e.to_version == version for e in state.edges):
                raise ConfigError(f"version {version} is not published on {channel}; known: "
                                  f"{sorted({e.to_version for e in state.edges})}")
            state = replace(state, current_version=version)
        state = replace(state, rollout_percent=percent)
        result["state"] = state
        return [(state.target_name, state.to_json(), _channel_custom(state))]

    publish_targets(store, keys_dir, build, now=now)
    return result["state"]


def publish_channel(store: Store, keys_dir: str | os.PathLike[str], state: ChannelState, **kwargs: Any) -> Published:
    """Publish `state` as the signed target `channels/<model>/<channel>.json`."""
    return publish_target(store, keys_dir, state.target_name, state.to_json(), _channel_custom(state), **kwargs)
