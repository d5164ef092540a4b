"""A quick slice of bench/fuzz_model.py: every mutation class, only our own errors."""
from __future__ import annotations

from bench.fuzz_model import MUTATORS, fuzz


def test_mutated_model_files_raise_only_our_errors_and_never_hang() -> None:
    result = fuzz(cases=240, seed=3, time_limit=5.0)  # 30 cases per mutation class
    assert result["unexpected"] == 0, result["failures"]
    assert set(result["per_class"]) == set(MUTATORS)
    # structure-aware cases get past the header: to the decoders and the content hash
    assert result["outcomes"].get("decode:ContentHashMismatchError", 0) > 0
    assert result["peak_rss_growth_bytes"] < 64 << 20  # maximal declared sizes are refused before allocation
