"""Training data: manifest -> cached stacked features -> length-bucketed batches."""
from __future__ import annotations

import io
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import xxhash
from rich.progress import track

from device_agent.atomic import write_atomic
from device_agent.audio import load_audio
from device_agent.features import FeatureConfig, hz_to_mel, log_mel, mel_points_hz, normalize_level, stack_frames
from device_agent.manifest import Utterance, read_manifest
from device_agent.tokenizer import CharTokenizer


@dataclass
class Example:
    feats: torch.Tensor  # (F, n_mels) unstacked log-mel: stacking happens per batch
    tokens: torch.Tensor  # (U,) int64
    text: str


def _cache_key(manifest: Path, cfg: FeatureConfig) -> str:
    h = xxhash.xxh64(manifest.read_bytes())
    h.update(repr(cfg).encode())
    return h.hexdigest()


def load_examples(manifest: str | Path, tokenizer: CharTokenizer, cfg: FeatureConfig,
                  cache_dir: Path | None = None, progress: bool = True) -> list[Example]:
    """Read a manifest and compute log-mel features once (cached by manifest content)."""
    manifest = Path(manifest)
    cache = None
    if cache_dir is not None:
        cache = cache_dir / f"feats-{manifest.stem}-{_cache_key(manifest, cfg)}.pt"
        if cache.exists():
            return [Example(**e) for e in torch.load(cache)]
    utterances: list[Utterance] = read_manifest(manifest, tokenizer, check_audio=False)
    examples = []
    for u in track(utterances, description=f"features {manifest.name}", disable=not progress):
        feats = log_mel(load_audio(u.audio_path), cfg).to(torch.float16)  # half: halves the cache
        examples.append(Example(feats, torch.tensor(tokenizer.encode(u.text)), u.text))
    if cache is not None:  # atomic: a run killed mid-save must not leave a cache that later fails to load
        buf = io.BytesIO()
        torch.save([vars(e) for e in examples], buf)
        write_atomic(cache, buf.getbuffer())
    return examples


