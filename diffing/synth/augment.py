"""Light, seeded augmentation for synthetic training audio.

TTS audio is clean and perfectly paced; a device hears neither. Speed,
noise and gain are drawn from one seeded generator so a corpus rebuilds
bit-for-bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.signal import resample_poly

from device_agent.errors import ConfigError

PEAK = 0.99  # keep headroom so 16-bit WAV writing never clips


@dataclass(frozen=True)
class AugmentConfig:
    speed: tuple[float, float] = (0.9, 1.1)
    p_speed: float = 0.6
    snr_db: tuple[float, float] = (15.0, 40.0)
    p_noise: float = 0.7
    gain_db: tuple[float, float] = (-6.0, 6.0)

    def __post_init__(self) -> None:
        if not 0.5 <= self.speed[0] <= self.speed[1] <= 2.0:
            raise ConfigError(f"speed range must lie in [0.5, 2.0] and be ordered, got {self.speed}")
        if self.snr_db[0] > self.snr_db[1] or self.gain_db[0] > self.gain_db[1]:
            raise ConfigError(f"ranges must be (low, high), got snr {self.snr_db}, gain {self.gain_db}")


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Speed perturbation (tempo and pitch together, Kaldi-style); factor>1 is faster."""
    down = round(100 * factor)  # 1% steps keep the polyphase filter short
    return resample_poly(audio, 100, down).astype(np.float32)


def colored_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Unit-power noise with a 1/f**exponent spectrum (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def augment(audio: np.ndarray, seed: int | Sequence[int], config: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """Speed, additive noise at a random SNR, then gain; deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    out = audio.astype(np.float32, copy=True)
    # Draw every value up front so toggling one step does not shift the others.
    do_speed, do_noise = rng.random() < config.p_speed, rng.random() < config.p_noise
    factor = rng.uniform(*config.speed)
    snr_db = rng.uniform(*config.snr_db)
    exponent = rng.choice([0.0, 1.0, 2.0])
    gain_db = rng.uniform(*config.gain_db)

    # 1) speed
    if do_speed and len(out) > 1:
        out = change_speed(out, factor)
    # 2) noise, scaled against the signal's mean power
    if do_noise and len(out) > 1:
        power = float(np.mean(out**2))
        noise = colored_noise(len(out), rng, exponent)
        out = out + (np.sqrt(power / 10 ** (snr_db / 10)) * noise).astype(np.float32)
    # 3) gain, with a peak limit so louder never means clipped
    out = out * np.float32(10 ** (gain_db / 20))
    peak = float(np.max(np.abs(out))) if len(out) else 0.0
    if peak > PEAK:
        out = out * np.float32(PEAK / peak)
    return out.astype(np.float32)
