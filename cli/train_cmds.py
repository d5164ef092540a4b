"""`ota train`, `ota export`, `ota eval`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from device_agent.manifest import read_manifest
from device_agent.atomic import write_atomic
from device_agent.runtime import Int8Runtime
from device_agent.wer import evaluate


@click.command()
@click.option("--train", "train_manifest", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Training manifest (JSONL: audio_filepath, text, duration).")
@click.option("--dev", "dev_manifest", type=click.Path(exists=True, dir_okay=False),
              help="Held-out manifest decoded after every epoch.")
@click.option("--out", "out_dir", default="work/runs/base", show_default=True, help="Run folder (checkpoints, model).")
@click.option("--epochs", default=12, show_default=True, help="Training epochs.")
@click.option("--sparsity", default=0.5, show_default=True, help="Target fraction of zero weight-matrix entries.")
@click.option("--lr", default=2e-3, show_default=True, help="Peak learning rate (AdamW, cosine decay).")
@click.option("--model-id", default="speech-commands", show_default=True, help="Model id written into the export.")
@click.option("--vtlp", default=0.0, show_default=True, type=click.FloatRange(0.0, 0.5, max_open=True),
              help="Vocal tract length perturbation: warp each utterance's frequency axis by up to this factor.")
@click.option("--speed", default=0.0, show_default=True, type=click.FloatRange(0.0, 0.5, max_open=True),
              help="Speed perturbation: scale each utterance's frequencies and duration together by up to this factor.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False),
              help="Fine-tune from this checkpoint (weights, masks, normalisation); QAT on from the start.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="torch threads (1 is fastest when other jobs share the cores).")
def train(train_manifest: str, dev_manifest: str | None, out_dir: str, epochs: int, sparsity: float, lr: float,
          model_id: str, vtlp: float, speed: float, seed: int, init_from: str | None, threads: int) -> None:
    """Train a streaming RNN-T with pruning and QAT, then export an int8 model.

    Rerunning the same command resumes from OUT/last.pt.

    \b
    Example:
      ota train --train work/corpus/base/train.jsonl --dev work/corpus/base/test.jsonl --out work/runs/base
    """
    from diffing.train import TrainConfig, train as run  # training code only on the server side

    # A fine-tune starts pruned and quantization-aware: short warm-up, masks and fake quantization from step 0.
    stage = dict(init_from=init_from, warmup_steps=100, prune_start=0.0, prune_end=0.3, qat_start=0.0) if init_from else {}
    cfg = TrainConfig(train_manifest, dev_manifest, out_dir, epochs=epochs, target_sparsity=sparsity, lr=lr,
                      model_id=model_id, vtlp=vtlp, speed=speed, seed=seed, threads=threads, **stage)
    path = run(cfg, log=click.echo)
    click.echo(f"exported {path}")


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Device model file to write.")
@click.option("--model-id", default=None, help="Override the model id.")
@click.option("--version", "version", type=int, default=None, help="Override the model version.")
def export(checkpoint: str, out_path: str, model_id: str | None, version: int | None) -> None:
    """Export a training checkpoint to the int8 sparse device format (.otam).

    \b
    Example:
      ota export work/runs/base/last.pt --out models/base-v1.otam
    """
    from diffing.train import export_checkpoint

    click.echo(f"{out_path}\t{export_checkpoint(checkpoint, out_path, model_id, version)}")


@click.command(name="eval")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="Device model (.otam).")
@click.option("--manifest", required=True, type=click.Path(dir_okay=False), help="Manifest to decode and score.")
@click.option("--out", "out_json", type=click.Path(dir_okay=False), help="Write per-utterance errors to this JSON file.")
@click.option("--limit", type=int, default=None, help="Score only the first N utterances.")
def eval_cmd(model_path: str, manifest: str, out_json: str | None, limit: int | None) -> None:
    """Word error rate of a device model through the int8 runtime (jiwer).

    \b
    Example:
      ota eval --model models/base-v1.otam --manifest work/corpus/base/test.jsonl --out work/eval.json
    """
    runtime = Int8Runtime.from_file(model_path)
    utterances = read_manifest(manifest, runtime.tokenizer)[:limit]
    started = time.perf_counter()
    with Progress(transient=True) as bar:
        task = bar.add_task("decoding", total=len(utterances))
        result = evaluate(runtime.transcribe, utterances, lambda n: bar.advance(task, n))
    seconds = time.perf_counter() - started
    audio = sum(u.duration for u in utterances)
    summary = {"model": model_path, "model_hash": runtime.content_hash, "manifest": manifest,
               "utterances": len(utterances), "words": result.words, "errors": result.errors,
               "wer": round(result.wer, 4), "rtf": round(seconds / max(audio, 1e-9), 4)}
    if out_json:
        write_atomic(Path(out_json), json.dumps({**summary, **result.to_json()}, indent=2).encode())
    table = Table("model", "utterances", "words", "errors", "WER", "RTF")
    table.add_row(Path(model_path).name, str(len(utterances)), str(result.words), str(result.errors),
                  f"{result.wer:.2%}", f"{summary['rtf']:.3f}")
    Console().print(table)
    click.echo(json.dumps(summary))


def register(cli: click.Group) -> None:
    cli.add_command(train)
    cli.add_command(export)
    cli.add_command(eval_cmd)
