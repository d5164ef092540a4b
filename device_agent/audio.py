"""Read audio files into 16 kHz mono float32, shared by server and device."""
from __future__ import annotations

import io
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from device_agent.atomic import write_atomic
from device_agent.errors import AudioError

SAMPLE_RATE = 16_000
# A clip longer than this is almost certainly a wrong file, not an utterance.
MAX_SECONDS = 600.0
# Rates outside this range are header damage, not audio: resampling from them would
# need a polyphase filter as long as the rate itself (gigabytes for a lying header).
MIN_RATE, MAX_RATE = 1_000, 384_000


def resample(audio: np.ndarray, rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (exact rational ratio, deterministic)."""
    if rate == target_rate:
        return audio.astype(np.float32, copy=False)
    g = gcd(rate, target_rate)
    return resample_poly(audio, target_rate // g, rate // g).astype(np.float32)


def load_audio(path: str | Path, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read WAV/FLAC/OGG at any rate -> mono float32 in [-1, 1] at `target_rate`."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path} (expected a readable WAV/FLAC file)")
    try:
        info = sf.info(str(path))
        if not MIN_RATE <= info.samplerate <= MAX_RATE:
            raise AudioError(f"{path}: sample rate {info.samplerate} Hz; expected {MIN_RATE}-{MAX_RATE} Hz")
        if not 1 <= info.channels <= 64:
            raise AudioError(f"{path}: {info.channels} channels; expected 1-64")
        if info.duration > MAX_SECONDS:
            raise AudioError(f"{path}: {info.duration:.0f} s long; expected at most {MAX_SECONDS:.0f} s")
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:  # soundfile raises several foreign types
        raise AudioError(f"cannot decode audio {path}: {exc} (expected WAV, FLAC or OGG)") from exc
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    return resample(mono, rate, target_rate)


def save_wav(path: str | Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM WAV (the corpus format) atomically: readers never see half a file."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), rate, subtype="PCM_16", format="WAV")
    write_atomic(path, buf.getvalue())
