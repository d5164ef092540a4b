"""Shipped base model: WER of the int8 runtime vs the same model in float,
on synthetic test voices never used in training and on real FSDD speakers.

    python bench/base_model.py --checkpoint work/runs/base/last.pt --model models/base-v1.otam \
        --test work/corpus/base/test.jsonl --fsdd work/fsdd_eval/test.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import write_results  # noqa: E402
from device_agent.audio import load_audio  # noqa: E402
from device_agent.features import utterance_features  # noqa: E402
from device_agent.manifest import read_manifest  # noqa: E402
from device_agent.model_format import load_model  # noqa: E402
from device_agent.runtime import Int8Runtime  # noqa: E402
from device_agent.wer import evaluate  # noqa: E402
from diffing.train import model_from_checkpoint  # noqa: E402


def group_wer(results: list, utts: list, member) -> dict:  # type: ignore[no-untyped-def]
    rows = [r for r, u in zip(results, utts) if member(u)]
    words = sum(r.words for r in rows)
    return {"wer": round(sum(r.errors for r in rows) / max(1, words), 4), "words": words}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--fsdd", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = load_model(args.model)
    runtime = Int8Runtime(device)
    float_model, tokenizer, ckpt = model_from_checkpoint(args.checkpoint)

    def float_transcribe(audio) -> str:  # type: ignore[no-untyped-def]
        return tokenizer.decode(float_model.greedy_decode(utterance_features(audio, float_model.cfg.features)))

    results = {"model": str(args.model), "content_hash": device.content_hash(),
               "parameters": device.num_parameters(), "weight_sparsity": round(device.weight_sparsity(), 4),
               "file_bytes": args.model.stat().st_size, "training": ckpt["history"][-1], "sets": {}}
    for name, manifest in (("synthetic_test_voices", args.test), ("fsdd_real_speakers", args.fsdd)):
        utts = read_manifest(manifest, tokenizer)
        started = time.time()
        int8 = evaluate(runtime.transcribe, utts)
        int8_seconds = time.time() - started
        flt = evaluate(float_transcribe, utts)
        speakers = sorted({u.speaker for u in utts if u.speaker})
        per_speaker = {s: group_wer(int8.utterances, utts, lambda u, s=s: u.speaker == s) for s in speakers}
        # synthetic speakers are "engine:voice": a formant voice and a natural one fail very differently
        engines = sorted({s.split(":")[0] for s in speakers if ":" in s})
        per_engine = {e: group_wer(int8.utterances, utts, lambda u, e=e: (u.speaker or "").startswith(e + ":"))
                      for e in engines}
        results["sets"][name] = {
            "manifest": str(manifest), "utterances": len(utts), "words": int8.words,
            "wer_int8": round(int8.wer, 4), "wer_float": round(flt.wer, 4),
            "int8_minus_float_points": round(100 * (int8.wer - flt.wer), 2),
            "int8_rtf_1thread": round(int8_seconds / sum(u.duration for u in utts), 4),
            "per_speaker_wer_int8": per_speaker if len(speakers) <= 10 else None,
            "per_engine_wer_int8": per_engine or None,
            "examples": [{"ref": r.reference, "hyp": r.hypothesis} for r in int8.utterances[:5]],
        }
        print(name, json.dumps({k: v for k, v in results["sets"][name].items() if k != "examples"}))
    write_results("base_model", results)


if __name__ == "__main__":
    main()
