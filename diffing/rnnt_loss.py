"""RNN-T (transducer) loss in plain torch, with the backward pass left to autograd.

For one utterance with T frames and U labels y_1..y_U, let b(t, u) be the log-prob of blank
and l(t, u) the log-prob of label y_{u+1} at lattice node (t, u). The forward variable is

    alpha(0, 0) = 0
    alpha(t, u) = logaddexp(alpha(t-1, u) + b(t-1, u),  alpha(t, u-1) + l(t, u-1))
    loss        = -(alpha(T-1, U) + b(T-1, U))

The within-frame term makes a row a *linear* log-space recursion along u. With
C(t, u) = sum_{k<u} l(t, k) (running sum of label log-probs at frame t) it unrolls to

    alpha(t, :) = C(t, :) + logcumsumexp(alpha(t-1, :) + b(t-1, :) - C(t, :))   along u,

so the loop runs over time frames only and each frame is a handful of vectorised ops on a
(B, U+1) row; autograd differentiates through it (including log_softmax).

Numerics: log-probs are computed in float32 (float64 if the logits are float64) and floored
at ``LOG_PROB_FLOOR`` (a large finite negative) so that -inf log-probs (e.g. masked logits)
never produce ``-inf - -inf = NaN`` in the C-shift. Gradients of entries below the floor are
zero, which only matters for transitions that are already essentially impossible.

Padding: entries of ``logits`` outside the valid (t < T_b, u <= U_b) region and entries of
``targets`` at u >= U_b never influence the loss and get zero gradient, but they must be finite
(a NaN/inf row in the padding would still poison log_softmax's backward with NaN).
"""

from __future__ import annotations

import torch

from device_agent.errors import TensorInputError

__all__ = ["rnnt_loss", "LOG_PROB_FLOOR"]

# Finite stand-in for log(0). Large enough in magnitude to make a transition impossible
# (exp(-1e4) == 0), small enough that sums of up to thousands of them stay far from float32
# overflow and keep the C-shift below from losing all precision.
LOG_PROB_FLOOR = -1.0e4

_REDUCTIONS = ("mean", "sum", "none")
_INT_DTYPES = (torch.int32, torch.int64)


def _validate(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
    reduction: str,
) -> int:
    """Check shapes, dtypes and value ranges (TensorInputError says which); return the
    normalised (non-negative) blank index."""
    if reduction not in _REDUCTIONS:
        raise TensorInputError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    B, T, U1, V = _check_logits(logits)
    _check_index_tensors(logits, targets, logit_lengths, target_lengths)
    if not isinstance(blank, int) or isinstance(blank, bool) or not -V <= blank < V:
        raise TensorInputError(f"blank must be an int in [-{V}, {V}) for V={V}, got {blank!r}")
    blank = blank % V
    _check_range("logit_lengths", logit_lengths, 1, T, f"[1, T={T}]")
    _check_range("target_lengths", target_lengths, 0, U1 - 1, f"[0, U={U1 - 1}]")
    if U1 > 1:
        _check_labels(targets, target_lengths, blank, V)
    return blank


