"""Log-mel front end in plain torch, identical on server and device.

No centre padding and no per-utterance normalisation: a frame depends only on
its own 25 ms of audio, so feeding audio in chunks yields exactly the frames of
the whole utterance (`StreamingFeatures`). Frame stacking concatenates
`stack` consecutive frames (non-overlapping), cutting the encoder's frame rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16_000
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_mels: int = 80
    stack: int = 3  # frames per encoder step (30 ms)

    @property
    def stacked_dim(self) -> int:
        return self.n_mels * self.stack


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_points_hz(cfg: FeatureConfig) -> np.ndarray:
    """Edges and centres of the triangular filters: n_mels + 2 points, equally spaced in mel."""
    mel_pts = np.linspace(hz_to_mel(np.array(20.0)), hz_to_mel(np.array(cfg.sample_rate / 2)), cfg.n_mels + 2)
    return _mel_to_hz(mel_pts)


@lru_cache(maxsize=4)
def mel_filterbank(cfg: FeatureConfig) -> torch.Tensor:
    """HTK-style triangular filters, (n_fft // 2 + 1, n_mels), float32."""
    n_freqs = cfg.n_fft // 2 + 1
    freqs = np.linspace(0, cfg.sample_rate / 2, n_freqs)
    hz_pts = mel_points_hz(cfg)
    down = (freqs[:, None] - hz_pts[None, :-2]) / (hz_pts[1:-1] - hz_pts[:-2])[None, :]
    up = (hz_pts[None, 2:] - freqs[:, None]) / (hz_pts[2:] - hz_pts[1:-1])[None, :]
    return torch.from_numpy(np.maximum(0.0, np.minimum(down, up)).astype(np.float32))


@lru_cache(maxsize=4)
def _window(cfg: FeatureConfig) -> torch.Tensor:
    return torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float32)


def num_frames(num_samples: int, cfg: FeatureConfig) -> int:
    if num_samples < cfg.win_length:
        return 0
    return 1 + (num_samples - cfg.win_length) // cfg.hop_length


def log_mel(audio: torch.Tensor | np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> torch.Tensor:
    """(num_samples,) float audio -> (num_frames, n_mels) log-mel features."""
    x = torch.as_tensor(audio, dtype=torch.float32)
    n = num_frames(x.shape[-1], cfg)
    if n == 0:
        return torch.zeros(0, cfg.n_mels)
    frames = x[: cfg.win_length + (n - 1) * cfg.hop_length].unfold(0, cfg.win_length, cfg.hop_length)
    spec = torch.fft.rfft(frames * _window(cfg), n=cfg.n_fft)  # (F, n_fft/2+1)
    power = spec.real.square() + spec.imag.square()
    return torch.log(power @ mel_filterbank(cfg) + 1e-6)  # (F, n_mels)


def stack_frames(feats: torch.Tensor, stack: int) -> torch.Tensor:
    """(F, n_mels) -> (F // stack, n_mels * stack); a partial tail is dropped."""
    usable = (feats.shape[0] // stack) * stack
    return feats[:usable].reshape(-1, feats.shape[1] * stack)


def utterance_features(audio: torch.Tensor | np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> torch.Tensor:
    """Whole utterance -> stacked features (T, n_mels * stack)."""
    return stack_frames(log_mel(audio, cfg), cfg.stack)


class StreamingFeatures:
    """Chunked front end: `push(chunk)` returns the newly complete stacked frames."""

    def __init__(self, cfg: FeatureConfig = FeatureConfig()) -> None:
        self.cfg = cfg
        self._samples = torch.zeros(0)
        self._frames = torch.zeros(0, cfg.n_mels)

    def push(self, chunk: torch.Tensor | np.ndarray) -> torch.Tensor:
        cfg = self.cfg
        self._samples = torch.cat([self._samples, torch.as_tensor(chunk, dtype=torch.float32)])
        n = num_frames(self._samples.shape[0], cfg)
        if n:
            self._frames = torch.cat([self._frames, log_mel(self._samples, cfg)])
            self._samples = self._samples[n * cfg.hop_length :]
        usable = (self._frames.shape[0] // cfg.stack) * cfg.stack
        out = stack_frames(self._frames[:usable], cfg.stack)
        self._frames = self._frames[usable:]
        return out


def frames_for_seconds(seconds: float, cfg: FeatureConfig = FeatureConfig()) -> int:
    return math.ceil(seconds * cfg.sample_rate / cfg.hop_length / cfg.stack)
