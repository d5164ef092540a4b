"""Publishing: `ota repo init`, `ota bundle build|inspect|verify`, `ota publish`,
`ota rollout set`, `ota releases list`."""
from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from device_agent.atomic import write_atomic
from device_agent.diff import Diff
from device_agent.errors import DiffError
from device_agent.model_format import encode_model, load_model
from packager.bundle import encode_diff_bundle, encode_full_bundle, inspect_bundle
from packager.store import Store, open_store

DEFAULT_STORE = "file://" + str(Path("work/store").resolve())


def store_option(fn):  # type: ignore[no-untyped-def]
    return click.option("--store", "store_url", default=DEFAULT_STORE, show_default=True, envvar="OTA_STORE",
                        help="file:///dir or s3://bucket/prefix?endpoint=URL (AWS_* variables for credentials).")(fn)


def keys_option(fn):  # type: ignore[no-untyped-def]
    return click.option("--keys", "keys_dir", default="work/keys", show_default=True, envvar="OTA_KEYS",
                        type=click.Path(file_okay=False), help="Folder of the repository's private keys.")(fn)


def _store(url: str) -> Store:
    return open_store(url)


@click.group()
def repo() -> None:
    """Manage the signed (TUF) update repository in a store."""


@repo.command()
@store_option
@keys_option
@click.option("--threshold", default=1, show_default=True, help="Root signatures required.")
@click.option("--root-keys", default=1, show_default=True, help="Root keys to create.")
@click.option("--root-out", type=click.Path(dir_okay=False), help="Also write root.json here (for devices).")
@click.option("--timestamp-expiry", default="1d", show_default=True,
              help="How long a signed timestamp stays valid (s/m/h/d/w); `ota repo refresh` renews it.")
@click.option("--snapshot-expiry", default="7d", show_default=True, help="Validity of snapshot metadata.")
@click.option("--targets-expiry", default="90d", show_default=True, help="Validity of targets metadata.")
@click.option("--root-expiry", default="365d", show_default=True, help="Validity of root metadata (offline keys).")
def init(store_url: str, keys_dir: str, threshold: int, root_keys: int, root_out: str | None,
         timestamp_expiry: str, snapshot_expiry: str, targets_expiry: str, root_expiry: str) -> None:
    """Create keys (kept out of the store) and the repository's first metadata.

    The expiry periods are kept next to the keys and used by every later
    publish and `ota repo refresh`.

    \b
    Example:
      ota repo init --store s3://updates?endpoint=http://127.0.0.1:8333 --keys ~/ota-keys --root-out root.json
    """
    from packager.trust import ExpiryPolicy, init_repository, parse_period

    expiry = ExpiryPolicy(root=parse_period(root_expiry), targets=parse_period(targets_expiry),
                          snapshot=parse_period(snapshot_expiry), timestamp=parse_period(timestamp_expiry))
    root = init_repository(_store(store_url), keys_dir, threshold=threshold, num_root_keys=root_keys, expiry=expiry)
    if root_out:
        write_atomic(Path(root_out), root)
    click.echo(f"repository initialised in {store_url}; keys in {keys_dir}; root.json {len(root)} bytes")


@click.group()
def bundle() -> None:
    """Build, inspect and verify update bundles (.otab)."""


@bundle.command()
@click.option("--to", "to_path", required=True, type=click.Path(dir_okay=False), help="The model devices should end up with.")
@click.option("--from", "from_path", type=click.Path(dir_okay=False),
              help="The model devices run now: build an exact diff bundle instead of a full one.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Bundle file to write.")
def build(to_path: str, from_path: str | None, out_path: str) -> None:
    """Build a full bundle, or an exact diff bundle between two models with equal scales.

    \b
    Examples:
      ota bundle build --to models/base-v1.otam --out work/full-1.otab
      ota bundle build --from models/base-v1.otam --to work/v2.otam --out work/1-2.otab
    """
    target = load_model(to_path)
    if from_path is None:
        data = encode_full_bundle(encode_model(target), target)
    else:
        data = encode_diff_bundle(exact_diff(load_model(from_path), target), load_model(from_path))
    write_atomic(Path(out_path), data)
    click.echo(f"{out_path}\t{len(data)} bytes")


def exact_diff(base, target) -> Diff:  # type: ignore[no-untyped-def]
    """The integer delta between two models that differ only in int8 weight values."""
    import numpy as np

    from device_agent.diff import SparseDelta

    if base.config != target.config or base.model_id != target.model_id:
        raise DiffError("models differ in config or model id; build a full bundle instead")
    deltas = {}
    for name, w in base.weights.items():
        t = target.weights[name]
        if not np.array_equal(w.scale, t.scale):
            raise DiffError(f"{name}: scales differ, an int8 diff cannot express that; build a full bundle")
        d = t.q.reshape(-1).astype(np.int16) - w.q.reshape(-1).astype(np.int16)
        positions = np.flatnonzero(d)
        if np.any(np.abs(d[positions]) > 127):
            raise DiffError(f"{name}: a change exceeds the int8 delta range; build a full bundle")
        if positions.size:
            deltas[name] = SparseDelta(positions, d[positions].astype(np.int8))
    for name, t in base.floats.items():
        if not np.array_equal(t, target.floats[name]):
            raise DiffError(f"{name}: float tensors differ; build a full bundle")
    return Diff("exact", base.model_id, base.version, target.version, base.content_hash(), target.content_hash(),
                deltas)


