"""Every `ota` command fails on bad paths and URLs with one line and its documented exit code."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli import exit_codes
from cli.main import cli
from cli.params import InputPath, OutputPath

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "base-v1.otam"


def _commands(group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], click.Command]]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from _commands(command, ctx, (*prefix, name))
        else:
            yield (*prefix, name), command


COMMANDS = list(_commands(cli, click.Context(cli)))


def _args(param: click.Parameter, value: str) -> list[str]:
    return [value] if isinstance(param, click.Argument) else [param.opts[0], value]


def _path_params(command: click.Command) -> list[click.Parameter]:
    return [p for p in command.params if isinstance(p.type, (InputPath, OutputPath))]


def _one_line_error(result, code: int) -> str:  # type: ignore[no-untyped-def]
    out = result.output.strip()
    assert result.exit_code == code, (code, result.output, result.exception)
    assert len(out.splitlines()) == 1 and out.startswith("Error: "), out
    assert "Traceback" not in out
    return out


def test_every_path_parameter_is_checked_before_the_command_runs() -> None:
    for name, command in COMMANDS:
        for param in command.params:
            assert not isinstance(param.type, click.Path) or param.name == "keys_dir" and name == ("repo", "init"), \
                f"ota {' '.join(name)} {param.name}: use cli.params.InputPath/OutputPath"


@pytest.mark.parametrize("name,command", COMMANDS, ids=[" ".join(n) for n, _ in COMMANDS])
def test_missing_input_and_folder_for_file(name: tuple[str, ...], command: click.Command, tmp_path: Path) -> None:
    inputs = [p for p in _path_params(command) if isinstance(p.type, InputPath)]
    for param in inputs:
        missing = tmp_path / f"absent-{param.name}"
        result = CliRunner().invoke(cli, [*name, *_args(param, str(missing))])
        assert str(missing) in _one_line_error(result, exit_codes.FILE_NOT_FOUND)
        wrong_kind = tmp_path if not param.type.folder else MODEL
        result = CliRunner().invoke(cli, [*name, *_args(param, str(wrong_kind))])
        _one_line_error(result, exit_codes.IS_A_DIRECTORY)
    for param in _path_params(command):
        if isinstance(param.type, OutputPath):
            below_a_file = MODEL / "out"
            result = CliRunner().invoke(cli, [*name, *_args(param, str(below_a_file))])
            assert "expected a folder" in _one_line_error(result, exit_codes.IS_A_DIRECTORY)
            if not param.type.folder:  # sysfs refuses new files even to root: a real read-only place
                result = CliRunner().invoke(cli, [*name, *_args(param, "/sys/ota-test.out")])
                assert "not writable" in _one_line_error(result, exit_codes.PERMISSION_DENIED)


def test_every_command_taking_files_is_swept() -> None:
    # the parametrized sweep above only means something if the commands that read files declare them
    with_inputs = {" ".join(n) for n, c in COMMANDS if any(isinstance(p.type, InputPath) for p in c.params)}
    assert {"transcribe", "model inspect", "diff apply", "diff train", "diff inspect", "publish", "bundle build",
            "bundle verify", "eval", "agent status", "agent check-once", "train", "export"} <= with_inputs


def test_store_url_faults(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    for url in ("s3://updates?endpoint=127.0.0.1:8333", "ftp://x/y", "file://relative/path"):
        result = CliRunner().invoke(cli, ["releases", "list", "--store", url, "--keys", str(keys)])
        assert "store URL" in _one_line_error(result, exit_codes.ERROR_CODES[_config_error()])


def _config_error() -> type:
    from device_agent.errors import ConfigError

    return ConfigError


def test_exit_code_table_in_the_docs_is_the_code() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    documented = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \| (.+) \|$", text, re.M)}
    assert documented == exit_codes.MEANINGS
    assert set(exit_codes.ERROR_CODES.values()) <= set(exit_codes.MEANINGS)
    codes = list(exit_codes.ERROR_CODES.values())
    assert len(codes) == len(set(codes)), "two error classes share an exit code"


def test_a_teacher_of_another_architecture_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    from device_agent.model_format import encode_model
    from tests.tiny import tiny_device_model

    teacher, out = tmp_path / "teacher.otam", tmp_path / "v2.otab"
    teacher.write_bytes(encode_model(tiny_device_model()))
    manifest = tmp_path / "adapt.jsonl"
    manifest.write_text('{"audio_filepath": "%s", "text": "seven", "duration": 0.5}\n'
                        % (ROOT / "tests/data/fsdd/recordings/7_jackson_0.wav"))
    result = CliRunner().invoke(cli, ["diff", "train", "--method", "hybrid", "--budget", "3%", "--base", str(MODEL),
                                      "--data", str(manifest), "--teacher", str(teacher), "--out", str(out)])
    assert "teacher" in _one_line_error(result, exit_codes.ERROR_CODES[_config_error()])
    assert not out.exists()


def test_distill_without_replay_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out, manifest = tmp_path / "v2.otab", tmp_path / "adapt.jsonl"
    manifest.write_text('{"audio_filepath": "%s", "text": "seven", "duration": 0.5}\n'
                        % (ROOT / "tests/data/fsdd/recordings/7_jackson_0.wav"))
    result = CliRunner().invoke(cli, ["diff", "train", "--method", "hybrid", "--budget", "3%", "--base", str(MODEL),
                                      "--data", str(manifest), "--distill", "1", "--out", str(out)])
    assert "expected a replay manifest" in _one_line_error(result, exit_codes.ERROR_CODES[_config_error()])
    assert not out.exists()
