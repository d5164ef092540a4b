"""`ota`: the command-line entry point. Thin: parse, call a library, print.

Command modules are imported only when their command runs (or `--help` lists
them), and they import torch, scipy and boto3 inside their functions, so
`ota --help`, `ota --version` and config errors answer in a fraction of a
second.
"""
from __future__ import annotations

import os

# Before torch loads: waiting OpenMP threads sleep instead of spinning, so training next to
# other CPU-bound work does not stall on busy cores (diffing/threads.py sizes the threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cli.errors import OtaGroup  # noqa: E402
from cli.lazy import lazy_group  # noqa: E402

# name -> (module, attribute). Order is help order; a module that fails to
# import is listed as unavailable with its reason, never dropped.
COMMANDS: dict[str, tuple[str, str]] = {
    "transcribe": ("cli.model_cmds", "transcribe"),
    "model": ("cli.model_cmds", "model"),
    "eval": ("cli.train_cmds", "eval_cmd"),
    "data": ("cli.data_cmds", "data"),
    "train": ("cli.train_cmds", "train"),
    "distill": ("cli.train_cmds", "distill"),
    "export": ("cli.train_cmds", "export"),
    "diff": ("cli.diff_cmds", "diff"),
    "store": ("cli.store_cmds", "store"),
    "repo": ("cli.fleet_cmds", "repo"),  # repo_cmds.repo plus refresh and rotate-keys
    "bundle": ("cli.repo_cmds", "bundle"),
    "publish": ("cli.repo_cmds", "publish"),
    "rollout": ("cli.fleet_cmds", "rollout"),  # repo_cmds.rollout plus plan, watch, show
    "releases": ("cli.repo_cmds", "releases"),
    "agent": ("cli.agent_cmds", "agent"),
    "fleet": ("cli.fleet_cmds", "fleet"),
    "demo": ("cli.demo_cmds", "demo"),
}

cli = lazy_group(OtaGroup, COMMANDS)

if __name__ == "__main__":
    cli()