@bundle.command(name="inspect")
@click.argument("path", type=click.Path(dir_okay=False))
def inspect_cmd(path: str) -> None:
    """Print a bundle's manifest (header only, fast).

    \b
    Example:
      ota bundle inspect work/1-2.otab
    """
    click.echo(json.dumps(inspect_bundle(path), indent=2))


@bundle.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--base", "base_path", type=click.Path(dir_okay=False),
              help="Also apply it to this model and check the target hash.")
def verify(path: str, base_path: str | None) -> None:
    """Read every section (checksums, decoding); optionally apply to a base model.

    \b
    Example:
      ota bundle verify work/1-2.otab --base models/base-v1.otam
    """
    from packager.bundle import apply_bundle, decode_bundle

    summary = inspect_bundle(path, verify=True)
    if base_path or summary["kind"] == "full":
        model = apply_bundle(decode_bundle(Path(path).read_bytes()), load_model(base_path) if base_path else None)
        click.echo(f"OK {path}: applies, result {model.content_hash()} version {model.version}")
    else:
        click.echo(f"OK {path}: {len(summary['sections'])} sections verified")


@click.command()
@click.argument("bundle_path", type=click.Path(dir_okay=False))
@store_option
@keys_option
@click.option("--channel", default="stable", show_default=True, help="Release channel (stable, beta, ...).")
@click.option("--expected-wer", type=float, help="The publisher's measured WER; devices may compare against it.")
@click.option("--rollout", "rollout_percent", type=click.FloatRange(0, 100), help="Rollout percentage to set.")
@click.option("--no-current", is_flag=True, help="List the bundle without making it the channel's current version.")
def publish(bundle_path: str, store_url: str, keys_dir: str, channel: str, expected_wer: float | None,
            rollout_percent: float | None, no_current: bool) -> None:
    """Sign a bundle into the repository and list it on a channel (one commit).

    \b
    Example:
      ota publish work/1-2.otab --channel stable --expected-wer 0.05 --rollout 10
    """
    from rich.progress import Progress

    from packager.publish import publish_bundle

    data = Path(bundle_path).read_bytes()
    with Progress(transient=True) as bar:
        bar.add_task(f"publishing {len(data):,} bytes", total=None)
        release = publish_bundle(_store(store_url), keys_dir, data, channel=channel, expected_wer=expected_wer,
                                 make_current=not no_current, rollout_percent=rollout_percent)
    click.echo(f"published {release.target} on {channel}: current version {release.state.current_version}, "
               f"rollout {release.state.rollout_percent:g}%")


@click.group()
def rollout() -> None:
    """Staged rollouts per channel."""


@rollout.command(name="set")
@store_option
@keys_option
@click.option("--model-id", default="speech-commands", show_default=True, help="Model id.")
@click.option("--channel", default="stable", show_default=True, help="Release channel.")
@click.option("--percent", required=True, type=click.FloatRange(0, 100), help="Share of devices that update.")
@click.option("--version", type=int, help="Also make this published version current (e.g. to roll back).")
def rollout_set(store_url: str, keys_dir: str, model_id: str, channel: str, percent: float,
                version: int | None) -> None:
    """Set the rollout percentage of a channel.

    \b
    Example:
      ota rollout set --channel stable --percent 25
    """
    from packager.publish import set_rollout

    state = set_rollout(_store(store_url), keys_dir, model_id, channel, percent, version)
    click.echo(f"{model_id}/{channel}: version {state.current_version} at {state.rollout_percent:g}%")


@click.group()
def releases() -> None:
    """What the repository offers."""


@releases.command(name="list")
@store_option
@keys_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def releases_list(store_url: str, keys_dir: str, as_json: bool) -> None:
    """List published bundles and channels.

    \b
    Example:
      ota releases list --store file:///srv/ota
    """
    from packager.trust import list_published

    targets = list_published(_store(store_url), keys_dir)
    if as_json:
        click.echo(json.dumps(targets, indent=2))
        return
    table = Table("target", "bytes", "kind", "versions", "method", "expected WER")
    for name, t in targets.items():
        c = t["custom"]
        versions = f"{c.get('base_version') or 'any'} -> {c.get('target_version')}" if c.get("kind") != "channel" \
            else f"current {c.get('version')}"
        table.add_row(name, f"{t['length']:,}", str(c.get("kind")), versions, str(c.get("method", "")),
                      str(c.get("expected_wer") or ""))
    Console().print(table)


def register(cli: click.Group) -> None:
    for command in (repo, bundle, publish, rollout, releases):
        cli.add_command(command)
