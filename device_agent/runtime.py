"""int8 streaming RNN-T runtime for devices.

Weight matrices stay exactly as int8 tensors in memory, with bf16 copies of
their per-channel scales; the DeviceModel's arrays are dropped after loading,
so no fp32 copy of any weight matrix stays resident. Matrix-vector products
use torch's int8 weight-only kernel (`_weight_int8pack_mm`, bf16 activations):
at batch 1 it is as fast as fbgemm's int8 ops here, and fbgemm's packed
weights take about twice the int8 size (K is padded to its block size).
Every kernel call sees exactly one encoder frame, so chunked (streaming) and
whole-utterance decoding perform the same arithmetic and give the same text.

The prediction network's input side (embedding row -> LSTM input gates + both
biases) depends only on the previous token, so it is folded at load time into
a (vocab, 4P) bf16 table when that is smaller than the int8 embedding and
input matrix it replaces (it is for the default model): one lookup instead of
a matmul per emitted token.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from device_agent.device_model import DeviceModel, QuantizedWeight
from device_agent.errors import DecodeBoundError
from device_agent.features import StreamingFeatures, utterance_features
from device_agent.model_format import load_model
from device_agent.tokenizer import BLANK

# Greedy decoding emits at most this many symbols per encoder frame, whatever the
# config says: 10 characters in 30 ms is already far beyond any speech.
MAX_SYMBOLS_PER_FRAME = 10


class Int8Linear:
    """y = x @ (q * scale).T + bias with q int8 (N, K) kept as is."""

    def __init__(self, w: QuantizedWeight, bias: np.ndarray | None) -> None:
        self.q = torch.from_numpy(np.ascontiguousarray(w.q))  # shares memory: the runtime owns the model
        self.scale = torch.from_numpy(w.scale).to(torch.bfloat16)
        self.bias = None if bias is None else torch.from_numpy(bias.astype(np.float32))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x: (M, K) float -> (M, N) float
        y = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.q, self.scale).float()
        return y if self.bias is None else y + self.bias

    def nbytes(self) -> int:
        extra = 0 if self.bias is None else self.bias.nbytes
        return self.q.nbytes + self.scale.nbytes + extra


def _lstm_bias(model: DeviceModel, prefix: str, layer: int) -> np.ndarray:
    return model.floats[f"{prefix}.bias_ih_l{layer}"] + model.floats[f"{prefix}.bias_hh_l{layer}"]


def _lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    i, f, g, o = gates.chunk(4, dim=1)  # gate order as in torch
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class Int8LSTMLayer:
    """One LSTM layer stepped one frame at a time."""

    def __init__(self, model: DeviceModel, prefix: str, layer: int) -> None:
        self.ih = Int8Linear(model.weights[f"{prefix}.weight_ih_l{layer}"], _lstm_bias(model, prefix, layer))
        self.hh = Int8Linear(model.weights[f"{prefix}.weight_hh_l{layer}"], None)
        self.hidden = model.weights[f"{prefix}.weight_hh_l{layer}"].q.shape[1]

    def __call__(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (1, K), h, c: (1, H)
        return _lstm_cell(self.ih(x) + self.hh(h), c)

    def nbytes(self) -> int:
        return self.ih.nbytes() + self.hh.nbytes()


class TokenLSTMLayer:
    """The prediction network's LSTM, whose input is an embedding row. When it
    is smaller, the input gates of every token are precomputed (bf16, biases
    included); otherwise the row is dequantized and multiplied per token."""

    def __init__(self, model: DeviceModel, fold: bool | None = None) -> None:
        """fold: precompute the table (True), never (False), or when smaller (None)."""
        embed, w_ih = model.weights["predictor.embed.weight"], model.weights["predictor.weight_ih_l0"]
        bias = _lstm_bias(model, "predictor", 0)
        self.hh = Int8Linear(model.weights["predictor.weight_hh_l0"], None)
        self.hidden = model.weights["predictor.weight_hh_l0"].q.shape[1]
        self.input_gates: torch.Tensor | None = None
        self.embed_q = self.embed_scale = self.ih = None
        ih = Int8Linear(w_ih, bias)
        table_bytes = 2 * embed.q.shape[0] * w_ih.q.shape[0]
        if fold is None:
            fold = table_bytes < embed.q.nbytes + 4 * embed.scale.size + ih.nbytes()
        if fold:
            # exact integer dot products of every token's embedding row with every gate row,
            # then both scales and the bias: more precise than the per-token bf16 path
            acc = embed.q.astype(np.int32) @ w_ih.q.astype(np.int32).T  # (V, 4P)
            gates = acc * embed.scale[:, None].astype(np.float64) * w_ih.scale[None, :] + bias
            self.input_gates = torch.from_numpy(gates.astype(np.float32)).to(torch.bfloat16)
        else:
            self.embed_q = torch.from_numpy(np.ascontiguousarray(embed.q))  # a row is dequantized on lookup
            self.embed_scale = torch.from_numpy(embed.scale.astype(np.float32))
            self.ih = ih

    def __call__(self, token: int, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.input_gates is not None:
            x_gates = self.input_gates[token:token + 1].float()
        else:
            x_gates = self.ih((self.embed_q[token].float() * self.embed_scale[token]).reshape(1, -1))
        return _lstm_cell(x_gates + self.hh(h), c)

    def nbytes(self) -> int:
        if self.input_gates is not None:
            return self.input_gates.nbytes + self.hh.nbytes()
        return self.embed_q.nbytes + self.embed_scale.nbytes + self.ih.nbytes() + self.hh.nbytes()


LSTMState = list[tuple[torch.Tensor, torch.Tensor]]


def _run_layers(layers: list[Int8LSTMLayer], x: torch.Tensor, state: LSTMState | None) -> tuple[torch.Tensor, LSTMState]:
    if state is None:
        state = [(torch.zeros(1, layer.hidden), torch.zeros(1, layer.hidden)) for layer in layers]
    new_state = []
    for layer, (h, c) in zip(layers, state):
        x, c = layer(x, h, c)
        new_state.append((x, c))
    return x, new_state


class Int8Runtime:
    """A loaded device model: `transcribe(audio)` or `stream()` for chunks.

    The runtime takes ownership of the DeviceModel's int8 arrays (no copy):
    do not modify that model afterwards.
    """

    def __init__(self, model: DeviceModel) -> None:
        cfg = self.config = model.config
        self.tokenizer = model.tokenizer
        self.model_id, self.version = model.model_id, model.version
        self.content_hash = model.content_hash()
        self._mean = torch.from_numpy(model.floats["frontend.mean"].copy())
        self._inv_std = torch.from_numpy(model.floats["frontend.inv_std"].copy())
        self._enc = [Int8LSTMLayer(model, "encoder", i) for i in range(cfg.enc_layers)]
        self._pred = TokenLSTMLayer(model)
        self._enc_proj = Int8Linear(model.weights["joint.enc_proj.weight"], model.floats["joint.enc_proj.bias"])
        self._pred_proj = Int8Linear(model.weights["joint.pred_proj.weight"], model.floats["joint.pred_proj.bias"])
        self._out = Int8Linear(model.weights["joint.out.weight"], model.floats["joint.out.bias"])

    def resident_weight_bytes(self) -> int:
        """Bytes of every tensor the runtime keeps for the model's parameters."""
        parts = [self._enc_proj, self._pred_proj, self._out, self._pred, *self._enc]
        return sum(part.nbytes() for part in parts) + self._mean.nbytes + self._inv_std.nbytes

    @classmethod
    def from_file(cls, path: str | Path) -> "Int8Runtime":
        return cls(load_model(path))

    # -- building blocks ---------------------------------------------------------
    def encode_frame(self, frame: torch.Tensor, state: LSTMState | None) -> tuple[torch.Tensor, LSTMState]:
        """One stacked feature frame (D,) -> joint-projected encoder output (1, J)."""
        n_mels = self.config.features.n_mels
        x = ((frame.reshape(-1, n_mels) - self._mean) * self._inv_std).reshape(1, 1, -1)
        out, state = _run_layers(self._enc, x.reshape(1, -1), state)
        return self._enc_proj(out), state

    def predict(self, token: int, state: LSTMState | None) -> tuple[torch.Tensor, LSTMState]:
        """Previous token (0 = start) -> joint-projected prediction output (1, J)."""
        h, c = state[0] if state else (torch.zeros(1, self._pred.hidden), torch.zeros(1, self._pred.hidden))
        h, c = self._pred(token, h, c)
        return self._pred_proj(h), [(h, c)]

    def joint(self, enc_proj: torch.Tensor, pred_proj: torch.Tensor) -> torch.Tensor:
        """(N, J) + (N, J) -> logits (N, V)."""
        return self._out(torch.tanh(enc_proj + pred_proj))

    # -- decoding ------------------------------------------------------------------
    def stream(self) -> "DecoderStream":
        return DecoderStream(self)

    def transcribe(self, audio: np.ndarray | torch.Tensor, *, max_symbols: int | None = None,
                   check: Callable[[], None] | None = None) -> str:
        """Whole utterance (16 kHz float) -> text.

        `max_symbols` bounds the symbols of the utterance (DecodeBoundError past it);
        `check` is called once per encoder frame and may raise to stop decoding
        (a time budget, a stop request)."""
        s = DecoderStream(self, max_symbols=max_symbols, check=check)
        s.push_features(utterance_features(audio, self.config.features))
        return s.text

    @torch.no_grad()
    def lattice_logits(self, feats: torch.Tensor, tokens: list[int]) -> torch.Tensor:
        """(T, D) features, token ids -> logits (T, U+1, V) over the full RNN-T lattice (tests, diagnostics)."""
        enc_state = pred_state = None
        enc = []
        for t in range(feats.shape[0]):
            e, enc_state = self.encode_frame(feats[t], enc_state)
            enc.append(e)
        pred = []
        for token in [BLANK, *tokens]:
            p, pred_state = self.predict(token, pred_state)
            pred.append(p)
        enc_t, pred_t = torch.cat(enc), torch.cat(pred)  # (T, J), (U+1, J)
        rows = [self.joint(enc_t[t:t + 1].expand_as(pred_t), pred_t) for t in range(enc_t.shape[0])]
        return torch.stack(rows)


