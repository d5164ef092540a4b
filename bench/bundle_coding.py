"""How many bytes of a trained diff's bundle are container, not entries: format 3 against the format as shipped.

    python bench/bundle_coding.py work/intent_0.01.otab work/intent_0.03.otab [--base models/base-v1.otam]

For each bundle (written in format 1 or 2, the baseline in the same run): its fixed part (preamble
and the JSON manifest, one ~150-byte row per section); the same diff written in format 3 by the
real encoder (`encode_diff_bundle(..., compact=True)`: the manifest as a zstd frame), checked to
decode and apply to the same model; and, as an estimate of what is left, the payload recompressed
as one zstd frame per kind of section (hashed, sparse) instead of one per section.
Writes bench/results/bundle_coding.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import SHIPPED_MODEL, write_results  # noqa: E402
from device_agent.bundle import (SPARSE_ENCODINGS, apply_bundle, bundle_overhead, decode_bundle,  # noqa: E402
                                 read_bundle_manifest)
from device_agent.device_model import DeviceModel  # noqa: E402
from device_agent.errors import BundleError  # noqa: E402
from device_agent.model_format import load_model  # noqa: E402
from device_agent.zstd_frames import decompress_exact  # noqa: E402
from packager.bundle import compress_section, encode_diff_bundle  # noqa: E402


def coding_headroom(path: Path, base: DeviceModel) -> dict:
    """Bytes of the bundle at `path` as shipped, in format 3, and with one zstd frame per kind of section."""
    data = path.read_bytes()
    manifest = read_bundle_manifest(path)
    fixed = bundle_overhead(data)
    bundle = decode_bundle(data)
    compact = encode_diff_bundle(bundle.diff, base, compact=True)
    compact_bundle = decode_bundle(compact)
    if apply_bundle(compact_bundle, base).content_hash() != bundle.target_hash:
        raise BundleError(f"{path}: the format-3 bundle does not apply to the model the original does")
    raw_by_kind: dict[str, bytes] = {}
    for s in manifest.sections:
        start = fixed + s.offset
        kind = "sparse" if s.encoding in SPARSE_ENCODINGS else s.encoding
        raw_by_kind[kind] = raw_by_kind.get(kind, b"") + bytes(
            decompress_exact(data[start:start + s.length], s.raw_length, s.name, BundleError))
    one_frame = sum(len(compress_section(raw)) for raw in raw_by_kind.values())
    compact_fixed = len(compact) - compact_bundle.payload_bytes
    return {"bundle": str(path), "format": manifest.format_version, "bytes": len(data),
            "sections": len(manifest.sections), "entries": bundle.diff.nonzero_entries(), "fixed": fixed,
            "fixed_share": round(fixed / len(data), 3), "payload": manifest.payload_bytes,
            "compact_bytes": len(compact), "compact_fixed": compact_fixed,
            "compact_saved_share": round(1 - len(compact) / len(data), 3),
            "payload_one_frame_per_kind": one_frame, "compact_and_one_frame_bytes": compact_fixed + one_frame}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundles", type=Path, nargs="+")
    parser.add_argument("--base", type=Path, default=SHIPPED_MODEL, help="the model the diffs apply to")
    parser.add_argument("--results", default="bundle_coding")
    args = parser.parse_args()
    base = load_model(args.base)
    rows = [coding_headroom(p, base) for p in args.bundles]
    for r in rows:
        print(f"{r['bundle']}: {r['bytes']:,} B in format {r['format']}, {r['sections']} sections, fixed part "
              f"{r['fixed']:,} B ({r['fixed_share']:.1%}); format 3: {r['compact_bytes']:,} B (fixed "
              f"{r['compact_fixed']:,} B, {r['compact_saved_share']:.1%} smaller, "
              f"{r['bytes'] / r['compact_bytes']:.3f}x); with one frame per kind also: "
              f"{r['compact_and_one_frame_bytes']:,} B")
    write_results(args.results, {"model_hash": base.content_hash(), "rows": rows})


if __name__ == "__main__":
    main()
