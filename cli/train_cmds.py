"""`ota train`, `ota distill`, `ota export`, `ota eval`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from cli.params import INPUT_FILE, OUTPUT_FILE, OUTPUT_FOLDER


@click.command()
@click.option("--train", "train_manifest", required=True, type=INPUT_FILE,
              help="Training manifest (JSONL: audio_filepath, text, duration).")
@click.option("--dev", "dev_manifest", type=INPUT_FILE,
              help="Held-out manifest decoded after every epoch.")
@click.option("--out", "out_dir", default="work/runs/base", show_default=True, type=OUTPUT_FOLDER, help="Run folder (checkpoints, model).")
@click.option("--epochs", default=12, show_default=True, help="Training epochs.")
@click.option("--sparsity", default=0.5, show_default=True, help="Target fraction of zero weight-matrix entries.")
@click.option("--lr", default=2e-3, show_default=True, help="Peak learning rate (AdamW, cosine decay).")
@click.option("--model-id", default="speech-commands", show_default=True, help="Model id written into the export.")
@click.option("--vtlp", default=0.0, show_default=True, type=click.FloatRange(0.0, 0.5, max_open=True),
              help="Vocal tract length perturbation: warp each utterance's frequency axis by up to this factor.")
@click.option("--speed", default=0.0, show_default=True, type=click.FloatRange(0.0, 0.5, max_open=True),
              help="Speed perturbation: scale each utterance's frequencies and duration together by up to this factor.")
@click.option("--rooms", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Share of utterances heard through random rooms, noise, microphones and -30..+10 dB levels.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--init-from", type=INPUT_FILE,
              help="Fine-tune from this checkpoint or device model (.otam): weights, masks; QAT on from the start.")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="torch threads per process (default: the cores not busy with other work, shared by the "
              "processes torchrun starts on this machine).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="Where to train: cuda takes one GPU per process (NCCL between processes), auto a GPU if any.")
@click.option("--config", "config_path", type=INPUT_FILE,
              help="Training settings as JSON (TrainConfig fields, e.g. a smaller model); options given on the "
              "command line take precedence.")
@click.pass_context
def train(ctx: click.Context, train_manifest: Path, dev_manifest: Path | None, out_dir: Path, epochs: int,
          sparsity: float, lr: float, model_id: str, vtlp: float, speed: float, rooms: float, seed: int,
          init_from: Path | None,
          threads: int | None, device: str, config_path: Path | None) -> None:
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

    settings = dict(epochs=epochs, target_sparsity=sparsity, lr=lr, model_id=model_id, vtlp=vtlp, speed=speed,
                    rooms=rooms, seed=seed, threads=threads or 0, device=device)
    if config_path:
        field_of = {"sparsity": "target_sparsity"}  # option names that differ from TrainConfig fields
        explicit = {field_of.get(name, name) for name in ctx.params
                    if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
        settings = {**TrainConfig.settings_from_file(str(config_path)),
                    **{k: v for k, v in settings.items() if k in explicit}}
    cfg = TrainConfig.for_stage(str(train_manifest), dev_manifest and str(dev_manifest), str(out_dir),
                                init_from=init_from and str(init_from), **settings)
    world = distributed.init(cfg.device)  # under torchrun: one rank of a data-parallel job; rank 0 writes
    try:
        with training_progress() as progress:
            path = run(cfg, log=progress.log)
    except DistributedTrainingError as exc:
        raise DistributedTrainingError(f"{exc}; {out_dir / 'last.pt'} holds the last complete epoch: "
                                       "rerun the same command to resume") from exc
    finally:
        distributed.shutdown()
    if world.is_writer:
        click.echo(f"exported {path}")


@click.command()
@click.option("--teacher", required=True, type=INPUT_FILE, help="The deployed model (.otam) whose front end is replaced.")
@click.option("--train", "train_manifest", required=True, type=INPUT_FILE,
              help="Manifest of audio to learn from (its transcripts are not used).")
@click.option("--out", "out_dir", default="work/runs/distill", show_default=True, type=OUTPUT_FOLDER,
              help="Run folder (checkpoint, model.otam).")
@click.option("--epochs", default=4, show_default=True, type=click.IntRange(min=1), help="Passes over the audio.")
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0.0, min_open=True),
              help="Peak learning rate (Adam, cosine decay).")
@click.option("--rooms", default=0.3, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Share of utterances the student hears through rooms, noise and microphones "
              "(the rest at a random level, -30..+10 dB).")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="torch threads.")
def distill(teacher: Path, train_manifest: Path, out_dir: Path, epochs: int, lr: float, rooms: float, seed: int,
            threads: int) -> None:
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

    cfg = DistillConfig(teacher=str(teacher), train_manifest=str(train_manifest), out_dir=str(out_dir),
                        epochs=epochs, lr=lr, rooms=rooms, seed=seed, threads=threads)
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

