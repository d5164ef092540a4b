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
    # every set whose WER rose is listed, in the summary and on screen
    base = summary["results"]["base"]
    rose = {(m, k) for m, r in summary["results"].items() if m != "base"
            for k in ("update_test", "original_test") if r[k] > base[k]}
    assert {(r["model"], r["set"]) for r in summary["regressions"] if r["set"] != "device validation"} == rose
    assert result.output.count("WER ROSE") == len(summary["regressions"])


def test_regressions_list_every_set_that_got_worse() -> None:
    from demo.pipeline import DemoReport

    report = DemoReport(results={"base": {"update_test": 0.44, "original_test": 0.181},
                                 "sparse": {"update_test": 0.28, "original_test": 0.184},
                                 "hashed": {"update_test": 0.33, "original_test": 0.228}},
                        devices={"device-beta": {"update": {"outcome": "committed", "wer_before": 0.29,
                                                            "wer_after": 0.29}},
                                 "device-stable": {"update": {"outcome": "refused", "wer_before": 0.29,
                                                              "wer_after": 0.31}}})
    found = {(r["model"], r["set"]) for r in report.regressions()}
    assert found == {("sparse", "original_test"), ("hashed", "original_test"),
                     ("device-stable (refused)", "device validation")}
