"""How many bytes of a trained diff's bundle are not entries, and what a tighter container would save.

    python bench/bundle_coding.py work/intent_0.01.otab work/intent_0.03.otab [--results bundle_coding]

For each bundle, against the bundle as shipped (the baseline in the same run): the fixed part
(preamble and the JSON manifest, one ~150-byte row per section), the manifest compressed with
zstd, and the payload recompressed as one zstd frame per kind of section (hashed, sparse)
instead of one frame per section. Both would need a new bundle format version, which every
agent of a fleet must read before a publisher may write it (docs/bundle-format.md).
Writes bench/results/bundle_coding.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import write_results  # noqa: E402
from device_agent.bundle import PREAMBLE, SPARSE_ENCODINGS, bundle_overhead, read_bundle_manifest  # noqa: E402
from device_agent.errors import BundleError  # noqa: E402
from device_agent.zstd_frames import decompress_exact  # noqa: E402
from packager.bundle import compress_section  # noqa: E402


def zstd_len(raw: bytes) -> int:
    """Bytes of `raw` compressed as the bundle writer compresses a section."""
    return len(compress_section(raw))


def coding_headroom(path: Path) -> dict:
    """Bytes of the bundle at `path` as shipped, and with a compressed manifest and one frame per kind."""
    data = path.read_bytes()
    manifest = read_bundle_manifest(path)
    fixed = bundle_overhead(data)
    raw_by_kind: dict[str, bytes] = {}
    for s in manifest.sections:
        start = fixed + s.offset
        kind = "sparse" if s.encoding in SPARSE_ENCODINGS else s.encoding
        raw_by_kind[kind] = raw_by_kind.get(kind, b"") + bytes(
            decompress_exact(data[start:start + s.length], s.raw_length, s.name, BundleError))
    packed_manifest = PREAMBLE.size + zstd_len(data[PREAMBLE.size:fixed])
    one_frame = {kind: zstd_len(raw) for kind, raw in raw_by_kind.items()}
    tighter = packed_manifest + sum(one_frame.values())
    return {"bundle": str(path), "bytes": len(data), "sections": len(manifest.sections), "fixed": fixed,
            "fixed_share": round(fixed / len(data), 3), "fixed_compressed": packed_manifest,
            "payload": manifest.payload_bytes, "payload_one_frame_per_kind": sum(one_frame.values()),
            "tighter_bytes": tighter, "saved": len(data) - tighter, "saved_share": round(1 - tighter / len(data), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundles", type=Path, nargs="+")
    parser.add_argument("--results", default="bundle_coding")
    args = parser.parse_args()
    rows = [coding_headroom(p) for p in args.bundles]
    for r in rows:
        print(f"{r['bundle']}: {r['bytes']:,} B, {r['sections']} sections; fixed {r['fixed']:,} B "
              f"({r['fixed_share']:.1%}) -> {r['fixed_compressed']:,} compressed; payload {r['payload']:,} B -> "
              f"{r['payload_one_frame_per_kind']:,} in one frame per kind; together {r['tighter_bytes']:,} B "
              f"({r['saved_share']:.1%} smaller, {r['bytes'] / r['tighter_bytes']:.3f}x)")
    write_results(args.results, {"rows": rows})


if __name__ == "__main__":
    main()
