"""Tests for diffing.rnnt_loss: brute-force DP references, warprnnt-numba, reductions, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from device_agent.errors import TensorInputError
from diffing.rnnt_loss import rnnt_loss


# ----------------------------------------------------------------------------- helpers

def _random_batch(seed: int, B: int, T: int, U: int, V: int, blank: int, *, full_max: bool = True):
    """Random logits / targets with variable lengths; padding filled with junk on purpose."""
    g = torch.Generator().manual_seed(seed)
    blank_pos = blank % V
    logits = torch.randn(B, T, U + 1, V, generator=g) * 2.0
    non_blank = torch.tensor([v for v in range(V) if v != blank_pos])
    targets = non_blank[torch.randint(0, V - 1, (B, U), generator=g)]
    logit_lengths = torch.randint(1, T + 1, (B,), generator=g)
    target_lengths = torch.randint(0, U + 1, (B,), generator=g)
    if full_max:  # warprnnt needs T == max(T_b) and U == max(U_b)
        logit_lengths[0] = T
        target_lengths[-1] = U
    # Padding positions hold values that must never be read (blank, -1 would be invalid if read).
    pad = torch.arange(U) >= target_lengths[:, None]
    targets = targets.masked_fill(pad, blank_pos)
    return logits, targets, logit_lengths, target_lengths


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _numpy_reference_nll(logits, targets, logit_lengths, target_lengths, blank) -> np.ndarray:
    """Textbook alpha recursion over (t, u) with python loops, float64."""
    lp = _np_log_softmax(logits.detach().double().numpy())
    V = lp.shape[-1]
    blank %= V
    out = []
    for b in range(lp.shape[0]):
        T, U = int(logit_lengths[b]), int(target_lengths[b])
        y = targets[b, :U].tolist()
        alpha = np.full((T, U + 1), -np.inf)
        alpha[0, 0] = 0.0
        for t in range(T):
            for u in range(U + 1):
                if t == 0 and u == 0:
                    continue
                no_emit = alpha[t - 1, u] + lp[b, t - 1, u, blank] if t > 0 else -np.inf
                emit = alpha[t, u - 1] + lp[b, t, u - 1, y[u - 1]] if u > 0 else -np.inf
                alpha[t, u] = np.logaddexp(no_emit, emit)
        out.append(-(alpha[T - 1, U] + lp[b, T - 1, U, blank]))
    return np.array(out)


def _torch_naive_nll(logits, targets, logit_lengths, target_lengths, blank) -> torch.Tensor:
    """Same textbook DP, but on torch scalars (float64) so autograd gives a reference gradient."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    V = lp.shape[-1]
    blank %= V
    out = []
    for b in range(lp.shape[0]):
        T, U = int(logit_lengths[b]), int(target_lengths[b])
        y = targets[b, :U].tolist()
        alpha = [[None] * (U + 1) for _ in range(T)]
        alpha[0][0] = lp.new_zeros(())
        for t in range(T):
            for u in range(U + 1):
                if t == 0 and u == 0:
                    continue
                terms = []
                if t > 0:
                    terms.append(alpha[t - 1][u] + lp[b, t - 1, u, blank])
                if u > 0:
                    terms.append(alpha[t][u - 1] + lp[b, t, u - 1, y[u - 1]])
                alpha[t][u] = terms[0] if len(terms) == 1 else torch.logaddexp(terms[0], terms[1])
        out.append(-(alpha[T - 1][U] + lp[b, T - 1, U, blank]))
    return torch.stack(out)


def _grad(fn, logits, *args, weights=None):
    x = logits.detach().clone().requires_grad_(True)
    nll = fn(x, *args)
    w = torch.ones_like(nll) if weights is None else weights.to(nll.dtype)
    (nll * w).sum().backward()
    return nll.detach(), x.grad.detach()


CASES = [
    # seed, B, T, U, V, blank
    (0, 3, 4, 3, 5, 0),
    (1, 4, 6, 4, 6, 0),
    (2, 2, 1, 3, 4, 0),     # T == 1: only label emissions then the final blank
    (3, 3, 5, 0, 3, 0),     # U == 0: blank-only lattice
    (4, 4, 7, 5, 7, 6),     # blank is the last symbol
    (5, 3, 5, 3, 5, -1),    # negative (python-style) blank index
    (6, 5, 8, 6, 9, 3),     # blank in the middle of the vocabulary
]


# ----------------------------------------------------------------------------- 1. brute force

