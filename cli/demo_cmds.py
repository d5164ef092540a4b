"""`ota demo`: the whole pipeline on one machine."""
from __future__ import annotations

from pathlib import Path

import click

from cli.params import INPUT_FILE, OUTPUT_FOLDER


@click.command()
@click.option("--out", "out_dir", default="work/demo", show_default=True, type=OUTPUT_FOLDER,
              help="Working and report folder (recreated).")
@click.option("--store", type=click.Choice(["seaweedfs", "file"]), default="seaweedfs", show_default=True,
              help="Start a local SeaweedFS S3 server, or use a plain directory store.")
@click.option("--budget", default=None,
              help="Diff budget: share of the model file's bytes ('2%') or bytes ('20KB'); default 1.9%.")
@click.option("--epochs", default=12, show_default=True, help="Diff training epochs.")
@click.option("--adapt", "n_adapt", default=400, show_default=True, help="Utterances in the built-in update.")
@click.option("--model", "model_path", type=INPUT_FILE, default=None,
              help="Base model to deploy (default: the shipped models/base-v1.otam).")
@click.option("--tiny", is_flag=True, help="A seconds-long configuration (for tests), not meaningful numbers.")
def demo(out_dir: Path, store: str, budget: str | None, epochs: int, n_adapt: int, model_path: Path | None,
         tiny: bool) -> None:
    """Run the whole mission end to end on embedded defaults and print a summary.

    Starts a local S3 server and a signed repository, publishes the shipped
    base model, installs it on two simulated devices, learns a sparse-mask and
    a hashed diff on a built-in update, publishes them and lets the devices
    update through their WER gates. Writes OUT/report/summary.json and
    OUT/report/bytes_vs_wer.png.

    \b
    Example:
      ota demo
      ota demo --store file --out /tmp/ota-demo
    """
    from rich.console import Console
    from rich.table import Table

    from diffing.demo import SHIPPED_MODEL, DemoConfig, run_demo

    sizes = dict(epochs=1, n_adapt=8, n_update_test=4, n_replay=4, n_original_test=4, n_device_validation=2) \
        if tiny else dict(epochs=epochs, n_adapt=n_adapt)
    cfg = DemoConfig(out_dir=Path(out_dir), store=store, base_model=model_path or SHIPPED_MODEL, budget=budget,
                     **sizes)
    report = run_demo(cfg, say=lambda line: click.echo(line, err=True))
    console = Console()
    table = Table("model", "bytes shipped", "vs full model", "WER update test", "WER original test")
    for name, r in report.results.items():
        size = r["bytes"]
        table.add_row(name, f"{size:,}", f"{size / report.full_model_bytes:.2%}", f"{r['update_test']:.1%}",
                      f"{r['original_test']:.1%}")
    console.print(table)
    for name, d in report.devices.items():
        status = d.get("status", {})
        active = (status.get("active") or {}).get("version")
        console.print(f"{name}: update outcome {d.get('update', {}).get('outcome')}, active version {active}")
    console.print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report.stages.items()))
    console.print(f"report: {Path(out_dir) / 'report'}")

