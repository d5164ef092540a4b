"""Words a diff adds to the model's word list: the adaptation data's words the deployed model misses.

A word the update brings (a grocery item, a place, a name) costs a budgeted diff many weight entries
to spell; listed, it costs its letters, and the device's decoder favours it (device_agent.runtime,
docs/diffs.md "Word lists"). The words are chosen from what the deployed model does on the
adaptation data itself, so the choice needs no vocabulary of the base model's training data.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from device_agent.audio import load_audio
from device_agent.device_model import DeviceModel
from device_agent.diff import Diff, SparseDelta, apply_diff
from device_agent.manifest import read_manifest
from device_agent.runtime import Int8Runtime
from device_agent.tokenizer import MAX_WORD_CHARS, MAX_WORDS, WORD_SEPARATOR

MIN_COUNT = 2  # a word seen once may be a one-off; the list is for the words an update is about
MIN_MISSED = 0.5  # share of a word's occurrences the deployed model's transcripts lack
MAX_NEW_WORDS = 256  # per diff, the most frequent first


def missed_words(deployed: DeviceModel, manifest: str | Path, *, log: Callable[[str], None] = lambda _: None
                 ) -> tuple[str, ...]:
    """Words of the manifest's transcripts, seen at least MIN_COUNT times, that the deployed model's own
    transcripts of those utterances lack in at least MIN_MISSED of their occurrences, and that its word
    list does not hold yet (sorted)."""
    runtime, tokenizer = Int8Runtime(deployed), deployed.tokenizer
    seen, missed = Counter(), Counter()
    for utt in read_manifest(manifest, tokenizer, check_audio=False):
        heard = set(runtime.transcribe(load_audio(utt.audio_path)).split(WORD_SEPARATOR))
        for word in utt.text.split(WORD_SEPARATOR):
            seen[word] += 1
            missed[word] += word not in heard
    room = MAX_WORDS - len(tokenizer.words)
    listed = set(tokenizer.words)
    chosen = [w for w, n in sorted(seen.items(), key=lambda item: (-item[1], item[0]))
              if n >= MIN_COUNT and missed[w] >= MIN_MISSED * n and w not in listed and len(w) <= MAX_WORD_CHARS]
    chosen = sorted(chosen[:min(MAX_NEW_WORDS, room)])
    log(f"word list: {len(chosen)} words the deployed model misses in the adaptation data")
    return tuple(chosen)


def words_bytes(deployed: DeviceModel, words: tuple[str, ...]) -> int:
    """Bundle bytes the words add to a compact (format 3) diff: their section and its manifest entry."""
    from diffing.diffs.sizing import serialized_bytes  # the real encoder

    h = deployed.content_hash()
    name = next(iter(deployed.weights))
    probe = Diff("probe", deployed.model_id, deployed.version, deployed.version + 1, h, h,
                 {name: SparseDelta(np.array([0]), np.array([1], dtype=np.int8))})
    return serialized_bytes(replace(probe, words=words), deployed, True) - serialized_bytes(probe, deployed, True)


def add_words(deployed: DeviceModel, diff: Diff, words: tuple[str, ...]) -> Diff:
    """`diff` plus `words`, its target hash that of the model it now makes."""
    diff = replace(diff, words=words)
    return replace(diff, target_hash=apply_diff(deployed, diff, check_hashes=False).content_hash())