@pytest.mark.parametrize("seed,B,T,U,V,blank", CASES)
def test_matches_bruteforce_dp_values(seed, B, T, U, V, blank):
    logits, targets, ll, tl = _random_batch(seed, B, T, U, V, blank, full_max=False)
    got = rnnt_loss(logits, targets, ll, tl, blank=blank, reduction="none")
    assert got.shape == (B,) and got.dtype == torch.float32
    ref = _numpy_reference_nll(logits, targets, ll, tl, blank)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("seed,B,T,U,V,blank", CASES)
def test_matches_bruteforce_dp_gradients(seed, B, T, U, V, blank):
    logits, targets, ll, tl = _random_batch(seed, B, T, U, V, blank, full_max=False)
    w = torch.rand(B, generator=torch.Generator().manual_seed(seed + 100)) + 0.5
    args = (targets, ll, tl, blank)
    got_nll, got_g = _grad(lambda x, *a: rnnt_loss(x, *a[:3], blank=a[3], reduction="none"),
                           logits, *args, weights=w)
    ref_nll, ref_g = _grad(_torch_naive_nll, logits, *args, weights=w)
    torch.testing.assert_close(got_nll.double(), ref_nll.double(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got_g.double(), ref_g.double(), rtol=1e-4, atol=1e-5)
    # Padding (t >= T_b or u > U_b) must receive exactly zero gradient.
    t_idx = torch.arange(T)[None, :, None]
    u_idx = torch.arange(U + 1)[None, None, :]
    pad = (t_idx >= ll[:, None, None]) | (u_idx > tl[:, None, None])  # (B, T, U+1)
    assert torch.all(got_g[pad] == 0)


def test_gradcheck_finite_differences_float64():
    logits, targets, ll, tl = _random_batch(7, 2, 3, 2, 4, 0, full_max=True)
    ll[1], tl[0] = 2, 1
    x = logits.double().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: rnnt_loss(z, targets, ll, tl, reduction="none"), (x,), eps=1e-6, atol=1e-6
    )


def test_padding_values_do_not_matter():
    logits, targets, ll, tl = _random_batch(8, 4, 6, 4, 5, 0, full_max=False)
    base = rnnt_loss(logits, targets, ll, tl, reduction="none")
    junk = logits.clone()
    t_idx = torch.arange(6)[None, :, None]
    u_idx = torch.arange(5)[None, None, :]
    pad = (t_idx >= ll[:, None, None]) | (u_idx > tl[:, None, None])
    junk[pad] = 1e3 * torch.randn(int(pad.sum()), 5)
    junk_targets = torch.where(torch.arange(4) < tl[:, None], targets, torch.full_like(targets, -1))
    torch.testing.assert_close(rnnt_loss(junk, junk_targets, ll, tl, reduction="none"), base)


