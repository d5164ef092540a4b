"""`ota diff train-many`: one diff per channel's deployed model, learned in parallel processes and published
together through a real SeaweedFS and TUF; a failed diff publishes nothing and a rerun learns only what is missing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from device_agent.errors import ConfigError
from device_agent.manifest import Utterance, write_manifest
from device_agent.model_format import encode_model, save_model
from diffing.train_many import read_plan
from device_agent.bundle import apply_bundle, decode_bundle
from packager.bundle import encode_full_bundle
from packager.publish import publish_bundle, read_channel
from device_agent.store import Store
from packager.trust import init_repository
from tests.tiny import tiny_device_model

FSDD = Path(__file__).resolve().parent / "data" / "fsdd" / "recordings"  # shipped: see its README
WORDS = "zero one two three four five six seven eight nine".split()


def _plan(folder: Path, beta_data: str) -> Path:
    plan = {"defaults": {"method": "sparse", "budget": "20%", "data": "adapt.jsonl", "epochs": 1},
            "diffs": [{"channel": "stable", "base": "stable.otam"},
                      {"channel": "beta", "base": "beta.otam", "method": "hashed", "budget": "40%", "data": beta_data,
                       "compact": True}]}
    path = folder / "release.json"
    path.write_text(json.dumps(plan))
    return path


def test_one_diff_per_channel_learned_in_parallel_and_published_together(s3_store: Store, seaweed, tmp_path: Path) -> None:
    files = sorted(FSDD.glob("*_jackson_[0-1].wav"))
    write_manifest(tmp_path / "adapt.jsonl", [Utterance(p, WORDS[int(p.name[0])], 0.5, "jackson") for p in files])
    keys = tmp_path / "keys"
    init_repository(s3_store, keys)
    bases = {"stable": tiny_device_model(seed=0), "beta": tiny_device_model(seed=1)}  # each channel runs its own model
    for channel, model in bases.items():
        save_model(model, tmp_path / f"{channel}.otam")
        publish_bundle(s3_store, keys, encode_full_bundle(encode_model(model), model), channel=channel)
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
           "AWS_DEFAULT_REGION": seaweed.region}
    args = ["--out", str(tmp_path / "release"), "--parallel", "2", "--publish", "--store", s3_store.url,
            "--keys", str(keys)]

    # 1) beta's data is missing: its diff fails, stable's is learned, nothing is published
    failed = CliRunner().invoke(cli, ["diff", "train-many", str(_plan(tmp_path, "missing.jsonl")), *args], env=env)
    assert failed.exit_code == 8 and "1 of 2 diffs failed: beta-from-v1" in failed.output, failed.output
    assert (tmp_path / "release" / "stable-from-v1.otab").exists()
    assert all(read_channel(s3_store, keys, "tiny", c).current_version == 1 for c in bases)

    # 2) fixed plan: stable is not learned again, beta is, and both channels move to version 2
    done = CliRunner().invoke(cli, ["diff", "train-many", str(_plan(tmp_path, "adapt.jsonl")), *args], env=env)
    assert done.exit_code == 0, done.output
    assert "stable-from-v1: " in done.output and "already learned from this base" in done.output
    for channel, model in bases.items():
        state = read_channel(s3_store, keys, "tiny", channel)
        assert state.current_version == 2 and any(e.from_version == 1 for e in state.edges)
        bundle = decode_bundle((tmp_path / "release" / f"{channel}-from-v1.otab").read_bytes())
        assert apply_bundle(bundle, model).version == 2  # each diff applies to its own channel's model only
    beta = decode_bundle((tmp_path / "release" / "beta-from-v1.otab").read_bytes())
    assert beta.method == "hashed" and beta.format_version == 3  # "compact": no device says it cannot read it
    assert decode_bundle((tmp_path / "release" / "stable-from-v1.otab").read_bytes()).format_version == 1


def test_bad_plans_are_refused_before_any_work(tmp_path: Path) -> None:
    save_model(tiny_device_model(), tmp_path / "m.otam")
    cases = {"no diffs": {"diffs": []},
             "unknown key": {"diffs": [{"channel": "stable", "base": "m.otam", "data": "a.jsonl", "gpu": 1}]},
             "missing data": {"diffs": [{"channel": "stable", "base": "m.otam"}]},
             "compact not a flag": {"diffs": [{"channel": "stable", "base": "m.otam", "data": "a.jsonl",
                                               "compact": "yes"}]},
             "channel twice": {"defaults": {"data": "a.jsonl"}, "diffs": [{"channel": "stable", "base": "m.otam"},
                                                                          {"channel": "stable", "base": "m.otam"}]}}
    for plan in cases.values():
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        with pytest.raises(ConfigError):
            read_plan(tmp_path / "plan.json")
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(ConfigError, match="expected a JSON plan"):
        read_plan(tmp_path / "plan.json")
