"""Local checks of a model: WER on the device's validation set (cached per content
hash) and the post-activation self-test."""
from __future__ import annotations

import json
from pathlib import Path

import xxhash

from device_agent.errors import ManifestError, ModelFormatError, TransportError
from device_agent.agent.state import write_json_atomic


class Validator:
    def __init__(self, manifest: Path, cache_path: Path) -> None:
        self.manifest = Path(manifest)
        self.cache_path = Path(cache_path)
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

        rt = Int8Runtime.from_file(model_file)
        if rt.content_hash != content_hash:
            raise ModelFormatError(f"{model_file} hashes to {rt.content_hash}, expected {content_hash}")
        value = evaluate(rt.transcribe, self.utterances()).wer
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
