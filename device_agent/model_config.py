"""Model configuration and the canonical tensor layout derived from it.

The layout (names, kinds, shapes) is the contract between the float training
model, the device model file and the int8 runtime: each checks against it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from device_agent.errors import ConfigError
from device_agent.features import FeatureConfig

TensorKind = Literal["int8", "float32"]
LEVEL_KEYS = ("level_attack", "level_release", "level_range_db", "level_floor_db")  # the level normaliser's settings (format 2)  # int8 = per-channel quantized matrix


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 29  # blank + 28 characters (see tokenizer)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    enc_hidden: int = 256
    enc_layers: int = 3
    embed_dim: int = 128
    pred_hidden: int = 256
    joint_dim: int = 256
    max_symbols_per_step: int = 5  # greedy decoding: emissions per encoder frame

    def __post_init__(self) -> None:
        for name in ("vocab_size", "enc_hidden", "enc_layers", "embed_dim", "pred_hidden", "joint_dim",
                     "max_symbols_per_step"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 8192:
                raise ConfigError(f"model config {name} must be an integer in [1, 8192], got {value!r}")
        if self.vocab_size < 2:
            raise ConfigError(f"model config vocab_size must be >= 2 (blank + 1 symbol), got {self.vocab_size}")

    def to_json(self) -> dict:
        d = asdict(self)
        if not self.features.level_norm:
            # A front end without level normalisation is the format-1 front end: its config (and so
            # the content hash of every model made before the normaliser existed) stays as it was.
            for key in LEVEL_KEYS:
                del d["features"][key]
        return d

    @classmethod
    def from_json(cls, obj: object) -> "ModelConfig":
        """Build from parsed JSON; unknown keys are refused (allowlist)."""
        if not isinstance(obj, dict):
            raise ConfigError(f"model config must be a JSON object, got {type(obj).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(obj) - known
        if unknown:
            raise ConfigError(f"model config has unknown keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        values = dict(obj)
        feats = values.pop("features", {})
        if not isinstance(feats, dict) or set(feats) - {f.name for f in fields(FeatureConfig)}:
            raise ConfigError(f"model config 'features' must be an object with keys of FeatureConfig, got {feats!r:.200}")
        for key, value in feats.items():
            low = 0 if key in LEVEL_KEYS else 1
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 192_000:
                raise ConfigError(f"feature config {key} must be an integer in [{low}, 192000], got {value!r}")
        feats = {**{key: 0 for key in LEVEL_KEYS}, **feats}  # absent = no level normaliser (format 1)
        attack, release, range_db, floor_db = (feats[key] for key in LEVEL_KEYS)
        off = attack == release == range_db == floor_db == 0
        on = 1 <= attack <= release and range_db >= 1 and floor_db >= 1
        if not (off or on):
            raise ConfigError(f"feature config {'/'.join(LEVEL_KEYS)} must all be 0 (off) or 1 <= attack <= release "
                              f"and range, floor >= 1; got {attack}, {release}, {range_db}, {floor_db}")
        return cls(features=FeatureConfig(**feats), **values)


def tensor_layout(cfg: ModelConfig) -> dict[str, tuple[TensorKind, tuple[int, ...]]]:
    """Every tensor of the model: name -> (kind, shape). Order is canonical."""
    H, P, E, J, V = cfg.enc_hidden, cfg.pred_hidden, cfg.embed_dim, cfg.joint_dim, cfg.vocab_size
    n_mels = cfg.features.n_mels
    layout: dict[str, tuple[TensorKind, tuple[int, ...]]] = {
        "frontend.mean": ("float32", (n_mels,)),
        "frontend.inv_std": ("float32", (n_mels,)),
    }
    for layer in range(cfg.enc_layers):
        in_dim = cfg.features.stacked_dim if layer == 0 else H
        layout[f"encoder.weight_ih_l{layer}"] = ("int8", (4 * H, in_dim))
        layout[f"encoder.weight_hh_l{layer}"] = ("int8", (4 * H, H))
        layout[f"encoder.bias_ih_l{layer}"] = ("float32", (4 * H,))
        layout[f"encoder.bias_hh_l{layer}"] = ("float32", (4 * H,))
    layout.update({
        "predictor.embed.weight": ("int8", (V, E)),  # row 0 (blank) doubles as start-of-sequence
        "predictor.weight_ih_l0": ("int8", (4 * P, E)),
        "predictor.weight_hh_l0": ("int8", (4 * P, P)),
        "predictor.bias_ih_l0": ("float32", (4 * P,)),
        "predictor.bias_hh_l0": ("float32", (4 * P,)),
        "joint.enc_proj.weight": ("int8", (J, H)),
        "joint.enc_proj.bias": ("float32", (J,)),
        "joint.pred_proj.weight": ("int8", (J, P)),
        "joint.pred_proj.bias": ("float32", (J,)),
        "joint.out.weight": ("int8", (V, J)),
        "joint.out.bias": ("float32", (V,)),
    })
    return layout


def weight_names(cfg: ModelConfig) -> list[str]:
    """The int8 weight matrices (what diffs change and pruning counts)."""
    return [name for name, (kind, _) in tensor_layout(cfg).items() if kind == "int8"]
