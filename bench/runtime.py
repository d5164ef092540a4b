"""int8 sparse runtime vs fp32 eager torch, same model, same audio, same run.

Measures (1) greedy streaming decode speed on one thread, (2) resident weight
memory, (3) file size of the device model vs the fp32 state_dict file.

    python bench/runtime.py [--model models/base-v1.otam] [--utterances 20]
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import FSDD, SHIPPED_MODEL, best_of, rss_bytes, write_results  # noqa: E402
from device_agent.audio import load_audio  # noqa: E402
from device_agent.features import utterance_features  # noqa: E402
from device_agent.model_format import load_model  # noqa: E402
from device_agent.runtime import Int8Runtime  # noqa: E402
from diffing.export import float_model_from_device  # noqa: E402

MEMORY_PROBE = """
import gc, sys, json
sys.path.insert(0, {root!r})
from bench.common import rss_bytes
from device_agent.model_format import load_model
kind, path = sys.argv[1], sys.argv[2]
import torch
from device_agent.runtime import Int8Runtime
from diffing.export import float_model_from_device
# warm up torch's lazily initialised kernels and pools so only weights are counted
x = torch.ones(1, 64)
torch.ops.aten._weight_int8pack_mm(x.bfloat16(), torch.ones(8, 64, dtype=torch.int8), torch.ones(8).bfloat16())
torch.lstm(x[None], (torch.zeros(1, 1, 8), torch.zeros(1, 1, 8)), [torch.ones(32, 64), torch.ones(32, 8)], False, 1, 0.0,
           False, False, True)
gc.collect(); before = rss_bytes()
device = load_model(path)
if kind == "int8":
    resident = Int8Runtime(device)
else:
    resident = float_model_from_device(device)
del device; gc.collect()
# the file bytes and parse temporaries are gone; what grew is what the model keeps
print(json.dumps({{"delta": rss_bytes() - before}}))
"""


def memory_delta(kind: str, model_path: Path) -> int:
    """RSS growth from loading the file into a runtime, in a fresh warmed-up process."""
    code = MEMORY_PROBE.format(root=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code, kind, str(model_path)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["delta"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--utterances", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)

    device = load_model(args.model)
    runtime = Int8Runtime(device)
    fp32 = float_model_from_device(device)
    clips = sorted(FSDD.glob("*.wav"))[:: max(1, 2000 // args.utterances)][: args.utterances]
    audio = [load_audio(p) for p in clips]
    seconds = sum(len(a) for a in audio) / 16000

    def run_int8() -> None:
        for a in audio:
            runtime.transcribe(a)

    def run_fp32() -> None:
        for a in audio:
            fp32.greedy_decode(utterance_features(a, fp32.cfg.features))

    same = sum(runtime.transcribe(a) == device.tokenizer.decode(fp32.greedy_decode(utterance_features(a, fp32.cfg.features)))
               for a in audio)
    t_int8 = best_of(run_int8)
    torch.backends.mkldnn.enabled = True
    t_fp32 = best_of(run_fp32)
    torch.backends.mkldnn.enabled = False
    t_fp32_nomkl = best_of(run_fp32)
    torch.backends.mkldnn.enabled = True

    fp32_param_bytes = sum(p.numel() * 4 for p in fp32.state_dict().values())
    int8_weight_bytes = runtime.resident_weight_bytes()
    mem_int8, mem_fp32 = memory_delta("int8", args.model), memory_delta("fp32", args.model)
    buf = io.BytesIO()
    torch.save(fp32.state_dict(), buf)
    file_bytes, fp32_file_bytes = args.model.stat().st_size, len(buf.getvalue())
    del fp32
    gc.collect()

    results = {
        "model": str(args.model.relative_to(Path.cwd()) if args.model.is_relative_to(Path.cwd()) else args.model),
        "model_hash": device.content_hash(), "parameters": device.num_parameters(),
        "weight_sparsity": round(device.weight_sparsity(), 4),
        "audio_seconds": round(seconds, 2), "utterances": len(audio), "threads": 1,
        "transcripts_identical_int8_vs_fp32": f"{same}/{len(audio)}",
        "decode_seconds": {"int8_runtime": round(t_int8, 4), "fp32_eager": round(t_fp32, 4),
                           "fp32_eager_mkldnn_off": round(t_fp32_nomkl, 4)},
        "rtf": {"int8_runtime": round(t_int8 / seconds, 4), "fp32_eager": round(t_fp32 / seconds, 4),
                "fp32_eager_mkldnn_off": round(t_fp32_nomkl / seconds, 4)},
        "speedup_vs_fp32_eager": round(t_fp32 / t_int8, 2),
        "speedup_vs_fp32_eager_mkldnn_off": round(t_fp32_nomkl / t_int8, 2),
        "weight_bytes": {"int8_runtime_tensors": int8_weight_bytes, "fp32_model_tensors": fp32_param_bytes,
                         "ratio": round(int8_weight_bytes / fp32_param_bytes, 4)},
        "resident_rss_bytes": {"int8_runtime": mem_int8, "fp32_model": mem_fp32,
                               "ratio": round(mem_int8 / mem_fp32, 4)},
        "file_bytes": {"device_model": file_bytes, "fp32_state_dict": fp32_file_bytes,
                       "ratio": round(file_bytes / fp32_file_bytes, 4)},
    }
    path = write_results("runtime", results)
    print(json.dumps(results, indent=2))
    print(f"speed int8/fp32-eager: {results['speedup_vs_fp32_eager']}x "
          f"(mkldnn off: {results['speedup_vs_fp32_eager_mkldnn_off']}x); "
          f"resident weight tensors {results['weight_bytes']['ratio']:.1%} of fp32 "
          f"(RSS growth {results['resident_rss_bytes']['ratio']:.1%}); "
          f"file {results['file_bytes']['ratio']:.1%} of fp32 state_dict -> {path}")


if __name__ == "__main__":
    main()
