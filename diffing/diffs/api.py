"""The diff-learning entry point and its method registry."""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, TypeVar

from device_agent.device_model import DeviceModel
from device_agent.diff import BIAS_STEP_EXPS, SCALE_STEP_EXPS, Diff
from device_agent.errors import ConfigError
from device_agent.model_format import encode_model, load_model
from diffing.diffs.word_list import add_words, missed_words, words_bytes

DIFF_CONFIG_VERSION = 1
LR_SCHEDULES = ("constant", "cosine")
CHANNEL_CHOICES = ("none", "scale", "bias", "both")


def parse_budget(text: str | float | int) -> float | int:
    """'2%' or 0.02 -> share of the deployed model file's bytes (float); '20KB' / '20000B' -> bytes (int)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return text
    s = str(text).strip().upper()
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", s):
        return float(m.group(1)) / 100
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)\s*(B|KB|KIB|MB|MIB)", s):
        mult = {"B": 1, "KB": 1000, "KIB": 1024, "MB": 10**6, "MIB": 2**20}[m.group(2)]
        return int(float(m.group(1)) * mult)
    raise ConfigError(f"budget {text!r} not understood; expected a percentage like '1%' or bytes like '20KB'")


@dataclass
class DiffConfig:
    """Settings shared by every method. `budget`: the most bytes the diff's bundle may take, as a
    share of the deployed model file's bytes (float in (0, 1], '2%') or as bytes (int, '20KB')."""

    budget: float | int = 0.01
    epochs: int = 8
    lr: float = 0.3  # Adam step in int8 units: deltas move ~lr per step (0.05 learned too little)
    # Padded encoder frames per batch. Small batches, many steps: Adam moves each integer delta about
    # `lr` per step, and a budgeted diff learns through few entries that must move far. Hybrid at 3% of
    # the model's bytes, 6 epochs, dev WER (new command type / new names): 2400 frames 34.2% / 26.2%,
    # 1200 25.9% / 21.4%, 600 21.3% / 23.0% (full fine-tune 18.0% / 20.5%; docs/diffs.md).
    max_frames: int = 600
    # replay utterances per adaptation utterance and epoch; novel names on the stage-4 model, sparse 2%:
    # 0.5 -> 36.1% update / 18.0% original WER, 1.5 -> 30.4% / 15.7% (base 45.0% / 10.3%)
    replay_ratio: float = 1.5
    lr_schedule: str = "constant"  # or "cosine": decay to 0 over training, so rounded deltas settle
    distill: float = 0.0  # weight of KL(deployed model || new model) on replay batches (0: off)
    # A model the diff should behave like (a .otam of the same architecture, e.g. a full fine-tune kept
    # on the server): KL(teacher || new model) x `teach` on every batch, next to the transcripts' loss.
    # Novel names, hybrid at 3% of the model's bytes, dev WER: no teacher 26.2%, teach 1 25.8%,
    # 4 23.2%, 16 24.6% (the full fine-tune itself 20.5%; docs/diffs.md).
    teacher: str = ""
    teach: float = 4.0
    # per-channel deltas trained next to the method's entries (docs/diffs.md): "scale" (each int8 row's
    # scale), "bias" (bias vectors), "both" or "none"; steps 2^e in the device's ranges
    channels: str = "none"
    scale_step_exp: int = -8  # 0.4% of a scale per code, up to +-50%
    bias_step_exp: int = -9  # ~0.002 per code, up to +-0.25 (trained biases: mean |b| 0.05-0.12)
    # Re-record every batch in random rooms, noise, microphones and levels (diffing.room_augment). Off by
    # default: a full fine-tune on three FSDD speakers tested on the fourth scored 65.6% with it and 45.2%
    # without (docs/BENCHMARKS.md, "Real speakers"); every batch augmented is too strong for ~600 clips.
    room_augment: bool = False
    # Size (and write) the bundle in format version 3, its manifest compressed: about 1.3 KB more room for
    # entries at the same budget (at 1% of the shipped model's bytes, 13% more payload). Only agents that read
    # version 3 take it: check `ota fleet status` (bundle formats) before publishing one.
    compact: bool = False
    # Add the adaptation data's words the deployed model misses to its word list (diffing.diffs.word_list),
    # out of the same budget: format version 4 (manifest compressed as in 3), for fleets whose agents read it.
    # On the chain at 3% of the shipped model's bytes, mean gaps to the full fine-tune of -1.3 / -0.4 / -0.3
    # against +0.9 / +0.5 / +0.2 without, the new command type +5.3 / +1.2 / +2.7 against +7.8 / +6.9 / +5.4
    # (docs/BENCHMARKS.md, run 10).
    words: bool = False
    seed: int = 0
    threads: int = 0  # torch threads; 0: the cores other work leaves free (diffing.threads)
    config_version: int = DIFF_CONFIG_VERSION

    def __post_init__(self) -> None:
        self.budget = parse_budget(self.budget)
        if isinstance(self.budget, float) and not 0 < self.budget <= 1:
            raise ConfigError(f"budget share of the model file must be in (0, 1], got {self.budget}")
        if isinstance(self.budget, int) and self.budget < 64:
            raise ConfigError(f"budget of {self.budget} bytes is too small; expected >= 64")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0: the free cores), got {self.threads}")
        if self.epochs < 1 or self.lr <= 0 or self.max_frames < 16 or not 0 <= self.replay_ratio <= 10 \
                or self.distill < 0 or self.teach < 0:
            raise ConfigError("epochs >= 1, lr > 0, max_frames >= 16, replay_ratio in [0, 10], "
                              "distill >= 0 and teach >= 0 are required")
        if self.channels not in CHANNEL_CHOICES or self.scale_step_exp not in SCALE_STEP_EXPS \
                or self.bias_step_exp not in BIAS_STEP_EXPS:
            raise ConfigError(f"channels must be one of {CHANNEL_CHOICES} (got {self.channels!r}), scale_step_exp in "
                              f"[{SCALE_STEP_EXPS[0]}, {SCALE_STEP_EXPS[-1]}] and bias_step_exp in "
                              f"[{BIAS_STEP_EXPS[0]}, {BIAS_STEP_EXPS[-1]}]")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.config_version != DIFF_CONFIG_VERSION:
            raise ConfigError(f"diff config version {self.config_version} is not {DIFF_CONFIG_VERSION}")

    def budget_bytes(self, deployed: DeviceModel) -> int:
        return budget_bytes(deployed, self.budget)

    @classmethod
    def from_json(cls, obj: dict) -> "DiffConfig":
        known = {f.name for f in fields(cls)}
        if not isinstance(obj, dict) or set(obj) - known:
            raise ConfigError(f"unknown {cls.__name__} keys {sorted(set(obj) - known)}; allowed: {sorted(known)}")
        return cls(**obj)


