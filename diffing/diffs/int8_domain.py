"""Training integer deltas against a frozen int8 model.

The float twin computes with W = clamp(q_base + round(delta), -127, 127) * scale,
exactly the weights the device will hold after applying the diff; rounding
uses a straight-through estimator so gradients reach the float `delta`.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from device_agent.device_model import QMAX, DeviceModel
from device_agent.diff import ChannelDeltas, Diff, SparseDelta, apply_diff
from device_agent.model_format import load_model
from device_agent.tokenizer import CharTokenizer
from diffing import distributed
from diffing.data import Batch, Example, batches, load_examples, spec_augment
from diffing.progress import step_reporter
from diffing.room_augment import RoomAugmentConfig, RoomAugmenter
from diffing.threads import set_threads
from diffing.diffs.api import DiffConfig
from diffing.export import float_model_from_device
from diffing.model import RNNT
from diffing.rnnt_loss import rnnt_loss

DeltaFn = Callable[[str], torch.Tensor | None]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class Int8Twin:
    """Float model of `deployed` whose weight matrices come from `delta_fn`."""

    def __init__(self, deployed: DeviceModel, delta_fn: DeltaFn) -> None:
        self.model: RNNT = float_model_from_device(deployed)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.q_base = {n: torch.from_numpy(w.q.astype(np.float32)) for n, w in deployed.weights.items()}
        self.scale = {n: torch.from_numpy(w.scale.copy())[:, None] for n, w in deployed.weights.items()}
        self.delta_fn = delta_fn
        self.channels: Any = None  # a ChannelLayout attaches itself here (per-row scale factors)
        self.model.weight_transform = self

    def __call__(self, name: str, w: torch.Tensor) -> torch.Tensor:
        d = self.delta_fn(name)
        if d is not None:  # a shipped delta is int8 too, so it moves a weight by at most QMAX steps
            w = torch.clamp(self.q_base[name] + torch.clamp(d, -QMAX, QMAX), -QMAX, QMAX) * self.scale[name]
        factor = self.channels.scale_factor(name) if self.channels is not None else None
        return w if factor is None else w * factor[:, None]


def load_adaptation_data(deployed: DeviceModel, train_manifest: str | Path, replay_manifest: str | Path | None,
                         progress: bool) -> tuple[list[Example], list[Example]]:
    tok: CharTokenizer = deployed.tokenizer
    feats = deployed.config.features
    adapt = load_examples(train_manifest, tok, feats, None, progress)
    replay = load_examples(replay_manifest, tok, feats, None, progress) if replay_manifest else []
    return adapt, replay


def fit(twin: Int8Twin, params: list[torch.Tensor], adapt: list[Example], replay: list[Example],
        cfg: DiffConfig, *, after_step: Callable[[int, int], None] | None = None,
        log: Callable[[str], None] = lambda _: None, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Adam (or the given optimizer) on `params`: RNN-T loss on adaptation and replay batches, plus
    `cfg.distill` x the KL from the deployed model's output lattice on replay batches (learning without
    forgetting: replay labels alone say what to output, the deployed model says how sure to be)."""
    epochs, lr, max_frames, schedule, distill = cfg.epochs, cfg.lr, cfg.max_frames, cfg.lr_schedule, cfg.distill
    set_threads(cfg.threads)
    model, k = twin.model, twin.model.cfg.features.stack
    feats_cfg = model.cfg.features
    rng = random.Random(cfg.seed)
    augment_rng = distributed.augmentation_rng(rng)  # rng itself in one process; rng orders the batches
    # rooms and microphones the adaptation recordings did not have (level, noise, reverberation)
    augment = RoomAugmenter(feats_cfg, RoomAugmentConfig(), augment_rng, [e.feats for e in replay or adapt]) \
        if cfg.room_augment else None
    n_replay = min(len(replay), int(round(cfg.replay_ratio * len(adapt))))
    teacher = _teacher_model(cfg.teacher) if cfg.teacher and cfg.teach > 0 else None
    optimizer = optimizer or torch.optim.Adam(params, lr=lr)
    # 1) the number of steps is fixed up front so schedules can use it
    # (replay is sampled afresh each epoch, so its count is that of a typical sample)
    # (under torchrun each step is one global batch, dealt out to the ranks by utterance)
    per_epoch = len(distributed.global_groups(adapt, max_frames, k)) + \
        len(distributed.global_groups(replay[:n_replay], max_frames, k))
    total, step = per_epoch * epochs, 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)) if schedule == "cosine" else 1.0)
    report = step_reporter()
    report.start("diff", total, 0)
    for epoch in range(epochs):
        report.epoch(epoch + 1, epochs)
        # 2) each step is one adaptation batch or one replay batch, in random order
        steps = [(b, w, False) for b, w in distributed.local_batches(adapt, max_frames, feats_cfg, rng, augment)]
        steps += [(b, w, True) for b, w in distributed.local_batches(rng.sample(replay, n_replay), max_frames, feats_cfg,
                                                                     rng, augment)]
        rng.shuffle(steps)
        loss_sum, n = 0.0, 0
        for batch, weight, is_replay in steps:
            feats = torch.stack([spec_augment(f, model.cfg.features.n_mels, augment_rng)
                                 for f in model.normalize(batch.feats)])
            logits = _lattice_logits(model, feats, batch.targets)
            loss = rnnt_loss(logits, batch.targets, batch.feat_lens, batch.target_lens)
            if is_replay and distill > 0:
                loss = loss + distill * _kl_from_deployed(model, feats, batch, logits)
            if teacher is not None:
                loss = loss + cfg.teach * _kl_from(teacher, feats, batch, logits)
            optimizer.zero_grad(set_to_none=True)
            (loss * weight).backward()  # weight: this rank's share of the global batch
            distributed.average_gradients(params)  # every rank takes the same step
            optimizer.step()
            scheduler.step()
            step += 1
            if after_step is not None:
                after_step(step, total)
            loss_sum, n = loss_sum + loss.item() * weight, n + 1
            report.advance(loss.item())
        log(f"epoch {epoch + 1}/{epochs}: loss {distributed.mean_over_ranks(loss_sum) / max(n, 1):.3f}")
    report.finish()


