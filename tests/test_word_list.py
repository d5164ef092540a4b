"""Word lists: the tokenizer's words, the decoder's bonus, the bundle's words section (format 4), learning them."""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import xxhash
import zstandard

from bench.fuzz_bundle import pack, split
from device_agent import bundle as bundle_format
from device_agent import kernels
from device_agent.audio import load_audio
from device_agent.bundle import (MAGIC, PREAMBLE, WORDS_FORMAT, apply_bundle, decode_bundle, read_bundle,
                                 read_bundle_manifest)
from device_agent.device_model import canonical_json
from device_agent.diff import Diff, SparseDelta, apply_diff
from device_agent.errors import BundleError, DiffError, ModelFormatError, TokenizerError
from device_agent.features import utterance_features
from device_agent.model_format import decode_model, encode_model
from device_agent.runtime import Int8Runtime, MAX_SYMBOLS_PER_FRAME, word_tree
from device_agent.tokenizer import MAX_WORD_CHARS, CharTokenizer
from packager.bundle import encode_diff_bundle
from packager.exact_diff import exact_diff
from tests.tiny import tiny_device_model

FSDD = Path(__file__).resolve().parent / "data" / "fsdd" / "recordings"
PINNED_WORDS_XXH64 = "e1e1702203ee7d53"  # the pinned diff of test_bundle.py with three words, format 4


def _diff(base, words=("grocery", "olive", "shampoo")) -> Diff:
    deltas = {"joint.out.weight": SparseDelta([3, 50, 231], [1, -2, 127])}
    diff = Diff("mixed", base.model_id, 1, 2, base.content_hash(), "", deltas, 42, {"run": "pin"}, words=words)
    diff.target_hash = apply_diff(base, diff, check_hashes=False).content_hash()
    return diff


@pytest.fixture(scope="module")
def base():
    return tiny_device_model()


@pytest.fixture(scope="module")
def words_bytes(base) -> bytes:
    return encode_diff_bundle(_diff(base), base)


# --- tokenizer and model file -------------------------------------------------------------------
def test_a_model_without_words_keeps_its_identity(base) -> None:
    assert "words" not in base.tokenizer.to_json()
    listed = replace(base, tokenizer=base.tokenizer.with_words(["olive"]))
    assert listed.content_hash() != base.content_hash()
    again = decode_model(encode_model(listed))
    assert again.tokenizer.words == ("olive",) and again.content_hash() == listed.content_hash()


@pytest.mark.parametrize("words, message", [
    (("b", "a"), "sorted and unique"), (("a", "a"), "sorted and unique"), (("",), "must be 1-32"),
    (("two words",), "other than ' '"), (("x" * (MAX_WORD_CHARS + 1),), "must be 1-32"), (("é",), "symbols")])
def test_invalid_word_lists_are_refused(words: tuple, message: str) -> None:
    with pytest.raises(TokenizerError, match=message):
        CharTokenizer(words=words)


def test_a_model_file_with_a_bad_word_list_is_refused(base) -> None:
    data = encode_model(replace(base, tokenizer=base.tokenizer.with_words(["olive"])))
    for bad in (b'"words":[]', b'"words":["olive","olive"]', b'"words":[1]'):
        tampered = data.replace(b'"words":["olive"]', bad)
        n = len(tampered) - len(data)
        tampered = tampered[:12] + (PREAMBLE.unpack_from(data)[3] + n).to_bytes(4, "little") + tampered[16:]
        with pytest.raises(ModelFormatError):
            decode_model(tampered)


# --- the decoder's bonus ------------------------------------------------------------------------
def _decode(model, audio: np.ndarray, words: tuple) -> list[int]:
    rt = Int8Runtime(model)
    enc = rt.encode(utterance_features(audio, rt.config.features), rt.initial_encoder_state())
    h, c, pred_out = rt.predictor.start()
    tokens = np.empty(enc.shape[0] * MAX_SYMBOLS_PER_FRAME, np.int64)
    count, _, _ = kernels.greedy_decode(enc, MAX_SYMBOLS_PER_FRAME, tokens.size, 0, rt.out.arrays,
                                        rt.predictor.weights, h, c, pred_out, tokens, words, 0)
    return tokens[:count].tolist()


def test_the_decoder_follows_a_listed_word_when_its_bonus_outweighs_the_model(base) -> None:
    """The mechanism, with a bonus far beyond the shipped one: the first symbols spell the listed word."""
    audio = load_audio(sorted(FSDD.glob("*.wav"))[0])
    model = replace(base, tokenizer=base.tokenizer.with_words(["zq"]))
    child, separator, _, _ = word_tree(model.tokenizer)
    tokens = _decode(model, audio, (child, separator, np.float32(1e4), np.float32(1e4)))
    assert tokens[:2] == model.tokenizer.encode("zq")
    unlisted = _decode(base, audio, word_tree(base.tokenizer))
    assert unlisted[:2] != tokens[:2]


def test_streaming_with_a_word_list_matches_the_whole_utterance(base) -> None:
    """The tree node is carried across chunks: any cut gives the whole utterance's transcript."""
    audio = load_audio(sorted(FSDD.glob("*.wav"))[1])
    rt = Int8Runtime(replace(base, tokenizer=base.tokenizer.with_words(["ab", "abc", "eight", "zero"])))
    whole = rt.transcribe(audio)
    stream = rt.stream()
    for start in range(0, audio.size, 1601):
        stream.push(audio[start:start + 1601])
    assert stream.text == whole


