"""A quick slice of bench/fuzz_bundle.py: every mutation class, only our own errors."""
from __future__ import annotations

from bench.fuzz_bundle import MUTATORS, fuzz


def test_mutated_bundles_raise_only_our_errors_and_never_hang() -> None:
    result = fuzz(cases=24 * len(MUTATORS), seed=7, time_limit=5.0)  # 24 cases per mutation class
    assert result["outcomes"].get("UNEXPECTED", 0) == 0, result["failures"]
    assert set(result["per_class"]) == set(MUTATORS)
    assert all(sum(counts.values()) == 24 for counts in result["per_class"].values())
    # the fuzzer reaches past the parser: some cases get to apply_diff, some succeed with a verified hash
    assert any(k.startswith("apply:") for k in result["outcomes"]) and result["outcomes"].get("ok", 0) > 0
    assert result["slowest_case_s"] < 5.0
    assert result["peak_rss_growth_bytes"] < 64 << 20  # the bombs expand to GiBs if anything decompresses them
