"""A new front end for a trained model, by teacher-student training.

Switching a deployed model to another front end (for example the level normaliser of model format 2)
changes every feature the encoder reads. Fine-tuning on transcripts alone re-learns the acoustics from a
fraction of the data the model was trained on. Here the deployed model teaches instead: a copy with the
new front end learns to reproduce the teacher's encoder output frame by frame, the teacher hearing each
utterance clean at its recorded level and the student hearing it through random rooms, noise, microphones
and levels (Li et al., "Large-scale domain adaptation via teacher-student learning", 2017). Only the
encoder trains; the prediction network and joint are the teacher's, so what the model says stays what it
said. The encoder keeps the teacher's zeros and trains quantization-aware, so the export is as sparse
as the teacher and its int8 weights are the ones trained.

    ota distill --teacher models/base-v1.otam --train work/corpus/base_x3/train.jsonl --out work/runs/distill

Unlabelled audio is enough: transcripts in the manifest are read but not used.
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from device_agent.errors import ConfigError
from device_agent.features import FeatureConfig
from device_agent.model_config import LEVEL_KEYS
from device_agent.model_format import load_model, save_model
from device_agent.tokenizer import CharTokenizer
from diffing.compression import CompressionState
from diffing.data import (
    Example,
    batch_groups,
    collate,
    feature_stats,
    load_examples,
    speed_perturb,
)
from diffing.export import export_model, float_model_from_device
from diffing.model import RNNT
from diffing.progress import step_reporter
from diffing.room_augment import RoomAugmentConfig, RoomAugmenter
from diffing.threads import set_threads
from diffing.train import data_identity, same_but_front_end, save_checkpoint

TRAINED_PREFIX = "encoder."  # the student's trainable parameters


@dataclass
class DistillConfig:
    teacher: str  # the deployed model (.otam)
    train_manifest: str
    out_dir: str = "work/runs/distill"
    # The student's front end; None: the teacher's with the level normaliser's default settings.
    features: FeatureConfig | None = None
    epochs: int = 4
    lr: float = 1e-3  # peak (Adam, linear warm-up, cosine decay)
    warmup_steps: int = 30
    max_frames: int = 2400  # padded encoder frames per batch
    # Share of utterances the student hears through rooms, noise and microphones; the rest at a random
    # level in -30..+10 dB. The teacher always hears the recording as it is.
    rooms: float = 0.3
    # Speed perturbation (diffing.data.speed_perturb) applied to the audio both hear: alpha from
    # [1 - speed, 1 + speed] per utterance, so the student also learns the teacher's mapping for slower,
    # lower and faster, higher voices than the corpus holds (0: off).
    speed: float = 0.0
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.features, dict):  # from a checkpoint's JSON
            self.features = FeatureConfig(**self.features)
        if self.epochs < 1 or self.lr <= 0 or self.max_frames < 16:
            raise ConfigError("epochs >= 1, lr > 0 and max_frames >= 16 are required")
        if not 0.0 <= self.rooms <= 1.0:
            raise ConfigError(f"rooms (share of utterances heard through rooms) must be in [0, 1], got {self.rooms}")
        if not 0.0 <= self.speed < 0.5:
            raise ConfigError(f"speed (max speed perturbation) must be in [0, 0.5), got {self.speed}")

    def to_json(self) -> dict:
        return asdict(self)


def _recipe(settings: dict) -> dict:
    """The settings a checkpoint must share to be resumed (threads are how it runs, not what it learns)."""
    return {k: v for k, v in settings.items() if k != "threads"}


def with_level_normaliser(features: FeatureConfig) -> FeatureConfig:
    """The same front end with the level normaliser at its default settings."""
    return replace(features, **{k: getattr(FeatureConfig(), k) for k in LEVEL_KEYS})


def student_of(teacher: RNNT, features: FeatureConfig, examples: list[Example]) -> RNNT:
    """The teacher's weights behind a new front end, normalised with that front end's statistics."""
    student_cfg = replace(teacher.cfg, features=features)
    if not same_but_front_end(teacher.cfg, student_cfg):
        raise ConfigError("the student's front end may differ from the teacher's only in its level normaliser "
                          f"settings ({', '.join(LEVEL_KEYS)})")
    student = RNNT(student_cfg)
    student.load_state_dict(teacher.state_dict())
    mean, inv_std = feature_stats(examples, features)
    student.frontend.mean.copy_(mean)
    student.frontend.inv_std.copy_(inv_std)
    return student


def student_hearing(cfg: DistillConfig, teacher_features: FeatureConfig, examples: list[Example],
                    rng: random.Random) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-utterance transform of cached log-mel: a room (which sets its own level) or a level change."""
    aug = RoomAugmentConfig()
    rooms = RoomAugmenter(teacher_features, aug, rng, [e.feats for e in examples[:500]])

    def transform(feats: torch.Tensor) -> torch.Tensor:
        feats = feats.float()
        if rng.random() < cfg.rooms:
            return rooms(feats)
        return feats + rng.uniform(*aug.gain_db) / 10 * math.log(10)  # a gain in dB of power, on log power
    return transform


