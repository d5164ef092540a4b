"""Fleet operations: `ota repo refresh|rotate-keys`, `ota fleet status`, `ota rollout plan|watch|show`.

The `repo` and `rollout` groups are those of cli.repo_cmds with these commands
added; cli.main loads them from here.
"""
from __future__ import annotations

import json

import click

from cli.repo_cmds import keys_option, repo, store_option


@repo.command()
@store_option
@keys_option
@click.option("--renew-before", default=0.5, show_default=True, type=click.FloatRange(0.01, 0.99),
              help="Re-sign a role when less than this share of its expiry period is left.")
def refresh(store_url: str, keys_dir: str, renew_before: float) -> None:
    """Re-sign timestamp (and snapshot, targets) metadata that expires soon; idempotent.

    Run it from cron or a systemd timer more often than the timestamp period
    times RENEW_BEFORE (e.g. hourly for a one-day timestamp). When nothing is
    due it writes nothing. If another publisher commits at the same moment it
    writes nothing visible and exits with the store-conflict code: re-run it.

    \b
    Example:
      ota repo refresh --store "$OTA_STORE" --keys ~/ota-keys
    """
    from datetime import datetime, timezone

    from packager.store import open_store
    from packager.trust import refresh_repository

    result = refresh_repository(open_store(store_url), keys_dir, renew_before=renew_before)
    now = datetime.now(timezone.utc)
    what = ", ".join(result.resigned) if result.resigned else "nothing due"
    click.echo(f"re-signed: {what}")
    for role, when in result.expires.items():
        click.echo(f"  {role:<9} expires {when:%Y-%m-%dT%H:%M:%SZ} (in {_left(when - now)})")
    root_left = result.expires["root"] - now
    if root_left.days < 30:
        click.echo(f"warning: root expires in {_left(root_left)}; re-sign it with the offline root keys "
                   "(ota repo rotate-keys --role root)", err=True)


def _left(delta) -> str:  # type: ignore[no-untyped-def]
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return "EXPIRED"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h" if seconds >= 86400 else f"{seconds // 3600}h {seconds % 3600 // 60}m"


@repo.command("rotate-keys")
@store_option
@keys_option
@click.option("--role", required=True, type=click.Choice(["root", "targets", "snapshot", "timestamp"]),
              help="Whose keys to replace (all of them).")
@click.option("--count", "num_keys", default=1, show_default=True, type=click.IntRange(1, 20), help="New keys to create.")
@click.option("--threshold", default=1, show_default=True, type=click.IntRange(1, 20),
              help="Signatures required from the new keys.")
def rotate_keys_cmd(store_url: str, keys_dir: str, role: str, num_keys: int, threshold: int) -> None:
    """Replace a role's keys: publish the next root (signed by old and new root keys)
    and re-sign the online metadata. Devices follow through the root chain.

    \b
    Example:
      ota repo rotate-keys --role timestamp
      ota repo rotate-keys --role root --count 3 --threshold 2
    """
    from packager.store import open_store
    from packager.trust import rotate_keys

    rot = rotate_keys(open_store(store_url), keys_dir, role, num_keys=num_keys, threshold=threshold)
    click.echo(f"root v{rot.root_version}: {role} keys {', '.join(k[:12] for k in rot.added)} "
               f"(threshold {threshold}) replace {', '.join(k[:12] for k in rot.revoked)}; "
               f"revoked private keys moved to {keys_dir}/revoked/")


def _echo_json(doc: object) -> None:
    click.echo(json.dumps(doc, indent=1, sort_keys=True, default=str))

