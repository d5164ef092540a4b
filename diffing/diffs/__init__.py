"""Diff learners: `learn_diff(deployed_model, train_manifest, config) -> Diff`.

One config dataclass per method, found through a small registry (the
torchao pattern): adding a method is one module plus one `register` call.
"""
from diffing.diffs.api import DIFF_METHODS, DiffConfig, config_for, learn_diff, register
from diffing.diffs.channel import ChannelDiffConfig
from diffing.diffs.hashed import HashedDiffConfig
from diffing.diffs.sparse_mask import HybridDiffConfig, SparseMaskDiffConfig
from diffing.diffs import baselines as _baselines  # noqa: F401,E402 (registers full, lora)

__all__ = ["DIFF_METHODS", "ChannelDiffConfig", "DiffConfig", "HashedDiffConfig", "HybridDiffConfig",
           "SparseMaskDiffConfig", "config_for", "learn_diff", "register"]
