"""Word error rate of a runtime on a manifest (jiwer), with per-utterance errors."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import jiwer
import numpy as np

from device_agent.audio import load_audio
from device_agent.manifest import Utterance


@dataclass
class UtteranceResult:
    audio: str
    reference: str
    hypothesis: str
    errors: int  # substitutions + deletions + insertions
    words: int


@dataclass
class EvalResult:
    wer: float
    words: int
    errors: int
    utterances: list[UtteranceResult]

    def to_json(self) -> dict:
        return {"wer": self.wer, "words": self.words, "errors": self.errors,
                "utterances": [asdict(u) for u in self.utterances]}


def word_errors(reference: str, hypothesis: str) -> int:
    if not hypothesis.strip():
        return len(reference.split())
    out = jiwer.process_words(reference, hypothesis)
    return out.substitutions + out.deletions + out.insertions


def evaluate(transcribe: Callable[[np.ndarray], str], utterances: Iterable[Utterance],
             progress: Callable[[int], None] | None = None) -> EvalResult:
    """Decode each utterance and score it; WER = total errors / total reference words."""
    results = []
    for u in utterances:
        hyp = transcribe(load_audio(u.audio_path))
        results.append(UtteranceResult(str(u.audio_path), u.text, hyp, word_errors(u.text, hyp), len(u.text.split())))
        if progress is not None:
            progress(1)
    words = sum(r.words for r in results)
    errors = sum(r.errors for r in results)
    return EvalResult(errors / max(words, 1), words, errors, results)
