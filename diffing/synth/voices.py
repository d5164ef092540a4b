"""Synthetic voices (espeak-ng accents x variants, flite, festival) and a fixed voice split.

Split rules (stable per voice, not per install, so adding a voice elsewhere
never moves one across the split):
- `test` voices use espeak variants that no `train` voice uses (a hash of the
  variant name picks ~20% of variants), plus one flite voice: unseen speakers.
- `train_wide` is `train` plus three festival voices (two more diphone
  speakers and an HTS voice), with half the utterances on these "natural"
  (non-formant) voices: espeak's ~500 formant voices teach little about a
  natural voice never heard, which is where the base model errs most.
- `novel_accent_*` voices use accents that neither `train` nor `test` use;
  its adapt/test halves follow the same variant rule.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from device_agent.audio import load_audio
from device_agent.errors import AudioError, ConfigError

# Kept out of base training and testing entirely, for the accent update.
NOVEL_ACCENTS = ("en-gb-scotland", "en-029")
# Variants that are not speech a device would hear (unvoiced or effects-heavy).
EXCLUDED_VARIANTS = frozenset({"whisper", "whisperf", "Demonic", "fast"})
TEST_VARIANT_PERCENT = 20

# flite voices: (voice, split, mean F0 Hz used to shift pitch). awb is a
# Scottish speaker, so it belongs with the novel accent.
FLITE_VOICES = {
    "kal16": ("train", 105.0),
    "slt": ("train", 160.0),
    "rms": ("test", 100.0),
    "awb": ("novel_accent_test", 110.0),
}
# festival voices (apt: festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts):
# (split, mean F0 Hz or None where the voice's own F0 model is kept).
FESTIVAL_VOICES = {
    "kal_diphone": ("train_wide", 105.0),
    "ked_diphone": ("train_wide", 105.0),
    "cmu_us_slt_arctic_hts": ("train_wide", None),
}
# Share of utterances given to natural (flite, festival) voices: a handful of
# them would be drowned by ~500 espeak voices under a uniform draw.
NATURAL_SHARE = {"train_wide": 0.5}
DEFAULT_NATURAL_SHARE = 0.2
VOICE_SETS = ("train", "train_wide", "test", "novel_accent_adapt", "novel_accent_test")
RENDER_TIMEOUT_S = 30


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak" | "flite" | "festival"
    name: str  # espeak "en-us+m3" or flite "slt"
    accent: str

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"


@dataclass(frozen=True)
class Prosody:
    rate: float = 1.0  # speaking-rate factor; 1.0 is the engine default
    pitch: float = 1.0  # pitch factor; 1.0 is the voice's default


def sample_prosody(rng: np.random.Generator) -> Prosody:
    return Prosody(rate=float(rng.uniform(0.8, 1.25)), pitch=float(rng.uniform(0.7, 1.3)))


# --- enumeration ------------------------------------------------------------
def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ConfigError("espeak-ng not found on PATH; install it: apt-get install -y espeak-ng")
    return exe


def _flite() -> str:
    exe = shutil.which("flite")
    if exe is None:
        raise ConfigError("flite not found on PATH; install it: apt-get install -y flite")
    return exe


def _text2wave() -> str:
    exe = shutil.which("text2wave")
    if exe is None:
        raise ConfigError("festival's text2wave not found on PATH; install it: apt-get install -y festival "
                          "festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts")
    return exe


@lru_cache(maxsize=1)
def espeak_accents() -> tuple[str, ...]:
    """English accents of the espeak-ng formant synthesizer (mbrola voices skipped)."""
    out = subprocess.run([_espeak(), "--voices=en"], capture_output=True, text=True, check=True).stdout
    accents = {cols[1] for cols in (line.split() for line in out.splitlines()[1:])
               if len(cols) >= 5 and cols[4].startswith("gmw/")}
    return tuple(sorted(accents))


@lru_cache(maxsize=1)
def espeak_variants() -> tuple[str, ...]:
    """Variant file names usable after '+' (e.g. 'm3', 'Alex')."""
    out = subprocess.run([_espeak(), "--voices=variant"], capture_output=True, text=True, check=True).stdout
    names = {cols[4].split("/", 1)[1] for cols in (line.split() for line in out.splitlines()[1:])
             if len(cols) >= 5 and cols[4].startswith("!v/")}
    return tuple(sorted(names - EXCLUDED_VARIANTS))


def is_test_variant(variant: str) -> bool:
    digest = hashlib.sha256(f"variant:{variant}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < TEST_VARIANT_PERCENT


def voice_set(name: str) -> list[Voice]:
    """Voices of one set, in a fixed order."""
    if name not in VOICE_SETS:
        raise ConfigError(f"unknown voice set {name!r}; expected one of {VOICE_SETS}")
    if name == "train_wide":
        return voice_set("train") + [Voice("festival", v, f"festival-{v}")
                                     for v, (split, _) in FESTIVAL_VOICES.items() if split == name]
    novel = name.startswith("novel_accent")
    want_test = name.endswith("test")
    accents = [a for a in espeak_accents() if (a in NOVEL_ACCENTS) == novel]
    voices = [
        Voice("espeak", f"{accent}+{variant}", accent)
        for accent in accents
        for variant in espeak_variants()
        if is_test_variant(variant) == want_test
    ]
    voices += [Voice("flite", v, f"flite-{v}") for v, (split, _) in FLITE_VOICES.items() if split == name]
    return voices


def pick_voice(voices: list[Voice], rng: np.random.Generator, natural_share: float = DEFAULT_NATURAL_SHARE) -> Voice:
    """Uniform over espeak voices, except a fixed share goes to natural (flite, festival) voices."""
    natural = [v for v in voices if v.engine != "espeak"]
    espeak = [v for v in voices if v.engine == "espeak"]
    pool = natural if natural and (not espeak or rng.random() < natural_share) else espeak
    return pool[int(rng.integers(len(pool)))]


# --- rendering --------------------------------------------------------------
def render(text: str, voice: Voice, prosody: Prosody = Prosody()) -> np.ndarray:
    """Synthesize text -> 16 kHz mono float32 via the engine's CLI."""
    fd, tmp = tempfile.mkstemp(suffix=".wav", prefix="synth-")
    os.close(fd)
    try:
        if voice.engine == "espeak":
            cmd = [_espeak(), "-v", voice.name, "-s", str(round(175 * prosody.rate)),
                   "-p", str(int(np.clip(round(50 * prosody.pitch), 0, 99))), "-w", tmp, text]
        elif voice.engine == "flite":
            f0 = FLITE_VOICES[voice.name][1] * prosody.pitch
            cmd = [_flite(), "-voice", voice.name, "--setf", f"duration_stretch={1 / prosody.rate:.3f}",
                   "--setf", f"int_f0_target_mean={f0:.1f}", "-t", text, "-o", tmp]
        elif voice.engine == "festival":
            cmd = [_text2wave(), "-F", "16000", "-o", tmp, *_festival_settings(voice.name, prosody), _text_file(tmp, text)]
        else:
            raise ConfigError(f"unknown TTS engine {voice.engine!r}; expected 'espeak', 'flite' or 'festival'")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AudioError(f"{voice.id} took over {RENDER_TIMEOUT_S} s to render {text!r:.60}") from None
        if proc.returncode != 0 or Path(tmp).stat().st_size == 0:
            raise AudioError(f"{voice.id} failed on {text!r:.60} (exit {proc.returncode}): {proc.stderr.strip():.200}")
        return load_audio(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)
        Path(tmp + ".txt").unlink(missing_ok=True)


def _text_file(wav_tmp: str, text: str) -> str:
    """text2wave reads its text from a file; keep it next to the WAV so one cleanup removes both."""
    Path(wav_tmp + ".txt").write_text(text + "\n")
    return wav_tmp + ".txt"


def _festival_settings(name: str, prosody: Prosody) -> list[str]:
    """-eval arguments: select the voice, stretch durations, move the F0 target (diphone voices)."""
    if name not in FESTIVAL_VOICES:
        raise ConfigError(f"unknown festival voice {name!r}; expected one of {sorted(FESTIVAL_VOICES)}")
    args = ["-eval", f"(voice_{name})", "-eval", f"(Parameter.set 'Duration_Stretch {1 / prosody.rate:.3f})"]
    f0 = FESTIVAL_VOICES[name][1]
    if f0 is not None:
        args += ["-eval", f"(set! int_lr_params '((target_f0_mean {f0 * prosody.pitch:.1f}) (target_f0_std 15) "
                          "(model_f0_mean 170) (model_f0_std 34)))"]
    return args
