"""The CLI is thin: settings it does not get from the user are the library's defaults,
shown in --help by asking the library; choices come from the library's registries."""
from __future__ import annotations

import json
from pathlib import Path

import click
from click.testing import CliRunner

from cli.defaults import LibraryDefault
from cli.main import COMMANDS, cli
from packager import trust


def _commands() -> list[tuple[str, click.Command]]:
    ctx = click.Context(cli)
    todo = [(name, cli.get_command(ctx, name)) for name in COMMANDS]
    found = []
    while todo:
        name, command = todo.pop()
        found.append((name, command))
        if isinstance(command, click.Group):
            todo += [(f"{name} {sub}", command.commands[sub]) for sub in command.commands]
    return found


def test_library_defaults_reach_the_command_line_as_none_and_show_in_help() -> None:
    checked = 0
    for name, command in _commands():
        for option in command.params:
            if isinstance(option, LibraryDefault):
                assert option.default is None, f"ota {name} {option.opts[0]}"
                help_text = CliRunner().invoke(cli, [*name.split(), "--help"], terminal_width=500).output
                assert f"[default: {option.default_of()}]" in help_text, f"ota {name} {option.opts[0]}"
                checked += 1
    assert checked >= 20  # train, distill, repo init


def test_ota_train_builds_the_library_config_from_what_was_given(monkeypatch, tmp_path: Path) -> None:
    import diffing.train

    built = []
    monkeypatch.setattr(diffing.train, "train", lambda cfg, log: built.append(cfg) or Path("model.otam"))
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("")
    run = ["train", "--train", str(manifest), "--out", str(tmp_path / "run")]
    assert CliRunner().invoke(cli, run).exit_code == 0
    defaults = diffing.train.TrainConfig(str(manifest), None, str(tmp_path / "run"))
    assert built.pop() == defaults  # nothing given: every setting is TrainConfig's own

    settings = tmp_path / "tiny.json"
    settings.write_text(json.dumps({"epochs": 3, "lr": 0.01, "seed": 7}))
    assert CliRunner().invoke(cli, [*run, "--config", str(settings), "--lr", "0.02"]).exit_code == 0
    cfg = built.pop()
    assert (cfg.epochs, cfg.lr, cfg.seed, cfg.target_sparsity) == (3, 0.02, 7, defaults.target_sparsity)


def test_ota_repo_init_keeps_the_library_expiry_unless_given(file_store, tmp_path: Path) -> None:
    out = CliRunner().invoke(cli, ["repo", "init", "--store", file_store.url, "--keys", str(tmp_path / "k"),
                                   "--snapshot-expiry", "2d"])
    assert out.exit_code == 0, out.output
    policy = trust.load_expiry(tmp_path / "k")
    library = trust.ExpiryPolicy()
    assert (policy.snapshot.days, policy.timestamp, policy.targets, policy.root) == \
        (2, library.timestamp, library.targets, library.root)
    for role in ("root", "targets", "snapshot", "timestamp"):
        period = getattr(library, role)
        assert trust.parse_period(trust.format_period(period)) == period


def test_synth_splits_are_the_library_s() -> None:
    from diffing.synth.grammar import SPLITS

    ctx = click.Context(cli)
    synth = cli.get_command(ctx, "data").commands["synth"]
    (split,) = (p for p in synth.params if p.name == "split")
    assert list(split.type.choices) == list(SPLITS)

