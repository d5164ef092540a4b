"""`ota transcribe` and `ota model inspect`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from cli.params import INPUT_FILE

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "base-v1.otam"


def _model_option() -> click.Option:
    return click.option("--model", "model_path", type=INPUT_FILE,
                        default=DEFAULT_MODEL, show_default=True, envvar="OTA_MODEL",
                        help="Device model file (.otam).")


@click.command()
@click.argument("audio", nargs=-1, required=True, type=INPUT_FILE)
@_model_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
def transcribe(audio: tuple[Path, ...], model_path: Path, as_json: bool) -> None:
    """Transcribe audio files (WAV/FLAC, any sample rate) with the int8 runtime.

    \b
    Example:
      ota transcribe clip.wav other.flac --model models/base-v1.otam --json
    """
    from device_agent.audio import load_audio
    from device_agent.runtime import Int8Runtime

    runtime = Int8Runtime.from_file(model_path)
    for path in audio:
        samples = load_audio(path)
        text = runtime.transcribe(samples)
        if as_json:
            click.echo(json.dumps({"audio": str(path), "text": text, "seconds": round(len(samples) / 16000, 3),
                                   "model_hash": runtime.content_hash}))
        else:
            click.echo(f"{path}\t{text}")


@click.group()
def model() -> None:
    """Inspect device model files."""


@model.command()
@click.argument("path", type=INPUT_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
def inspect(path: Path, as_json: bool) -> None:
    """Show config, sizes, sparsity per tensor and the content hash of a model.

    The whole file is decoded and verified (checksums, content hash).

    \b
    Example:
      ota model inspect models/base-v1.otam
    """
    from device_agent.model_format import load_model, read_header

    header = read_header(path)
    device = load_model(path)  # full verification, not just the header
    rows = []
    for entry in header["tensors"]:
        numel = 1
        for d in entry["shape"]:
            numel *= d
        rows.append({"name": entry["name"], "dtype": entry["dtype"], "shape": entry["shape"],
                     "coding": entry["coding"], "zeros": round(1 - entry["nnz"] / numel, 4),
                     "bytes": entry["length"]})
    summary = {"path": str(path), "model_id": device.model_id, "version": device.version,
               "content_hash": device.content_hash(), "file_bytes": path.stat().st_size,
               "parameters": device.num_parameters(), "weight_sparsity": round(device.weight_sparsity(), 4),
               "config": device.config.to_json(), "metadata": device.metadata, "tensors": rows}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    from cli.tables import print_table

    click.echo(f"{device.model_id} v{device.version}  hash {summary['content_hash']}")
    click.echo(f"{summary['file_bytes']:,} bytes, {summary['parameters']:,} parameters, "
               f"{summary['weight_sparsity']:.1%} zeros in weight matrices")
    print_table(("tensor", "dtype", "shape", "coding", "zeros", "bytes"),
                [(r["name"], r["dtype"], "x".join(map(str, r["shape"])), r["coding"], f"{r['zeros']:.1%}",
                  f"{r['bytes']:,}") for r in rows], wrap=(0,))
