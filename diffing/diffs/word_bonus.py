"""The device decoder's word-list bonus on the training lattice.

The greedy decoder adds a bonus to the logits of symbols that continue a listed word
(device_agent.runtime). Along a transcript, the word list's tree node before label u depends only
on the labels before it, so the bonus the decoder would add there is one (V,) row per lattice row
u: adding those rows to the joint's logits trains a diff for the decoder it will run under, and it
need not spend entries on spelling what the list already spells (`DiffConfig.train_with_bonus`).
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from collections.abc import Iterator

import numpy as np
import torch

from device_agent.runtime import word_tree
from device_agent.tokenizer import CharTokenizer

# The tokenizer (its word list) the diff's model will decode with, while a learner runs (learn_diff).
_DECODER_TOKENIZER: ContextVar[CharTokenizer | None] = ContextVar("decoder_tokenizer", default=None)


@contextmanager
def decoding_with(tokenizer: CharTokenizer | None) -> Iterator[None]:
    token = _DECODER_TOKENIZER.set(tokenizer)
    try:
        yield
    finally:
        _DECODER_TOKENIZER.reset(token)


class LatticeBonus:
    """Bonus rows (B, U+1, V) for a batch's targets under the word list of the decoding tokenizer."""

    def __init__(self, tokenizer: CharTokenizer) -> None:
        child, self.separator, start, bonus = word_tree(tokenizer)
        self.child = child
        rows = np.where(child >= 0, bonus, np.float32(0)).astype(np.float32)
        rows[0] = np.where(child[0] >= 0, start, np.float32(0))
        self.rows = np.concatenate([rows, np.zeros((1, child.shape[1]), np.float32)])  # last: outside the list

    @classmethod
    def current(cls) -> "LatticeBonus | None":
        """For the tokenizer set by `decoding_with`, if it has a word list."""
        tokenizer = _DECODER_TOKENIZER.get()
        return cls(tokenizer) if tokenizer is not None and tokenizer.words else None

    def __call__(self, targets: torch.Tensor, target_lens: torch.Tensor) -> torch.Tensor:
        outside = self.rows.shape[0] - 1
        labels, lengths = targets.numpy(), target_lens.numpy()
        nodes = np.full((labels.shape[0], labels.shape[1] + 1), outside, np.int64)
        for b in range(labels.shape[0]):
            node = 0
            nodes[b, 0] = 0
            for u in range(int(lengths[b])):
                token = int(labels[b, u])
                node = 0 if token == self.separator else int(self.child[node, token]) if node >= 0 else -1
                nodes[b, u + 1] = node if node >= 0 else outside
        return torch.from_numpy(self.rows[nodes])
