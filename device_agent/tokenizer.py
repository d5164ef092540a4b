"""Character tokenizer. Index 0 is the RNN-T blank; symbols follow."""
from __future__ import annotations

from dataclasses import dataclass

from device_agent.errors import TokenizerError

DEFAULT_SYMBOLS = " '" + "abcdefghijklmnopqrstuvwxyz"
BLANK = 0


def normalize_text(text: str) -> str:
    """Lower-case and collapse whitespace: the one text form used everywhere."""
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class CharTokenizer:
    symbols: str = DEFAULT_SYMBOLS

    def __post_init__(self) -> None:
        if len(set(self.symbols)) != len(self.symbols) or not self.symbols:
            raise TokenizerError(f"tokenizer symbols must be unique and non-empty, got {self.symbols!r}")

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
        return {"kind": "char", "symbols": self.symbols}

    @classmethod
    def from_json(cls, obj: dict) -> "CharTokenizer":
        if not isinstance(obj, dict) or obj.get("kind") != "char" or not isinstance(obj.get("symbols"), str):
            raise TokenizerError(f"expected tokenizer {{'kind': 'char', 'symbols': str}}, got {obj!r:.200}")
        return cls(obj["symbols"])
