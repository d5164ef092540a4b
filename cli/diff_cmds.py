"""`ota diff train|apply|inspect|methods`: learn, apply and look at neural diffs."""
from __future__ import annotations

import json
from pathlib import Path

import click

from cli.params import INPUT_FILE, OUTPUT_FILE, OUTPUT_FOLDER


@click.group()
def diff() -> None:
    """Learn, apply and inspect neural diffs (stored as diff bundles, .otab)."""


@diff.command()
@click.option("--method", default="sparse", show_default=True,
              help="A registered diff method (`ota diff methods` lists them with what each ships).")
@click.option("--channels", type=click.Choice(["none", "scale", "bias", "both"]), default=None,
              help="Per-channel scale and/or bias deltas trained with the method's entries "
              "(default: the method's: none, or both for --method channel).")
@click.option("--budget", default=None,
              help="Most bytes the bundle may take: a share of the base model file's bytes ('2%') or bytes ('20KB'); "
              "'auto': the smallest rung of --ladder whose dev WER is within --max-gap of the best; "
              "default: the method's.")
@click.option("--max-gap", type=click.FloatRange(0, 100), default=1.0, show_default=True,
              help="With --budget auto: WER points the shipped diff may trail the best rung on the dev split.")
@click.option("--ladder", default="1%,2%,3%,5%,10%", show_default=True,
              help="With --budget auto: the budgets to learn, comma-separated.")
@click.option("--dev", "dev", type=INPUT_FILE,
              help="With --budget auto: a held-out manifest that scores the rungs, so they learn from all of --data "
              "(default: a split held out of --data: whole speakers when it names at least two, else 20% of the "
              "utterances).")
@click.option("--base", "base_path", required=True, type=INPUT_FILE,
              help="The deployed device model (.otam) the diff applies to.")
@click.option("--data", "data", required=True, type=INPUT_FILE, help="Adaptation manifest (JSONL).")
@click.option("--replay", type=INPUT_FILE, help="Manifest of earlier data mixed in against forgetting.")
@click.option("--teacher", type=INPUT_FILE,
              help="A model (.otam) the diff should behave like, e.g. a full fine-tune of --base on the same data: "
              "the diff learns its outputs as well as the transcripts.")
