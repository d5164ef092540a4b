"""Base-model training: streaming RNN-T with gradual magnitude pruning and
quantization-aware training, ending in an exported int8 device model.

    ota train --train work/corpus/base/train.jsonl --dev work/corpus/base/test.jsonl --out work/runs/base

Checkpoints (`last.pt`) carry the model config, the training config and the
identity of the data they were trained on; rerunning the same command
resumes from them.

Under `torchrun --nproc-per-node N` the same command trains data-parallel
(diffing/distributed.py): DistributedDataParallel, each global batch dealt
out by utterance, rank 0 the only writer.
"""
from __future__ import annotations

import io
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import xxhash

from device_agent.atomic import write_atomic
from device_agent.errors import ConfigError
from device_agent.model_config import LEVEL_KEYS, ModelConfig
from device_agent.model_format import load_model, save_model
from device_agent.tokenizer import CharTokenizer
from diffing import distributed
from diffing.compression import CompressionState, cubic_schedule
from diffing.data import feature_stats, load_examples, spec_augment, speed_perturb, vtlp
from diffing.export import export_model, float_model_from_device
from diffing.model import RNNT
from diffing.progress import step_reporter
from diffing.rnnt_loss import rnnt_loss
from diffing.room_augment import RoomAugmentConfig, RoomAugmenter
from diffing.threads import set_threads

TRAIN_CONFIG_VERSION = 1


