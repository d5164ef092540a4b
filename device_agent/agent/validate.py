"""Local checks of a model: WER on the device's validation set (cached per content
hash) and the post-activation self-test.

Decoding a candidate is bounded, so a signed model that never emits blank
cannot hold the device: at most `MAX_SYMBOLS_PER_SECOND` symbols per second of
audio per utterance, and a wall-clock budget for the whole gate of
`GATE_BUDGET_BASE_S + GATE_BUDGET_PER_AUDIO_S * audio seconds`, counted after the
model is loaded and the kernels are compiled (`Int8Runtime.warm_up`). Exceeding either
raises DecodeBoundError, which the daemon turns into a refusal (never retried).
A stop request is honoured between encoder frames.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import xxhash

from device_agent.errors import DecodeBoundError, ManifestError, ModelFormatError, TransportError
from device_agent.agent.state import write_json_atomic


MAX_SYMBOLS_PER_SECOND = 40  # fast speech is ~15 characters per second
GATE_BUDGET_BASE_S = 20.0  # slack for a busy CPU
GATE_BUDGET_PER_AUDIO_S = 2.0  # the runtime decodes ~30x faster than real time on one core


class Validator:
    def __init__(self, manifest: Path, cache_path: Path, *, should_stop: Callable[[], bool] | None = None,
                 budget: tuple[float, float] = (GATE_BUDGET_BASE_S, GATE_BUDGET_PER_AUDIO_S)) -> None:
        self.manifest = Path(manifest)
        self.cache_path = Path(cache_path)
        self.should_stop = should_stop
        self.budget = budget  # (seconds, seconds per second of audio)
        self._utts = None

    def utterances(self):  # -> list[Utterance]
        if self._utts is None:
            from device_agent.manifest import read_manifest

            self._utts = read_manifest(self.manifest)
            if not self._utts:
                raise ManifestError(f"validation manifest {self.manifest} is empty; the WER gate needs utterances")
        return self._utts

    def _digest(self) -> str:
        try:
            return xxhash.xxh64_hexdigest(self.manifest.read_bytes())
        except OSError as exc:
            raise ManifestError(f"cannot read validation manifest {self.manifest}: {exc.strerror or exc}") from None

    def _cache(self) -> dict:
        try:
            doc = json.loads(self.cache_path.read_bytes())
        except (OSError, ValueError):
            return {}  # a lost cache only costs one re-decode
        return doc if isinstance(doc, dict) and doc.get("manifest") == self._digest() else {}

    def cached_wer(self, content_hash: str) -> float | None:
        value = self._cache().get("wers", {}).get(content_hash)
        return float(value) if isinstance(value, (int, float)) else None

    def wer(self, model_file: Path, content_hash: str) -> float:
        """WER of the model in `model_file` (which must hash to `content_hash`); cached."""
        cached = self.cached_wer(content_hash)
        if cached is not None:
            return cached
        from device_agent.runtime import Int8Runtime  # torch only when a model is really decoded
        from device_agent.wer import evaluate

        from device_agent.agent.download import Stopped

        rt = Int8Runtime.from_file(model_file)
        if rt.content_hash != content_hash:
            raise ModelFormatError(f"{model_file} hashes to {rt.content_hash}, expected {content_hash}")
        # The budget bounds this model's decoding, not the kernels' one-off compilation (a device's
        # first gate after an install or upgrade would otherwise refuse a good model on a busy CPU).
        rt.warm_up()
        started = time.monotonic()
        from device_agent.audio import MAX_SECONDS

        audio_s = sum(min(u.duration, MAX_SECONDS) for u in self.utterances())
        budget = self.budget[0] + self.budget[1] * audio_s
        deadline = started + budget

        def check() -> None:  # called before each block of encoder frames (runtime.CHECK_EVERY_FRAMES)
            if self.should_stop is not None and self.should_stop():
                raise Stopped("stop requested while the WER gate was decoding")
            if time.monotonic() > deadline:
                raise DecodeBoundError(f"the WER gate took longer than its budget of {budget:.1f} s for "
                                       f"{audio_s:.1f} s of audio (does the model never emit blank?)")

        def transcribe(audio) -> str:
            limit = 16 + int(MAX_SYMBOLS_PER_SECOND * len(audio) / 16_000)
            return rt.transcribe(audio, max_symbols=limit, check=check)

        value = evaluate(transcribe, self.utterances()).wer
        doc = self._cache() or {"manifest": self._digest(), "wers": {}}
        doc["wers"][content_hash] = value
        doc["wers"] = dict(list(doc["wers"].items())[-8:])  # a few models' worth is all a device needs
        try:
            write_json_atomic(self.cache_path, doc)
        except TransportError:
            pass  # the cache is an optimisation; a full disk must not fail the gate
        return value

    def self_test(self, model_file: Path, content_hash: str) -> str:
        """Load, hash-check and transcribe one validation utterance; returns the text."""
        from device_agent.audio import load_audio
        from device_agent.runtime import Int8Runtime

        rt = Int8Runtime.from_file(model_file)
        if rt.content_hash != content_hash:
            raise ModelFormatError(f"self-test: active model hashes to {rt.content_hash}, expected {content_hash}")
        text = rt.transcribe(load_audio(self.utterances()[0].audio_path))
        if not isinstance(text, str):
            raise ModelFormatError(f"self-test: transcribe returned {type(text).__name__}, expected text")
        return text
