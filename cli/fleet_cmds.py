"""Fleet operations: `ota repo refresh|rotate-keys`, `ota fleet status`, `ota rollout plan|watch|show`.

The `repo` and `rollout` groups are those of cli.repo_cmds with these commands
added; cli.main loads them from here.
"""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import click

from cli.defaults import LibraryDefault, field_default, given
from cli.params import INPUT_FILE
from cli.repo_cmds import keys_option, repo, rollout, store_option
from cli.tables import print_table


@repo.command()
@store_option
@keys_option
@click.option("--renew-before", type=click.FloatRange(0.01, 0.99), cls=LibraryDefault,
              default_of=field_default("packager.trust:refresh_repository", "renew_before"),
              help="Re-sign a role when less than this share of its expiry period is left.")
def refresh(store_url: str, keys_dir: str, renew_before: float | None) -> None:
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

    from device_agent.store import open_store
    from packager.trust import refresh_repository

    result = refresh_repository(open_store(store_url), keys_dir, **given(renew_before=renew_before))
    now = datetime.now(timezone.utc)
    what = ", ".join(result.resigned) if result.resigned else "nothing due"
    click.echo(f"re-signed: {what}")
    for role, when in result.expires.items():
        click.echo(f"  {role:<9} expires {when:%Y-%m-%dT%H:%M:%SZ} (in {_left(when - now)})")
    root_left = result.expires["root"] - now
    if root_left.days < 30:
        click.echo(f"warning: root expires in {_left(root_left)}; re-sign it with the offline root keys "
                   "(ota repo rotate-keys --role root)", err=True)