@click.option("--distill", type=click.FloatRange(min=0), default=None,
              help="Weight of keeping --base's outputs on the --replay data, against forgetting "
              "(0: off, the default; docs/diffs.md, 'Against forgetting').")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs over the adaptation data (default: the method's).")
@click.option("--lr", type=float, default=None, help="Learning rate (default: the method's).")
@click.option("--compact", is_flag=True,
              help="Write bundle format 3 (manifest compressed): about 1.3 KB more room for the diff at the same "
              "budget, but only agents that read format 3 take it; `ota fleet status` shows which do.")
@click.option("--words", is_flag=True,
              help="Add the words of --data that --base misses to the model's word list, which the device's decoder "
              "favours; out of the same budget. Writes bundle format 4: only agents that read it take it.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads (default: the cores not busy with other work).")
@click.option("--out", "out_path", required=True, type=OUTPUT_FILE, help="Diff bundle to write (.otab).")
def train(method: str, channels: str | None, budget: str | None, max_gap: float, ladder: str, dev: Path | None,
          base_path: Path, data: Path, replay: Path | None, teacher: Path | None, distill: float | None,
          epochs: int | None, lr: float | None, compact: bool, words: bool, seed: int, threads: int | None,
          out_path: Path) -> None:
    """Learn a diff against the exact int8 model a device runs.

    Under `torchrun --nproc-per-node N -m cli.main diff train ...` the diff is
    learned on N processes; every rank must reach the same target hash.

    \b
    Example:
      ota diff train --method sparse --budget 1% --base models/base-v1.otam \\
          --data work/update/adapt.jsonl --replay work/replay/train.jsonl --out work/v2.otab
      ota diff train --budget auto --max-gap 1.0 --dev work/update/dev.jsonl --base models/base-v1.otam \\
          --data work/update/adapt.jsonl --replay work/replay/train.jsonl --out work/v2.otab
      ota diff train --method hybrid --budget 3% --teacher work/finetuned.otam --base models/base-v1.otam \\
          --data work/update/adapt.jsonl --replay work/replay/train.jsonl --out work/v2.otab
    """
    from cli.progress import training_progress
    from device_agent.atomic import write_atomic
    from device_agent.errors import ConfigError
    from device_agent.model_format import load_model
    from diffing import distributed
    from diffing.diffs import config_for  # server side only
    from diffing.diffs.data_parallel import learn_diff_on_ranks
    from packager.bundle import encode_diff_bundle

    auto = budget is not None and budget.strip().lower() == "auto"
    if dev is not None and not auto:
        raise ConfigError("--dev scores the rungs of --budget auto; give --budget auto, or drop --dev")
    config = config_for(method, budget=None if auto else budget, epochs=epochs, seed=seed, lr=lr, threads=threads,
                        channels=channels, teacher=teacher and str(teacher), distill=distill, compact=compact or None,
                        words=words or None)
    base = load_model(base_path)
    world = distributed.init()  # under torchrun: one rank of a data-parallel job; rank 0 writes
    rungs = []
    try:
        with training_progress() as progress:
            log = progress.log if world.is_writer else (lambda _: None)
            if auto:
                from diffing.diffs.auto_budget import learn_auto_budget

                result, rungs = learn_auto_budget(base, str(data), config, max_gap=max_gap,
                                                  ladder=tuple(b for b in ladder.split(",") if b.strip()),
                                                  replay_manifest=replay and str(replay),
                                                  dev_manifest=dev and str(dev), log=log)
                rank_hashes = distributed.agree("diffs (target hashes)", result.target_hash)
            else:
                result, rank_hashes = learn_diff_on_ranks(base, str(data), config, progress=True, log=log,
                                                          replay_manifest=replay and str(replay))
        distributed.finish()
    finally:
        distributed.shutdown()
    if not world.is_writer:
        return
    for rung in rungs:
        mark = "  <- shipped" if rung.diff is result else ""
        click.echo(f"budget {rung.budget:>6}  {rung.bytes:>9,} bytes  dev WER {100 * rung.dev_wer:5.1f}%{mark}")
    data_bytes = encode_diff_bundle(result, base, compact=config.compact)
    write_atomic(out_path, data_bytes)
    record = {"out": str(out_path), "bytes": len(data_bytes), "entries": result.nonzero_entries(),
              "base_hash": result.base_hash, "target_hash": result.target_hash, "rank_target_hashes": rank_hashes}
    if rungs:
        record["ladder"] = [{"budget": r.budget, "bytes": r.bytes, "dev_wer": round(r.dev_wer, 4)} for r in rungs]
    click.echo(json.dumps(record))


@diff.command(name="train-many")
@click.argument("plan", type=INPUT_FILE)
@click.option("--out", "out_dir", required=True, type=OUTPUT_FOLDER,
              help="Folder for the bundles (CHANNEL-from-vN.otab) and each diff's log.")
@click.option("--parallel", type=click.IntRange(min=1), default=None,
              help="Diffs learned at once (default: the free cores).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch threads per diff process.")
@click.option("--publish", "do_publish", is_flag=True, help="Once every diff exists, publish each on its channel.")
@click.option("--store", "store_url", envvar="OTA_STORE", help="Repository store URL (with --publish).")
@click.option("--keys", "keys_dir", default="work/keys", show_default=True, envvar="OTA_KEYS",
              help="Signing keys folder (with --publish).")
@click.option("--rollout", "rollout_percent", type=click.FloatRange(0, 100), help="Rollout percentage to set.")
def train_many(plan: Path, out_dir: Path, parallel: int | None, threads: int, do_publish: bool, store_url: str | None,
               keys_dir: str, rollout_percent: float | None) -> None:
    """Learn one diff per channel's deployed model for one release, in parallel processes,
    then (with --publish) publish them together.

    The plan (JSON) names the data once and each channel's base model; see
    README, "Scaling out". Nothing is published unless every diff was learned.

    \b
    Example:
      ota diff train-many release.json --out work/release --parallel 2 --publish --store file:///srv/ota
    """
    from device_agent.errors import ConfigError
    from diffing.threads import free_cores
    from diffing.train_many import read_plan, train_many as learn_all

    jobs = read_plan(plan)
    if do_publish and not store_url:
        raise ConfigError("--publish needs --store (or OTA_STORE): the repository to publish to")
    bundles = learn_all(jobs, out_dir, parallel=parallel or max(1, free_cores() // threads), threads=threads,
                        log=click.echo)
    if not do_publish:
        click.echo(json.dumps({name: str(path) for name, path in bundles.items()}))
        return
    from packager.publish import publish_bundle
    from device_agent.store import open_store

    store = open_store(store_url)
    for job in jobs:  # every bundle exists: publish channel by channel (one signed commit each)
        release = publish_bundle(store, keys_dir, bundles[job.name].read_bytes(), channel=job.channel,
                                 rollout_percent=rollout_percent)
        click.echo(f"published {release.target} on {job.channel}: current version {release.state.current_version}")


@diff.command()
@click.option("--json", "as_json", is_flag=True, help="Print {method: description} as JSON.")
def methods(as_json: bool) -> None:
    """List the registered diff methods and what each ships.

    \b
    Example:
      ota diff methods
    """
    from diffing.diffs import DIFF_METHODS

    described = {name: _first_sentence(config_cls, learner) for name, (config_cls, learner) in DIFF_METHODS.items()}
    if as_json:
        click.echo(json.dumps(described, indent=1))
        return
    from cli.tables import print_table

    print_table(("method", "what it ships"), sorted(described.items()), wrap=(1,))


def _first_sentence(config_cls: type, learner: object) -> str:
    doc = config_cls.__doc__ or ""
    if doc.startswith(f"{config_cls.__name__}("):  # dataclass's generated signature, not a description
        doc = getattr(learner, "__doc__", None) or ""
    return " ".join(doc.split()).split(". ")[0].rstrip(".")


@diff.command()
@click.argument("bundle", type=INPUT_FILE)
@click.option("--base", "base_path", required=True, type=INPUT_FILE, help="Model to apply the diff to.")
@click.option("--out", "out_path", required=True, type=OUTPUT_FILE, help="Resulting model (.otam).")
def apply(bundle: Path, base_path: Path, out_path: Path) -> None:
    """Apply a diff bundle to a model; the result must hash to the bundle's target.

    \b
    Example:
      ota diff apply work/v2.otab --base models/base-v1.otam --out work/v2.otam
    """
    from device_agent.model_format import load_model, save_model
    from device_agent.bundle import apply_bundle, read_bundle

    base = load_model(base_path)
    model = apply_bundle(read_bundle(bundle, base), base)
    save_model(model, out_path)
    click.echo(f"{out_path}\tversion {model.version}\t{model.content_hash()}")


@diff.command()
@click.argument("bundle", type=INPUT_FILE)
def inspect(bundle: Path) -> None:
    """Show a diff bundle's method, versions, hashes and sections (fully verified).

    \b
    Example:
      ota diff inspect work/v2.otab
    """
    from device_agent.bundle import inspect_bundle

    click.echo(json.dumps(inspect_bundle(bundle, verify=True), indent=2))
