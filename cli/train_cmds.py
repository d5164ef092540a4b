"""`ota train`, `ota distill`, `ota export`, `ota eval`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from cli.defaults import LibraryDefault, field_default, given
from cli.params import INPUT_FILE, OUTPUT_FILE, OUTPUT_FOLDER


def _train_default(name: str):  # type: ignore[no-untyped-def]
    return field_default("diffing.train:TrainConfig", name)


def _distill_default(name: str):  # type: ignore[no-untyped-def]
    return field_default("diffing.distill:DistillConfig", name)


@click.command()
@click.option("--train", "train_manifest", required=True, type=INPUT_FILE,
              help="Training manifest (JSONL: audio_filepath, text, duration).")
@click.option("--dev", "dev_manifest", type=INPUT_FILE,
              help="Held-out manifest decoded after every epoch.")
@click.option("--out", "out_dir", type=OUTPUT_FOLDER, cls=LibraryDefault, default_of=_train_default("out_dir"),
              help="Run folder (checkpoints, model).")
@click.option("--epochs", type=int, cls=LibraryDefault, default_of=_train_default("epochs"),
              help="Training epochs.")
@click.option("--sparsity", type=float, cls=LibraryDefault,
              default_of=_train_default("target_sparsity"), help="Target fraction of zero weight-matrix entries.")
@click.option("--lr", type=float, cls=LibraryDefault, default_of=_train_default("lr"),
              help="Peak learning rate (AdamW, cosine decay).")
@click.option("--model-id", cls=LibraryDefault, default_of=_train_default("model_id"), help="Model id written into the export.")
@click.option("--vtlp", type=click.FloatRange(0.0, 0.5, max_open=True), cls=LibraryDefault, default_of=_train_default("vtlp"),
              help="Vocal tract length perturbation: warp each utterance's frequency axis by up to this factor.")
@click.option("--speed", type=click.FloatRange(0.0, 0.5, max_open=True), cls=LibraryDefault, default_of=_train_default("speed"),
              help="Speed perturbation: scale each utterance's frequencies and duration together by up to this factor.")
@click.option("--rooms", type=click.FloatRange(0.0, 1.0), cls=LibraryDefault, default_of=_train_default("rooms"),
              help="Share of utterances heard through random rooms, noise, microphones and -30..+10 dB levels.")
@click.option("--seed", type=int, cls=LibraryDefault, default_of=_train_default("seed"), help="Random seed.")
@click.option("--init-from", type=INPUT_FILE,
              help="Fine-tune from this checkpoint or device model (.otam): weights, masks; QAT on from the start.")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="torch threads per process (default: the cores not busy with other work, shared by the "
              "processes torchrun starts on this machine).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), cls=LibraryDefault, default_of=_train_default("device"),
              help="Where to train: cuda takes one GPU per process (NCCL between processes), auto a GPU if any.")
@click.option("--config", "config_path", type=INPUT_FILE,
              help="Training settings as JSON (TrainConfig fields, e.g. a smaller model); options given on the "
              "command line take precedence.")
def train(train_manifest: Path, dev_manifest: Path | None, out_dir: Path | None, epochs: int | None,
          sparsity: float | None, lr: float | None, model_id: str | None, vtlp: float | None, speed: float | None,
          rooms: float | None, seed: int | None, init_from: Path | None, threads: int | None, device: str | None,
          config_path: Path | None) -> None:
    """Train a streaming RNN-T with pruning and QAT, then export an int8 model.

    Rerunning the same command resumes from OUT/last.pt. Under
    `torchrun --nproc-per-node N -m cli.main train ...` the same command
    trains on N processes (README: Scaling out).

    \b
    Example:
      ota train --train work/corpus/base/train.jsonl --dev work/corpus/base/test.jsonl --out work/runs/base
    """
    from cli.progress import training_progress
    from device_agent.errors import DistributedTrainingError
    from diffing import distributed
    from diffing.train import TrainConfig, train as run  # training code only on the server side

    # what the user gave; everything else is TrainConfig's default (or the --config file's)
    settings = given(epochs=epochs, target_sparsity=sparsity, lr=lr, model_id=model_id, vtlp=vtlp, speed=speed,
                     rooms=rooms, seed=seed, threads=threads, device=device)
    if config_path:
        settings = {**TrainConfig.settings_from_file(str(config_path)), **settings}
    cfg = TrainConfig.for_stage(str(train_manifest), dev_manifest and str(dev_manifest),
                                str(out_dir or _train_default("out_dir")()), init_from=init_from and str(init_from), **settings)
    world = distributed.init(cfg.device)  # under torchrun: one rank of a data-parallel job; rank 0 writes
    try:
        with training_progress() as progress:
            path = run(cfg, log=progress.log)
        distributed.finish()
    except DistributedTrainingError as exc:
        raise DistributedTrainingError(f"{exc}; {Path(cfg.out_dir) / 'last.pt'} holds the last complete epoch: "
                                       "rerun the same command to resume") from exc
    finally:
        distributed.shutdown()
    if world.is_writer:
        click.echo(f"exported {path}")


@click.command()
@click.option("--teacher", required=True, type=INPUT_FILE, help="The deployed model (.otam) whose front end is replaced.")
@click.option("--train", "train_manifest", required=True, type=INPUT_FILE,
              help="Manifest of audio to learn from (its transcripts are not used).")
@click.option("--out", "out_dir", type=OUTPUT_FOLDER, cls=LibraryDefault, default_of=_distill_default("out_dir"),
              help="Run folder (checkpoint, model.otam).")
@click.option("--epochs", type=click.IntRange(min=1), cls=LibraryDefault, default_of=_distill_default("epochs"),
              help="Passes over the audio.")
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), cls=LibraryDefault, default_of=_distill_default("lr"),
              help="Peak learning rate (Adam, cosine decay).")
@click.option("--rooms", type=click.FloatRange(0.0, 1.0), cls=LibraryDefault, default_of=_distill_default("rooms"),
              help="Share of utterances the student hears through rooms, noise and microphones "
              "(the rest at a random level, -30..+10 dB).")
@click.option("--speed", type=click.FloatRange(0.0, 0.5, max_open=True), cls=LibraryDefault,
              default_of=_distill_default("speed"),
              help="Speed perturbation heard by teacher and student alike: up to this factor, frequencies and duration.")
@click.option("--seed", type=int, cls=LibraryDefault, default_of=_distill_default("seed"), help="Random seed.")
@click.option("--threads", type=click.IntRange(min=1), cls=LibraryDefault, default_of=_distill_default("threads"),
              help="torch threads.")
def distill(teacher: Path, train_manifest: Path, out_dir: Path | None, epochs: int | None, lr: float | None,
            rooms: float | None, speed: float | None, seed: int | None, threads: int | None) -> None:
    """Give a trained model the level-normalising front end, taught by the model itself.

    A copy with the new front end learns to reproduce the deployed model's
    encoder output (teacher: clean audio; student: rooms, noise, levels);
    the prediction network, joint and zeros stay the teacher's. Rerunning the
    same command resumes from OUT/last.pt.

    \b
    Example:
      ota distill --teacher models/base-v1.otam --train work/corpus/base/train.jsonl --out work/runs/distill
    """
    from cli.progress import training_progress
    from diffing.distill import DistillConfig, distill as run

    cfg = DistillConfig(teacher=str(teacher), train_manifest=str(train_manifest),
                        **given(out_dir=out_dir and str(out_dir), epochs=epochs, lr=lr, rooms=rooms, speed=speed,
                                seed=seed, threads=threads))
    with training_progress() as progress:
        path = run(cfg, log=progress.log)
    click.echo(f"exported {path}")


@click.command()
@click.argument("checkpoint", type=INPUT_FILE)
@click.option("--out", "out_path", required=True, type=OUTPUT_FILE, help="Device model file to write.")
@click.option("--model-id", default=None, help="Override the model id.")
@click.option("--version", "version", type=int, default=None, help="Override the model version.")
def export(checkpoint: Path, out_path: Path, model_id: str | None, version: int | None) -> None:
    """Export a training checkpoint to the int8 sparse device format (.otam).

    \b
    Example:
      ota export work/runs/base2/last.pt --out work/models/base-v1.otam
    """
    from diffing.train import export_checkpoint

    click.echo(f"{out_path}\t{export_checkpoint(checkpoint, out_path, model_id, version)}")


@click.command(name="eval")
@click.option("--model", "model_path", required=True, type=INPUT_FILE, help="Device model (.otam).")
@click.option("--manifest", required=True, type=INPUT_FILE, help="Manifest to decode and score.")
@click.option("--out", "out_json", type=OUTPUT_FILE, help="Write per-utterance errors to this JSON file.")
@click.option("--limit", type=int, default=None, help="Score only the first N utterances.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object instead of a table.")
def eval_cmd(model_path: Path, manifest: Path, out_json: Path | None, limit: int | None, as_json: bool) -> None:
    """Word error rate of a device model through the int8 runtime (jiwer).

    \b
    Example:
      ota eval --model models/base-v1.otam --manifest work/corpus/base/test.jsonl --out work/eval.json
    """
    from rich.progress import Progress

    from cli.tables import print_table

    from device_agent.atomic import write_atomic
    from device_agent.manifest import read_manifest
    from device_agent.runtime import Int8Runtime
    from device_agent.wer import evaluate

    runtime = Int8Runtime.from_file(model_path)
    utterances = read_manifest(manifest, runtime.tokenizer)[:limit]
    started = time.perf_counter()
    with Progress(transient=True) as bar:
        task = bar.add_task("decoding", total=len(utterances))
        result = evaluate(runtime.transcribe, utterances, lambda n: bar.advance(task, n))
    seconds = time.perf_counter() - started
    audio = sum(u.duration for u in utterances)
    summary = {"model": str(model_path), "model_hash": runtime.content_hash, "manifest": str(manifest),
               "utterances": len(utterances), "words": result.words, "errors": result.errors,
               "wer": round(result.wer, 4), "rtf": round(seconds / max(audio, 1e-9), 4)}
    if out_json:
        write_atomic(Path(out_json), json.dumps({**summary, **result.to_json()}, indent=2).encode())
    if as_json:
        click.echo(json.dumps(summary))
        return
    print_table(("model", "utterances", "words", "errors", "WER", "RTF"),
                [(Path(model_path).name, str(len(utterances)), str(result.words), str(result.errors),
                  f"{result.wer:.2%}", f"{summary['rtf']:.3f}")], wrap=(0,))