def model_file_bytes(model: DeviceModel) -> int:
    """Bytes of the model's `.otam` file: what a budget share is of (the canonical, deterministic encoding)."""
    return len(encode_model(model))


def budget_bytes(deployed: DeviceModel, budget: str | float | int) -> int:
    """A budget in bytes; a share ('2%', 0.02) is of the deployed model's file bytes."""
    budget = parse_budget(budget)
    return budget if isinstance(budget, int) else int(budget * model_file_bytes(deployed))


def check_teacher(deployed: DeviceModel, path: str | Path) -> None:
    """ConfigError unless the teacher at `path` has the deployed model's architecture, front end and
    tokenizer: its output lattice is compared with the new model's node by node."""
    teacher = load_model(path)
    if teacher.config != deployed.config or teacher.tokenizer.symbols != deployed.tokenizer.symbols:
        raise ConfigError(f"teacher {path}: expected a model with the deployed model's architecture, front end "
                          f"and tokenizer (e.g. a fine-tune of it)")


C = TypeVar("C", bound=DiffConfig)
Learner = Callable[..., Diff]
DIFF_METHODS: dict[str, tuple[type[DiffConfig], Learner]] = {}


def register(name: str, config_cls: type[C]) -> Callable[[Learner], Learner]:
    def wrap(fn: Learner) -> Learner:
        DIFF_METHODS[name] = (config_cls, fn)
        config_cls.method = name  # type: ignore[attr-defined]
        return fn
    return wrap


def config_for(method: str, **options: object) -> DiffConfig:
    """The registered method's config from command-line style options; None keeps the method's default."""
    if method not in DIFF_METHODS:
        raise ConfigError(f"diff method {method!r} is not registered; known: {', '.join(sorted(DIFF_METHODS))}")
    cls = DIFF_METHODS[method][0]
    given = {k: v for k, v in options.items() if v is not None}
    unknown = set(given) - {f.name for f in fields(cls)}
    if unknown:
        raise ConfigError(f"diff method {method!r} takes no option(s) {sorted(unknown)}")
    return cls(**given)


def learn_diff(deployed: DeviceModel, train_manifest: str | Path, config: DiffConfig, *,
               replay_manifest: str | Path | None = None, target_version: int | None = None,
               progress: bool = False, log: Callable[[str], None] | None = None) -> Diff:
    """Learn a diff against the exact deployed int8 model; dispatch on the config's type.
    Learners see the budget in bytes (a share is resolved against the deployed model's file here)."""
    if config.teacher:
        check_teacher(deployed, config.teacher)
    if config.distill > 0 and replay_manifest is None:  # the KL term acts on replay batches only
        raise ConfigError(f"distill {config.distill}: expected a replay manifest to keep the deployed model's "
                          f"outputs on (--replay)")
    log = log or (lambda _: None)
    for name, (cls, fn) in DIFF_METHODS.items():
        if type(config) is cls:
            words = missed_words(deployed, train_manifest, log=log) if config.words else ()
            if getattr(cls, "uses_budget", True):
                budget = config.budget_bytes(deployed)
                # the words come out of the budget; their format compresses the manifest as version 3 does
                config = replace(config, budget=budget - words_bytes(deployed, words) if words else budget,
                                 compact=config.compact or bool(words))
            diff = fn(deployed, train_manifest, config, replay_manifest=replay_manifest,
                      target_version=deployed.version + 1 if target_version is None else target_version,
                      progress=progress, log=log)
            return add_words(deployed, diff, words) if words else diff
    raise ConfigError(f"no diff method registered for {type(config).__name__}; known: {sorted(DIFF_METHODS)}")
