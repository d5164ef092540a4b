"""`ota`: the command-line entry point. Thin: parse, call a library, print."""
from __future__ import annotations

import click

from cli.errors import OtaGroup


@click.group(cls=OtaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ota-speech")
def cli() -> None:
    """OTA neural-diff updates for on-device speech recognition models.

    \b
    Example:
      ota transcribe clip.wav --model models/base-v1.otam
    """


def _register() -> None:
    # Each command family lives in its own module; import order is help order.
    from cli import model_cmds

    model_cmds.register(cli)
    for name in ("data_cmds", "train_cmds", "diff_cmds", "repo_cmds", "fleet_cmds", "agent_cmds", "demo_cmds"):
        try:
            module = __import__(f"cli.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"cli.{name}":
                raise
            continue
        module.register(cli)


_register()
