"""Level-normalising front end: gain invariance, streaming equality, format-1 files read as before."""
from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from device_agent.audio import load_audio
from device_agent.errors import ModelFormatError
from device_agent.features import FeatureConfig, StreamingFeatures, log_mel, normalize_level, utterance_features
from device_agent.model_format import PREAMBLE, decode_model, encode_model
from tests.tiny import TINY_LEVEL_CONFIG, tiny_device_model

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "audio"
WARMUP_FRAMES = 10  # the level starts at the first frame; allow it a few frames to reach speech


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return np.concatenate([load_audio(SAMPLES / f"sample_0{i}.wav") for i in range(3)])


@pytest.mark.parametrize("gain_db", [-30.0, -20.0, 10.0])
def test_constant_gain_leaves_normalised_features_unchanged(speech: np.ndarray, gain_db: float) -> None:
    cfg = FeatureConfig()
    gain = np.float32(10 ** (gain_db / 20))
    recorded, scaled = utterance_features(speech, cfg)[WARMUP_FRAMES:], utterance_features(speech * gain, cfg)[WARMUP_FRAMES:]
    # Exact up to the power floor: sounds ~50 dB (12 nats of power) below the speech level, and the
    # few frames next to the clips' digital silence (which the level holds through), may differ.
    audible = recorded > -12.0
    assert audible.float().mean() > 0.6  # the samples are band-limited: top mel bands are near silent
    error = (recorded - scaled)[audible].abs()
    assert float((error > 0.05).float().mean()) < 0.01
    assert float(error.median()) < 0.01
    # without the normaliser every log-mel value moves by the gain: the test above is not vacuous
    old = replace(cfg, level_attack=0, level_release=0, level_range_db=0, level_floor_db=0)
    moved = (utterance_features(speech * gain, old) - utterance_features(speech, old)).median()
    assert float(moved) / (gain_db / 10 * np.log(10)) > 0.8


def test_level_follows_speech_not_pauses(speech: np.ndarray) -> None:
    """The level follows the speaker (after its first second, loud frames sit within ~7 dB above it),
    and a pause does not pull quiet frames up (most frames stay below it)."""
    normalised = normalize_level(log_mel(speech), FeatureConfig())
    frame_power = normalised.exp().mean(dim=1).log()
    assert float(frame_power[100:].quantile(0.95)) < 1.6
    assert float(frame_power.median()) < -0.3
    # digital silence (the clips are padded with zeros) sits on the output floor, 60 dB down
    assert abs(float(normalised.min()) + 6 * np.log(10)) < 1e-5


def test_streaming_with_level_normaliser_equals_whole(speech: np.ndarray) -> None:
    whole = utterance_features(speech)
    for pieces in (7, 101):
        stream = StreamingFeatures()
        chunks = torch.cat([stream.push(c) for c in np.array_split(speech, pieces)])
        assert torch.equal(chunks, whole[: chunks.shape[0]]) and chunks.shape[0] >= whole.shape[0] - 1


def test_format_1_file_reads_with_the_old_front_end() -> None:
    """A format-1 file has no level settings: it decodes with the normaliser off and its content hash
    (which devices and diffs refer to) is what it always was."""
    old = tiny_device_model()
    buf = bytearray(encode_model(old))
    struct.pack_into("<H", buf, 8, 1)
    decoded = decode_model(bytes(buf))
    assert not decoded.config.features.level_norm
    assert decoded.content_hash() == old.content_hash()


def test_format_2_round_trip_keeps_the_level_normaliser() -> None:
    model = tiny_device_model(config=TINY_LEVEL_CONFIG)
    buf = encode_model(model)
    assert struct.unpack_from("<H", buf, 8)[0] == 2
    decoded = decode_model(buf)
    assert decoded.config.features == TINY_LEVEL_CONFIG.features
    assert decoded.content_hash() == model.content_hash() != tiny_device_model().content_hash()
    # a format-1 header cannot claim a normaliser it did not have
    as_v1 = bytearray(buf)
    struct.pack_into("<H", as_v1, 8, 1)
    with pytest.raises(ModelFormatError, match="format-1"):
        decode_model(bytes(as_v1))
    assert PREAMBLE.size == 16


@pytest.mark.parametrize("attack, release", [(0, 100), (2, 0), (50, 10), (-1, 5), (2, 100.5)])
def test_inconsistent_level_settings_are_refused(attack: int, release: int) -> None:
    from device_agent.errors import ConfigError
    from device_agent.model_config import ModelConfig
    cfg = TINY_LEVEL_CONFIG.to_json()
    cfg["features"].update(level_attack=attack, level_release=release)
    with pytest.raises(ConfigError, match="level"):
        ModelConfig.from_json(cfg)
