"""bench/update_chain.py: what a method name with suffixes asks of the learner."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.update_chain import make_config
from diffing.diffs.baselines import FullFinetuneConfig


def test_teacher_suffixes_name_the_teacher_and_keep_the_extra_fields() -> None:
    for suffix in ("teacher", "ownteacher"):
        cfg = make_config(f"hybrid+{suffix}", 30_000, 6, 1, {"distill": 4.0}, Path("t.otam"))
        assert (cfg.teacher, cfg.distill, cfg.budget, cfg.channels) == ("t.otam", 4.0, 30_000, "none")
    assert make_config("hybrid+channels", 30_000, 6, 1).channels == "both"
    assert make_config("hybrid", 30_000, 6, 1).teacher == ""
    assert isinstance(make_config("full", 0, 6, 1, {"distill": 4.0}), FullFinetuneConfig)


def test_an_unknown_suffix_stops_the_run() -> None:
    with pytest.raises(SystemExit, match="suffixes"):
        make_config("hybrid+bestteacher", 30_000, 6, 1)
