"""`ota diff train|apply|inspect`: learn, apply and look at neural diffs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from device_agent.atomic import write_atomic
from device_agent.model_format import load_model, save_model
from packager.bundle import apply_bundle, decode_bundle, encode_diff_bundle, inspect_bundle


@click.group()
def diff() -> None:
    """Learn, apply and inspect neural diffs (stored as diff bundles, .otab)."""


@diff.command()
@click.option("--method", type=click.Choice(["sparse", "hashed", "hybrid", "full", "lora"]), default="sparse",
              show_default=True, help="sparse: pruned integer deltas; hashed: shared buckets; hybrid: hashed "
              "encoder + sparse elsewhere; full/lora: baselines.")
@click.option("--budget", default="1%", show_default=True,
              help="Most bytes the bundle may take: a share of the base model file's bytes ('2%') or bytes ('20KB').")
@click.option("--base", "base_path", required=True, type=click.Path(dir_okay=False),
              help="The deployed device model (.otam) the diff applies to.")
@click.option("--data", "data", required=True, type=click.Path(dir_okay=False), help="Adaptation manifest (JSONL).")
@click.option("--replay", type=click.Path(dir_okay=False), help="Manifest of earlier data mixed in against forgetting.")
@click.option("--epochs", default=8, show_default=True, help="Training epochs over the adaptation data.")
@click.option("--lr", type=float, default=None, help="Learning rate (default: the method's).")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--threads", default=os.cpu_count() or 1, show_default="all cores", type=click.IntRange(min=1),
              help="torch threads (1 is fastest when other jobs share the cores).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Diff bundle to write (.otab).")
def train(method: str, budget: str, base_path: str, data: str, replay: str | None, epochs: int, lr: float | None,
          seed: int, threads: int, out_path: str) -> None:
    """Learn a diff against the exact int8 model a device runs.

    \b
    Example:
      ota diff train --method sparse --budget 1% --base models/base-v1.otam \\
          --data work/updates/novel_names/adapt.jsonl --replay work/replay.jsonl --out work/v2.otab
    """
    from diffing.diffs import DIFF_METHODS, learn_diff  # server side only

    config_cls, _ = DIFF_METHODS[method]
    options = {"budget": budget, "epochs": epochs, "seed": seed, "threads": threads}
    if lr is not None:
        options["lr"] = lr
    if method == "full":
        options.pop("budget")
    config = config_cls(**options)
    base = load_model(base_path)
    result = learn_diff(base, data, config, replay_manifest=replay, progress=True, log=click.echo)
    data_bytes = encode_diff_bundle(result, base)
    write_atomic(Path(out_path), data_bytes)
    click.echo(json.dumps({"out": out_path, "bytes": len(data_bytes), "entries": result.nonzero_entries(),
                           "base_hash": result.base_hash, "target_hash": result.target_hash}))


@diff.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--base", "base_path", required=True, type=click.Path(dir_okay=False), help="Model to apply the diff to.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Resulting model (.otam).")
def apply(bundle: str, base_path: str, out_path: str) -> None:
    """Apply a diff bundle to a model; the result must hash to the bundle's target.

    \b
    Example:
      ota diff apply work/v2.otab --base models/base-v1.otam --out work/v2.otam
    """
    decoded = decode_bundle(Path(bundle).read_bytes())
    model = apply_bundle(decoded, load_model(base_path))
    save_model(model, out_path)
    click.echo(f"{out_path}\tversion {model.version}\t{model.content_hash()}")


@diff.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
def inspect(bundle: str) -> None:
    """Show a diff bundle's method, versions, hashes and sections (fully verified).

    \b
    Example:
      ota diff inspect work/v2.otab
    """
    click.echo(json.dumps(inspect_bundle(bundle, verify=True), indent=2))


def register(cli: click.Group) -> None:
    cli.add_command(diff)
