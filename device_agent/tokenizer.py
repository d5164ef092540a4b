"""Character tokenizer. Index 0 is the RNN-T blank; symbols follow.

A tokenizer may also carry a word list: words the greedy decoder favours
(`device_agent.runtime`, docs/model-format.md "Word list"). Diffs add to it
(docs/bundle-format.md, version 4), so an update can teach the spelling of the
words it brings for a few bytes each instead of weight entries.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from device_agent.errors import TokenizerError

DEFAULT_SYMBOLS = " '" + "abcdefghijklmnopqrstuvwxyz"
BLANK = 0
WORD_SEPARATOR = " "  # the symbol that ends a word (and starts the next) for the word list
MAX_WORDS = 1024  # the decoder's tree: at most 32k nodes of V int32 (3.8 MB for the default tokenizer)
MAX_WORD_CHARS = 32


def normalize_text(text: str) -> str:
    """Lower-case and collapse whitespace: the one text form used everywhere."""
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class CharTokenizer:
    symbols: str = DEFAULT_SYMBOLS
    words: tuple[str, ...] = ()  # sorted, unique; each 1-MAX_WORD_CHARS symbols, no separator

    def __post_init__(self) -> None:
        if len(set(self.symbols)) != len(self.symbols) or not self.symbols:
            raise TokenizerError(f"tokenizer symbols must be unique and non-empty, got {self.symbols!r}")
        check_words(self.words, self.symbols)

    def with_words(self, words: tuple[str, ...] | list[str]) -> "CharTokenizer":
        """This tokenizer with `words` added to its word list (TokenizerError if one is not a word of its symbols)."""
        return replace(self, words=tuple(sorted(set(self.words) | set(words))))

    @property
    def vocab_size(self) -> int:
        """Number of output classes including the blank."""
        return len(self.symbols) + 1

    def unknown_chars(self, text: str) -> set[str]:
        return set(normalize_text(text)) - set(self.symbols)

    def encode(self, text: str) -> list[int]:
        text = normalize_text(text)
        bad = self.unknown_chars(text)
        if bad:
            raise TokenizerError(f"characters {sorted(bad)} are not in the tokenizer alphabet {self.symbols!r}")
        return [self.symbols.index(c) + 1 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.symbols[i - 1] for i in ids if i != BLANK)

    def to_json(self) -> dict:
        # no "words" key without words: the content hash of every model without a word list stays as it was
        return {"kind": "char", "symbols": self.symbols, **({"words": list(self.words)} if self.words else {})}

    @classmethod
    def from_json(cls, obj: dict) -> "CharTokenizer":
        if not isinstance(obj, dict) or obj.get("kind") != "char" or not isinstance(obj.get("symbols"), str) \
                or set(obj) - {"kind", "symbols", "words"}:
            raise TokenizerError(f"expected tokenizer {{'kind': 'char', 'symbols': str[, 'words': [str]]}}, "
                                 f"got {obj!r:.200}")
        words = obj.get("words", [])
        if not isinstance(words, list) or not words and "words" in obj:
            raise TokenizerError(f"tokenizer words must be a non-empty list when present, got {words!r:.80}")
        return cls(obj["symbols"], tuple(words))


def check_words(words: tuple[str, ...], symbols: str) -> None:
    """TokenizerError unless `words` is a valid word list for `symbols`: at most MAX_WORDS, sorted and unique,
    each 1-MAX_WORD_CHARS of the symbols without the word separator."""
    if not isinstance(words, tuple) or len(words) > MAX_WORDS:
        raise TokenizerError(f"a word list holds at most {MAX_WORDS} words, got {len(words)}")
    allowed = set(symbols) - {WORD_SEPARATOR}
    for i, word in enumerate(words):
        if not isinstance(word, str) or not 1 <= len(word) <= MAX_WORD_CHARS or set(word) - allowed:
            raise TokenizerError(f"word {i} ({word!r:.40}) must be 1-{MAX_WORD_CHARS} of the tokenizer's symbols "
                                 f"other than {WORD_SEPARATOR!r}")
        if i and word <= words[i - 1]:
            raise TokenizerError(f"word list must be sorted and unique: {word!r:.40} follows {words[i - 1]!r:.40}")