@dataclass
class TrainConfig:
    train_manifest: str
    dev_manifest: str | None = None
    out_dir: str = "work/runs/base"
    model: ModelConfig = field(default_factory=ModelConfig)
    model_id: str = "speech-commands"
    version: int = 1
    epochs: int = 12
    max_frames: int = 2400  # padded encoder frames per batch
    lr: float = 2e-3
    warmup_steps: int = 300
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    target_sparsity: float = 0.5
    prune_start: float = 0.2  # fraction of training when pruning starts ...
    prune_end: float = 0.6  # ... and reaches the target
    qat_start: float = 0.7  # fraction of training when fake quantization turns on
    spec_augment: bool = True
    vtlp: float = 0.0  # max vocal-tract warp: alpha drawn from [1 - vtlp, 1 + vtlp] per utterance
    # Speed perturbation on features: alpha from [1 - speed, 1 + speed] scales frequencies and
    # duration together, like resampling audio (a slow, low voice is not always the same speaker).
    speed: float = 0.0
    # Rooms and microphones (diffing.room_augment): the share of utterances, drawn per epoch, heard
    # through reverberation, noise, microphone colour and a -30..+10 dB level (0: off).
    rooms: float = 0.0
    # Names (prefixes) of the parameters to train; empty: all. A fine-tune for a new front end can train
    # the encoder's first layer only, which keeps what the rest of the network knows.
    trainable: tuple[str, ...] = ()
    # Auxiliary CTC on the encoder (head discarded at export): on a small, repetitive
    # command grammar, RNN-T alone can settle into a language-model solution that
    # emits everything at frame 0; CTC forces the encoder to carry the acoustics.
    ctc_weight: float = 0.3
    pred_dropout: float = 0.2
    dev_utterances: int = 200  # decoded each epoch for a WER estimate
    seed: int = 0
    # Fine-tune from another run's checkpoint (weights, CTC head, pruning masks,
    # feature normalisation): a second stage on more data costs a fraction of a
    # fresh run. Masks only ever grow sparser.
    init_from: str | None = None
    threads: int = 0  # torch threads; 0: the cores other work leaves free (diffing.threads)
    device: str = "cpu"  # "cpu", "cuda" or "auto" (a GPU if one is visible)
    config_version: int = TRAIN_CONFIG_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_json(self.model)
        self.trainable = tuple(self.trainable)
        if not 0.0 <= self.rooms <= 1.0:
            raise ConfigError(f"rooms (share of augmented utterances) must be in [0, 1], got {self.rooms}")
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ConfigError(f"target_sparsity must be in [0, 1), got {self.target_sparsity}")
        if not 0.0 <= self.prune_start <= self.prune_end <= 1.0:
            raise ConfigError(f"need 0 <= prune_start <= prune_end <= 1, got {self.prune_start}, {self.prune_end}")
        if not 0.0 <= self.vtlp < 0.5 or not 0.0 <= self.speed < 0.5:
            raise ConfigError(f"vtlp and speed (max warps) must be in [0, 0.5), got {self.vtlp}, {self.speed}")
        if self.epochs < 1 or self.max_frames < 16 or self.lr <= 0:
            raise ConfigError("epochs >= 1, max_frames >= 16 and lr > 0 are required")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        if self.config_version != TRAIN_CONFIG_VERSION:
            raise ConfigError(f"train config version {self.config_version} is not {TRAIN_CONFIG_VERSION}")

    @classmethod
    def for_stage(cls, train_manifest: str, dev_manifest: str | None, out_dir: str, *, init_from: str | None = None,
                  **settings: object) -> "TrainConfig":
        """A first stage, or (with `init_from`) a fine-tune that starts pruned and quantization-aware:
        short warm-up, masks and fake quantization from step 0. Explicit settings take precedence."""
        stage = dict(init_from=init_from, warmup_steps=100, prune_start=0.0, prune_end=0.3, qat_start=0.0) \
            if init_from else {}
        return cls(train_manifest, dev_manifest, out_dir, **{**stage, **settings})

    @classmethod
    def settings_from_file(cls, path: str) -> dict:
        """Settings from a JSON file of TrainConfig fields (the data and run folder come from elsewhere)."""
        try:
            obj = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: expected a JSON object of training settings ({exc})") from exc
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}: expected a JSON object of training settings, got {type(obj).__name__}")
        known = {f.name for f in fields(cls)} - {"train_manifest", "dev_manifest", "out_dir", "init_from"}
        if set(obj) - known:
            raise ConfigError(f"{path}: unknown training settings {sorted(set(obj) - known)}; allowed: {sorted(known)}")
        return obj

    def to_json(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_json()
        return d

    @classmethod
    def from_json(cls, obj: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        if set(obj) - known:
            raise ConfigError(f"unknown train config keys {sorted(set(obj) - known)}")
        return cls(**obj)


RUNTIME_ONLY = ("threads", "dev_utterances", "out_dir", "device")  # may change between resumes


def _recipe(config: dict) -> dict:
    """The settings that define what is trained (a resume must not change them)."""
    return {k: v for k, v in config.items() if k not in RUNTIME_ONLY}


def data_identity(path: str) -> str:
    return xxhash.xxh64(Path(path).read_bytes()).hexdigest()


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def save_checkpoint(path: Path, payload: dict) -> None:
    """Atomic and durable: a kill or power loss mid-save leaves the previous epoch's checkpoint."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_atomic(path, buf.getbuffer())


@torch.no_grad()
def dev_wer(model: RNNT, examples: list, tokenizer: CharTokenizer) -> float:
    """Greedy float decoding (with the current masks and fake quantization)."""
    from device_agent.wer import word_errors
    from diffing.data import model_input

    model.eval()
    errors = words = 0
    for e in examples:
        feats = model_input(e.feats, model.cfg.features).to(model.frontend.mean.device)
        hyp = tokenizer.decode(model.greedy_decode(feats))
        errors += word_errors(e.text, hyp)
        words += len(e.text.split())
    model.train()
    return errors / max(words, 1)


class TrainLoss(torch.nn.Module):
    """One batch's loss (RNN-T plus auxiliary CTC) as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: RNNT, ctc_head: torch.nn.Linear, ctc_weight: float) -> None:
        super().__init__()
        self.model, self.ctc_head, self.ctc_weight = model, ctc_head, ctc_weight

    def forward(self, feats: torch.Tensor, targets: torch.Tensor, feat_lens: torch.Tensor,
                target_lens: torch.Tensor) -> torch.Tensor:
        model = self.model
        enc, _ = model.encoder(feats, None, model.weight_transform)  # (B, T, H)
        start = targets.new_zeros(targets.shape[0], 1)
        pred, _ = model.predict(torch.cat([start, targets], dim=1))  # (B, U+1, P)
        logits = model.joint_logits(enc[:, :, None, :], pred[:, None, :, :])  # (B, T, U+1, V)
        loss = rnnt_loss(logits, targets, feat_lens, target_lens)
        if self.ctc_weight > 0:
            ctc_log_probs = self.ctc_head(enc).log_softmax(-1).transpose(0, 1)  # (T, B, V)
            ctc = F.ctc_loss(ctc_log_probs, targets, feat_lens, target_lens,
                             blank=0, reduction="sum", zero_infinity=True) / len(targets)
            loss = loss + self.ctc_weight * ctc
        return loss


def same_but_front_end(a: ModelConfig, b: ModelConfig) -> bool:
    """Same network; the front end's level normaliser may differ (a fine-tune can switch it on)."""
    return replace(a, features=replace(a.features, **{k: getattr(b.features, k) for k in LEVEL_KEYS})) == b


def _initial_state(path: str) -> dict:
    """A checkpoint, or a device model (.otam) turned into one: dequantised weights, its zeros as the
    pruning masks, no CTC head (a fresh one is trained; it is discarded at export anyway)."""
    if Path(path).suffix != ".otam":
        return torch.load(path, map_location="cpu", weights_only=False)
    device = load_model(path)
    model = float_model_from_device(device)
    compression = CompressionState(model.named_weight_matrices())
    compression.masks = {name: w != 0 for name, w in model.named_weight_matrices().items()}
    return {"model": model.state_dict(), "compression": compression.state_dict(), "epoch": 0,
            "model_config": device.config.to_json()}


def _augmentation(cfg: TrainConfig, train_set: list, rng: random.Random) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Per-utterance transform of cached log-mel: rooms and microphones, then speed perturbation."""
    feats_cfg = cfg.model.features
    rooms = RoomAugmenter(feats_cfg, RoomAugmentConfig(), rng, [e.feats for e in train_set]) if cfg.rooms else None
    if not rooms and not cfg.speed:
        return None

    def transform(feats: torch.Tensor) -> torch.Tensor:
        if rooms and rng.random() < cfg.rooms:
            feats = rooms(feats)
        if cfg.speed:
            feats = speed_perturb(feats, feats_cfg, rng.uniform(1 - cfg.speed, 1 + cfg.speed))
        return feats
    return transform


@dataclass
class _Run:
    """What the epochs update: the model and its CTC head, the optimiser, the pruning state, the position."""

    model: RNNT
    ctc_head: torch.nn.Linear
    optimizer: torch.optim.Optimizer
    compression: CompressionState
    weights: dict[str, torch.Tensor]  # the prunable weight matrices, by name
    total_steps: int
    step: int = 0
    epoch: int = 0
    history: list[dict] = field(default_factory=list)


def train(cfg: TrainConfig, log: Callable[[str], None] = print, progress: bool = True) -> Path:
    """Train (or resume) and export; returns the path of the device model."""
    world = distributed.init(cfg.device)
    if not world.is_writer:  # one writer: logs, checkpoints and the export come from rank 0
        log, progress = (lambda _: None), False
    set_threads(cfg.threads)
    torch.set_flush_denormal(True)  # Adam state of pruned weights decays into denormals, which are slow
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = CharTokenizer()
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise ConfigError(f"model vocab_size {cfg.model.vocab_size} != tokenizer's {tokenizer.vocab_size}")
    identity = {"train": data_identity(cfg.train_manifest),
                "dev": data_identity(cfg.dev_manifest) if cfg.dev_manifest else None}

    distributed.require_same("training settings or data", {**_recipe(cfg.to_json()), "data": identity})

    # 1) data: cached log-mel features (rank 0 fills the cache first), normalisation statistics from training data
    train_set, dev_set = _load_data(cfg, world, tokenizer, out, progress)

    # 2) model, optimiser, compression state; resume if a checkpoint exists
    run, stats = _build(cfg, train_set, world.device)
    ckpt_path = out / "last.pt"
    _resume_or_init(run, cfg, ckpt_path, identity, stats, log)

    # 3) epochs: prune on the cubic schedule, fake-quantize late, checkpoint every epoch
    _train_epochs(run, cfg, world, train_set, dev_set, tokenizer, identity, ckpt_path, log)

    # 4) export (rank 0): masked weights -> per-channel int8 device model
    if not world.is_writer:
        return out / "model.otam"
    device = export_checkpoint(ckpt_path, out / "model.otam")
    write_atomic(out / "summary.json", json.dumps({"train_config": cfg.to_json(), "data_identity": identity,
                                                   "history": run.history, "content_hash": device,
                                                   "model": str(out / "model.otam")}, indent=2).encode())
    return out / "model.otam"


def _load_data(cfg: TrainConfig, world: distributed.World, tokenizer: CharTokenizer, out: Path,
               progress: bool) -> tuple[list, list]:
    """Training examples on every rank, the dev subset on rank 0 (features cached under out/cache)."""
    feats_cfg = cfg.model.features
    if not world.is_writer:
        distributed.barrier("feature extraction")
    train_set = load_examples(cfg.train_manifest, tokenizer, feats_cfg, out / "cache", progress)
    dev_set = load_examples(cfg.dev_manifest, tokenizer, feats_cfg, out / "cache", progress) \
        if cfg.dev_manifest and world.is_writer else []
    if world.is_writer:
        distributed.barrier("feature extraction")
    dev_set = dev_set[:: max(1, len(dev_set) // cfg.dev_utterances)][: cfg.dev_utterances]
    return train_set, dev_set


def _build(cfg: TrainConfig, train_set: list, dev: torch.device) -> tuple[_Run, tuple[torch.Tensor, torch.Tensor]]:
    """A fresh model (seeded), CTC head, AdamW and compression state on `dev`; also the feature statistics."""
    torch.manual_seed(cfg.seed)
    model = RNNT(cfg.model)
    mean, inv_std = feature_stats(train_set, cfg.model.features)
    model.frontend.mean.copy_(mean)
    model.frontend.inv_std.copy_(inv_std)
    model.pred_dropout = cfg.pred_dropout
    ctc_head = torch.nn.Linear(cfg.model.enc_hidden, cfg.model.vocab_size)
    model.to(dev)
    ctc_head.to(dev)
    weights = model.named_weight_matrices()
    compression = CompressionState(weights)
    model.weight_transform = compression
    for name, p in model.named_parameters():
        p.requires_grad_(not cfg.trainable or name.startswith(tuple(cfg.trainable)))
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay + [ctc_head.weight], "weight_decay": cfg.weight_decay},
                                   {"params": no_decay + [ctc_head.bias], "weight_decay": 0.0}], lr=cfg.lr)
    n_batches = len(distributed.global_groups(train_set, cfg.max_frames, cfg.model.features.stack))
    run = _Run(model, ctc_head, optimizer, compression, weights, n_batches * cfg.epochs)
    return run, (mean, inv_std)


def _resume_or_init(run: _Run, cfg: TrainConfig, ckpt_path: Path, identity: dict,
                    stats: tuple[torch.Tensor, torch.Tensor], log: Callable[[str], None]) -> None:
    """Continue from `ckpt_path` if rank 0 has one (same data and recipe only), else start from
    `cfg.init_from` if given."""
    ckpt = distributed.from_writer(lambda: torch.load(ckpt_path, map_location="cpu", weights_only=False)
                                   if ckpt_path.exists() else None)
    if ckpt is not None:
        if ckpt["data_identity"] != identity or _recipe(ckpt["train_config"]) != _recipe(cfg.to_json()):
            raise ConfigError(f"{ckpt_path} was trained with different data or settings; "
                              "use a new --out directory or delete the checkpoint")
        run.model.load_state_dict(ckpt["model"])
        run.ctc_head.load_state_dict(ckpt["ctc_head"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.compression.load_state_dict(ckpt["compression"])
        run.step, run.epoch, run.history = ckpt["step"], ckpt["epoch"], ckpt["history"]
        log(f"resumed from {ckpt_path} at epoch {run.epoch}, step {run.step}")
    elif cfg.init_from:
        init = _initial_state(cfg.init_from)
        if not same_but_front_end(ModelConfig.from_json(init["model_config"]), cfg.model):
            raise ConfigError(f"{cfg.init_from} has a different model config than this run")
        run.model.load_state_dict(init["model"])
        if "ctc_head" in init:
            run.ctc_head.load_state_dict(init["ctc_head"])
        run.compression.load_state_dict(init["compression"])
        if ModelConfig.from_json(init["model_config"]).features != cfg.model.features:
            # a new front end: the encoder reads differently distributed features, so normalise with this
            # front end's statistics and let the fine-tune adapt the first layer
            run.model.frontend.mean.copy_(stats[0])
            run.model.frontend.inv_std.copy_(stats[1])
        log(f"initialised from {cfg.init_from} (epoch {init['epoch']}, {run.compression.sparsity():.1%} zeros)")


def _train_epochs(run: _Run, cfg: TrainConfig, world: distributed.World, train_set: list, dev_set: list,
                  tokenizer: CharTokenizer, identity: dict, ckpt_path: Path, log: Callable[[str], None]) -> None:
    """From `run.epoch` to `cfg.epochs`; rank 0 logs, scores the dev set and checkpoints after each epoch."""
    rng = random.Random(cfg.seed + run.epoch)
    augment_rng = distributed.augmentation_rng(rng)  # rng itself in one process; rng orders the batches
    step_loss = distributed.wrap(TrainLoss(run.model, run.ctc_head, cfg.ctc_weight))
    augment = _augmentation(cfg, train_set, augment_rng)
    run.model.train()
    report = step_reporter()
    report.start("train", run.total_steps, run.step)
    while run.epoch < cfg.epochs:
        report.epoch(run.epoch + 1, cfg.epochs)
        started, total_loss, n = time.time(), 0.0, 0
        for batch, weight in distributed.local_batches(train_set, cfg.max_frames, cfg.model.features, rng, augment):
            loss = _train_step(run, cfg, world.device, step_loss, batch, weight, augment_rng)
            total_loss += loss * weight  # summed over ranks: the global batch's mean loss
            n += 1
            run.step += 1
            report.advance(loss)
            if run.step % 100 == 0:
                log(json.dumps({"step": run.step, "loss": round(total_loss / n, 3),
                                "lr": round(lr_at(run.step, run.total_steps, cfg), 6),
                                "sparsity": round(run.compression.sparsity(), 3), "qat": run.compression.quantize}))
        run.epoch += 1
        total_loss = distributed.mean_over_ranks(total_loss)
        wer = dev_wer(run.model, dev_set, tokenizer) if dev_set else float("nan")
        if not world.is_writer:
            distributed.barrier(f"epoch {run.epoch}'s checkpoint")  # wait until rank 0 has written it
            continue
        record = {"epoch": run.epoch, "step": run.step, "loss": round(total_loss / max(n, 1), 4),
                  "dev_wer": round(wer, 4), "sparsity": round(run.compression.sparsity(), 4),
                  "qat": run.compression.quantize, "seconds": round(time.time() - started, 1)}
        run.history.append(record)
        log(json.dumps(record))
        save_checkpoint(ckpt_path, {"model": run.model.state_dict(), "ctc_head": run.ctc_head.state_dict(),
                                    "optimizer": run.optimizer.state_dict(),
                                    "compression": run.compression.state_dict(), "step": run.step,
                                    "epoch": run.epoch, "history": run.history, "train_config": cfg.to_json(),
                                    "model_config": cfg.model.to_json(), "tokenizer": tokenizer.to_json(),
                                    "data_identity": identity})
        distributed.barrier(f"epoch {run.epoch}'s checkpoint")
    report.finish()


def _compress_for_step(run: _Run, cfg: TrainConfig) -> None:
    """Prune towards the cubic schedule's sparsity, switch fake quantization on late, set the learning rate."""
    progress_frac = run.step / run.total_steps
    target = cubic_schedule((progress_frac - cfg.prune_start) / max(1e-9, cfg.prune_end - cfg.prune_start),
                            cfg.target_sparsity) if progress_frac >= cfg.prune_start else 0.0
    if target > 0 and (run.step % 50 == 0 or target == cfg.target_sparsity) and \
            target - run.compression.sparsity() > 1e-3:  # never un-prune (fine-tunes start sparse)
        run.compression.prune_to(run.weights, target)
    run.compression.quantize = progress_frac >= cfg.qat_start
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(run.step, run.total_steps, cfg)


def _train_step(run: _Run, cfg: TrainConfig, dev: torch.device, step_loss: Callable[..., torch.Tensor], batch,
                weight: float, augment_rng: random.Random) -> float:
    """One optimiser step on this rank's part of a global batch; returns its loss."""
    _compress_for_step(run, cfg)
    feats_cfg = cfg.model.features
    feats = run.model.normalize(vtlp(batch.feats, feats_cfg, augment_rng, cfg.vtlp).to(dev))
    if cfg.spec_augment:
        feats = torch.stack([spec_augment(f, feats_cfg.n_mels, augment_rng) for f in feats])
    # weight: this rank's share of the global batch, so averaged gradients are the global mean's
    loss = distributed.collective("a training step", step_loss, feats, batch.targets.to(dev),
                                  batch.feat_lens.to(dev), batch.target_lens.to(dev))
    run.optimizer.zero_grad(set_to_none=True)
    distributed.collective("a gradient all-reduce", (loss * weight).backward)
    torch.nn.utils.clip_grad_norm_([*run.model.parameters(), *run.ctc_head.parameters()], cfg.grad_clip)
    run.optimizer.step()
    with torch.no_grad():  # keep pruned weights exactly zero after the update
        for name, w in run.weights.items():
            w.mul_(run.compression.masks[name])
    return loss.item()


def model_from_checkpoint(ckpt_path: str | Path) -> tuple[RNNT, CharTokenizer, dict]:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model = RNNT(ModelConfig.from_json(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    compression = CompressionState(model.named_weight_matrices())
    compression.load_state_dict(ckpt["compression"])
    with torch.no_grad():
        for name, w in model.named_weight_matrices().items():
            w.mul_(compression.masks[name])
    return model.eval(), CharTokenizer.from_json(ckpt["tokenizer"]), ckpt


def export_checkpoint(ckpt_path: str | Path, out_path: str | Path, model_id: str | None = None,
                      version: int | None = None) -> str:
    """Checkpoint -> .otam device model; returns its content hash."""
    model, tokenizer, ckpt = model_from_checkpoint(ckpt_path)
    tc = ckpt["train_config"]
    device = export_model(model, tokenizer, model_id or tc["model_id"], version if version is not None else tc["version"],
                          metadata={"trained_on": ckpt["data_identity"]["train"], "epochs": str(ckpt["epoch"])})
    return save_model(device, out_path)