def model_input(feats: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Cached log-mel (F, n_mels) -> what the encoder reads (F // stack, stack * n_mels): the device front
    end's level normaliser, then stacking. Normalisation by the model's statistics comes after."""
    return stack_frames(normalize_level(feats.float(), cfg), cfg.stack)


def feature_stats(examples: list[Example], cfg: FeatureConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mel-bin mean and 1/std over all training frames, after the level normaliser."""
    frames = torch.cat([normalize_level(e.feats.float(), cfg) for e in examples])
    return frames.mean(0), 1.0 / frames.std(0).clamp_min(1e-3)


def spec_augment(x: torch.Tensor, n_mels: int, rng: random.Random, freq_masks: int = 2, freq_width: int = 10,
                 time_masks: int = 2, time_width: int = 4) -> torch.Tensor:
    """Zero random mel bands (in every stacked slot) and time spans; x: (T, stack * n_mels) normalized."""
    x = x.clone()
    view = x.view(x.shape[0], -1, n_mels)
    for _ in range(freq_masks):
        w = rng.randint(0, min(freq_width, n_mels // 4))
        f0 = rng.randint(0, n_mels - w)
        view[:, :, f0:f0 + w] = 0
    for _ in range(time_masks):
        w = rng.randint(0, min(time_width, max(1, x.shape[0] // 5)))
        t0 = rng.randint(0, max(0, x.shape[0] - w))
        x[t0:t0 + w] = 0
    return x


# Vocal tract length perturbation (Jaitly & Hinton 2013): formants scale with
# vocal tract length, so stretching the frequency axis by alpha turns one
# speaker into many. Applied to cached log-mel by interpolating between bins,
# piecewise linear in Hz so the band edge stays put (Kaldi's VTLN warp).
VTLP_STEP = 0.01  # alphas are rounded to this grid so warp matrices can be cached
VTLP_BOUNDARY_HZ = 4800.0


@lru_cache(maxsize=64)
def _vtlp_matrix(alpha: float, cfg: FeatureConfig) -> torch.Tensor:
    """(n_mels, n_mels) interpolation matrix M with warped = feats @ M."""
    centres = mel_points_hz(cfg)[1:-1]
    nyquist = cfg.sample_rate / 2
    cut = VTLP_BOUNDARY_HZ * min(alpha, 1.0) / alpha
    # the output bin at frequency f reads the input at f / alpha below the cut, linear to Nyquist above
    source = np.where(centres <= cut, centres / alpha,
                      cut / alpha + (centres - cut) * (nyquist - cut / alpha) / (nyquist - cut))
    pos = np.interp(hz_to_mel(source), hz_to_mel(centres), np.arange(cfg.n_mels))
    low = np.clip(np.floor(pos).astype(int), 0, cfg.n_mels - 1)
    high = np.minimum(low + 1, cfg.n_mels - 1)
    frac = pos - low
    m = np.zeros((cfg.n_mels, cfg.n_mels), dtype=np.float32)
    m[low, np.arange(cfg.n_mels)] += 1.0 - frac
    m[high, np.arange(cfg.n_mels)] += frac
    return torch.from_numpy(m)


def vtlp(feats: torch.Tensor, cfg: FeatureConfig, rng: random.Random, max_warp: float) -> torch.Tensor:
    """Warp each utterance of a (B, T, stack * n_mels) raw log-mel batch by its own alpha."""
    if max_warp <= 0:
        return feats
    out = torch.empty_like(feats)
    for i in range(feats.shape[0]):
        alpha = round(rng.uniform(1 - max_warp, 1 + max_warp) / VTLP_STEP) * VTLP_STEP
        view = feats[i].reshape(feats.shape[1], -1, cfg.n_mels)
        out[i] = (view @ _vtlp_matrix(round(alpha, 4), cfg)).reshape(feats.shape[1], -1)
    return out


def speed_perturb(feats: torch.Tensor, cfg: FeatureConfig, alpha: float) -> torch.Tensor:
    """Speed perturbation on unstacked log-mel (T, n_mels): what resampling audio by `alpha` does,
    frequencies scaled by alpha (formants and pitch) and duration by 1/alpha, without re-reading audio.
    Alpha is continuous here: building a warp matrix costs microseconds."""
    warped = feats.float() @ _vtlp_matrix(round(alpha, 4), cfg)
    frames = max(1, round(feats.shape[0] / alpha))
    return torch.nn.functional.interpolate(warped.T[None], size=frames, mode="linear", align_corners=True)[0].T


@dataclass
class Batch:
    feats: torch.Tensor  # (B, T, stack * n_mels) level-normalised and stacked; the model's statistics not yet applied
    feat_lens: torch.Tensor  # (B,)
    targets: torch.Tensor  # (B, U) zero-padded
    target_lens: torch.Tensor  # (B,)
    texts: list[str]


def collate(examples: list[Example], cfg: FeatureConfig,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Batch:
    """Level-normalise, stack and pad; `transform` (per utterance, on raw log-mel) is for augmentation."""
    stacked = [model_input(transform(e.feats) if transform else e.feats, cfg) for e in examples]
    T = max(s.shape[0] for s in stacked)
    U = max(len(e.tokens) for e in examples)
    feats = torch.zeros(len(examples), T, stacked[0].shape[1])
    targets = torch.zeros(len(examples), U, dtype=torch.long)
    for i, (s, e) in enumerate(zip(stacked, examples)):
        feats[i, : s.shape[0]] = s
        targets[i, : len(e.tokens)] = e.tokens
    return Batch(feats, torch.tensor([s.shape[0] for s in stacked]), targets,
                 torch.tensor([len(e.tokens) for e in examples]), [e.text for e in examples])


def batch_groups(examples: list[Example], max_frames: int, k: int) -> list[list[int]]:
    """Indices of length-sorted buckets of at most `max_frames` padded (stacked) frames."""
    order = sorted(range(len(examples)), key=lambda i: examples[i].feats.shape[0])
    groups, current, longest = [], [], 0
    for i in order:
        frames = examples[i].feats.shape[0] // k
        if current and max(longest, frames) * (len(current) + 1) > max_frames:
            groups.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, frames)
    if current:
        groups.append(current)
    return groups


def batches(examples: list[Example], max_frames: int, cfg: FeatureConfig, rng: random.Random | None,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[Batch]:
    """Length-sorted buckets of at most `max_frames` padded frames; shuffled order if `rng`."""
    groups = batch_groups(examples, max_frames, cfg.stack)
    if rng is not None:
        rng.shuffle(groups)
    for g in groups:
        yield collate([examples[i] for i in g], cfg, transform)