def test_neg_inf_logits_give_finite_loss_and_grads():
    """A label made impossible (-inf logit) at some frames: no NaN, loss still matches the DP."""
    logits, _, _, _ = _random_batch(9, 3, 6, 3, 5, 0, full_max=True)
    targets = torch.tensor([[1, 2, 3], [3, 3, 1], [2, 1, 2]])
    ll = torch.tensor([6, 5, 6])
    tl = torch.tensor([3, 3, 2])
    for b in range(3):  # first label cannot be emitted in the first 3 frames
        logits[b, :3, 0, targets[b, 0]] = -math.inf
    logits[:, :, :, 4] = -math.inf  # a vocabulary entry (never a target) masked everywhere
    logits[1, :, 2, 0] = -math.inf  # item 1 cannot leave u=2 by blank: must emit its last label at once
    x = logits.clone().requires_grad_(True)
    nll = rnnt_loss(x, targets, ll, tl, reduction="none")
    nll.sum().backward()
    assert torch.isfinite(nll).all() and torch.isfinite(x.grad).all()
    ref = _numpy_reference_nll(logits, targets, ll, tl, 0)
    np.testing.assert_allclose(nll.detach().numpy(), ref, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- 2. warprnnt-numba

@pytest.mark.parametrize("seed,B,T,U,V,blank", [(10, 3, 4, 3, 5, 0), (11, 2, 5, 2, 4, 3), (12, 3, 3, 2, 6, 2)])
def test_matches_warprnnt_numba(seed, B, T, U, V, blank):
    # warprnnt_numba needs numba at import time (not declared in its own metadata).
    wr = pytest.importorskip("warprnnt_numba")
    logits, targets, ll, tl = _random_batch(seed, B, T, U, V, blank, full_max=True)
    w = torch.rand(B, generator=torch.Generator().manual_seed(seed)) + 0.5

    # warprnnt-numba conventions (read from its source, v0.4.1):
    #  * RNNTLossNumba.forward applies log_softmax itself on CPU, so it takes raw logits, like ours;
    #  * labels and both length tensors must be int32, and it insists T == max(logit_lengths)
    #    and U+1 == max(target_lengths)+1 (it indexes labels with a stride of U+1-1);
    #  * its "mean" divides by the batch size only (its docstring claims target lengths).
    def warp(x, reduction="none"):
        return wr.RNNTLossNumba(blank=blank % V, reduction=reduction, clamp=-1)(
            x, targets.int().contiguous(), ll.int().contiguous(), tl.int().contiguous()
        )

    ours_nll, ours_g = _grad(lambda x: rnnt_loss(x, targets, ll, tl, blank=blank, reduction="none"),
                             logits, weights=w)
    warp_nll, warp_g = _grad(warp, logits, weights=w)
    torch.testing.assert_close(ours_nll, warp_nll, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ours_g, warp_g, rtol=1e-3, atol=1e-4)

    # Reduction conventions agree: "mean" is the plain batch mean in both.
    torch.testing.assert_close(
        rnnt_loss(logits, targets, ll, tl, blank=blank, reduction="mean"),
        warp(logits, "mean").reshape(()), rtol=1e-4, atol=1e-3,
    )


# ----------------------------------------------------------------------------- 3. reductions / bad input

def test_reductions():
    logits, targets, ll, tl = _random_batch(20, 5, 6, 4, 5, 0, full_max=False)
    none = rnnt_loss(logits, targets, ll, tl, reduction="none")
    assert none.shape == (5,)
    s = rnnt_loss(logits, targets, ll, tl, reduction="sum")
    m = rnnt_loss(logits, targets, ll, tl)  # default "mean"
    assert s.shape == () and m.shape == ()
    torch.testing.assert_close(s, none.sum())
    torch.testing.assert_close(m, none.mean())  # not divided by target lengths
    assert torch.all(none > 0)


def test_int32_inputs_and_float64_logits():
    logits, targets, ll, tl = _random_batch(21, 3, 5, 3, 4, 0, full_max=False)
    ref = rnnt_loss(logits, targets, ll, tl, reduction="none")
    got = rnnt_loss(logits, targets.int(), ll.int(), tl.int(), reduction="none")
    torch.testing.assert_close(got, ref)
    got64 = rnnt_loss(logits.double(), targets, ll, tl, reduction="none")
    assert got64.dtype == torch.float64
    torch.testing.assert_close(got64.float(), ref, rtol=1e-5, atol=1e-4)


def _good():
    return _random_batch(30, 2, 4, 3, 5, 0, full_max=True)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a.update(targets=a["targets"].index_put((torch.tensor([1]), torch.tensor([0])),
                                                           torch.tensor(0))), "blank"),
        (lambda a: a.update(logit_lengths=torch.tensor([4, 5])), "logit_lengths"),
        (lambda a: a.update(logit_lengths=torch.tensor([0, 4])), "logit_lengths"),
        (lambda a: a.update(target_lengths=torch.tensor([3, 4])), "target_lengths"),
        (lambda a: a.update(target_lengths=torch.tensor([-1, 3])), "target_lengths"),
        (lambda a: a.update(targets=a["targets"][:, :2]), "targets must have shape"),
        (lambda a: a.update(targets=a["targets"].float()), "targets must be int64"),
        (lambda a: a.update(logit_lengths=a["logit_lengths"].float()), "logit_lengths must be int64"),
        (lambda a: a.update(target_lengths=a["target_lengths"][:1]), "target_lengths must have shape"),
        (lambda a: a.update(logits=a["logits"][0]), "4-D"),
        (lambda a: a.update(logits=a["logits"].long()), "floating point"),
        (lambda a: a.update(targets=torch.full_like(a["targets"], 7)), r"\[0, V=5\)"),
        (lambda a: a.update(blank=5), "blank"),
        (lambda a: a.update(reduction="avg"), "reduction"),
    ],
)
def test_bad_input_raises_the_project_error(mutate, match):
    logits, targets, ll, tl = _good()
    tl[:] = 3
    args = dict(logits=logits, targets=targets, logit_lengths=ll, target_lengths=tl, blank=0, reduction="mean")
    mutate(args)
    with pytest.raises(TensorInputError, match=match):
        rnnt_loss(**args)


def test_blank_in_padding_is_allowed():
    logits, targets, ll, tl = _good()
    tl[:] = torch.tensor([1, 3])
    targets[0, 1:] = 0  # blank, but beyond target_lengths[0]
    assert torch.isfinite(rnnt_loss(logits, targets, ll, tl))