def _lattice_logits(model: RNNT, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Normalized features (B, T, D) and targets (B, U) -> joint logits (B, T, U+1, V) under the weight transform."""
    enc, _ = model.encoder(feats, None, model.weight_transform)
    start = targets.new_zeros(targets.shape[0], 1)
    pred, _ = model.predict(torch.cat([start, targets], dim=1))
    return model.joint_logits(enc[:, :, None, :], pred[:, None, :, :])


def _kl_from_deployed(model: RNNT, feats: torch.Tensor, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(deployed || current) over the valid (t, u) nodes of the lattice."""
    transform, model.weight_transform = model.weight_transform, None  # without deltas: the deployed weights
    try:
        return _kl_from(model, feats, batch, logits)
    finally:
        model.weight_transform = transform


def _teacher_model(path: str) -> RNNT:
    teacher = float_model_from_device(load_model(path))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _kl_from(reference: RNNT, feats: torch.Tensor, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(reference || current) over the valid lattice nodes; `feats` are normalised, so the reference
    shares the deployed model's front end (a teacher: api.check_teacher)."""
    with torch.no_grad():
        p = torch.log_softmax(_lattice_logits(reference, feats, batch.targets), dim=-1)
    kl_sum, nodes = _lattice_kl(p, torch.log_softmax(logits, dim=-1), batch)
    return kl_sum / nodes


def _lattice_kl(p: torch.Tensor, q: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities (B, T, U+1, V) -> (sum of KL(p || q) over the valid lattice nodes, their count);
    valid: inside each utterance's frames and targets."""
    kl = (p.exp() * (p - q)).sum(-1)  # (B, T, U+1)
    t_ok = torch.arange(kl.shape[1])[None, :] < batch.feat_lens[:, None]
    u_ok = torch.arange(kl.shape[2])[None, :] <= batch.target_lens[:, None]
    valid = (t_ok[:, :, None] & u_ok[:, None, :]).float()
    return (kl * valid).sum(), valid.sum()


def finish_diff(deployed: DeviceModel, method: str, deltas: dict, target_version: int, seed: int = 0,
                metadata: dict[str, str] | None = None, channels: ChannelDeltas | None = None) -> Diff:
    """Fill in base/target hashes by running the device's own apply code."""
    diff = Diff(method, deployed.model_id, deployed.version, target_version, deployed.content_hash(), "",
                deltas, seed, dict(metadata or {}), channels)
    diff.target_hash = apply_diff(deployed, diff, check_hashes=False).content_hash()
    return diff


def top_k_entries(deployed: DeviceModel, dense: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Keep exactly the k largest integer deltas by float-domain size |delta| * scale (ties by position)."""
    scores = np.concatenate([np.abs(d.reshape(deployed.weights[n].q.shape).astype(np.float32))
                             * deployed.weights[n].scale[:, None] for n, d in dense.items()], axis=None)
    keep = np.zeros(scores.size, dtype=bool)
    keep[np.argsort(-scores, kind="stable")[:k]] = True
    kept = split_flat(keep, {n: d.shape for n, d in dense.items()})
    return {n: np.where(kept[n], d, 0) for n, d in dense.items()}


def split_flat(flat, shapes: dict[str, tuple[int, ...]]) -> dict:
    """A flat array (numpy or torch) cut back into per-tensor pieces, in `shapes`' order."""
    out, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        out[name] = flat[offset:offset + size].reshape(shape)
        offset += size
    return out


def sparse_deltas_from_dense(deployed: DeviceModel, dense: dict[str, np.ndarray]) -> dict[str, SparseDelta]:
    """Integer deltas (any int array per tensor) -> the SparseDelta that apply reproduces exactly."""
    out = {}
    for name, d in dense.items():
        q = deployed.weights[name].q.reshape(-1).astype(np.int16)
        # what clamping leaves, within the int8 values a bundle can carry
        effective = np.clip(q + np.clip(d.reshape(-1).astype(np.int16), -QMAX, QMAX), -QMAX, QMAX) - q
        positions = np.flatnonzero(effective)
        if positions.size:
            out[name] = SparseDelta(positions, effective[positions].astype(np.int8))
    return out


@torch.no_grad()
def mean_loss(deployed: DeviceModel, examples: list[Example], max_frames: int = 2400) -> float:
    """Average per-utterance RNN-T loss of a device model (float twin of its int8 weights)."""
    model = float_model_from_device(deployed)
    total, n = 0.0, 0
    for batch in batches(examples, max_frames, model.cfg.features, None):
        logits = model(batch.feats, batch.targets)
        total += float(rnnt_loss(logits, batch.targets, batch.feat_lens, batch.target_lens, reduction="sum"))
        n += len(batch.texts)
    return total / max(n, 1)


@torch.no_grad()
def mean_kl(deployed: DeviceModel, updated: DeviceModel, examples: list[Example], max_frames: int = 2400) -> float:
    """Mean per-node KL(deployed || updated) of the output lattice: how far an update moved the model's answers."""
    old, new = float_model_from_device(deployed), float_model_from_device(updated)
    total, n = 0.0, 0
    for batch in batches(examples, max_frames, old.cfg.features, None):
        feats = old.normalize(batch.feats)
        p, q = (torch.log_softmax(_lattice_logits(m, feats, batch.targets), dim=-1) for m in (old, new))
        kl_sum, nodes = _lattice_kl(p, q, batch)
        total, n = total + float(kl_sum), n + float(nodes)
    return total / max(n, 1.0)
