"""The README's quickstart, every command in order, on tiny sizes, in a clean folder.

The commands are read from README.md, so the test follows the README: a step
that no longer works as written fails here. Sizes are shrunk by the
substitutions below (each must match, so they cannot silently go stale), the
local store listens on a free port instead of 8333, and `ota` is this
checkout's CLI (what `source .venv/bin/activate` provides).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    ("source .venv/bin/activate", "true  # ota is on PATH"),
    ("--split novel_names --train 600 --test 200", "--split novel_names --train 6 --test 2 --workers 1"),
    ("--out work/replay --train 600 --test 0", "--out work/replay --train 6 --test 0 --workers 1"),
    ("--out work/v2.otab", "--epochs 1 --out work/v2.otab"),
    ("ota store serve --env-file", "ota store serve --port 0 --env-file"),
    ("--train 14000 --test 500", "--train 6 --test 2 --workers 1"),
    ("--train 14000 --test 0 --seed 1", "--train 6 --test 0 --seed 1 --workers 1"),
    ("--out work/runs/base --epochs 10", "--out work/runs/base --epochs 1"),
    ("--epochs 5 --sparsity 0.6", "--epochs 1 --sparsity 0.6"),
]


def quickstart_blocks(readme: str) -> tuple[list[str], str]:
    """The bash blocks of the quickstart section (continuation lines joined), and its toml block."""
    section = readme.split("## Quickstart by task", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    [toml] = re.findall(r"```toml\n(.*?)```", section, re.S)
    return [b.replace("\\\n", " ") for b in blocks], toml


def tiny_script(blocks: list[str]) -> str:
    script = "\n".join(blocks)
    for old, new in TINY:
        assert script.count(old) == 1, f"README changed: {old!r} should appear once in the quickstart"
        script = script.replace(old, new)
    return "set -euo pipefail\nset -x\n" + script


def test_readme_agent_config_is_the_shipped_sample() -> None:
    _, toml = quickstart_blocks((ROOT / "README.md").read_text())
    shipped = [line for line in (ROOT / "samples" / "agent.toml").read_text().splitlines() if not line.startswith("#")]
    assert toml.strip().splitlines() == shipped


@pytest.mark.slow
def test_quickstart_runs_in_order_on_tiny_sizes(tmp_path: Path) -> None:
    blocks, _ = quickstart_blocks((ROOT / "README.md").read_text())
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / "models").symlink_to(ROOT / "models")
    shutil.copytree(ROOT / "samples", clone / "samples")  # agent.toml's paths resolve next to it
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "ota").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli.main "$@"\n')
    (shim / "ota").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    for key in [k for k in env if k.startswith(("OTA_", "AWS_"))]:
        del env[key]
    log = tmp_path / "quickstart.log"  # a file, not a pipe: the background store must not hold it open
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", "-c", tiny_script(blocks)], cwd=clone, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=1500)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the store, if a step failed before `kill %1`
        except ProcessLookupError:
            pass
    output = log.read_text()
    assert proc.returncode == 0, output[-6000:]

    work = clone / "work"
    assert sorted(p.name for p in clone.iterdir()) == ["models", "samples", "work"]  # nothing outside work/
    assert not (work / "store.env").exists()  # the stopped store removed it
    assert len(list((work / "keys").glob("*.pem"))) == 4 and (work / "root.json").is_file()
    assert (work / "models" / "base-v1.otam").is_file()  # the recipe exports under work/
    status = subprocess.run([sys.executable, "-m", "cli.main", "agent", "status", "--config", "samples/agent.toml"],
                            cwd=clone, env=env, capture_output=True, text=True, check=True)
    assert json.loads(status.stdout)["active"]["version"] in (1, 2), status.stdout  # installed, maybe updated
    # --expected-wer follows the README's rule: at least what the shipped model scores on the sample
    # validation set, at most that plus the devices' default slack
    expected = float(re.search(r"--expected-wer ([0-9.]+)", "\n".join(blocks)).group(1))
    measured = json.loads((work / "eval.json").read_text())["wer"]
    assert measured <= expected <= measured + 0.10, (measured, expected)
