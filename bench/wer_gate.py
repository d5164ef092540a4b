"""Time of the device agent's WER gate (Validator.wer: load, hash check, front end,
decode, WER) over N real recordings, one thread, nothing cached.

    python bench/wer_gate.py [--model models/base-v1.otam] [--utterances 200]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import FSDD, SHIPPED_MODEL, write_results  # noqa: E402
from device_agent.agent.validate import Validator  # noqa: E402
from device_agent.audio import load_audio  # noqa: E402
from device_agent.model_format import load_model  # noqa: E402

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--utterances", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    recordings = sorted(FSDD.glob("*.wav"))
    clips = recordings[:: max(1, len(recordings) // args.utterances)][: args.utterances]
    content_hash = load_model(args.model).content_hash()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "gate.jsonl"
        rows = [{"audio_filepath": str(p), "text": DIGITS[int(p.name[0])],
                 "duration": len(load_audio(p)) / 16000} for p in clips]
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        validator = Validator(manifest, Path(tmp) / "wer_cache.json")
        validator.utterances()  # reading the manifest is not the gate's work
        wall, cpu = time.perf_counter(), time.process_time()
        wer = validator.wer(args.model, content_hash)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    audio_s = sum(r["duration"] for r in rows)
    results = {"model": args.model.name, "model_hash": content_hash, "utterances": len(rows),
               "audio_seconds": round(audio_s, 2), "threads": 1, "wer": round(wer, 4),
               "gate_wall_s": round(wall, 3), "gate_cpu_s": round(cpu, 3), "rtf_cpu": round(cpu / audio_s, 4),
               "includes": "model load and hash check, front end, decode, WER, loading the runtime's compiled "
                           "kernels (from numba's cache when this machine has compiled them before)"}
    path = write_results("wer_gate", results)
    print(json.dumps(results, indent=2))
    print(f"WER gate over {len(rows)} utterances ({audio_s:.0f} s of audio): {cpu:.2f} s CPU, {wall:.2f} s wall "
          f"-> {path}")


if __name__ == "__main__":
    main()
