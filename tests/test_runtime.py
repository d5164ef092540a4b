"""int8 runtime: streaming equals whole-utterance decoding; logits match a float reference."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from device_agent import kernels
from device_agent.audio import load_audio
from device_agent.features import StreamingFeatures, utterance_features
from device_agent.model_config import ModelConfig
from device_agent.runtime import Int8Runtime, Predictor
from device_agent.tokenizer import CharTokenizer
from diffing.export import export_model, float_model_from_device
from diffing.model import RNNT

ROOT = Path(__file__).resolve().parents[1]
FSDD = Path(__file__).resolve().parent / "data" / "fsdd" / "recordings"  # shipped: see its README
SHIPPED_MODEL = ROOT / "models" / "base-v1.otam"

# The shipped model's full-lattice logits for one real clip, as the hash of their bytes.
LATTICE_HASH = """
import hashlib, sys
from device_agent.audio import load_audio
from device_agent.features import utterance_features
from device_agent.model_format import load_model
from device_agent.runtime import Int8Runtime
runtime = Int8Runtime(load_model(sys.argv[1]))
feats = utterance_features(load_audio(sys.argv[2]), runtime.config.features)
logits = runtime.lattice_logits(feats, runtime.tokenizer.encode("seven two"))
print(hashlib.sha256(logits.numpy().tobytes()).hexdigest())
"""


@pytest.fixture(scope="module")
def device_model():
    torch.manual_seed(0)
    cfg = ModelConfig(enc_hidden=64, enc_layers=2, embed_dim=16, pred_hidden=64, joint_dim=64)
    model = RNNT(cfg)
    with torch.no_grad():  # plausible feature statistics, magnitude-pruned weights
        model.frontend.mean.fill_(-8.0)
        model.frontend.inv_std.fill_(0.25)
        for w in model.named_weight_matrices().values():
            w.mul_(3.0)
            w[w.abs() < w.abs().median()] = 0
    return export_model(model, CharTokenizer())


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    clips = [load_audio(FSDD / name) for name in ("4_jackson_0.wav", "1_george_3.wav", "7_lucas_10.wav")]
    return np.concatenate(clips)


def test_streaming_features_equal_whole_utterance(speech: np.ndarray) -> None:
    whole = utterance_features(speech)
    stream = StreamingFeatures()
    chunks = [stream.push(c) for c in np.array_split(speech, 37)]
    torch.testing.assert_close(torch.cat(chunks), whole, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("chunk_samples", [160, 1000, 4800])
def test_streaming_decode_equals_whole_utterance(device_model, speech: np.ndarray, chunk_samples: int) -> None:
    runtime = Int8Runtime(device_model)
    whole = runtime.stream()
    whole.push(speech)
    stream = runtime.stream()
    partials = [stream.push(speech[i:i + chunk_samples]) for i in range(0, len(speech), chunk_samples)]
    assert whole.token_ids, "the random model should emit something, or the comparison is vacuous"
    assert stream.token_ids == whole.token_ids
    assert stream.text == runtime.transcribe(speech)
    # partial results only ever grow (a streaming UI can show them)
    assert all(b.startswith(a) for a, b in zip(partials, partials[1:]))


def test_runtime_logits_match_float_reference(device_model, speech: np.ndarray) -> None:
    runtime = Int8Runtime(device_model)
    reference = float_model_from_device(device_model)
    feats = utterance_features(speech)
    tokens = CharTokenizer().encode("four one seven")
    got = runtime.lattice_logits(feats, tokens)
    with torch.no_grad():
        want = reference(feats[None], torch.tensor([tokens]))[0]
    assert got.shape == want.shape
    # int8 activations add a small error; it must stay small relative to the logit range
    err = (got - want).abs().max() / want.abs().max()
    assert err < 0.03, f"relative logit error {err:.4f}"
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean()
    assert agree > 0.95


def test_chunked_encoder_is_bit_identical_to_whole(device_model, speech: np.ndarray) -> None:
    runtime = Int8Runtime(device_model)
    feats = utterance_features(speech).numpy()
    whole = runtime.encode(feats, runtime.initial_encoder_state())
    state = runtime.initial_encoder_state()
    cuts = [0, 1, 2, 9, 10, 33, feats.shape[0]]  # chunks of 1, 1, 7, 1, 23 and the rest
    chunked = np.concatenate([runtime.encode(feats[a:b], state) for a, b in zip(cuts, cuts[1:])])
    assert np.array_equal(chunked, whole)


def test_runtime_keeps_the_exact_int8_weights(device_model) -> None:
    runtime = Int8Runtime(device_model)
    named = {"joint.enc_proj.weight": runtime.enc_proj, "joint.out.weight": runtime.out,
             "predictor.weight_hh_l0": runtime.predictor.hh, "joint.pred_proj.weight": runtime.predictor.proj}
    for i, layer in enumerate(runtime.encoder):
        named.update({f"encoder.weight_ih_l{i}": layer.ih, f"encoder.weight_hh_l{i}": layer.hh})
    for name, matrix in named.items():
        q = device_model.weights[name].q
        assert matrix.w.dtype == np.int8
        # the kernels' layout moves the model's values, never re-quantizes them
        assert np.array_equal(matrix.int8_values(q.shape[1]), q), name
        np.testing.assert_array_equal(matrix.scale, device_model.weights[name].scale)
    fp32_bytes = 4 * device_model.num_parameters()
    # int8 is 25% of fp32; scales, row sums and biases add a little, the folded token table
    # saves more than that on a model with a realistic embedding (see bench/runtime.py)
    assert runtime.resident_weight_bytes() < 0.28 * fp32_bytes
    assert runtime.content_hash == device_model.content_hash()


@pytest.mark.skipif(not kernels.HAS_VNNI, reason="this CPU has no AVX-512 VNNI: only the plain loops run")
@pytest.mark.parametrize("rows, cols", [(1024, 240), (29, 256), (16, 4), (70, 13)])
def test_vnni_sums_equal_plain_sums(rows: int, cols: int) -> None:
    rng = np.random.default_rng(rows + cols)
    w = kernels.interleave(rng.integers(-127, 128, (rows, cols), dtype=np.int8))
    xq = rng.integers(0, 256, (3, w.shape[1] * 4), dtype=np.uint8)
    fast, plain = (np.zeros(w.shape[0] * 16, np.int32) for _ in range(2))
    for t in range(3):
        kernels._int_sums_vnni(w, xq, t, fast)
        kernels._int_sums_plain(w, xq, t, plain)
        assert np.array_equal(fast, plain)
        want = w.transpose(0, 2, 1, 3).reshape(len(fast), -1).astype(np.int64) @ xq[t].astype(np.int64)
        assert np.array_equal(plain, want)
    four = np.zeros((4, len(fast)), np.int32)
    xq4 = rng.integers(0, 256, (5, w.shape[1] * 4), dtype=np.uint8)
    kernels._int_sums4_vnni(w, xq4, 1, four)  # frames 1..4, one weight pass
    for f in range(4):
        kernels._int_sums_plain(w, xq4, 1 + f, plain)
        assert np.array_equal(four[f], plain)


def test_folded_token_table_matches_per_token_matmul(device_model) -> None:
    folded, plain = Predictor(device_model, fold=True), Predictor(device_model, fold=False)
    assert folded.folded and not plain.folded
    tokens = list(range(1, device_model.tokenizer.vocab_size)) * 2
    # the table rounds each token's input gates to bf16 once; differences stay at that level
    np.testing.assert_allclose(folded.outputs(tokens), plain.outputs(tokens), atol=3e-2)


def test_kernels_loaded_from_cache_compute_what_they_computed_when_compiled(tmp_path: Path) -> None:
    """A device compiles the kernels on its first decode and loads them from numba's cache afterwards.
    Both must give the same bits, or its first WER gate scores differently from the next ones."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "kernel-cache"), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", LATTICE_HASH, str(SHIPPED_MODEL), str(FSDD / "7_lucas_10.wav")]
    compiled = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    assert any((tmp_path / "kernel-cache").rglob("*.nbc"))  # the first run filled the cache ...
    cached = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert cached.returncode == 0, cached.stderr[-2000:]
    assert cached.stdout == compiled.stdout  # ... and the second computed with what it loaded
