"""Log-mel front end in plain torch, identical on server and device.

No centre padding: a log-mel frame depends only on its own 25 ms of audio.
A causal level normaliser then subtracts a running estimate of the
utterance's loudness from every frame (`LevelNormalizer`), so a quieter or
louder microphone gives the same features; its only state is one number, so
feeding audio in chunks yields exactly the frames of the whole utterance
(`StreamingFeatures`). Frame stacking concatenates `stack` consecutive frames
(non-overlapping), cutting the encoder's frame rate.
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
    # Level normaliser time constants in 10 ms frames (0 = off, the format-1 front end).
    # The tracked level rises faster (attack, ~0.3 s) than it falls (release, ~3 s), like an automatic
    # gain control: it follows the speaker's level, not the syllables or the pauses between words.
    # Slower than a peak follower, so loudness within an utterance survives: distilled from the shipped
    # model, attack 30 / release 300 reached 10.8% dev WER where 2 / 100 reached 12.7% (docs/BASE-MODEL.md).
    level_attack: int = 30
    level_release: int = 300
    # Frames quieter than the level by more than this many dB pull it down as if they were exactly
    # that much quieter: pauses release the gain at a bounded rate, and sounds near the power floor
    # (where a gain change is not a pure shift) all act alike.
    level_range_db: int = 20
    # Output floor, dB below the level: digital silence and sounds far below the speaker are all one
    # value (near-silent bands otherwise reach the power floor, 200 dB down, an input training never shows)
    level_floor_db: int = 60

    @property
    def level_norm(self) -> bool:
        return self.level_attack > 0

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


LOG_EPS = 1e-6  # floor of the mel power in the format-1 front end: keeps log finite on digital silence
# With the level normaliser the floor sits below 16-bit quantisation noise (~1e-8 per mel band), so
# a quiet microphone's soft sounds keep their shape instead of flattening onto the floor.
LEVEL_LOG_EPS = 1e-10


def log_eps(cfg: FeatureConfig) -> float:
    return LEVEL_LOG_EPS if cfg.level_norm else LOG_EPS


def log_mel(audio: torch.Tensor | np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> torch.Tensor:
    """(num_samples,) float audio -> (num_frames, n_mels) log-mel features."""
    x = torch.as_tensor(audio, dtype=torch.float32)
    n = num_frames(x.shape[-1], cfg)
    if n == 0:
        return torch.zeros(0, cfg.n_mels)
    frames = x[: cfg.win_length + (n - 1) * cfg.hop_length].unfold(0, cfg.win_length, cfg.hop_length)
    spec = torch.fft.rfft(frames * _window(cfg), n=cfg.n_fft)  # (F, n_fft/2+1)
    power = spec.real.square() + spec.imag.square()
    return torch.log(power @ mel_filterbank(cfg) + log_eps(cfg))  # (F, n_mels)


def frame_levels(feats: torch.Tensor) -> list[float]:
    """(F, n_mels) log-mel -> per-frame log of the mean mel power, computed row by row in float64 so
    a frame's level never depends on how many frames arrived with it."""
    power = feats.double().exp().mean(dim=-1)
    return [math.log(float(p)) for p in power]


# A frame whose mean mel power sits on the floor is digital silence (padding, a muted input): it
# says nothing about the speaker's level, so the level holds through it.
SILENCE_LEVEL = math.log(2 * LEVEL_LOG_EPS)


class LevelNormalizer:
    """Causal automatic gain in the log domain: `level <- level + k * (e - level)` with k = 1/attack when
    the frame is louder than the level and 1/release otherwise; the first sounding frame sets the level.

    A constant gain g adds log(g^2) to every log-mel value and, by linearity, to the level, so the
    output `max(log-mel - level, floor)` is unchanged from the first frame on (up to the power floor)."""

    def __init__(self, attack: int, release: int, range_db: int, floor_db: int) -> None:
        self.up, self.down = 1.0 / attack, 1.0 / release
        self.range = range_db / 10 * math.log(10)  # dB of power -> nats
        self.floor = -floor_db / 10 * math.log(10)
        self.level: float | None = None

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        """(F, n_mels) log-mel -> (F, n_mels) level-normalised, continuing from the previous call."""
        levels = []
        for e in frame_levels(feats):
            if e > SILENCE_LEVEL:
                if self.level is None:
                    self.level = e
                elif e > self.level:
                    self.level += self.up * (e - self.level)
                else:
                    self.level += self.down * (max(e, self.level - self.range) - self.level)
            levels.append(math.inf if self.level is None else self.level)  # before any sound: the floor
        if not levels:
            return feats
        return (feats - torch.tensor(levels, dtype=torch.float32)[:, None]).clamp_min(self.floor)


def normalize_level(feats: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Whole-utterance level normalisation (identity when the model's front end has none)."""
    if not cfg.level_norm:
        return feats
    return LevelNormalizer(cfg.level_attack, cfg.level_release, cfg.level_range_db, cfg.level_floor_db)(feats)


def stack_frames(feats: torch.Tensor, stack: int) -> torch.Tensor:
    """(F, n_mels) -> (F // stack, n_mels * stack); a partial tail is dropped."""
    usable = (feats.shape[0] // stack) * stack
    return feats[:usable].reshape(-1, feats.shape[1] * stack)


def utterance_features(audio: torch.Tensor | np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> torch.Tensor:
    """Whole utterance -> stacked features (T, n_mels * stack)."""
    return stack_frames(normalize_level(log_mel(audio, cfg), cfg), cfg.stack)


class StreamingFeatures:
    """Chunked front end: `push(chunk)` returns the newly complete stacked frames."""

    def __init__(self, cfg: FeatureConfig = FeatureConfig()) -> None:
        self.cfg = cfg
        self._samples = torch.zeros(0)
        self._frames = torch.zeros(0, cfg.n_mels)
        self._level = LevelNormalizer(cfg.level_attack, cfg.level_release, cfg.level_range_db, cfg.level_floor_db) if cfg.level_norm else None

    def push(self, chunk: torch.Tensor | np.ndarray) -> torch.Tensor:
        cfg = self.cfg
        self._samples = torch.cat([self._samples, torch.as_tensor(chunk, dtype=torch.float32)])
        n = num_frames(self._samples.shape[0], cfg)
        if n:
            new = log_mel(self._samples, cfg)
            self._frames = torch.cat([self._frames, self._level(new) if self._level else new])
            self._samples = self._samples[n * cfg.hop_length :]
        usable = (self._frames.shape[0] // cfg.stack) * cfg.stack
        out = stack_frames(self._frames[:usable], cfg.stack)
        self._frames = self._frames[usable:]
        return out


def frames_for_seconds(seconds: float, cfg: FeatureConfig = FeatureConfig()) -> int:
    return math.ceil(seconds * cfg.sample_rate / cfg.hop_length / cfg.stack)