# --- bundle format 4 -------------------------------------------------------------------------------
def test_words_bundle_is_pinned_and_round_trips(base, words_bytes: bytes) -> None:
    magic, version, _, n = PREAMBLE.unpack_from(words_bytes)
    assert (magic, version) == (MAGIC, WORDS_FORMAT)
    manifest, sections = split(words_bytes)
    entry = manifest["sections"]["words"]
    assert {k: entry[k] for k in ("encoding", "count", "raw_length")} == {"encoding": "words", "count": 3,
                                                                          "raw_length": 21}
    assert zstandard.ZstdDecompressor().decompress(sections[list(manifest["sections"]).index("words")]) == \
        b"grocery\nolive\nshampoo"
    assert xxhash.xxh64_hexdigest(words_bytes) == PINNED_WORDS_XXH64
    bundle = decode_bundle(words_bytes)
    model = apply_bundle(bundle, base)
    assert model.tokenizer.words == ("grocery", "olive", "shampoo") and model.content_hash() == bundle.target_hash
    assert read_bundle(io.BytesIO(words_bytes), base).diff.words == bundle.diff.words


def test_words_join_the_list_the_model_has(base) -> None:
    listed = replace(base, tokenizer=base.tokenizer.with_words(["apple", "olive"]))
    model = apply_diff(listed, _diff(listed))
    assert model.tokenizer.words == ("apple", "grocery", "olive", "shampoo")
    assert exact_diff(listed, model).words == ("grocery", "shampoo")
    with pytest.raises(DiffError, match="drops words"):
        exact_diff(model, listed)


def test_an_agent_that_reads_up_to_version_3_refuses_a_words_bundle(words_bytes: bytes, monkeypatch) -> None:
    monkeypatch.setattr(bundle_format, "FORMAT_VERSIONS", (1, 2, 3))
    with pytest.raises(BundleError, match=r"format version 4 is not supported.*update the device agent"):
        read_bundle_manifest(io.BytesIO(words_bytes))


def _with_words_raw(raw: bytes, count: int | None = None):
    def mutate(data: bytes) -> bytes:
        manifest, sections = split(data)
        i = list(manifest["sections"]).index("words")
        sections[i] = zstandard.ZstdCompressor(write_content_size=True).compress(raw)
        manifest["sections"]["words"].update(raw_length=len(raw), count=count or raw.count(b"\n") + 1)
        return _repack(data, manifest, sections)
    return mutate


def _repack(data: bytes, manifest: dict, sections: list[bytes], version: int | None = None) -> bytes:
    plain = pack(manifest, sections)
    _, _, _, n = PREAMBLE.unpack_from(plain)
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(plain[PREAMBLE.size:PREAMBLE.size + n])
    return PREAMBLE.pack(MAGIC, version or PREAMBLE.unpack_from(data)[1], 0, len(frame)) + frame + \
        plain[PREAMBLE.size + n:]


def _words_entry(edit):
    def mutate(data: bytes) -> bytes:
        manifest, sections = split(data)
        edit(manifest["sections"])
        return _repack(data, manifest, sections)
    return mutate


HOSTILE = {
    "unsorted": (_with_words_raw(b"olive\ngrocery"), "sorted and unique"),
    "duplicate": (_with_words_raw(b"olive\nolive"), "sorted and unique"),
    "empty_word": (_with_words_raw(b"ab\n\ncd"), "printable characters without whitespace"),
    "too_short_for_its_count": (_with_words_raw(b"a\n\nb"), r"raw_length 4 outside \[5, "),
    "space_in_word": (_with_words_raw(b"olive oil"), "without whitespace"),
    "control_char": (_with_words_raw(b"oli\x00ve"), "printable characters"),
    "not_utf8": (_with_words_raw(b"\xff\xfe"), "must be UTF-8"),
    "too_long": (_with_words_raw(b"x" * (MAX_WORD_CHARS + 1)), "must be 1-32 printable"),
    "count_lies": (_with_words_raw(b"grocery\nolive", count=3), "2 words, the section table says 3"),
    "count_zero": (_words_entry(lambda t: t["words"].update(count=0)), r"count 0 \(words\) outside"),
    "too_many": (_words_entry(lambda t: t["words"].update(count=5000)), r"\(words\) outside \[1, 1024\]"),
    "other_name": (_words_entry(lambda t: t.update(vocab=t.pop("words"))), "goes with the section named 'words'"),
    "extra_key": (_words_entry(lambda t: t["words"].update(numel=3)), "entry keys"),
    "in_version_3": (lambda d: _repack(d, *split(d), version=3), "needs bundle format version 4"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_words_section_raises_a_helpful_bundle_error(name: str, words_bytes: bytes, base) -> None:
    mutate, message = HOSTILE[name]
    with pytest.raises(BundleError, match=message):
        apply_bundle(read_bundle(io.BytesIO(mutate(words_bytes)), base), base)


def test_words_the_model_cannot_spell_are_refused_at_apply_and_nothing_changes(base) -> None:
    data = _with_words_raw("café".encode())(encode_diff_bundle(_diff(base), base))
    before = base.content_hash()
    with pytest.raises(DiffError, match="diff words: word 0"):
        apply_bundle(decode_bundle(data), base)
    assert base.content_hash() == before and base.tokenizer.words == ()


def test_a_words_manifest_is_canonical_json(words_bytes: bytes) -> None:
    manifest, _ = split(words_bytes)
    _, _, _, n = PREAMBLE.unpack_from(words_bytes)
    body = zstandard.ZstdDecompressor().decompress(words_bytes[PREAMBLE.size:PREAMBLE.size + n])
    assert body == canonical_json(manifest)

