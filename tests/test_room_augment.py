"""Room and microphone augmentation: seeded, shape-preserving, and each step does what it says."""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from device_agent.audio import load_audio
from device_agent.features import FeatureConfig, log_mel
from diffing.room_augment import RoomAugmentConfig, RoomAugmenter, mel_energy_kernel, room_impulse_response

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "audio" / "sample_00.wav"
CFG = FeatureConfig()
OFF = dict(p_reverb=0.0, p_noise=0.0, p_mic=0.0, gain_db=(0.0, 0.0))


def _feats() -> torch.Tensor:
    return log_mel(load_audio(SAMPLE), CFG)


def test_same_seed_same_augmentation() -> None:
    feats = _feats()
    runs = [RoomAugmenter(CFG, RoomAugmentConfig(), random.Random(seed), [feats])(feats) for seed in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert runs[0].shape == feats.shape and torch.isfinite(runs[0]).all()


def test_gain_alone_is_a_shift_of_the_log_power() -> None:
    feats = _feats()
    out = RoomAugmenter(CFG, RoomAugmentConfig(**{**OFF, "gain_db": (-20.0, -20.0)}), random.Random(0))(feats)
    loud = feats > -10  # well above the power floor
    shift = (out - feats)[loud]
    assert torch.allclose(shift, torch.full_like(shift, -2 * math.log(10)), atol=1e-3)


def test_unit_impulse_is_no_room() -> None:
    h = np.zeros(1000)
    h[0] = 1.0
    kernel = mel_energy_kernel(h, CFG)
    assert torch.allclose(kernel[0], torch.ones(CFG.n_mels), atol=1e-5)
    assert float(kernel[1:].abs().max()) == 0.0


def test_reverberation_fills_the_pauses() -> None:
    rng = np.random.default_rng(0)
    h = room_impulse_response(rng, 0.8, CFG.sample_rate)
    assert len(h) > 0.7 * CFG.sample_rate and abs(float(np.abs(h).max()) - 1.0) < 1e-9
    feats = _feats()
    out = RoomAugmenter(CFG, RoomAugmentConfig(**{**OFF, "p_reverb": 1.0}), random.Random(0))(feats)
    quiet = feats.mean(dim=1) < feats.mean(dim=1).median()
    # the quietest half of the frames gains energy from the reverberant tail of the loud half
    assert float((out - feats)[quiet].mean()) > 1.0


def test_noise_at_low_snr_raises_the_floor() -> None:
    feats = _feats()
    noisy = RoomAugmenter(CFG, RoomAugmentConfig(**{**OFF, "p_noise": 1.0, "snr_db": (0.0, 0.0)}),
                          random.Random(0))(feats)
    assert float(noisy.min()) > float(feats.min()) + 3.0
