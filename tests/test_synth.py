"""Synthetic corpus: grammar determinism and alphabet, split disjointness, a tiny real render."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from device_agent.errors import ConfigError
from device_agent.manifest import read_manifest
from device_agent.tokenizer import CharTokenizer
from diffing.synth import grammar, voices
from diffing.synth.augment import augment
from diffing.synth.build import build_corpus, build_update_set

TOK = CharTokenizer()


# --- grammar ----------------------------------------------------------------
def test_sampling_is_deterministic_and_seed_dependent() -> None:
    for split in grammar.SPLITS:
        a = grammar.sample_commands(50, seed=3, split=split)
        assert a == grammar.sample_commands(50, seed=3, split=split)
        assert a != grammar.sample_commands(50, seed=4, split=split)


def test_all_text_is_in_the_tokenizer_alphabet() -> None:
    for split in grammar.SPLITS:
        assert not TOK.unknown_chars(" ".join(sorted(grammar.vocabulary(split)))), split
        for text in grammar.sample_commands(300, seed=0, split=split):
            assert text == " ".join(text.split()) and text and not TOK.unknown_chars(text)
            assert "{" not in text


def test_base_vocabulary_is_several_hundred_words() -> None:
    assert len(grammar.vocabulary("base")) >= 300
    assert len(set(grammar.sample_commands(2000, seed=0))) > 1000  # not a handful of sentences


def test_novel_entities_never_appear_in_base() -> None:
    base_entities = grammar.entity_sets("base")
    base_vocab = grammar.vocabulary("base")
    for split, slots in (("novel_names", ("name", "artist")), ("novel_places", ("place",)), ("novel_intent", ("item",))):
        novel = grammar.entity_sets(split)
        for slot in slots:
            assert not novel[slot] & base_entities.get(slot, frozenset()), (split, slot)
            # each new entity has at least one word the base model never hears
            assert all(set(e.split()) - base_vocab for e in novel[slot]), (split, slot)


def test_held_out_commands_all_carry_something_new() -> None:
    base_vocab = grammar.vocabulary("base")
    for split in ("novel_names", "novel_places", "novel_intent"):
        for text in grammar.sample_commands(200, seed=1, split=split):
            assert set(text.split()) - base_vocab or "shopping" in text or "grocery" in text, (split, text)
    # the novel intent's commands never occur in base sampling
    assert not any("shopping list" in t for t in grammar.sample_commands(3000, seed=0))


# --- voices -----------------------------------------------------------------
def test_voice_sets_are_disjoint_and_accents_held_out() -> None:
    sets = {name: voices.voice_set(name) for name in voices.VOICE_SETS}
    ids = {name: {v.id for v in vs} for name, vs in sets.items()}
    # train_wide is train plus festival voices; every other pair is disjoint
    assert ids["train"] < ids["train_wide"]
    assert {v.engine for v in sets["train_wide"]} == {"espeak", "flite", "festival"}
    names = [n for n in ids if n != "train_wide"]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not ids[a] & ids[b], (a, b)
    assert not (ids["train_wide"] - ids["train"]) & (ids["test"] | ids["novel_accent_test"])
    assert len(ids["train"]) > 100 and len(ids["test"]) > 20

    def variants(name: str) -> set[str]:
        return {v.name.split("+")[1] for v in sets[name] if v.engine == "espeak"}

    # test speakers are unseen: no variant of a test voice appears in training
    assert not variants("train") & variants("test")
    assert not variants("novel_accent_adapt") & variants("novel_accent_test")
    novel_accents = {v.accent for v in sets["novel_accent_adapt"] + sets["novel_accent_test"]}
    base_accents = {v.accent for v in sets["train"] + sets["test"]}
    assert not novel_accents & base_accents
    assert {"en-us", "en-gb"} <= base_accents


def test_render_and_augment_are_real_and_deterministic() -> None:
    for voice in (voices.Voice("espeak", "en-us+m3", "en-us"), voices.Voice("flite", "slt", "flite-slt"),
                  voices.Voice("festival", "ked_diphone", "festival-ked_diphone"),
                  voices.Voice("festival", "cmu_us_slt_arctic_hts", "festival-cmu_us_slt_arctic_hts")):
        audio = voices.render("set a timer for ten minutes", voice, voices.Prosody(1.1, 0.9))
        assert audio.dtype == np.float32 and 0.7 < len(audio) / 16000 < 5
        assert np.sqrt(np.mean(audio**2)) > 0.01
        aug = augment(audio, (7, 1))
        assert np.array_equal(aug, augment(audio, (7, 1)))
        assert np.max(np.abs(aug)) <= 0.99


# --- corpus -----------------------------------------------------------------
def test_tiny_corpus_renders_real_audio(tmp_path: Path) -> None:
    manifests = build_corpus(tmp_path / "c", n_train=4, n_test=2, seed=5, workers=1, progress=False)
    train = read_manifest(manifests["train"], TOK)
    test = read_manifest(manifests["test"], TOK)
    assert len(train) == 4 and len(test) == 2
    train_voices = {v.id for v in voices.voice_set("train")}
    test_voices = {v.id for v in voices.voice_set("test")}
    assert {u.speaker for u in train} <= train_voices and {u.speaker for u in test} <= test_voices
    for u in train + test:
        info = sf.info(str(u.audio_path))
        assert info.samplerate == 16000 and info.subtype == "PCM_16" and info.channels == 1
        assert abs(info.duration - u.duration) < 1e-3 and u.duration > 0.3
        audio, _ = sf.read(str(u.audio_path), dtype="float32")
        assert np.sqrt(np.mean(audio**2)) > 0.005
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["parts"]["train"]["utterances"] == 4
    # same arguments, same corpus
    again = build_corpus(tmp_path / "d", n_train=4, n_test=2, seed=5, workers=1, progress=False)
    assert [u.text for u in read_manifest(again["train"])] == [u.text for u in train]
    a, _ = sf.read(str(train[0].audio_path))
    b, _ = sf.read(str(read_manifest(again["train"])[0].audio_path))
    assert np.array_equal(a, b)


def test_wide_training_voices_give_natural_voices_half_the_draws() -> None:
    pool = voices.voice_set("train_wide")
    rng = np.random.default_rng(3)
    drawn = [voices.pick_voice(pool, rng, voices.NATURAL_SHARE["train_wide"]) for _ in range(2000)]
    natural = sum(v.engine != "espeak" for v in drawn) / len(drawn)
    assert 0.45 < natural < 0.55
    assert {v.engine for v in drawn} == {"espeak", "flite", "festival"}
    # the default pool keeps its old 20% share, so old corpora rebuild bit-for-bit
    rng = np.random.default_rng(3)
    assert 0.15 < sum(voices.pick_voice(voices.voice_set("train"), rng).engine == "flite" for _ in range(2000)) / 2000 < 0.25


def test_festival_pitch_setting_changes_the_audio() -> None:
    voice = voices.Voice("festival", "kal_diphone", "festival-kal_diphone")
    low = voices.render("call mom", voice, voices.Prosody(1.0, 0.8))
    high = voices.render("call mom", voice, voices.Prosody(1.0, 1.2))
    assert not (len(low) == len(high) and np.allclose(low, high))
    with pytest.raises(ConfigError, match="unknown festival voice"):
        voices.render("call mom", voices.Voice("festival", "nobody", "x"))


def test_update_set_uses_held_out_accents(tmp_path: Path) -> None:
    manifests = build_update_set(tmp_path / "u", "novel_accent", n_adapt=1, n_test=1, workers=1, progress=False)
    assert set(manifests) == {"adapt", "test"}
    accents = {u.speaker for m in manifests.values() for u in read_manifest(m)}
    novel = {v.id for s in ("novel_accent_adapt", "novel_accent_test") for v in voices.voice_set(s)}
    assert accents <= novel


def test_cli_synth(tmp_path: Path) -> None:
    from cli.main import cli as group
    result = CliRunner().invoke(group, ["data", "synth", "--out", str(tmp_path / "x"), "--train", "1",
                                        "--test", "1", "--split", "novel_intent", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "adapt: 1 utterances" in result.output
    help_text = CliRunner().invoke(group, ["data", "synth", "--help"]).output
    assert "ota data synth --out" in help_text