def _check_logits(logits: torch.Tensor) -> tuple[int, int, int, int]:
    """(B, T, U+1, V) of a non-empty floating point 4-D tensor."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        raise TensorInputError(
            f"logits must be a 4-D tensor (B, T, U+1, V), got shape "
            f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}"
        )
    if not logits.is_floating_point():
        raise TensorInputError(f"logits must be a floating point tensor, got dtype {logits.dtype}")
    B, T, U1, V = logits.shape
    if B == 0 or T == 0 or U1 == 0 or V == 0:
        raise TensorInputError(f"logits must have non-empty dimensions, got shape {tuple(logits.shape)}")
    return B, T, U1, V


def _check_index_tensors(logits: torch.Tensor, targets: torch.Tensor, logit_lengths: torch.Tensor,
                         target_lengths: torch.Tensor) -> None:
    """Shapes, integer dtypes and devices of targets (B, U) and the two length vectors (B,)."""
    B, _, U1, _ = logits.shape
    if targets.dim() != 2 or targets.shape != (B, U1 - 1):
        raise TensorInputError(
            f"targets must have shape (B, U) = ({B}, {U1 - 1}) to match logits (B, T, U+1, V) = "
            f"{tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    for name, lens in (("logit_lengths", logit_lengths), ("target_lengths", target_lengths)):
        if lens.dim() != 1 or lens.shape[0] != B:
            raise TensorInputError(f"{name} must have shape (B,) = ({B},), got {tuple(lens.shape)}")
        if lens.dtype not in _INT_DTYPES:
            raise TensorInputError(f"{name} must be int64 (or int32), got dtype {lens.dtype}")
    if targets.dtype not in _INT_DTYPES:
        raise TensorInputError(f"targets must be int64 (or int32), got dtype {targets.dtype}")
    for name, t in (("targets", targets), ("logit_lengths", logit_lengths), ("target_lengths", target_lengths)):
        if t.device != logits.device:
            raise TensorInputError(f"{name} is on {t.device} but logits is on {logits.device}")


def _check_range(name: str, values: torch.Tensor, low: int, high: int, rule: str) -> None:
    if int(values.min()) < low or int(values.max()) > high:
        raise TensorInputError(f"{name} must lie in {rule}, got min {int(values.min())}, max {int(values.max())}")


def _check_labels(targets: torch.Tensor, target_lengths: torch.Tensor, blank: int, V: int) -> None:
    """Labels within target_lengths are in [0, V) and never the blank (padding may hold anything finite)."""
    U = targets.shape[1]
    valid = torch.arange(U, device=targets.device) < target_lengths[:, None]  # (B, U)
    vt = targets[valid]
    if not vt.numel():
        return
    if int(vt.min()) < 0 or int(vt.max()) >= V:
        raise TensorInputError(
            f"targets (within target_lengths) must lie in [0, V={V}), got min {int(vt.min())}, max {int(vt.max())}"
        )
    if bool((vt == blank).any()):
        b_idx, u_idx = torch.nonzero(valid & (targets == blank))[0].tolist()
        raise TensorInputError(
            f"targets contain the blank label {blank} within target_lengths (first at batch {b_idx}, position {u_idx})"
        )


def rnnt_loss(logits: torch.Tensor, targets: torch.Tensor, logit_lengths: torch.Tensor,
              target_lengths: torch.Tensor, blank: int = 0, reduction: str = "mean") -> torch.Tensor:
    """logits (B, T, U+1, V) unnormalised joint outputs; targets (B, U) int64 padded;
    logit_lengths (B,), target_lengths (B,) int64. reduction: "mean" (mean over the batch of the
    per-utterance negative log-likelihood, not divided by target lengths), "sum", or "none" -> (B,).

    Details:
      * log_softmax over V is applied here: pass raw joint-network outputs, not log-probs
        (passing log-probs is harmless: log_softmax is idempotent, values and gradients match).
      * "mean" is the plain batch mean of the per-utterance NLL; it is NOT divided by the
        target lengths (same as torchaudio's and warprnnt-numba's actual behaviour).
      * Item b uses frames [0, logit_lengths[b]) and labels targets[b, :target_lengths[b]];
        everything else is padding. logit_lengths must be >= 1; target_lengths may be 0.
      * targets / lengths may also be int32. ``blank`` may be negative (Python-style index).
      * The result is float32 (float64 if logits are float64); gradients flow back to logits.

    Raises ValueError for bad shapes, dtypes, lengths out of range, labels out of [0, V) or
    equal to ``blank``, and unknown ``reduction``.
    """
    blank = _validate(logits, targets, logit_lengths, target_lengths, blank, reduction)
    B, T, U1, V = logits.shape
    U = U1 - 1
    device = logits.device
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    targets = targets.long()
    logit_lengths = logit_lengths.long()
    target_lengths = target_lengths.long()

    # 1. Normalise over the vocabulary.
    log_probs = torch.log_softmax(logits.to(compute_dtype), dim=-1)  # (B, T, U+1, V)

    # 2. Gather the only two log-probs the lattice uses, floored to stay finite.
    blank_lp = log_probs[..., blank].clamp_min(LOG_PROB_FLOOR)  # (B, T, U+1)
    # Padded target positions may hold anything (e.g. -1); point them at a valid index.
    safe_targets = torch.where(
        torch.arange(U, device=device) < target_lengths[:, None], targets, torch.zeros_like(targets)
    ).clamp_(0, V - 1)  # (B, U)
    label_lp = log_probs[:, :, :U, :].gather(
        -1, safe_targets[:, None, :, None].expand(B, T, U, 1)
    ).squeeze(-1).clamp_min(LOG_PROB_FLOOR)  # (B, T, U)

    # 3. C(t, u) = sum_{k<u} label_lp(t, k): running label log-prob sum along U, with C(t, 0) = 0.
    cum_label = torch.cat(
        [label_lp.new_zeros(B, T, 1), torch.cumsum(label_lp, dim=2)], dim=2
    )  # (B, T, U+1)

    # 4. Frame 0 can only emit labels: alpha(0, u) = C(0, u).
    alpha = cum_label[:, 0]  # (B, U+1)
    rows = [alpha]

    # 5. Frames 1..T-1: one blank step from the previous row, then the within-frame label chain
    #    solved in closed form with logcumsumexp (shifted by C to turn it into a plain prefix sum).
    #    The loop-invariant part b(t-1, u) - C(t, u) is precomputed for all frames at once.
    shift = (blank_lp[:, :-1] - cum_label[:, 1:]).unbind(1)  # T-1 x (B, U+1)
    cum_rows = cum_label[:, 1:].unbind(1)  # T-1 x (B, U+1)
    for shift_t, c_t in zip(shift, cum_rows):
        alpha = c_t + torch.logcumsumexp(alpha + shift_t, dim=1)  # (B, U+1)
        rows.append(alpha)
    alphas = torch.stack(rows, dim=1)  # (B, T, U+1)

    # 6. Log-likelihood: alpha at (T_b-1, U_b) plus the final blank, per batch item.
    batch_idx = torch.arange(B, device=device)  # (B,)
    last_t = logit_lengths - 1  # (B,)
    log_likelihood = (
        alphas[batch_idx, last_t, target_lengths] + blank_lp[batch_idx, last_t, target_lengths]
    )  # (B,)
    nll = -log_likelihood  # (B,)

    # 7. Reduce.
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return nll.mean()
