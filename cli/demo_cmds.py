"""`ota demo`: the whole pipeline on one machine."""
from __future__ import annotations

from pathlib import Path

import click

from cli.defaults import LibraryDefault, field_default, given
from cli.params import INPUT_FILE, OUTPUT_FOLDER


def _demo_default(name: str):  # type: ignore[no-untyped-def]
    return field_default("demo.pipeline:DemoConfig", name)


@click.command()
@click.option("--out", "out_dir", type=OUTPUT_FOLDER, cls=LibraryDefault, default_of=_demo_default("out_dir"),
              help="Working and report folder (recreated).")
@click.option("--store", type=click.Choice(["seaweedfs", "file"]), cls=LibraryDefault,
              default_of=_demo_default("store"), help="Start a local SeaweedFS S3 server, or use a plain directory store.")
@click.option("--budget", default=None,
              help="Diff budget: share of the model file's bytes ('2%') or bytes ('20KB'); default 1.9%.")
@click.option("--epochs", type=int, cls=LibraryDefault, default_of=_demo_default("epochs"),
              help="Diff training epochs.")
@click.option("--adapt", "n_adapt", type=int, cls=LibraryDefault, default_of=_demo_default("n_adapt"),
              help="Utterances in the built-in update.")
@click.option("--model", "model_path", type=INPUT_FILE, default=None,
              help="Base model to deploy (default: the shipped models/base-v1.otam).")
@click.option("--tiny", is_flag=True, help="A seconds-long configuration (for tests), not meaningful numbers.")
def demo(out_dir: Path | None, store: str | None, budget: str | None, epochs: int | None, n_adapt: int | None,
         model_path: Path | None, tiny: bool) -> None:
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
    from cli.progress import training_progress
    from cli.tables import print_table
    from demo.pipeline import SHIPPED_MODEL, DemoConfig, run_demo

    settings = given(out_dir=out_dir, store=store, base_model=model_path or SHIPPED_MODEL, budget=budget, epochs=epochs,
                     n_adapt=n_adapt)  # the rest: DemoConfig's defaults (or the tiny configuration's)
    cfg = DemoConfig.tiny(**settings) if tiny else DemoConfig(**settings)
    with training_progress() as progress:
        report = run_demo(cfg, say=progress.log)
    rows = [(name, f"{r['bytes']:,}", f"{r['bytes'] / report.full_model_bytes:.2%}", f"{r['update_test']:.1%}",
             f"{r['original_test']:.1%}") for name, r in report.results.items()]
    print_table(("model", "bytes shipped", "vs full model", "WER update test", "WER original test"), rows)
    for name, d in report.devices.items():
        update, status = d.get("update", {}), d.get("status", {})
        active = (status.get("active") or {}).get("version")
        click.echo(f"{name}: update outcome {update.get('outcome')}, active version {active}")
    for r in report.regressions():
        click.echo(f"WER ROSE: {r['model']} on {r['set']}: {r['before']:.1%} -> {r['after']:.1%} "
                   f"(+{100 * (r['after'] - r['before']):.1f} points)")
    if not report.regressions():
        click.echo("no measured set got worse")
    click.echo("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report.stages.items()))
    click.echo(f"report: {cfg.out_dir / 'report'}")
