"""Level invariance: WER of the same test sets played at -20 dB, as recorded, and at +10 dB.

Each model decodes with the int8 runtime; the gain is applied to the float waveform (no clipping: this
measures the front end's response to level, not a clipping microphone). A baseline model (by default
the format-1 front end that shipped before the level normaliser) runs in the same process, so the two
are compared on the same clips.

    python bench/level_invariance.py --model models/base-v1.otam --baseline work/base-v1-format1.otam \
        --synthetic work/corpus/base/test.jsonl --fsdd work/fsdd_eval/test.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import write_results  # noqa: E402
from device_agent.audio import load_audio  # noqa: E402
from device_agent.manifest import read_manifest  # noqa: E402
from device_agent.model_format import load_model  # noqa: E402
from device_agent.runtime import Int8Runtime  # noqa: E402
from device_agent.wer import word_errors  # noqa: E402

GAINS_DB = (-20.0, 0.0, 10.0)


def wer_at_gains(runtime: Int8Runtime, clips: list[tuple[np.ndarray, str]]) -> dict[str, float]:
    out = {}
    for gain_db in GAINS_DB:
        gain = np.float32(10 ** (gain_db / 20))
        errors = sum(word_errors(text, runtime.transcribe(audio * gain)) for audio, text in clips)
        out[f"{gain_db:+.0f} dB"] = round(errors / sum(len(text.split()) for _, text in clips), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--synthetic", type=Path, required=True)
    parser.add_argument("--fsdd", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=500, help="utterances per set (evenly spaced)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {"model": load_model(args.model), "baseline": load_model(args.baseline)}
    results: dict = {"models": {k: {"path": str(p), "content_hash": m.content_hash(),
                                    "level_normaliser": m.config.features.level_norm}
                                for (k, m), p in zip(models.items(), (args.model, args.baseline))}, "sets": {}}
    for name, manifest in (("synthetic_test", args.synthetic), ("fsdd", args.fsdd)):
        utts = read_manifest(manifest)
        utts = utts[:: max(1, len(utts) // args.limit)][: args.limit]
        clips = [(load_audio(u.audio_path), u.text) for u in utts]
        row: dict = {"utterances": len(clips)}
        for key, model in models.items():
            wers = wer_at_gains(Int8Runtime(model), clips)
            row[key] = {"wer": wers, "max_shift_points": round(100 * max(abs(w - wers["+0 dB"]) for w in wers.values()), 2)}
        results["sets"][name] = row
        print(name, json.dumps(row))
    write_results("level_invariance", results)


if __name__ == "__main__":
    main()
