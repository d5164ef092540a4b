"""Float streaming RNN-T (the trainable twin of the device model).

Parameter names equal the device layout (`device_agent.model_config.tensor_layout`),
so export and import are name-for-name. LSTMs call `torch.lstm` with explicit
weight lists, which lets training substitute pruned / fake-quantized weights
(`weight_transform`) without touching module internals.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from device_agent.model_config import ModelConfig, tensor_layout, weight_names

WeightTransform = Callable[[str, torch.Tensor], torch.Tensor]


class LSTMStack(nn.Module):
    """Unidirectional LSTM layers with nn.LSTM's parameter names."""

    def __init__(self, prefix: str, input_dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.prefix, self.hidden, self.layers = prefix, hidden, layers
        bound = hidden ** -0.5
        for layer in range(layers):
            in_dim = input_dim if layer == 0 else hidden
            for name, shape in ((f"weight_ih_l{layer}", (4 * hidden, in_dim)), (f"weight_hh_l{layer}", (4 * hidden, hidden)),
                                (f"bias_ih_l{layer}", (4 * hidden,)), (f"bias_hh_l{layer}", (4 * hidden,))):
                self.register_parameter(name, nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None,
                transform: WeightTransform | None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        # x: (B, T, D) -> (B, T, H); state: (h, c) each (layers, B, H)
        if state is None:
            zeros = x.new_zeros(self.layers, x.shape[0], self.hidden)
            state = (zeros, zeros)
        weights = []
        for layer in range(self.layers):
            for name in (f"weight_ih_l{layer}", f"weight_hh_l{layer}", f"bias_ih_l{layer}", f"bias_hh_l{layer}"):
                w = getattr(self, name)
                if transform is not None and name.startswith("weight"):
                    w = transform(f"{self.prefix}.{name}", w)
                weights.append(w)
        out, h, c = torch.lstm(x, state, weights, True, self.layers, 0.0, self.training, False, True)
        return out, (h, c)


class Predictor(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.lstm = LSTMStack("predictor", cfg.embed_dim, cfg.pred_hidden, 1)


class Joint(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.enc_proj = nn.Linear(cfg.enc_hidden, cfg.joint_dim)
        self.pred_proj = nn.Linear(cfg.pred_hidden, cfg.joint_dim)
        self.out = nn.Linear(cfg.joint_dim, cfg.vocab_size)


class RNNT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_mels = cfg.features.n_mels
        self.frontend = nn.Module()
        self.frontend.register_buffer("mean", torch.zeros(n_mels))
        self.frontend.register_buffer("inv_std", torch.ones(n_mels))
        self.encoder = LSTMStack("encoder", cfg.features.stacked_dim, cfg.enc_hidden, cfg.enc_layers)
        self.predictor = Predictor(cfg)
        self.joint = Joint(cfg)
        self.weight_transform: WeightTransform | None = None
        self.pred_dropout = 0.0  # training only: keeps the prediction net from becoming a pure LM

    # -- naming: device layout names <-> module parameters -------------------
    def device_state(self) -> dict[str, torch.Tensor]:
        """Tensors under their device-layout names."""
        state = {k.replace("predictor.lstm.", "predictor."): v for k, v in self.state_dict().items()}
        assert set(state) == set(tensor_layout(self.cfg)), "model and device layout disagree"
        return state

    @staticmethod
    def module_path(device_name: str) -> str:
        """Device-layout tensor name -> this module's parameter path."""
        inside_lstm = device_name.startswith("predictor.") and not device_name.startswith("predictor.embed.")
        return device_name.replace("predictor.", "predictor.lstm.") if inside_lstm else device_name

    def load_device_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of `device_state`."""
        self.load_state_dict({self.module_path(k): v for k, v in state.items()})

    def named_weight_matrices(self) -> dict[str, nn.Parameter]:
        params = {k.replace("predictor.lstm.", "predictor."): p for k, p in self.named_parameters()}
        return {name: params[name] for name in weight_names(self.cfg)}

    def _w(self, name: str, w: torch.Tensor) -> torch.Tensor:
        return w if self.weight_transform is None else self.weight_transform(name, w)

    # -- computation -----------------------------------------------------------
    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        # feats: (B, T, stack * n_mels); statistics are per mel bin
        shape = feats.shape
        x = feats.reshape(*shape[:-1], -1, self.cfg.features.n_mels)
        return ((x - self.frontend.mean) * self.frontend.inv_std).reshape(shape)

    def encode(self, feats: torch.Tensor, state=None):  # type: ignore[no-untyped-def]
        """(B, T, D) stacked features -> (B, T, H) encoder output, new state."""
        return self.encoder(self.normalize(feats), state, self.weight_transform)

    def predict(self, tokens: torch.Tensor, state=None):  # type: ignore[no-untyped-def]
        """(B, U) token ids (0 = blank/start) -> (B, U, P), new state."""
        emb = F.embedding(tokens, self._w("predictor.embed.weight", self.predictor.embed.weight))
        emb = F.dropout(emb, self.pred_dropout, self.training)
        return self.predictor.lstm(emb, state, self.weight_transform)

    def joint_logits(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """enc (..., H), pred (..., P) broadcastable -> logits (..., V)."""
        j = self.joint
        e = F.linear(enc, self._w("joint.enc_proj.weight", j.enc_proj.weight), j.enc_proj.bias)
        p = F.linear(pred, self._w("joint.pred_proj.weight", j.pred_proj.weight), j.pred_proj.bias)
        return F.linear(torch.tanh(e + p), self._w("joint.out.weight", j.out.weight), j.out.bias)

    def forward(self, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """feats (B, T, D), targets (B, U) -> lattice logits (B, T, U+1, V)."""
        enc, _ = self.encode(feats)  # (B, T, H)
        start = targets.new_zeros(targets.shape[0], 1)
        pred, _ = self.predict(torch.cat([start, targets], dim=1))  # (B, U+1, P)
        return self.joint_logits(enc[:, :, None, :], pred[:, None, :, :])

    @torch.no_grad()
    def greedy_decode(self, feats: torch.Tensor) -> list[int]:
        """Frame-by-frame greedy decoding of one utterance (T, D): the fp32 baseline."""
        enc_state = None
        pred, pred_state = self.predict(torch.zeros(1, 1, dtype=torch.long, device=feats.device))
        hyp: list[int] = []
        for t in range(feats.shape[0]):
            enc, enc_state = self.encode(feats[None, t:t + 1], enc_state)
            for _ in range(self.cfg.max_symbols_per_step):
                token = int(self.joint_logits(enc[0, 0], pred[0, 0]).argmax())
                if token == 0:
                    break
                hyp.append(token)
                pred, pred_state = self.predict(torch.tensor([[token]], device=feats.device), pred_state)
        return hyp
