"""One release, many diffs: one diff per deployed base model and channel, learned in parallel processes.

A plan (JSON) names the release's data once and, per channel, the model that
channel's devices run:

    {"defaults": {"method": "sparse", "budget": "2%", "data": "adapt.jsonl", "replay": "replay.jsonl", "epochs": 6},
     "diffs": [{"channel": "stable", "base": "models/v2.otam", "compact": true},
               {"channel": "beta", "base": "models/v3.otam", "method": "hashed"}]}

Paths are relative to the plan's folder. Each diff is its own `ota diff train`
process; a diff whose bundle is already in the output folder, learned from the
same base with the same method, is not learned again, so a rerun after a
failure only learns what is missing. The caller publishes
the bundles only once every diff exists.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from device_agent.errors import ConfigError, DiffError, OtaError
from device_agent.model_format import load_model

JOB_KEYS = {"channel", "base", "method", "budget", "data", "replay", "epochs", "lr", "seed", "channels", "compact",
            "words"}
PASSED_ON = ("method", "budget", "data", "replay", "epochs", "lr", "seed", "channels")  # -> ota diff train options
FLAGS = ("compact", "words")  # -> ota diff train flags, given when true


@dataclass(frozen=True)
class DiffJob:
    channel: str
    base: Path
    options: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.channel}-from-v{load_model(self.base).version}"


def read_plan(path: str | Path) -> list[DiffJob]:
    """The plan's jobs; ConfigError naming the problem for anything malformed."""
    path = Path(path)
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: expected a JSON plan with 'diffs' ({exc})") from exc
    if not isinstance(plan, dict) or not isinstance(plan.get("diffs"), list) or not plan["diffs"]:
        raise ConfigError(f"{path}: expected a JSON object with a non-empty 'diffs' list")
    defaults = plan.get("defaults", {})
    if set(plan) - {"defaults", "diffs"} or not isinstance(defaults, dict) or set(defaults) - JOB_KEYS:
        raise ConfigError(f"{path}: unknown plan keys; allowed: defaults, diffs with {sorted(JOB_KEYS)}")
    jobs, seen = [], set()
    for i, entry in enumerate(plan["diffs"]):
        if not isinstance(entry, dict) or set(entry) - JOB_KEYS:
            raise ConfigError(f"{path}: diffs[{i}] must be an object with keys from {sorted(JOB_KEYS)}")
        job = {**defaults, **entry}
        if not job.get("channel") or not job.get("base") or not job.get("data"):
            raise ConfigError(f"{path}: diffs[{i}] needs a channel, a base model and data (here or in defaults)")
        channel = str(job["channel"])
        if channel in seen:  # a channel's devices run one model: one learned diff per channel and release
            raise ConfigError(f"{path}: channel {channel!r} appears twice; learn one diff per channel and let the "
                              "planner chain or send full bundles to devices further behind")
        seen.add(channel)
        options = {k: str(path.parent / job[k]) if k in ("data", "replay") else str(job[k])
                   for k in PASSED_ON if job.get(k) is not None}
        for flag in FLAGS:
            if not isinstance(job.get(flag, False), bool):
                raise ConfigError(f"{path}: diffs[{i}].{flag} must be true or false, got {job[flag]!r}")
            if job.get(flag):
                options[flag] = ""
        jobs.append(DiffJob(channel, path.parent / job["base"], options))
    return jobs


def _learned_already(bundle: Path, job: DiffJob) -> bool:
    from device_agent.bundle import COMPACT_FORMAT, WORDS_FORMAT, read_bundle_manifest

    formats = {COMPACT_FORMAT} if "compact" in job.options else {1, 2}
    if "words" in job.options:  # format 4 when the data brought words, else what the other flags write
        formats.add(WORDS_FORMAT)

    try:
        with open(bundle, "rb") as f:
            manifest = read_bundle_manifest(f)
        return manifest.base_hash == load_model(job.base).content_hash() and \
            manifest.method == job.options.get("method", "sparse") and \
            manifest.format_version in formats  # "sparse": CLI default
    except (OSError, OtaError):  # an unreadable bundle is learned again
        return False


def train_many(jobs: list[DiffJob], out_dir: str | Path, *, parallel: int, threads: int = 1,
               launcher: tuple[str, ...] | None = None, log: Callable[[str], None] = lambda _: None) -> dict[str, Path]:
    """Learn every job's diff, up to `parallel` at once, each with `threads` torch threads.
    Returns the bundle of each job by name; DiffError naming every failed job (their logs kept)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    launcher = launcher or (sys.executable, "-m", "cli.main")

    def run(job: DiffJob) -> tuple[DiffJob, int]:
        bundle = out / f"{job.name}.otab"
        if _learned_already(bundle, job):
            log(f"{job.name}: {bundle} already learned from this base")
            return job, 0
        args = [a for k, v in job.options.items() for a in ((f"--{k}",) if k in FLAGS else (f"--{k}", v))]
        cmd = [*launcher, "diff", "train", *args, "--base", str(job.base), "--threads", str(threads), "--out", str(bundle)]
        log(f"{job.name}: learning ({' '.join(cmd[len(launcher):])})")
        with open(out / f"{job.name}.log", "w") as logfile:
            code = subprocess.run(cmd, stdout=logfile, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": str(threads)}).returncode
        log(f"{job.name}: {'done' if code == 0 else f'failed with exit code {code}'}")
        return job, code

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:  # threads only wait on processes
        results = list(pool.map(run, jobs))
    failed = [f"{job.name} (exit {code}, log {out / (job.name + '.log')})" for job, code in results if code]
    if failed:
        raise DiffError(f"{len(failed)} of {len(jobs)} diffs failed: {'; '.join(failed)}; nothing was published, "
                        "rerun to learn only the missing ones")
    return {job.name: out / f"{job.name}.otab" for job in jobs}
