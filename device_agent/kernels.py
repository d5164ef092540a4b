"""Compiled (numba) kernels of the int8 runtime: int8 weights, float32 activations.

A weight matrix is used as stored: `q` int8 (N, K) and its per-row float32
`scale`; y = (q @ x) * scale + bias is computed in float32 with the int8
values converted on the fly, so no float copy of a matrix exists. Each
kernel runs a whole chunk of frames per call: Python's per-operation
overhead is paid per chunk, not per frame.

Every output row is computed by the same code whatever the chunk length (a
dot product over K, then one scale and one bias), so a chunked stream does
bit-for-bit the arithmetic of a whole utterance.

tanh is a rational approximation (the one Eigen uses for float, a few ulp
from the exact value): it is plain arithmetic, so the compiler vectorises
the gate math; libm's tanh/exp would be a call per element.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_FLAGS = dict(cache=True, fastmath=True, nogil=True)
_TANH_CLAMP = np.float32(7.90531110763549805)
_A = tuple(np.float32(a) for a in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                                   5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                                   4.89352455891786e-03))
_B = tuple(np.float32(b) for b in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                                   4.89352518554385e-03))
_HALF = np.float32(0.5)


@njit(**_FLAGS)
def _tanh(x: np.float32) -> np.float32:
    x = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    p = _A[0]
    for a in _A[1:]:
        p = p * x2 + a
    q = _B[0]
    for b in _B[1:]:
        q = q * x2 + b
    return x * p / q


@njit(**_FLAGS)
def _sigmoid(x: np.float32) -> np.float32:
    return _HALF * _tanh(_HALF * x) + _HALF


@njit(**_FLAGS)
def _dot(q_row: np.ndarray, x: np.ndarray) -> np.float32:
    acc = np.float32(0.0)
    for k in range(q_row.shape[0]):
        acc += np.float32(q_row[k]) * x[k]
    return acc


@njit(**_FLAGS)
def linear(q: np.ndarray, scale: np.ndarray, bias: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out (T, N) = x (T, K) @ (q * scale).T + bias; each weight row is read once per chunk."""
    for n in range(q.shape[0]):
        row, s, b = q[n], scale[n], bias[n]
        for t in range(x.shape[0]):
            out[t, n] = _dot(row, x[t]) * s + b


@njit(**_FLAGS)
def _lstm_step(gates: np.ndarray, q_hh: np.ndarray, s_hh: np.ndarray, h: np.ndarray, c: np.ndarray) -> None:
    """gates (4H,) holds the input side (+ biases) on entry; h, c (H,) are updated in place.
    Gate order i, f, g, o as in torch."""
    hidden = h.shape[0]
    for n in range(4 * hidden):
        gates[n] += _dot(q_hh[n], h) * s_hh[n]
    for j in range(hidden):
        c[j] = _sigmoid(gates[hidden + j]) * c[j] + _sigmoid(gates[j]) * _tanh(gates[2 * hidden + j])
        h[j] = _sigmoid(gates[3 * hidden + j]) * _tanh(c[j])


@njit(**_FLAGS)
def lstm_recurrence(x_gates: np.ndarray, q_hh: np.ndarray, s_hh: np.ndarray, h: np.ndarray, c: np.ndarray,
                    out: np.ndarray) -> None:
    """One LSTM layer over a chunk: x_gates (T, 4H) input projections (+ biases, consumed);
    h, c (H,) carry the state in place; out (T, H) receives h of every frame."""
    for t in range(x_gates.shape[0]):
        _lstm_step(x_gates[t], q_hh, s_hh, h, c)
        out[t] = h


@njit(**_FLAGS)
def predict_step(token: int, pred: tuple, h: np.ndarray, c: np.ndarray, pred_out: np.ndarray,
                 scratch: np.ndarray) -> None:
    """Prediction network for one token, then the joint's projection into pred_out (J,).

    pred = (table_bf16, embed_q, embed_scale, q_ih, s_ih, bias, q_hh, s_hh, q_proj, s_proj, b_proj).
    With a table (V, 4P) of bf16 bits, the token's input gates (biases included) are looked
    up; with an empty table they are computed from the int8 embedding row."""
    table, embed_q, embed_scale, q_ih, s_ih, bias, q_hh, s_hh, q_proj, s_proj, b_proj = pred
    if table.shape[0]:
        bits = scratch.view(np.uint32)
        row = table[token]
        for n in range(row.shape[0]):
            bits[n] = np.uint32(row[n]) << 16  # bf16 -> float32: the high half of the bits
    else:
        x = embed_q[token].astype(np.float32) * embed_scale[token]
        for n in range(q_ih.shape[0]):
            scratch[n] = _dot(q_ih[n], x) * s_ih[n] + bias[n]
    _lstm_step(scratch, q_hh, s_hh, h, c)
    for n in range(q_proj.shape[0]):
        pred_out[n] = _dot(q_proj[n], h) * s_proj[n] + b_proj[n]


@njit(**_FLAGS)
def _joint_argmax(enc: np.ndarray, pred_out: np.ndarray, joint: tuple, hidden: np.ndarray) -> int:
    q_out, s_out, b_out = joint
    for j in range(hidden.shape[0]):
        hidden[j] = _tanh(enc[j] + pred_out[j])
    best, best_logit = 0, -np.inf
    for v in range(q_out.shape[0]):
        logit = _dot(q_out[v], hidden) * s_out[v] + b_out[v]
        if logit > best_logit:  # first maximum wins, like torch.argmax
            best, best_logit = v, logit
    return best


@njit(**_FLAGS)
def greedy_decode(enc: np.ndarray, max_symbols: int, blank: int, joint: tuple, pred: tuple,
                  h: np.ndarray, c: np.ndarray, pred_out: np.ndarray, tokens: np.ndarray) -> int:
    """Greedy RNN-T search over encoder frames enc (T, J); joint = (q_out, s_out, b_out).
    The prediction state (h, c, pred_out) is updated in place. Emitted token ids go to
    `tokens` (room for T * max_symbols); returns their count."""
    hidden = np.empty(enc.shape[1], np.float32)
    scratch = np.empty(4 * h.shape[0], np.float32)
    count = 0
    for t in range(enc.shape[0]):
        for _ in range(max_symbols):
            token = _joint_argmax(enc[t], pred_out, joint, hidden)
            if token == blank:
                break
            tokens[count] = token
            count += 1
            predict_step(token, pred, h, c, pred_out, scratch)
    return count


@njit(**_FLAGS)
def joint_logits(enc: np.ndarray, pred: np.ndarray, joint: tuple) -> np.ndarray:
    """Logits over the whole lattice: enc (T, J), pred (U+1, J) -> (T, U+1, V)."""
    q_out, s_out, b_out = joint
    logits = np.empty((enc.shape[0], pred.shape[0], q_out.shape[0]), np.float32)
    hidden = np.empty(enc.shape[1], np.float32)
    for t in range(enc.shape[0]):
        for u in range(pred.shape[0]):
            for j in range(hidden.shape[0]):
                hidden[j] = _tanh(enc[t, j] + pred[u, j])
            for v in range(q_out.shape[0]):
                logits[t, u, v] = _dot(q_out[v], hidden) * s_out[v] + b_out[v]
    return logits
