"""Compiled (numba) kernels of the int8 runtime.

A weight matrix is the model's int8 values in the interleaved layout of
`interleave` with its per-row float32 `scale`. Each input vector is
quantized on the fly to int8 with one scale (symmetric, kept as uint8 =
value + 128), the products are summed exactly in int32 (AVX-512 VNNI where
the CPU has it, `device_agent.vnni`), and
y = (sum - 128 * rowsum(q)) * x_scale * scale + bias restores floats. No
float copy of a weight matrix exists. Each kernel runs a whole chunk of
frames per call: Python's per-operation overhead is paid per chunk.

Every output row is computed by the same code whatever the chunk length (one
quantization of the input row, an exact integer sum, then the same float
operations), so a chunked stream gives bit-for-bit the results of a whole
utterance, on either integer path. Float operations keep IEEE semantics (no
reassociation, no fused multiply-add), so the same bits come out whether a
kernel was just compiled or loaded from numba's cache.

tanh is a rational approximation (the one Eigen uses for float, a few ulp
from the exact value): plain arithmetic the compiler vectorises, where
libm's tanh/exp would be a call per element.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from device_agent.vnni import HAS_VNNI, vnni_four_frames_two_blocks, vnni_row_blocks1, vnni_row_blocks4

# Fast-math only where it cannot change a finite result (no NaN, no infinity, sign of zero): reassociation,
# fused multiply-adds and approximate division would let the bits depend on how LLVM compiled a kernel,
# and a kernel compiled on a cold cache decoded differently from the same kernel loaded from numba's cache.
# The numpy error model drops division checks, which block vectorising.
_FLAGS = dict(cache=True, fastmath={"nnan", "ninf", "nsz"}, nogil=True, error_model="numpy")
ZERO_POINT = 128  # uint8 code of an activation of 0
_QMAX = np.float32(127.0)
_TANH_CLAMP = np.float32(7.90531110763549805)
# numerator (odd, in x) and denominator (even) coefficients of the rational tanh
_A1, _A3, _A5, _A7, _A9, _A11, _A13 = (np.float32(v) for v in (
    4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
    -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16))
_B0, _B2, _B4, _B6 = (np.float32(v) for v in (
    4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06))
_HALF = np.float32(0.5)


@njit(**_FLAGS)
def _tanh(x: np.float32) -> np.float32:
    x = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    p = ((((((_A13 * x2 + _A11) * x2 + _A9) * x2 + _A7) * x2 + _A5) * x2 + _A3) * x2 + _A1) * x
    q = ((_B6 * x2 + _B4) * x2 + _B2) * x2 + _B0
    return p / q


@njit(**_FLAGS)
def _sigmoid(x: np.float32) -> np.float32:
    return _HALF * _tanh(_HALF * x) + _HALF


def interleave(q: np.ndarray) -> np.ndarray:
    """int8 (N, K) -> (ceil(N/16), ceil(K/4), 16, 4): for every 4 inputs, the weights of 16
    output rows side by side, so one instruction multiplies 4 inputs into 16 row sums.
    Padding rows and columns are 0; the values are the model's int8 values, moved."""
    n, k = q.shape
    padded = np.zeros((-(-n // 16) * 16, -(-k // 4) * 4), np.int8)
    padded[:n, :k] = q
    return np.ascontiguousarray(padded.reshape(-1, 16, padded.shape[1] // 4, 4).transpose(0, 2, 1, 3))


@njit(**_FLAGS)
def _addresses(w: np.ndarray, xq: np.ndarray, t: int, acc: np.ndarray) -> tuple[int, int, int, int, int, int]:
    """(blocks, k4, bytes per row block, address of xq[t], of w, of acc) for the VNNI intrinsics."""
    blocks, k4 = w.shape[0], w.shape[1]
    return blocks, k4, k4 * 64, xq.ctypes.data + t * xq.shape[1], w.ctypes.data, acc.ctypes.data


@njit(**_FLAGS)
def _int_sums_vnni(w: np.ndarray, xq: np.ndarray, t: int, acc: np.ndarray) -> None:
    """acc (16 * blocks,) = interleaved int8 rows w . xq[t] (uint8), exactly."""
    blocks, k4, step, x_addr, w_addr, acc_addr = _addresses(w, xq, t, acc)
    b = 0
    while b + 4 <= blocks:  # four independent accumulators hide the instruction's latency
        vnni_row_blocks4(x_addr, w_addr + b * step, k4, acc_addr + b * 64)
        b += 4
    while b < blocks:
        vnni_row_blocks1(x_addr, w_addr + b * step, k4, acc_addr + b * 64)
        b += 1


@njit(**_FLAGS)
def _int_sums_plain(w: np.ndarray, xq: np.ndarray, t: int, acc: np.ndarray) -> None:
    """The same sums as plain loops (any CPU)."""
    for b in range(w.shape[0]):
        for i in range(16):
            acc[b * 16 + i] = 0
        for kk in range(w.shape[1]):
            for i in range(16):
                s = np.int32(0)
                for j in range(4):
                    s += np.int32(xq[t, kk * 4 + j]) * np.int32(w[b, kk, i, j])
                acc[b * 16 + i] += s


@njit(**_FLAGS)
def _int_sums4_vnni(w: np.ndarray, xq: np.ndarray, t: int, acc: np.ndarray) -> None:
    """acc[f] = w . xq[t + f] for the four frames f < 4 (acc (4, 16 * blocks) int32)."""
    blocks, k4, step, x_addr, w_addr, acc_addr = _addresses(w, xq, t, acc)
    b = 0
    while b + 2 <= blocks:
        vnni_four_frames_two_blocks(x_addr, xq.shape[1], w_addr + b * step, k4, acc_addr + b * 64, acc.shape[1] * 4)
        b += 2
    if b < blocks:  # an odd last block, frame by frame
        for f in range(4):
            vnni_row_blocks1(x_addr + f * xq.shape[1], w_addr + b * step, k4, acc_addr + f * acc.shape[1] * 4 + b * 64)


@njit(**_FLAGS)
def _int_sums4_plain(w: np.ndarray, xq: np.ndarray, t: int, acc: np.ndarray) -> None:
    for f in range(4):
        _int_sums_plain(w, xq, t + f, acc[f])


int_sums = _int_sums_vnni if HAS_VNNI else _int_sums_plain  # resolved when the kernels compile
int_sums4 = _int_sums4_vnni if HAS_VNNI else _int_sums4_plain


@njit(**_FLAGS)
def quantize(x: np.ndarray, xq: np.ndarray, t: int) -> np.float32:
    """x (K,) float32 -> xq[t] uint8 codes (zero point 128; padding columns get 128);
    returns the scale."""
    amax = np.float32(0.0)
    for k in range(x.shape[0]):
        amax = max(amax, abs(x[k]))
    scale = amax / _QMAX if amax > 0 else np.float32(1.0)
    inv = np.float32(1.0) / scale
    for k in range(x.shape[0]):
        xq[t, k] = np.uint8(np.int32(np.rint(x[k] * inv)) + ZERO_POINT)
    for k in range(x.shape[0], xq.shape[1]):
        xq[t, k] = ZERO_POINT
    return scale


@njit(**_FLAGS)
def _restore(m: tuple, acc: np.ndarray, x_scale: np.float32, out: np.ndarray, accumulate: bool) -> None:
    """out (N,) (+)= the floats of the exact sums acc: (acc - offset) * x_scale * scale + bias."""
    _, scale, offset, bias = m
    if accumulate:
        for n in range(out.shape[0]):
            out[n] += np.float32(acc[n] - offset[n]) * (x_scale * scale[n]) + bias[n]
    else:
        for n in range(out.shape[0]):
            out[n] = np.float32(acc[n] - offset[n]) * (x_scale * scale[n]) + bias[n]


@njit(**_FLAGS)
def _matvec(m: tuple, xq: np.ndarray, t: int, x_scale: np.float32, out: np.ndarray, accumulate: bool,
            acc: np.ndarray) -> None:
    """out (N,) (+)= (q * scale) @ x + bias for the quantized input xq[t]; m = (w interleaved,
    scale, offset, bias) with offset = 128 * rowsum(q); acc is int32 scratch."""
    int_sums(m[0], xq, t, acc)
    _restore(m, acc, x_scale, out, accumulate)


@njit(**_FLAGS)
def _scratch(m: tuple, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantized-input rows and an int32 accumulator sized for matrix m."""
    w = m[0]
    return np.empty((rows, w.shape[1] * 4), np.uint8), np.empty(w.shape[0] * 16, np.int32)


@njit(**_FLAGS)
def linear(m: tuple, x: np.ndarray, out: np.ndarray) -> None:
    """out (T, N) = x (T, K) @ (q * scale).T + bias."""
    w = m[0]
    xq, acc = _scratch(m, x.shape[0])
    x_scale = np.empty(x.shape[0], np.float32)
    for t in range(x.shape[0]):
        x_scale[t] = quantize(x[t], xq, t)
    acc4 = np.empty((4, acc.shape[0]), np.int32)
    t = 0
    while t < x.shape[0]:
        frames = 4 if t + 4 <= x.shape[0] else 1  # the same exact integer sums either way
        if frames == 4:
            int_sums4(w, xq, t, acc4)
        else:
            int_sums(w, xq, t, acc4[0])
        for f in range(frames):
            _restore(m, acc4[f], x_scale[t + f], out[t + f], False)
        t += frames


@njit(**_FLAGS)
def _lstm_step(gates: np.ndarray, hh: tuple, h: np.ndarray, c: np.ndarray, hq: np.ndarray,
               acc: np.ndarray) -> None:
    """gates (4H,) holds the input side (+ biases) on entry; h, c (H,) are updated in place;
    hq, acc are scratch from `_scratch(hh, 1)`. Gate order i, f, g, o as in torch."""
    hidden = h.shape[0]
    _matvec(hh, hq, 0, quantize(h, hq, 0), gates, True, acc)
    # in place over one array at a time, so the compiler vectorises without alias checks
    for n in range(2 * hidden):
        gates[n] = _sigmoid(gates[n])
    for n in range(2 * hidden, 3 * hidden):
        gates[n] = _tanh(gates[n])
    for n in range(3 * hidden, 4 * hidden):
        gates[n] = _sigmoid(gates[n])
    for j in range(hidden):
        c[j] = gates[hidden + j] * c[j] + gates[j] * gates[2 * hidden + j]
    for j in range(hidden):
        h[j] = _tanh(c[j])
    for j in range(hidden):
        h[j] *= gates[3 * hidden + j]


@njit(**_FLAGS)
def lstm_recurrence(x_gates: np.ndarray, hh: tuple, h: np.ndarray, c: np.ndarray, out: np.ndarray) -> None:
    """One LSTM layer over a chunk: x_gates (T, 4H) input projections (+ biases, consumed);
    hh = the recurrent matrix (no bias); h, c (H,) carry the state in place; out (T, H)."""
    hq, acc = _scratch(hh, 1)
    for t in range(x_gates.shape[0]):
        _lstm_step(x_gates[t], hh, h, c, hq, acc)
        out[t] = h


@njit(**_FLAGS)
def predict_step(token: int, pred: tuple, h: np.ndarray, c: np.ndarray, pred_out: np.ndarray,
                 gates: np.ndarray) -> None:
    """Prediction network for one token, then the joint's projection into pred_out (J,).

    pred = (table_bf16, embed_q, embed_scale, ih, hh, proj), matrices as in `linear`.
    With a table (V, 4P) of bf16 bits, the token's input gates (biases included) are looked
    up; with an empty table they are computed from the int8 embedding row."""
    table, embed_q, embed_scale, ih, hh, proj = pred
    if table.shape[0]:
        bits = gates.view(np.uint32)
        for n in range(table.shape[1]):
            bits[n] = np.uint32(table[token, n]) << 16  # bf16 -> float32: the high half of the bits
    else:
        x = embed_q[token].astype(np.float32) * embed_scale[token]
        xq, acc = _scratch(ih, 1)
        _matvec(ih, xq, 0, quantize(x, xq, 0), gates, False, acc)
    hq, acc = _scratch(hh, 1)
    _lstm_step(gates, hh, h, c, hq, acc)
    hq, acc = _scratch(proj, 1)
    _matvec(proj, hq, 0, quantize(h, hq, 0), pred_out, False, acc)


@njit(**_FLAGS)
def _joint_row(enc: np.ndarray, pred_out: np.ndarray, out: tuple, hq: np.ndarray, acc: np.ndarray,
               hidden: np.ndarray, logits: np.ndarray) -> None:
    for j in range(hidden.shape[0]):
        hidden[j] = _tanh(enc[j] + pred_out[j])
    _matvec(out, hq, 0, quantize(hidden, hq, 0), logits, False, acc)


@njit(**_FLAGS)
def greedy_decode(enc: np.ndarray, per_frame: int, limit: int, blank: int, out: tuple, pred: tuple,
                  h: np.ndarray, c: np.ndarray, pred_out: np.ndarray, tokens: np.ndarray,
                  words: tuple, node: int) -> tuple[int, int, int]:
    """Greedy RNN-T search over encoder frames enc (T, J) with the joint's output matrix `out`,
    at most `per_frame` symbols per frame and `limit` in all. The prediction state (h, c,
    pred_out) is updated in place; emitted token ids go to `tokens` (room for T * per_frame).

    `words` = (child, separator, start_bonus, bonus): the word list as a prefix tree, child (nodes,
    V) int32 (-1: no such branch; node 0 is a word's start), and `node` the tree node the text is at
    (-1: inside a word not in the list). A symbol that continues a listed word gets `bonus` added
    to its logit (`start_bonus` for a word's first symbol); the separator returns to node 0.
    Returns (count, frame, node): frame is -1, or the frame where a symbol beyond `limit` came."""
    child, separator, start_bonus, bonus = words
    hidden = np.empty(enc.shape[1], np.float32)
    hq, acc = _scratch(out, 1)
    logits = np.empty(out[1].shape[0], np.float32)
    gates = np.empty(4 * h.shape[0], np.float32)
    listed = child.shape[0] > 1  # a tree of one node: no word list, nothing to add
    count = 0
    for t in range(enc.shape[0]):
        for _ in range(per_frame):
            _joint_row(enc[t], pred_out, out, hq, acc, hidden, logits)
            if listed and node >= 0:
                add = start_bonus if node == 0 else bonus
                for v in range(logits.shape[0]):
                    if child[node, v] >= 0:
                        logits[v] += add
            token = int(np.argmax(logits))  # first maximum, like torch.argmax
            if token == blank:
                break
            if count >= limit:
                return count, t, node
            tokens[count] = token
            count += 1
            node = 0 if token == separator else child[node, token] if node >= 0 else -1
            predict_step(token, pred, h, c, pred_out, gates)
    return count, -1, node


@njit(**_FLAGS)
def joint_logits(enc: np.ndarray, pred: np.ndarray, out: tuple) -> np.ndarray:
    """Logits over the whole lattice: enc (T, J), pred (U+1, J) -> (T, U+1, V)."""
    logits = np.empty((enc.shape[0], pred.shape[0], out[1].shape[0]), np.float32)
    hidden = np.empty(enc.shape[1], np.float32)
    hq, acc = _scratch(out, 1)
    for t in range(enc.shape[0]):
        for u in range(pred.shape[0]):
            _joint_row(enc[t], pred[u], out, hq, acc, hidden, logits[t, u])
    return logits
