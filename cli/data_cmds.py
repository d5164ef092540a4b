"""`ota data ...`: build corpora. Thin: parse options, call the library, print a summary."""
from __future__ import annotations

import time
from pathlib import Path

import click

from cli.params import INPUT_FILE, INPUT_FOLDER, OUTPUT_FILE, OUTPUT_FOLDER
from diffing.synth.grammar import SPLITS  # the library's splits (plain Python: cheap to import)


def _parse_range(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        lo, _, hi = value.partition("-")
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise click.BadParameter(f"expected N or LOW-HIGH (e.g. 1-4), got {value!r}") from None
    if not 1 <= low <= high:
        raise click.BadParameter(f"expected 1 <= LOW <= HIGH, got {value!r}")
    return low, high


def _summarize(manifests: dict[str, Path], seconds: float) -> None:
    from device_agent.manifest import read_manifest

    for name, path in manifests.items():
        utts = read_manifest(path, check_audio=False)
        hours = sum(u.duration for u in utts) / 3600
        words = {w for u in utts for w in u.text.split()}
        speakers = {u.speaker for u in utts}
        click.echo(f"{name:>6}: {len(utts)} utterances, {hours:.2f} h, {len(words)} distinct words, "
                   f"{len(speakers)} speakers -> {path}")
    click.echo(f"done in {seconds:.1f} s")


@click.group("data")
def data() -> None:
    """Build training and test corpora (manifests + 16 kHz WAVs).

    \b
    Example:
      ota data synth --out work/corpus/base --train 6000 --test 400
    """

@data.command("synth")
@click.option("--out", "out_dir", required=True, type=OUTPUT_FOLDER,
              help="Output folder for WAVs, manifests and meta.json.")
@click.option("--train", "n_train", default=6000, show_default=True, type=click.IntRange(min=0),
              help="Training utterances (adapt utterances for novel_* splits).")
@click.option("--test", "n_test", default=400, show_default=True, type=click.IntRange(min=0),
              help="Test utterances, spoken by held-out voices, never augmented.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed: same seed, same corpus.")
@click.option("--split", default="base", show_default=True, type=click.Choice(list(SPLITS)),
              help="base corpus, or a held-out update set (writes adapt.jsonl/test.jsonl).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1),
              help="Rendering processes (one per core).")
@click.option("--train-voices", default="train", show_default=True, type=click.Choice(["train", "train_wide"]),
              help="Base corpus training voices: train_wide adds festival voices and gives natural voices half the utterances.")
def synth(out_dir: Path, n_train: int, n_test: int, seed: int, split: str, workers: int, train_voices: str) -> None:
    """Render grammar commands with espeak-ng/flite (and festival) voices.

    \b
    Needs: apt-get install -y espeak-ng flite (train_wide also: festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts)
    Examples:
      ota data synth --out work/corpus/base --train 6000 --test 400
      ota data synth --out work/corpus/names --split novel_names --train 600 --test 200
    """
    from diffing.synth.build import build_corpus, build_update_set

    start = time.perf_counter()
    if split == "base":
        manifests = build_corpus(out_dir, n_train, n_test, seed=seed, voices=(train_voices, "test"), workers=workers)
    else:
        manifests = build_update_set(out_dir, split, n_adapt=n_train, n_test=n_test, seed=seed, workers=workers)
    _summarize(manifests, time.perf_counter() - start)

@data.command("merge")
@click.argument("manifests", nargs=-1, required=True, type=INPUT_FILE)
@click.option("--out", "out_path", required=True, type=OUTPUT_FILE,
              help="Manifest to write (audio paths re-resolved relative to it).")
def merge(manifests: tuple[Path, ...], out_path: Path) -> None:
    """Concatenate manifests into one (validated, audio paths kept valid).

    \b
    Example:
      ota data merge work/corpus/base/train.jsonl work/corpus/base_s1/train.jsonl \\
          --out work/corpus/base_x2/train.jsonl
    """
    from device_agent.manifest import read_manifest, write_manifest

    utterances = [u for m in manifests for u in read_manifest(m, check_audio=False)]
    write_manifest(out_path, utterances)
    click.echo(f"{out_path}: {len(utterances)} utterances from {len(manifests)} manifests")

@data.command("digits")
@click.argument("fsdd_dir", type=INPUT_FOLDER)
@click.option("--out", "out_dir", required=True, type=OUTPUT_FOLDER,
              help="Output folder for 16 kHz WAVs and manifests.")
@click.option("--concat", default="1", show_default=True, callback=_parse_range,
              help="Digits per utterance: N or LOW-HIGH (e.g. 1-4 joins one speaker's recordings).")
@click.option("--strings", "n_strings", default=None, type=click.IntRange(min=1),
              help="Total utterances; default uses every recording exactly once.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for grouping and silences.")
@click.option("--test-speaker", "test_speakers", multiple=True,
              help="Hold out this speaker for test (repeatable); gives a speaker-disjoint split.")
@click.option("--take-split", default=5, show_default=True, type=click.IntRange(min=0),
              help="Without --test-speaker: takes below this are test (FSDD: 5). 0 writes one all.jsonl.")
def digits(out_dir: Path, fsdd_dir: Path, concat: tuple[int, int], n_strings: int | None, seed: int,
           test_speakers: tuple[str, ...], take_split: int) -> None:
    """Manifests from real digit recordings named {digit}_{speaker}_{take}.wav.

    \b
    Examples:
      ota data digits ../shared/data/fsdd --out work/corpus/fsdd
      ota data digits ../shared/data/fsdd --out work/corpus/fsdd-str \\
          --concat 1-4 --strings 1000 --test-speaker george
    """
    from diffing.digits import build_digit_manifests

    start = time.perf_counter()
    manifests = build_digit_manifests(
        fsdd_dir, out_dir, concat=concat, n_strings=n_strings, seed=seed,
        test_speakers=test_speakers or None, take_split=take_split or None,
    )
    _summarize(manifests, time.perf_counter() - start)
