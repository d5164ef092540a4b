"""Rooms and microphones for training: reverberation, additive noise, microphone colour and level.

Applied to cached log-mel features in the mel power domain, so an epoch re-augments every utterance
without reading audio again:
- reverberation: P_rev(t) = sum_k R(k) P(t - k), where R(k) is the mel-band energy of the k-th 10 ms
  slice of a room impulse response (the usual power-domain approximation of a convolution whose
  impulse response is longer than the analysis window); the rooms come from pyroomacoustics'
  image-source method, with an exponential late tail that reaches the room's RT60;
- noise: the mel power of coloured noise or of babble (other training utterances) added at an SNR,
  which is what mixing waveforms gives in expectation;
- microphone: a smooth random tilt and bump of the spectrum (cheap or directional microphones);
- level: a gain over the whole utterance (-30..+10 dB by default), which the level normaliser
  must undo; only the power floor keeps it from being a pure shift.

Everything is drawn from one seeded generator per utterance, so a run replays exactly.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from device_agent.errors import ConfigError
from device_agent.features import FeatureConfig, log_eps, log_mel, mel_filterbank

BANK_SEED = 1234  # the room and noise banks are fixed: augmentation randomness comes from the draw


@dataclass(frozen=True)
class RoomAugmentConfig:
    p_reverb: float = 0.4
    rt60: tuple[float, float] = (0.15, 0.9)  # seconds
    p_noise: float = 0.5
    snr_db: tuple[float, float] = (0.0, 30.0)
    p_babble: float = 0.3  # share of noisy utterances whose noise is other speech
    p_mic: float = 0.5
    mic_db: float = 6.0  # largest tilt / bump of the microphone response
    gain_db: tuple[float, float] = (-30.0, 10.0)

    def __post_init__(self) -> None:
        for name in ("p_reverb", "p_noise", "p_babble", "p_mic"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("rt60", "snr_db", "gain_db"):
            low, high = getattr(self, name)
            if low > high:
                raise ConfigError(f"{name} must be (low, high), got {(low, high)}")
        if self.rt60[0] <= 0.05:
            raise ConfigError(f"rt60 must be above 0.05 s, got {self.rt60}")


def room_impulse_response(rng: np.random.Generator, rt60: float, sample_rate: int) -> np.ndarray:
    """A shoebox room (pyroomacoustics, image sources up to order 12) with an exponential late tail."""
    import pyroomacoustics as pra  # server-side only: imported when a bank is built

    dims = np.array([rng.uniform(3, 10), rng.uniform(3, 8), rng.uniform(2.4, 4)])
    absorption, _ = pra.inverse_sabine(rt60, dims)
    room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(min(absorption, 0.99)), max_order=12)
    margin = 0.5
    room.add_source(rng.uniform(margin, dims - margin))
    room.add_microphone(rng.uniform(margin, dims - margin))
    room.compute_rir()
    early = np.asarray(room.rir[0][0], dtype=np.float64)
    direct = int(np.argmax(np.abs(early)))
    early = early[max(0, direct - 16):]
    # late tail: white noise decaying 60 dB over rt60, continuing the early part's energy
    n_tail = int(rt60 * sample_rate)
    t = np.arange(n_tail) / sample_rate
    tail = rng.standard_normal(n_tail) * np.exp(-3 * math.log(10) * t / rt60)
    join = early[-max(1, sample_rate // 50):]
    tail *= math.sqrt(float(np.mean(join**2)) + 1e-12)
    h = np.concatenate([early, tail])
    return h / (np.max(np.abs(h)) + 1e-12)


def mel_energy_kernel(h: np.ndarray, cfg: FeatureConfig) -> torch.Tensor:
    """(K, n_mels): mel-band energy of each hop-sized slice of an impulse response, for the power-domain
    convolution; a unit impulse gives [[1, 1, ...]]."""
    hop = cfg.hop_length
    n = math.ceil(len(h) / hop)
    slices = np.zeros((n, cfg.n_fft), dtype=np.float64)
    for k in range(n):
        piece = h[k * hop:(k + 1) * hop]
        slices[k, :len(piece)] = piece
    power = np.abs(np.fft.rfft(slices, axis=1)) ** 2  # (K, n_fft/2 + 1)
    fb = mel_filterbank(cfg).double().numpy()
    mel = power @ fb / fb.sum(axis=0)  # mean response across each band
    return torch.from_numpy(mel.astype(np.float32))


@lru_cache(maxsize=2)
def room_bank(cfg: FeatureConfig, rt60: tuple[float, float], size: int = 32) -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng(BANK_SEED)
    return tuple(mel_energy_kernel(room_impulse_response(rng, rng.uniform(*rt60), cfg.sample_rate), cfg)
                 for _ in range(size))


def _coloured(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return (noise / np.sqrt(np.mean(noise**2))).astype(np.float32)


@lru_cache(maxsize=2)
def noise_bank(cfg: FeatureConfig, seconds: float = 8.0) -> tuple[torch.Tensor, ...]:
    """Mel power (F, n_mels) of white, pink and brown noise."""
    rng = np.random.default_rng(BANK_SEED)
    n = int(seconds * cfg.sample_rate)
    return tuple(log_mel(_coloured(n, rng, exponent), cfg).exp() for exponent in (0.0, 1.0, 2.0))


class RoomAugmenter:
    """Callable on one utterance's cached log-mel (F, n_mels) -> augmented log-mel, same length."""

    def __init__(self, cfg: FeatureConfig, aug: RoomAugmentConfig, rng: random.Random,
                 babble_source: list[torch.Tensor] | None = None) -> None:
        self.cfg, self.aug, self.rng = cfg, aug, rng
        self.eps = log_eps(cfg)
        self.rooms = room_bank(cfg, aug.rt60) if aug.p_reverb > 0 else ()
        self.noises = noise_bank(cfg) if aug.p_noise > 0 else ()
        self.babble_source = babble_source or []

    def _power(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats.float().exp() - self.eps).clamp_min(0.0)

    def _noise(self, frames: int) -> torch.Tensor:
        rng = self.rng
        if self.babble_source and rng.random() < self.aug.p_babble:
            talkers = [self._power(rng.choice(self.babble_source)) for _ in range(rng.randint(2, 5))]
            out = torch.zeros(frames, self.cfg.n_mels)
            for p in talkers:
                start = rng.randint(0, max(0, frames - 1))
                piece = p[: frames - start]
                out[start:start + piece.shape[0]] += piece
            return out
        bank = rng.choice(self.noises)
        start = rng.randint(0, max(0, bank.shape[0] - frames))
        piece = bank[start:start + frames]
        reps = math.ceil(frames / piece.shape[0])
        return piece.repeat(reps, 1)[:frames]

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        rng, aug = self.rng, self.aug
        # draw every choice up front: toggling one step does not shift the others
        do_reverb, do_noise, do_mic = (rng.random() < p for p in (aug.p_reverb, aug.p_noise, aug.p_mic))
        snr_db, gain_db = rng.uniform(*aug.snr_db), rng.uniform(*aug.gain_db)
        tilt, bump, centre = (rng.uniform(-aug.mic_db, aug.mic_db), rng.uniform(-aug.mic_db, aug.mic_db),
                              rng.uniform(0.2, 0.8))
        room = rng.choice(self.rooms) if self.rooms else None
        power = self._power(feats)  # (F, n_mels)
        frames, n_mels = power.shape
        if frames == 0:
            return feats
        # 1) the room: each band convolved in time with the impulse response's energy envelope
        if do_reverb and room is not None:
            kernel = room.T[:, None, :].flip(-1)  # (n_mels, 1, K)
            padded = torch.nn.functional.pad(power.T[None], (kernel.shape[-1] - 1, 0))
            power = torch.nn.functional.conv1d(padded, kernel, groups=n_mels)[0].T
        # 2) noise at an SNR against the utterance's mean power
        if do_noise and self.noises:
            noise = self._noise(frames)
            power = power + noise * (power.mean() / (noise.mean() + 1e-20) / 10 ** (snr_db / 10))
        # 3) microphone colour: a tilt and a bump across the mel axis, in dB
        if do_mic:
            x = torch.linspace(0.0, 1.0, n_mels)
            shape_db = tilt * (x - 0.5) + bump * torch.exp(-((x - centre) / 0.15) ** 2)
            power = power * 10 ** (shape_db / 10)
        # 4) level
        power = power * 10 ** (gain_db / 10)
        return torch.log(power + self.eps)