@dataclass
class _Hypothesis:
    tokens: list[int]
    pred_out: torch.Tensor
    pred_state: LSTMState | None


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
        self._enc_state: LSTMState | None = None
        with torch.no_grad():
            out, state = runtime.predict(BLANK, None)
        self._hyp = _Hypothesis([], out, state)
        self.frames = 0

    @torch.no_grad()
    def push(self, chunk: np.ndarray | torch.Tensor) -> str:
        self.push_features(self._features.push(chunk))
        return self.text

    @torch.no_grad()
    def push_features(self, feats: torch.Tensor) -> None:
        rt, hyp = self.rt, self._hyp
        for t in range(feats.shape[0]):
            if self._check is not None:
                self._check()
            enc, self._enc_state = rt.encode_frame(feats[t], self._enc_state)
            for _ in range(self._per_frame):
                token = int(rt.joint(enc, hyp.pred_out).argmax())
                if token == BLANK:
                    break
                if self.max_symbols is not None and len(hyp.tokens) >= self.max_symbols:
                    raise DecodeBoundError(f"the model emitted more than {self.max_symbols} symbols for "
                                           f"{self.frames + t + 1} encoder frames (does it never emit blank?)")
                hyp.tokens.append(token)
                hyp.pred_out, hyp.pred_state = rt.predict(token, hyp.pred_state)
        self.frames += feats.shape[0]

    @property
    def token_ids(self) -> list[int]:
        return list(self._hyp.tokens)

    @property
    def text(self) -> str:
        return self.rt.tokenizer.decode(self._hyp.tokens)