def spoken_faster_or_slower(batch: list[Example], cfg: DistillConfig, features: FeatureConfig,
                            rng: random.Random) -> list[Example]:
    """The batch with each utterance speed-perturbed (the same copy for teacher and student)."""
    if not cfg.speed:
        return batch
    return [Example(speed_perturb(e.feats, features, rng.uniform(1 - cfg.speed, 1 + cfg.speed)), e.tokens, e.text)
            for e in batch]


def encoder_gap(student: RNNT, teacher: RNNT, batch: list[Example], teacher_features: FeatureConfig,
                hearing: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """Mean squared difference of the encoders' outputs over the batch's real (unpadded) frames."""
    clean = collate(batch, teacher_features)
    heard = collate(batch, student.cfg.features, hearing)
    with torch.no_grad():
        target, _ = teacher.encode(clean.feats)
    out, _ = student.encode(heard.feats)
    frames = min(out.shape[1], target.shape[1])
    lens = torch.minimum(clean.feat_lens, heard.feat_lens)
    valid = (torch.arange(frames)[None, :] < lens[:, None]).float()[..., None]
    return ((out[:, :frames] - target[:, :frames]) ** 2 * valid).sum() / valid.sum() / out.shape[-1]


def distill(cfg: DistillConfig, log: Callable[[str], None] = print, progress: bool = True) -> Path:
    """Train (or resume) the student and export it; returns the path of the device model."""
    set_threads(cfg.threads)
    torch.set_flush_denormal(True)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    deployed = load_model(cfg.teacher)
    teacher = float_model_from_device(deployed)
    for p in teacher.parameters():
        p.requires_grad_(False)
    examples = load_examples(cfg.train_manifest, CharTokenizer(), teacher.cfg.features, out / "cache", progress)
    features = cfg.features or with_level_normaliser(teacher.cfg.features)
    student = student_of(teacher, features, examples[:: max(1, len(examples) // 2000)])
    compression = CompressionState(student.named_weight_matrices())
    compression.masks = {n: w != 0 for n, w in student.named_weight_matrices().items()}  # the teacher's zeros
    compression.quantize = True
    student.weight_transform = compression
    trained = [p for n, p in student.named_parameters() if n.startswith(TRAINED_PREFIX)]
    for n, p in student.named_parameters():
        p.requires_grad_(n.startswith(TRAINED_PREFIX))
    optimizer = torch.optim.Adam(trained, lr=cfg.lr)

    groups = batch_groups(examples, cfg.max_frames, teacher.cfg.features.stack)
    total = len(groups) * cfg.epochs
    step, epoch, history = 0, 0, []
    ckpt_path = out / "last.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if _recipe(ckpt["distill_config"]) != _recipe(cfg.to_json()):
            raise ConfigError(f"{ckpt_path} was written with other settings; use a new --out or delete it")
        student.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, epoch, history = ckpt["step"], ckpt["epoch"], ckpt["history"]
        log(f"resumed from {ckpt_path} at epoch {epoch}")

    report = step_reporter()
    report.start("distill", total, step)
    student.train()
    while epoch < cfg.epochs:
        rng = random.Random(cfg.seed * 1000 + epoch)  # an epoch's batches and hearing depend on nothing else
        hearing = student_hearing(cfg, teacher.cfg.features, examples, rng)
        order = list(range(len(groups)))
        rng.shuffle(order)
        report.epoch(epoch + 1, cfg.epochs)
        total_gap = 0.0
        for g in order:
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / total))
            batch = spoken_faster_or_slower([examples[i] for i in groups[g]], cfg, teacher.cfg.features, rng)
            gap = encoder_gap(student, teacher, batch, teacher.cfg.features, hearing)
            optimizer.zero_grad(set_to_none=True)
            gap.backward()
            optimizer.step()
            total_gap += gap.item()
            step += 1
            report.advance(gap.item())
        epoch += 1
        history.append({"epoch": epoch, "step": step, "encoder_gap": round(total_gap / len(groups), 5)})
        log(json.dumps(history[-1]))
        # the keys of a training checkpoint too (diffing.train.model_from_checkpoint reads it as one)
        save_checkpoint(ckpt_path, {"model": student.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                    "epoch": epoch, "history": history, "distill_config": cfg.to_json(),
                                    "model_config": student.cfg.to_json(), "compression": compression.state_dict(),
                                    "tokenizer": deployed.tokenizer.to_json()})
    report.finish()

    student.eval()
    device = export_model(student, deployed.tokenizer, deployed.model_id, deployed.version,
                          metadata={"distilled_from": deployed.content_hash(),
                                    "distilled_on": data_identity(cfg.train_manifest), "epochs": str(cfg.epochs)})
    path = out / "model.otam"
    save_model(device, path)
    return path
