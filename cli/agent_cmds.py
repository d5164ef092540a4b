"""The device agent: `ota agent run|check-once|status|rollback` and `ota fleet status`."""
from __future__ import annotations

import json
import sys

import click

from cli.params import INPUT_FILE
from cli.tables import print_table

CONFIG_HELP = "Agent TOML file; OTA_AGENT_<KEY> environment variables override its keys."


def config_option(fn):  # type: ignore[no-untyped-def]
    return click.option("--config", "config_path", type=INPUT_FILE, envvar="OTA_AGENT_CONFIG",
                        default="agent.toml", show_default=True, help=CONFIG_HELP)(fn)


def _agent(config_path: str | None):  # -> Agent
    from device_agent.agent import Agent, load_config
    from device_agent.agent.log import JsonLog

    cfg = load_config(config_path)
    return Agent(cfg, log=JsonLog(sys.stderr, device_id=cfg.device_id))


def _echo_json(doc: object) -> None:
    click.echo(json.dumps(doc, indent=1, sort_keys=True, default=str))


@click.group()
def agent() -> None:
    """Device update agent: poll, download, verify, apply, WER-gate, activate.

    \b
    Example:
      ota agent check-once --config /etc/ota/agent.toml
    """


@agent.command()
@config_option
def run(config_path: str) -> None:
    """Run the daemon: check every poll_interval (+ jitter) until SIGTERM/SIGINT.

    Logs go to stderr as one JSON object per line. A signal stops the agent
    between two steps; an interrupted update resumes on the next start.

    \b
    Example:
      ota agent run --config /etc/ota/agent.toml
    """
    _agent(config_path).run()


@agent.command("check-once")
@config_option
def check_once(config_path: str) -> None:
    """Finish any interrupted update, check once, install what is due, print the outcome.

    \b
    Example:
      OTA_AGENT_CHANNEL=beta ota agent check-once --config agent.toml
    """
    _echo_json(_agent(config_path).check_once())


@agent.command()
@config_option
def status(config_path: str) -> None:
    """Print the lifecycle state, active and previous model, refused versions, last outcome (JSON).

    \b
    Example:
      ota agent status --config /etc/ota/agent.toml
    """
    _echo_json(_agent(config_path).status())


@agent.command()
@config_option
def rollback(config_path: str) -> None:
    """Switch back to the previous model slot; the version left is refused from then on.

    \b
    Example:
      ota agent rollback --config /etc/ota/agent.toml
    """
    _echo_json(_agent(config_path).rollback())


@click.group()
def fleet() -> None:
    """What the fleet reported: outcomes and WER per model, channel and version.

    \b
    Example:
      ota fleet status --store s3://updates/repo?endpoint=http://127.0.0.1:8333
    """


@fleet.command("status")
@click.option("--store", "store_url", required=True, envvar="OTA_STORE",
              help="file:///dir or s3://bucket/prefix?endpoint=URL holding reports/ (AWS_* for credentials).")
@click.option("--model-id", default=None, help="Only this model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of a table.")
def fleet_status_cmd(store_url: str, model_id: str | None, as_json: bool) -> None:
    """Summarise device reports: committed / refused / failed / rolled back, median WER.

    \b
    Example:
      ota fleet status --store file:///srv/ota/store --model-id digits --json
    """
    from device_agent.agent import fleet_status
    from packager.store import open_store

    rows = fleet_status(open_store(store_url), model_id)
    if as_json:
        _echo_json(rows)
        return
    rows = [(r["model_id"], r["channel"], str(r["version"]), *(str(r[k]) for k in (
        "attempts", "committed", "refused", "failed", "rolled_back", "devices")),
        "-" if r["median_wer_after"] is None else f"{r['median_wer_after']:.4f}") for r in rows]
    print_table(("model", "channel", "ver", "tries", "commit", "refuse", "fail", "rolled back", "devices",
                 "median WER"), rows, wrap=(0, 1))