def _left(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return "EXPIRED"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h" if seconds >= 86400 else f"{seconds // 3600}h {seconds % 3600 // 60}m"


@repo.command("rotate-keys")
@store_option
@keys_option
@click.option("--role", required=True, type=click.Choice(["root", "targets", "snapshot", "timestamp"]),
              help="Whose keys to replace (all of them).")
@click.option("--count", "num_keys", type=click.IntRange(1, 20), cls=LibraryDefault,
              default_of=field_default("packager.trust:rotate_keys", "num_keys"), help="New keys to create.")
@click.option("--threshold", type=click.IntRange(1, 20), cls=LibraryDefault,
              default_of=field_default("packager.trust:rotate_keys", "threshold"),
              help="Signatures required from the new keys.")
def rotate_keys_cmd(store_url: str, keys_dir: str, role: str, num_keys: int | None, threshold: int | None) -> None:
    """Replace a role's keys: publish the next root (signed by old and new root keys)
    and re-sign the online metadata. Devices follow through the root chain.

    \b
    Example:
      ota repo rotate-keys --role timestamp
      ota repo rotate-keys --role root --count 3 --threshold 2
    """
    from device_agent.store import open_store
    from packager.trust import rotate_keys

    rot = rotate_keys(open_store(store_url), keys_dir, role, **given(num_keys=num_keys, threshold=threshold))
    click.echo(f"root v{rot.root_version}: {role} keys {', '.join(k[:12] for k in rot.added)} "
               f"(threshold {rot.threshold}) replace {', '.join(k[:12] for k in rot.revoked)}; "
               f"revoked private keys moved to {keys_dir}/revoked/")


def _echo_json(doc: object) -> None:
    click.echo(json.dumps(doc, indent=1, sort_keys=True, default=str))


@click.group()
def fleet() -> None:
    """What the devices report: versions, failing checks, outcomes and WER per release.

    \b
    Example:
      ota fleet status --store s3://updates/repo?endpoint=http://127.0.0.1:8333
    """


@fleet.command("status")
@click.option("--store", "store_url", required=True, envvar="OTA_STORE",
              help="file:///dir or s3://bucket/prefix?endpoint=URL holding heartbeats/ and reports/.")
@click.option("--model-id", default=None, help="Only this model.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of tables.")
def fleet_status_cmd(store_url: str, model_id: str | None, as_json: bool) -> None:
    """Versions per channel, devices failing to check and why, and per release: committed,
    refused, failed and rolled-back counts with WER before/after distributions.

    Malformed or oversized records are skipped and counted (a warning on stderr).

    \b
    Example:
      ota fleet status --store file:///srv/ota/store --model-id speech-commands
    """
    from packager.fleet_status import fleet_summary
    from device_agent.store import open_store

    summary = fleet_summary(open_store(store_url), model_id)
    if summary["ignored"]:
        ignored = ", ".join(f"{n} {kind}{'s' if n > 1 else ''}" for kind, n in summary["ignored"].items())
        click.echo(f"warning: ignored {ignored}", err=True)
    if as_json:
        _echo_json(summary)
        return
    formats = summary["newest_bundle_format"]
    print_table(("channel", "devices per version", "agents reading bundle formats up to"),
                [(ch, ", ".join(f"v{v}: {n}" for v, n in counts.items()),
                  ", ".join(f"{f}: {n}" for f, n in formats.get(ch, {}).items()))
                 for ch, counts in summary["versions"].items()],
                wrap=(1,), title=f"{summary['devices']} devices")
    failing = summary["failing"]
    if failing["devices"]:
        print_table(("reason", "devices"), [(r, str(n)) for r, n in failing["by_reason"].items()],
                    title=f"{failing['devices']} devices failing to check")
    print_table(("model/channel", "ver", "tries", "commit", "refuse", "fail", "rolled back", "WER before",
                 "WER after", "change p10/med/p90"),
                [(f"{r['model_id']}/{r['channel']}", str(r["version"]), *(str(r[k]) for k in (
                    "attempts", "committed", "refused", "failed", "rolled_back")),
                  _median(r["wer_before"]), _median(r["wer_after"]), _spread(r["wer_change"]))
                 for r in summary["releases"]], wrap=(0,), title="releases")


def _median(dist: dict | None) -> str:
    return "-" if dist is None else f"{dist['median']:.3f}"


def _spread(dist: dict | None) -> str:
    return "-" if dist is None else f"{dist['p10']:+.3f}/{dist['median']:+.3f}/{dist['p90']:+.3f}"


def _model_channel(fn):  # type: ignore[no-untyped-def]
    fn = click.option("--channel", default="stable", show_default=True, help="Release channel.")(fn)
    return click.option("--model-id", default="speech-commands", show_default=True, help="Model id.")(fn)


def _plan_default(name: str):  # type: ignore[no-untyped-def]
    return field_default("packager.rollout_controller:RolloutPlan", name)


@rollout.command("plan")
@store_option
@keys_option
@_model_channel
@click.option("--version", required=True, type=int, help="The published version to roll out.")
@click.option("--previous", "previous_version", type=int,
              help="Version to go back to on halt (default: the channel's current version, or the version "
                   "the release's diff starts from).")
@click.option("--cohorts", cls=LibraryDefault, default_of=lambda: ",".join(f"{c:g}" for c in _plan_default("cohorts")()),
              help="Rollout percentages, ending at 100.")
@click.option("--min-reports", type=int, cls=LibraryDefault, default_of=_plan_default("min_reports"),
              help="Reports a cohort needs before it advances.")
@click.option("--min-success", type=click.FloatRange(0, 1), cls=LibraryDefault, default_of=_plan_default("min_success"),
              help="Committed share needed to advance.")
@click.option("--max-wer-change", type=float, cls=LibraryDefault, default_of=_plan_default("max_wer_change"),
              help="Median WER change (after - before) allowed to advance.")
@click.option("--halt-failed", "halt_failed_share", type=click.FloatRange(0, 1), cls=LibraryDefault,
              default_of=_plan_default("halt_failed_share"), help="Failed share that halts.")
@click.option("--halt-refused", "halt_refused_share", type=click.FloatRange(0, 1), cls=LibraryDefault,
              default_of=_plan_default("halt_refused_share"), help="Gate-refusal share that halts.")
@click.option("--halt-rolled-back", "halt_rolled_back_share", type=click.FloatRange(0, 1), cls=LibraryDefault,
              default_of=_plan_default("halt_rolled_back_share"), help="Rolled-back share that halts.")
@click.option("--halt-wer-regression", type=float, cls=LibraryDefault, default_of=_plan_default("halt_wer_regression"),
              help="Median WER change that halts.")
@click.option("--min-halt-reports", type=int, cls=LibraryDefault, default_of=_plan_default("min_halt_reports"),
              help="Reports needed before any halt.")
@click.option("--revert-bundle", type=INPUT_FILE,
              help="Bundle from VERSION back to the previous version (ota bundle build --from new --to old): "
                   "published now, used on halt.")
def rollout_plan(store_url: str, keys_dir: str, model_id: str, channel: str, version: int,
                 previous_version: int | None, cohorts: str | None, revert_bundle: Path | None, **limits) -> None:
    """Start a staged rollout of a published version (opens the first cohort).

    With --revert-bundle, a halt moves the channel back to the previous version
    and devices that took the release return to it through that small bundle.

    \b
    Example:
      ota publish work/v2.otab --rollout 0
      ota bundle build --from work/v2.otam --to models/base-v1.otam --out work/2-1.otab
      ota rollout plan --version 2 --revert-bundle work/2-1.otab
      ota rollout watch --interval 60
    """
    from packager.rollout_controller import RolloutController, parse_cohorts
    from device_agent.store import open_store

    controller = RolloutController(open_store(store_url), keys_dir, model_id, channel)
    plan = controller.plan_release(version, previous_version=previous_version,
                                   revert_bundle=revert_bundle.read_bytes() if revert_bundle else None,
                                   **given(cohorts=cohorts and parse_cohorts(cohorts), **limits))
    back = "nothing" if plan.previous_version is None else plan.previous_version
    click.echo(f"{model_id}/{channel}: rolling out version {version} from {plan.cohorts[0]:g}% "
               f"(back to {back} on halt{'' if plan.revert else ': rollout 0 only'})")


@rollout.command("watch")
@store_option
@keys_option
@_model_channel
@click.option("--interval", default=60.0, show_default=True, type=click.FloatRange(0), help="Seconds between steps.")
@click.option("--once", is_flag=True, help="Decide once and exit (for cron).")
def rollout_watch(store_url: str, keys_dir: str, model_id: str, channel: str, interval: float, once: bool) -> None:
    """Advance, wait or halt the channel's rollout on the devices' reports, until it completes or halts.

    Every decision is stored with its numbers; a restarted watch resumes.

    \b
    Example:
      ota rollout watch --channel stable --interval 60
    """
    import time

    from packager.rollout_controller import RolloutController
    from device_agent.store import open_store

    controller = RolloutController(open_store(store_url), keys_dir, model_id, channel)
    controller.resume()
    while True:
        decision = controller.step()
        click.echo(f"{decision['action']}: {decision['reason']}")
        if decision["status"] != "running" or once:
            break
        time.sleep(interval)


@rollout.command("show")
@store_option
@_model_channel
@click.option("--json", "as_json", is_flag=True, help="Print the stored state as JSON.")
def rollout_show(store_url: str, model_id: str, channel: str, as_json: bool) -> None:
    """Print a rollout's plan, status and every decision with its numbers.

    \b
    Example:
      ota rollout show --channel stable
    """
    from packager.rollout_controller import RolloutState, state_key
    from device_agent.store import open_store

    state = RolloutState.from_json(open_store(store_url).get(state_key(model_id, channel)))  # checked: DataError
    if as_json:
        _echo_json(json.loads(state.to_json()))
        return
    click.echo(f"version {state.plan.version} on {model_id}/{channel}: {state.status} at cohort "
               f"{state.plan.cohorts[state.cohort]:g}%")
    for d in state.decisions:
        n = d.get("numbers") if isinstance(d.get("numbers"), dict) else {}
        numbers = f" [{n.get('reports')} reports, {n.get('refused')} refused, {n.get('failed')} failed, " \
                  f"WER change {n.get('median_wer_change')}]" if n else ""
        click.echo(f"  {_number(d.get('at'), '.0f')} {d['action']:<8} {_number(d.get('cohort_percent'), 'g')}%: "
                   f"{d.get('reason')}{numbers}")


def _number(value: object, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "?"
