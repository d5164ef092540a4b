"""int8 streaming RNN-T runtime for devices.

Weight matrices are the model file's exact int8 values with their float32
per-channel scales, moved into the kernels' interleaved layout at load time
(`kernels.interleave`: a copy of the same bytes, never re-quantized; no float
copy of any weight matrix exists). The arithmetic runs in compiled kernels
(`device_agent.kernels`, numba): each input vector is quantized to int8 with
one scale, products are summed exactly in int32 (AVX-512 VNNI where present),
and a chunk of frames is processed per call:

1. every encoder layer computes the input projections of the chunk's frames,
   four frames per pass over the weights, then steps only the recurrent part
   frame by frame, with the gate math fused into that step;
2. the joint's encoder projection is computed for the whole chunk;
3. greedy search, the joint and the prediction network run inside one call;
   a model with a word list (its tokenizer's `words`) adds a fixed bonus to the
   logits of symbols that continue a listed word (`word_tree`).

Each frame's output is computed by the same code however the audio is cut
into chunks (integer sums are exact whichever kernel computes them), so
streaming and whole-utterance decoding give identical results.

The prediction network's input side (embedding row -> LSTM input gates + both
biases) depends only on the previous token, so it is folded at load time into
a (vocab, 4P) bf16 table when that is smaller than the int8 embedding and
input matrix it replaces (it is for the default model): one lookup instead of
a matrix product per emitted token.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from device_agent import kernels
from device_agent.device_model import DeviceModel, QuantizedWeight
from device_agent.errors import DecodeBoundError
from device_agent.features import StreamingFeatures, utterance_features
from device_agent.model_format import load_model
from device_agent.tokenizer import BLANK, WORD_SEPARATOR, CharTokenizer

# Greedy decoding emits at most this many symbols per encoder frame, whatever the
# config says: 10 characters in 30 ms is already far beyond any speech.
MAX_SYMBOLS_PER_FRAME = 10
# `check` runs before each block of this many encoder frames (0.48 s of audio)
CHECK_EVERY_FRAMES = 16

# Logit bonus for a symbol that continues a word of the model's word list, and for a listed word's
# first symbol. Part of the model format (docs/model-format.md, "Word list"): every agent decodes a
# model alike. Chosen on the dev splits of the update chain (docs/diffs.md, "Word lists"): bonuses of
# (0, 0) / (0.5, 1) / (1, 2) / (0, 3) gave new command type 37.2 / 34.1 / 34.9 / 38.1% and the original
# set 23.6 / 24.4 / 27.1 / 33.0% (1% diffs); a larger bonus spells listed words into other words.
WORD_START_BONUS = 0.5
WORD_BONUS = 1.0

_EMPTY_I8 = np.zeros((0, 0), np.int8)
_EMPTY_F32 = np.zeros(0, np.float32)


@dataclass(frozen=True)
class Int8Matrix:
    """y = x @ (q * scale).T + bias for the model's int8 q (N, K), held interleaved."""

    w: np.ndarray  # q's int8 values in the kernels' layout (`kernels.interleave`), zero-padded
    scale: np.ndarray  # (N,) float32
    offset: np.ndarray  # (N,) int32: zero point x row sum, removed from the uint8 x int8 sums
    bias: np.ndarray  # (N,) float32 (zeros when the layer has none)

    @classmethod
    def of(cls, w: QuantizedWeight, bias: np.ndarray | None = None) -> "Int8Matrix":
        offset = (kernels.ZERO_POINT * w.q.sum(axis=1, dtype=np.int32)).astype(np.int32)
        return cls(kernels.interleave(w.q), np.ascontiguousarray(w.scale, np.float32), offset,
                   np.zeros(w.q.shape[0], np.float32) if bias is None else np.ascontiguousarray(bias, np.float32))

    @property
    def rows(self) -> int:
        return self.scale.shape[0]

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.w, self.scale, self.offset, self.bias

    def int8_values(self, cols: int) -> np.ndarray:
        """The (N, K) int8 matrix back in row order (tests, diagnostics)."""
        w = self.w.transpose(0, 2, 1, 3).reshape(self.w.shape[0] * 16, -1)
        return w[:self.rows, :cols]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], self.rows), np.float32)
        kernels.linear(self.arrays, x, out)
        return out

    def nbytes(self, with_bias: bool = True) -> int:
        return self.w.nbytes + self.scale.nbytes + self.offset.nbytes + (self.bias.nbytes if with_bias else 0)


