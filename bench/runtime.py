"""The device's int8 runtime against the engines a user could pick instead, same
model, same clips, same greedy streaming decode, one thread, one run.

Peers (bench/runtime_peers.py): fp32 torch (nn.LSTM modules, mkldnn off), torch
dynamic int8, ONNX Runtime fp32 and dynamic int8. Transcripts are compared
with the fp32 reference (diffing's float model of the same dequantized
weights, decoded frame by frame). Features are computed once beforehand (excluded). For
each: decode time (best of 5, wall clock and CPU time of this process; CPU time
is not inflated by other load on the machine), real-time factor, weight bytes,
RSS growth after loading and after decoding (each in a fresh process), and
transcripts equal to the fp32 reference.

    python bench/runtime.py [--model models/base-v1.otam] [--utterances 20]
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import runtime_peers as peers  # noqa: E402
from bench.common import FSDD, SHIPPED_MODEL, rss_bytes, write_results  # noqa: E402
from device_agent.audio import load_audio  # noqa: E402
from device_agent.features import utterance_features  # noqa: E402
from device_agent.model_format import load_model  # noqa: E402
from device_agent.runtime import Int8Runtime  # noqa: E402
from device_agent.vnni import HAS_VNNI  # noqa: E402

ENGINES = ("ours_int8", "torch_fp32", "torch_dynamic_int8", "onnxruntime_fp32", "onnxruntime_dynamic_int8")
INT8_PEERS = ("torch_dynamic_int8", "onnxruntime_dynamic_int8")


def clip_paths(count: int) -> list[Path]:
    return sorted(FSDD.glob("*.wav"))[:: max(1, 2000 // count)][:count]


def build_engine(name: str, model_path: Path, onnx_dir: Path) -> tuple[Callable[[np.ndarray], list[int]], int]:
    """Engine name -> (decode features to token ids, weight bytes)."""
    device = load_model(model_path)
    max_symbols = device.config.max_symbols_per_step
    if name == "ours_int8":
        runtime = Int8Runtime(device)

        def decode(feats: np.ndarray) -> list[int]:
            stream = runtime.stream()
            stream.push_features(feats)
            return stream.token_ids
        return decode, runtime.resident_weight_bytes()
    if name.startswith("torch"):
        peer = peers.torch_fp32(device) if name == "torch_fp32" else peers.torch_dynamic_int8(device)
    else:
        suffix = ".int8.onnx" if name == "onnxruntime_dynamic_int8" else ".onnx"
        peer = peers.onnx_peer({n: onnx_dir / f"{n}{suffix}" for n in ("encoder", "predictor", "joint")}, device)
    return (lambda feats: peers.greedy_decode(peer, feats, max_symbols)), peer.weight_bytes()


def best_times(fns: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, tuple[float, float]]:
    """Best wall time and best CPU time of this process over `repeats` rounds; every round
    runs every engine once, so a burst of load on the machine hits all of them alike."""
    best = {name: (float("inf"), float("inf")) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - w, time.process_time() - c
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def probe(name: str, model_path: Path, onnx_dir: Path, utterances: int) -> dict[str, int]:
    """In a fresh process: RSS growth from loading one engine, then from decoding every clip."""
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    front_end = load_model(model_path).config.features
    feats = [utterance_features(load_audio(p), front_end).numpy() for p in clip_paths(utterances)]
    gc.collect()
    before = rss_bytes()
    decode, _ = build_engine(name, model_path, onnx_dir)
    gc.collect()
    loaded = rss_bytes()
    for f in feats:
        decode(f)
    gc.collect()
    return {"load": loaded - before, "decode": rss_bytes() - before}


def rss_growth(name: str, model_path: Path, onnx_dir: Path, utterances: int) -> dict[str, int]:
    cmd = [sys.executable, __file__, "--probe", name, "--model", str(model_path), "--onnx-dir", str(onnx_dir),
           "--utterances", str(utterances)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--probe", choices=ENGINES, help=argparse.SUPPRESS)  # internal: one memory probe
    parser.add_argument("--onnx-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.model, args.onnx_dir, args.utterances)))
        return
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False  # the fair fp32 setting for small recurrent steps

    device = load_model(args.model)
    audio = [load_audio(p) for p in clip_paths(args.utterances)]
    feats = [utterance_features(a, device.config.features).numpy() for a in audio]
    seconds = sum(len(a) for a in audio) / 16000
    frames = sum(f.shape[0] for f in feats)

    from diffing.export import float_model_from_device  # the fp32 reference: bench code, not device code

    reference = float_model_from_device(device)
    want = [reference.greedy_decode(torch.from_numpy(f)) for f in feats]
    del reference

    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(tmp)
        peers.quantize_onnx_graphs(peers.build_onnx_graphs(device, onnx_dir), onnx_dir)
        engines = {name: build_engine(name, args.model, onnx_dir) for name in ENGINES}
        same = {}
        for name, (decode, _) in engines.items():
            decode(feats[0])  # first call: lazy initialisation (compiled kernels load from their cache)
            same[name] = sum(decode(f) == w for f, w in zip(feats, want))
        times = best_times({name: (lambda d=decode: [d(f) for f in feats]) for name, (decode, _) in engines.items()})
        rows = {}
        for name, (_, weight_bytes) in engines.items():
            wall, cpu = times[name]
            memory = rss_growth(name, args.model, onnx_dir, args.utterances) if name in ENGINES else {}
            rows[name] = {"decode_cpu_s": round(cpu, 4), "decode_wall_s": round(wall, 4),
                          "rtf_cpu": round(cpu / seconds, 4), "us_per_frame_cpu": round(1e6 * cpu / frames, 1),
                          "weight_bytes": weight_bytes, "transcripts_equal_fp32": f"{same[name]}/{len(feats)}",
                          "rss_growth_load_bytes": memory.get("load"), "rss_growth_decode_bytes": memory.get("decode")}
            print(f"{name:32s} cpu {cpu:.4f} s  wall {wall:.4f} s  {weight_bytes:>9,} B  same {same[name]}/{len(feats)}"
                  f"  rss +{memory.get('load', 0) / 1e6:.2f}/+{memory.get('decode', 0) / 1e6:.2f} MB", flush=True)

    ours = rows["ours_int8"]
    fastest_peer = min((n for n in rows if n != "ours_int8"), key=lambda n: rows[n]["decode_cpu_s"])
    for row in rows.values():
        row["ours_speedup_cpu"] = round(row["decode_cpu_s"] / ours["decode_cpu_s"], 2)
        row["ours_speedup_wall"] = round(row["decode_wall_s"] / ours["decode_wall_s"], 2)
    results = {
        "model": str(args.model.relative_to(Path.cwd()) if args.model.is_relative_to(Path.cwd()) else args.model),
        "model_hash": device.content_hash(), "parameters": device.num_parameters(),
        "weight_sparsity": round(device.weight_sparsity(), 4), "utterances": len(feats),
        "audio_seconds": round(seconds, 2), "encoder_frames": frames, "threads": 1, "vnni": HAS_VNNI,
        "decode": "greedy streaming, features precomputed (excluded), best of 5",
        "engines": rows, "fastest_peer": fastest_peer,
        "ours_vs_fastest_peer_cpu": round(rows[fastest_peer]["decode_cpu_s"] / ours["decode_cpu_s"], 2),
        "ours_weight_bytes_le_every_int8_peer": all(ours["weight_bytes"] <= rows[n]["weight_bytes"]
                                                   for n in INT8_PEERS),
    }
    path = write_results("runtime", results)
    print(json.dumps(results, indent=2))
    print(f"ours vs fastest peer ({fastest_peer}): {results['ours_vs_fastest_peer_cpu']}x faster (CPU time); "
          f"weight bytes <= every int8 peer: {results['ours_weight_bytes_le_every_int8_peer']}; "
          f"transcripts equal to fp32: {ours['transcripts_equal_fp32']} -> {path}")


if __name__ == "__main__":
    main()
