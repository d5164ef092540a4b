"""Publishing: `ota repo init`, `ota bundle build|inspect|verify`, `ota publish`,
`ota rollout set`, `ota releases list`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from cli.defaults import LibraryDefault, field_default, given
from cli.params import INPUT_FILE, INPUT_FOLDER, OUTPUT_FILE
from cli.tables import print_table

DEFAULT_STORE = "file://" + str(Path("work/store").resolve())


def store_option(fn):  # type: ignore[no-untyped-def]
    return click.option("--store", "store_url", default=DEFAULT_STORE, show_default=True, envvar="OTA_STORE",
                        help="file:///dir or s3://bucket/prefix?endpoint=URL (AWS_* variables for credentials).")(fn)


def keys_option(fn):  # type: ignore[no-untyped-def]
    return click.option("--keys", "keys_dir", default="work/keys", show_default=True, envvar="OTA_KEYS",
                        type=INPUT_FOLDER, help="Folder of the repository's private keys (made by `ota repo init`).")(fn)


def _expiry_default(role: str):  # type: ignore[no-untyped-def]
    def default() -> str:
        from packager.trust import ExpiryPolicy, format_period

        return format_period(getattr(ExpiryPolicy(), role))

    return default


def _store(url: str):  # -> device_agent.store.Store
    from device_agent.store import open_store

    return open_store(url)


@click.group()
def repo() -> None:
    """Manage the signed (TUF) update repository in a store."""


@repo.command()
@store_option
@click.option("--keys", "keys_dir", default="work/keys", show_default=True, envvar="OTA_KEYS",
              type=click.Path(file_okay=False), help="Folder for the new private keys (must hold no keys yet).")
@click.option("--threshold", type=int, cls=LibraryDefault, default_of=field_default("packager.trust:init_repository",
              "threshold"), help="Root signatures required.")
@click.option("--root-keys", type=int, cls=LibraryDefault, default_of=field_default("packager.trust:init_repository",
              "num_root_keys"), help="Root keys to create.")
@click.option("--root-out", type=OUTPUT_FILE, help="Also write root.json here (for devices).")
@click.option("--timestamp-expiry", cls=LibraryDefault, default_of=_expiry_default("timestamp"),
              help="How long a signed timestamp stays valid (s/m/h/d/w); `ota repo refresh` renews it.")
@click.option("--snapshot-expiry", cls=LibraryDefault, default_of=_expiry_default("snapshot"),
              help="Validity of snapshot metadata.")
@click.option("--targets-expiry", cls=LibraryDefault, default_of=_expiry_default("targets"),
              help="Validity of targets metadata.")
@click.option("--root-expiry", cls=LibraryDefault, default_of=_expiry_default("root"),
              help="Validity of root metadata (offline keys).")
def init(store_url: str, keys_dir: str, threshold: int | None, root_keys: int | None, root_out: Path | None,
         timestamp_expiry: str | None, snapshot_expiry: str | None, targets_expiry: str | None,
         root_expiry: str | None) -> None:
    """Create keys (kept out of the store) and the repository's first metadata.

    The expiry periods are kept next to the keys and used by every later
    publish and `ota repo refresh`.

    \b
    Example:
      ota repo init --store s3://updates?endpoint=http://127.0.0.1:8333 --keys ~/ota-keys --root-out root.json
    """
    from device_agent.atomic import write_atomic
    from packager.trust import ExpiryPolicy, init_repository, parse_period

    periods = given(root=root_expiry, targets=targets_expiry, snapshot=snapshot_expiry, timestamp=timestamp_expiry)
    expiry = ExpiryPolicy(**{role: parse_period(str(text)) for role, text in periods.items()})  # the rest: defaults
    root = init_repository(_store(store_url), keys_dir, expiry=expiry, **given(threshold=threshold, num_root_keys=root_keys))
    if root_out:
        write_atomic(root_out, root)
    click.echo(f"repository initialised in {store_url}; keys in {keys_dir}; root.json {len(root)} bytes")


@click.group()
def bundle() -> None:
    """Build, inspect and verify update bundles (.otab)."""


@bundle.command()
@click.option("--to", "to_path", required=True, type=INPUT_FILE, help="The model devices should end up with.")
@click.option("--from", "from_path", type=INPUT_FILE,
              help="The model devices run now: build an exact diff bundle instead of a full one.")
@click.option("--compact", is_flag=True,
              help="With --from: bundle format 3 (manifest compressed), read only by agents of format 3.")
@click.option("--out", "out_path", required=True, type=OUTPUT_FILE, help="Bundle file to write.")
def build(to_path: Path, from_path: Path | None, compact: bool, out_path: Path) -> None:
    """Build a full bundle, or an exact diff bundle between two models with equal scales.

    \b
    Examples:
      ota bundle build --to models/base-v1.otam --out work/full-1.otab
      ota bundle build --from models/base-v1.otam --to work/v2.otam --out work/1-2.otab
    """
    from device_agent.atomic import write_atomic
    from device_agent.model_format import encode_model, load_model
    from device_agent.errors import ConfigError
    from packager.bundle import encode_diff_bundle, encode_full_bundle
    from packager.exact_diff import exact_diff

    if compact and from_path is None:
        raise ConfigError("--compact writes diff bundles in format 3; give --from (full bundles are always format 1)")
    target = load_model(to_path)
    if from_path is None:
        data = encode_full_bundle(encode_model(target), target)
    else:
        base = load_model(from_path)
        data = encode_diff_bundle(exact_diff(base, target), base, compact=compact)
    write_atomic(out_path, data)
    click.echo(f"{out_path}\t{len(data)} bytes")


@bundle.command(name="inspect")
@click.argument("path", type=INPUT_FILE)
def inspect_cmd(path: Path) -> None:
    """Print a bundle's manifest (header only, fast).

    \b
    Example:
      ota bundle inspect work/1-2.otab
    """
    from device_agent.bundle import inspect_bundle

    click.echo(json.dumps(inspect_bundle(path), indent=2))


@bundle.command()
@click.argument("path", type=INPUT_FILE)
@click.option("--base", "base_path", type=INPUT_FILE, help="Also apply it to this model and check the target hash.")
def verify(path: Path, base_path: Path | None) -> None:
    """Read every section (checksums, decoding); optionally apply to a base model.

    \b
    Example:
      ota bundle verify work/1-2.otab --base models/base-v1.otam
    """
    from device_agent.model_format import load_model
    from device_agent.bundle import apply_bundle, inspect_bundle, read_bundle

    summary = inspect_bundle(path, verify=True)
    if base_path or summary["kind"] == "full":
        base = load_model(base_path) if base_path else None
        model = apply_bundle(read_bundle(path, base), base)
        click.echo(f"OK {path}: applies, result {model.content_hash()} version {model.version}")
    else:
        click.echo(f"OK {path}: {len(summary['sections'])} sections verified")


@click.command()
@click.argument("bundle_path", type=INPUT_FILE)
@store_option
@keys_option
@click.option("--channel", default="stable", show_default=True, help="Release channel (stable, beta, ...).")
@click.option("--expected-wer", type=float, help="The publisher's measured WER; devices may compare against it.")
@click.option("--rollout", "rollout_percent", type=click.FloatRange(0, 100), help="Rollout percentage to set.")
@click.option("--no-current", is_flag=True, help="List the bundle without making it the channel's current version.")
@click.option("--report-store", "report_store_url", envvar="OTA_REPORT_STORE",
              help="Where devices leave heartbeats, if not in --store (the agents' report_store_url).")
@click.option("--skip-format-check", is_flag=True,
              help="Publish a bundle of a newer format (--compact) even if some devices' heartbeats say their "
              "agents do not read it; those devices refuse it and keep their model.")
def publish(bundle_path: Path, store_url: str, keys_dir: str, channel: str, expected_wer: float | None,
            rollout_percent: float | None, no_current: bool, report_store_url: str | None,
            skip_format_check: bool) -> None:
    """Sign a bundle into the repository and list it on a channel (one commit).

    A bundle of format 3 (`ota diff train --compact`) is published only if
    every device on the channel reports, in its heartbeat, an agent that reads it.

    \b
    Example:
      ota publish work/1-2.otab --channel stable --expected-wer 0.30 --rollout 10
    """
    from rich.progress import Progress

    from packager.publish import publish_bundle

    data = bundle_path.read_bytes()
    with Progress(transient=True) as bar:
        bar.add_task(f"publishing {len(data):,} bytes", total=None)
        release = publish_bundle(_store(store_url), keys_dir, data, channel=channel, expected_wer=expected_wer,
                                 make_current=not no_current, rollout_percent=rollout_percent,
                                 fleet_store=report_store_url and _store(report_store_url),
                                 check_fleet=not skip_format_check)
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
    rows = []
    for name, t in targets.items():
        c = t["custom"]
        versions = f"{'any' if c.get('base_version') is None else c['base_version']} -> {c.get('target_version')}" if c.get("kind") != "channel" \
            else f"current {c.get('version')}"
        rows.append((name, f"{t['length']:,}", str(c.get("kind")), versions, str(c.get("method", "")),
                     str(c.get("expected_wer") or "")))
    print_table(("target", "bytes", "kind", "versions", "method", "exp. WER"), rows, wrap=(0,))