_EMPTY_MATRIX = Int8Matrix(np.zeros((0, 0, 16, 4), np.int8), _EMPTY_F32, np.zeros(0, np.int32), _EMPTY_F32)


def _lstm_bias(model: DeviceModel, prefix: str, layer: int) -> np.ndarray:
    return model.floats[f"{prefix}.bias_ih_l{layer}"] + model.floats[f"{prefix}.bias_hh_l{layer}"]


@dataclass(frozen=True)
class EncoderLayer:
    ih: Int8Matrix  # input projection, both LSTM biases folded into its bias
    hh: Int8Matrix  # recurrent matrix (no bias)

    @property
    def hidden(self) -> int:
        return self.hh.scale.shape[0] // 4

    def run(self, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> np.ndarray:
        """x (T, K) -> h of every frame (T, H); h, c (H,) carry the state in place."""
        out = np.empty((x.shape[0], self.hidden), np.float32)
        kernels.lstm_recurrence(self.ih(x), self.hh.arrays, h, c, out)
        return out

    def nbytes(self) -> int:
        return self.ih.nbytes() + self.hh.nbytes(with_bias=False)


class Predictor:
    """The prediction network (embedding -> LSTM) and the joint's projection of its output.
    When smaller, the input gates of every token are precomputed (bf16, biases included);
    otherwise the embedding row is dequantized and multiplied per token."""

    def __init__(self, model: DeviceModel, fold: bool | None = None) -> None:
        """fold: precompute the table (True), never (False), or when smaller (None)."""
        embed, w_ih = model.weights["predictor.embed.weight"], model.weights["predictor.weight_ih_l0"]
        ih = Int8Matrix.of(w_ih, _lstm_bias(model, "predictor", 0))
        self.hh = Int8Matrix.of(model.weights["predictor.weight_hh_l0"])
        self.proj = Int8Matrix.of(model.weights["joint.pred_proj.weight"], model.floats["joint.pred_proj.bias"])
        self.hidden = self.hh.rows // 4
        table_bytes = 2 * embed.q.shape[0] * w_ih.q.shape[0]
        if fold is None:
            fold = table_bytes < embed.q.nbytes + embed.scale.nbytes + ih.nbytes()
        self.folded = fold
        if fold:
            # exact integer dot products of every token's embedding row with every gate row,
            # then both scales and the bias, rounded once to bf16 (kept as its 16 bits)
            acc = embed.q.astype(np.int32) @ w_ih.q.astype(np.int32).T  # (V, 4P)
            gates = acc * embed.scale[:, None].astype(np.float64) * w_ih.scale[None, :] + ih.bias
            table = torch.from_numpy(gates.astype(np.float32)).to(torch.bfloat16).view(torch.int16)
            self.table = table.numpy().view(np.uint16).copy()
            self.embed_q, self.embed_scale, self.ih = _EMPTY_I8, _EMPTY_F32, _EMPTY_MATRIX
        else:
            self.table = np.zeros((0, 0), np.uint16)
            self.embed_q = np.ascontiguousarray(embed.q)  # a row is dequantized on lookup
            self.embed_scale = np.ascontiguousarray(embed.scale, np.float32)
            self.ih = ih
        self.weights = (self.table, self.embed_q, self.embed_scale, self.ih.arrays, self.hh.arrays, self.proj.arrays)

    def start(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """State after the start symbol (blank): h, c (P,) and the projected output (J,)."""
        h, c = np.zeros(self.hidden, np.float32), np.zeros(self.hidden, np.float32)
        out = np.empty(self.proj.rows, np.float32)
        kernels.predict_step(BLANK, self.weights, h, c, out, np.empty(4 * self.hidden, np.float32))
        return h, c, out

    def outputs(self, tokens: list[int]) -> np.ndarray:
        """Projected outputs after the start symbol and after each token: (U+1, J)."""
        h, c, out = self.start()
        rows = [out.copy()]
        scratch = np.empty(4 * self.hidden, np.float32)
        for token in tokens:
            kernels.predict_step(token, self.weights, h, c, out, scratch)
            rows.append(out.copy())
        return np.stack(rows)

    def nbytes(self) -> int:
        return (self.table.nbytes + self.embed_q.nbytes + self.embed_scale.nbytes + self.ih.nbytes()
                + self.hh.nbytes(with_bias=False) + self.proj.nbytes())


EncoderState = list[tuple[np.ndarray, np.ndarray]]


class Int8Runtime:
    """A loaded device model: `transcribe(audio)` or `stream()` for chunks.

    The runtime shares some of the DeviceModel's small arrays (scales, biases):
    do not modify that model afterwards. Dropping it frees its int8 matrices,
    which the runtime holds in its own layout.
    """

    def __init__(self, model: DeviceModel) -> None:
        cfg = self.config = model.config
        self.tokenizer = model.tokenizer
        self.model_id, self.version = model.model_id, model.version
        self.content_hash = model.content_hash()
        self._mean = np.ascontiguousarray(model.floats["frontend.mean"], np.float32)
        self._inv_std = np.ascontiguousarray(model.floats["frontend.inv_std"], np.float32)
        self.encoder = [EncoderLayer(Int8Matrix.of(model.weights[f"encoder.weight_ih_l{i}"],
                                                   _lstm_bias(model, "encoder", i)),
                                     Int8Matrix.of(model.weights[f"encoder.weight_hh_l{i}"]))
                        for i in range(cfg.enc_layers)]
        self.predictor = Predictor(model)
        self.enc_proj = Int8Matrix.of(model.weights["joint.enc_proj.weight"], model.floats["joint.enc_proj.bias"])
        self.out = Int8Matrix.of(model.weights["joint.out.weight"], model.floats["joint.out.bias"])
        self.words = word_tree(model.tokenizer)

    def resident_weight_bytes(self) -> int:
        """Bytes of every array the runtime keeps for the model's parameters."""
        return (sum(layer.nbytes() for layer in self.encoder) + self.predictor.nbytes() + self.enc_proj.nbytes()
                + self.out.nbytes() + self._mean.nbytes + self._inv_std.nbytes)

    @classmethod
    def from_file(cls, path: str | Path) -> "Int8Runtime":
        return cls(load_model(path))

    def initial_encoder_state(self) -> EncoderState:
        return [(np.zeros(layer.hidden, np.float32), np.zeros(layer.hidden, np.float32)) for layer in self.encoder]

    def encode(self, feats: np.ndarray | torch.Tensor, state: EncoderState) -> np.ndarray:
        """Stacked feature frames (T, D) -> joint-projected encoder output (T, J); state in place."""
        x = np.ascontiguousarray(feats, np.float32)
        n_mels = self.config.features.n_mels
        x = ((x.reshape(x.shape[0], -1, n_mels) - self._mean) * self._inv_std).reshape(x.shape[0], -1)
        for layer, (h, c) in zip(self.encoder, state):
            x = layer.run(x, h, c)
        return self.enc_proj(x)

    # -- decoding ------------------------------------------------------------------
    def stream(self) -> "DecoderStream":
        return DecoderStream(self)

    def transcribe(self, audio: np.ndarray | torch.Tensor, *, max_symbols: int | None = None,
                   check: Callable[[], None] | None = None) -> str:
        """Whole utterance (16 kHz float) -> text.

        `max_symbols` bounds the symbols of the utterance (DecodeBoundError past it);
        `check` is called before each block of CHECK_EVERY_FRAMES encoder frames and may
        raise to stop decoding (a time budget, a stop request)."""
        s = DecoderStream(self, max_symbols=max_symbols, check=check)
        s.push_features(utterance_features(audio, self.config.features))
        return s.text

    def warm_up(self) -> None:
        """Run the decoding kernels once on half a second of silence, so that the first real
        decode does not pay for compiling them (numba compiles each kernel on its first call:
        seconds of CPU on a cold cache, whatever the model). Bounded for any model: a few
        frames, at most 4 symbols."""
        try:
            self.transcribe(np.zeros(8000, np.float32), max_symbols=4)
        except DecodeBoundError:
            pass  # a model that never emits blank: the kernels ran all the same

    def lattice_logits(self, feats: np.ndarray | torch.Tensor, tokens: list[int]) -> torch.Tensor:
        """(T, D) features, token ids -> logits (T, U+1, V) over the full RNN-T lattice (tests, diagnostics)."""
        enc = self.encode(feats, self.initial_encoder_state())
        pred = self.predictor.outputs(tokens)
        return torch.from_numpy(kernels.joint_logits(enc, pred, self.out.arrays))


def word_tree(tokenizer: CharTokenizer) -> tuple[np.ndarray, int, np.float32, np.float32]:
    """The tokenizer's word list as the decoder's prefix tree: (child (nodes, V) int32, separator id,
    start bonus, bonus); see kernels.greedy_decode. No words: a tree of the root alone."""
    child = [np.full(tokenizer.vocab_size, -1, np.int32)]
    for word in tokenizer.words:
        node = 0
        for token in tokenizer.encode(word):
            if child[node][token] < 0:
                child[node][token] = len(child)
                child.append(np.full(tokenizer.vocab_size, -1, np.int32))
            node = int(child[node][token])
    separator = tokenizer.symbols.index(WORD_SEPARATOR) + 1 if WORD_SEPARATOR in tokenizer.symbols else -1
    return np.stack(child), separator, np.float32(WORD_START_BONUS), np.float32(WORD_BONUS)


class DecoderStream:
    """Greedy streaming decoder: push audio (16 kHz) chunks, read `.text` at any time."""

    def __init__(self, runtime: Int8Runtime, *, max_symbols: int | None = None,
                 check: Callable[[], None] | None = None) -> None:
        self.rt = runtime
        self.max_symbols = max_symbols
        self._check = check
        # a model that never emits blank must not spend 8192 predictor steps per frame (a legal config value)
        self._per_frame = min(runtime.config.max_symbols_per_step, MAX_SYMBOLS_PER_FRAME)
        self._features = StreamingFeatures(runtime.config.features)
        self._enc_state = runtime.initial_encoder_state()
        self._pred_h, self._pred_c, self._pred_out = runtime.predictor.start()
        self._tokens: list[int] = []
        self._word_node = 0  # where the text is in the word list's tree (kernels.greedy_decode)
        self.frames = 0

    def push(self, chunk: np.ndarray | torch.Tensor) -> str:
        self.push_features(self._features.push(chunk))
        return self.text

    def push_features(self, feats: np.ndarray | torch.Tensor) -> None:
        """Decode stacked feature frames (T, D) from the front end."""
        feats = np.ascontiguousarray(feats, np.float32)
        for start in range(0, feats.shape[0], CHECK_EVERY_FRAMES):
            if self._check is not None:
                self._check()
            self._decode(feats[start:start + CHECK_EVERY_FRAMES])

    def _decode(self, feats: np.ndarray) -> None:
        rt = self.rt
        enc = rt.encode(feats, self._enc_state)
        limit = len(self._tokens) + enc.shape[0] * self._per_frame if self.max_symbols is None else self.max_symbols
        emitted = np.empty(enc.shape[0] * self._per_frame, np.int64)
        count, overflow, self._word_node = kernels.greedy_decode(
            enc, self._per_frame, limit - len(self._tokens), BLANK, rt.out.arrays, rt.predictor.weights,
            self._pred_h, self._pred_c, self._pred_out, emitted, rt.words, self._word_node)
        self._tokens.extend(emitted[:count].tolist())
        if overflow >= 0:
            raise DecodeBoundError(f"the model emitted more than {self.max_symbols} symbols for "
                                   f"{self.frames + overflow + 1} encoder frames (does it never emit blank?)")
        self.frames += enc.shape[0]

    @property
    def token_ids(self) -> list[int]:
        return list(self._tokens)

    @property
    def text(self) -> str:
        return self.rt.tokenizer.decode(self._tokens)
