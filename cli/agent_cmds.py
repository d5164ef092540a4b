"""The device agent: `ota agent run|check-once|status|rollback`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cli.params import INPUT_FILE

CONFIG_HELP = "Agent TOML file; OTA_AGENT_<KEY> environment variables override its keys."


def config_option(fn):  # type: ignore[no-untyped-def]
    return click.option("--config", "config_path", type=INPUT_FILE, envvar="OTA_AGENT_CONFIG",
                        default="agent.toml", show_default=True, help=CONFIG_HELP)(fn)


def _config(config_path: Path):  # -> AgentConfig
    from device_agent.agent import load_config
    from device_agent.agent.preflight import unknown_env_variables

    for name in unknown_env_variables():
        click.echo(f"warning: {name} is not an agent setting and is ignored (see docs/agent.md for the keys)",
                   err=True)
    return load_config(config_path)


def _agent(config_path: Path, *, preflight: bool = False):  # -> Agent
    from device_agent.agent import Agent
    from device_agent.agent.log import JsonLog
    from device_agent.agent.preflight import check_config

    cfg = _config(config_path)
    if preflight:
        check_config(cfg)
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
def run(config_path: Path) -> None:
    """Run the daemon: check every poll_interval (+ jitter) until SIGTERM/SIGINT.

    Logs go to stderr as one JSON object per line. A signal stops the agent
    between two steps; an interrupted update resumes on the next start.

    \b
    Example:
      ota agent run --config /etc/ota/agent.toml
    """
    _agent(config_path, preflight=True).run()


@agent.command("check-config")
@config_option
def check_config_cmd(config_path: Path) -> None:
    """Check the config and what it points at (trust root, validation audio, data folder, store URL).

    The daemon runs the same checks when it starts, so a missing file is
    found before the first update, not during it. Nothing is contacted.

    \b
    Example:
      ota agent check-config --config /etc/ota/agent.toml
    """
    from device_agent.agent.preflight import check_config

    for line in check_config(_config(config_path)):
        click.echo(f"ok  {line}")


@agent.command("check-once")
@config_option
def check_once(config_path: Path) -> None:
    """Finish any interrupted update, check once, install what is due, print the outcome.

    \b
    Example:
      OTA_AGENT_CHANNEL=beta ota agent check-once --config agent.toml
    """
    _echo_json(_agent(config_path).check_once())


@agent.command()
@config_option
def status(config_path: Path) -> None:
    """Print the lifecycle state, active and previous model, refused versions, last outcome (JSON).

    \b
    Example:
      ota agent status --config /etc/ota/agent.toml
    """
    _echo_json(_agent(config_path).status())


@agent.command()
@config_option
def rollback(config_path: Path) -> None:
    """Switch back to the previous model slot; the version left is refused from then on.

    \b
    Example:
      ota agent rollback --config /etc/ota/agent.toml
    """
    _echo_json(_agent(config_path).rollback())

