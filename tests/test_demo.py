"""The demo path end to end on a tiny configuration (file store, a few utterances)."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli


def test_demo_tiny_runs_the_whole_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--tiny", "--store", "file", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert (out / "report" / "bytes_vs_wer.png").stat().st_size > 1000
    full = summary["full_model_bytes"]
    for method in ("sparse", "hashed"):
        r = summary["results"][method]
        assert 0 < r["bytes"] < 0.05 * full, r
        assert 0.0 <= r["update_test"] <= 1.0 and 0.0 <= r["original_test"] <= 1.0
    for device in ("stable", "beta"):
        status = summary["devices"][device]["status"]
        # the base model is installed through the agent (the gate passed), then the update was decided
        assert summary["devices"][device]["install"]["outcome"] == "committed", summary["devices"][device]
        assert status["active"] is not None
        assert summary["devices"][device]["update"]["outcome"] in ("committed", "refused")
    assert set(summary["stages"]) >= {"data", "store", "publish_base", "learn_sparse", "learn_hashed", "device_update"}
