"""The engines a user could run the device model with instead of our runtime.

Each peer is built from the same device model's dequantized weights and
decodes with the same greedy streaming search as the device runtime: the
encoder runs a whole chunk (here: an utterance) per call, the joint once per
frame and emitted symbol, the prediction network once per emitted token.

- torch fp32: nn.LSTM / nn.Linear modules (mkldnn off, the fair setting for
  small recurrent steps).
- torch dynamic int8: `torch.ao.quantization.quantize_dynamic` of those modules
  (qint8 weights, activations quantized per call).
- ONNX Runtime fp32: three graphs (encoder over a chunk with ONNX LSTM ops,
  one prediction step, one joint step with its argmax), one thread.
- ONNX Runtime dynamic int8: the same graphs through
  `onnxruntime.quantization.quantize_dynamic` (per-channel qint8:
  DynamicQuantizeLSTM and integer matmuls).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn as nn

from device_agent.device_model import DeviceModel

_GATES_TORCH_TO_ONNX = (0, 3, 1, 2)  # torch i f g o -> ONNX i o f c


class Peer(Protocol):
    def encode(self, feats: np.ndarray) -> np.ndarray: ...  # (T, D) -> (T, J) joint-projected
    def start(self) -> tuple[np.ndarray, object]: ...  # (pred_out, state) after the start symbol
    def predict(self, token: int, state: object) -> tuple[np.ndarray, object]: ...
    def best(self, enc_row: np.ndarray, pred_out: np.ndarray) -> int: ...  # argmax of the joint
    def weight_bytes(self) -> int: ...


def greedy_decode(peer: Peer, feats: np.ndarray, max_symbols: int, blank: int = 0) -> list[int]:
    """The device runtime's greedy search, step by step from Python."""
    enc = peer.encode(feats)
    pred_out, state = peer.start()
    tokens: list[int] = []
    for t in range(enc.shape[0]):
        for _ in range(max_symbols):
            token = peer.best(enc[t:t + 1], pred_out)
            if token == blank:
                break
            tokens.append(token)
            pred_out, state = peer.predict(token, state)
    return tokens


def _dequantized(device: DeviceModel) -> dict[str, np.ndarray]:
    state = {name: w.dequantize() for name, w in device.weights.items()}
    state.update({name: np.asarray(t, np.float32) for name, t in device.floats.items()})
    return state


class TorchModules(nn.Module):
    """The device model as standard torch modules (what quantize_dynamic understands)."""

    def __init__(self, device: DeviceModel) -> None:
        super().__init__()
        cfg, w = device.config, _dequantized(device)
        self.n_mels = cfg.features.n_mels
        self.register_buffer("mean", torch.from_numpy(w["frontend.mean"]))
        self.register_buffer("inv_std", torch.from_numpy(w["frontend.inv_std"]))
        self.encoder = nn.LSTM(cfg.features.stacked_dim, cfg.enc_hidden, cfg.enc_layers, batch_first=True)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.predictor = nn.LSTM(cfg.embed_dim, cfg.pred_hidden, 1, batch_first=True)
        self.enc_proj = nn.Linear(cfg.enc_hidden, cfg.joint_dim)
        self.pred_proj = nn.Linear(cfg.pred_hidden, cfg.joint_dim)
        self.out = nn.Linear(cfg.joint_dim, cfg.vocab_size)
        state = {f"encoder.{k.split('.', 1)[1]}": v for k, v in w.items() if k.startswith("encoder.")}
        state.update({k.replace("predictor.", "predictor.", 1): v for k, v in w.items()
                      if k.startswith("predictor.") and "embed" not in k})
        state.update({"embed.weight": w["predictor.embed.weight"]})
        state.update({k.replace("joint.", ""): v for k, v in w.items() if k.startswith("joint.")})
        state.update({"mean": w["frontend.mean"], "inv_std": w["frontend.inv_std"]})
        self.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        self.eval()


class TorchPeer:
    def __init__(self, modules: nn.Module) -> None:
        self.m = modules

    @torch.no_grad()
    def encode(self, feats: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(feats)
        x = ((x.reshape(x.shape[0], -1, self.m.n_mels) - self.m.mean) * self.m.inv_std).reshape(1, x.shape[0], -1)
        out, _ = self.m.encoder(x)
        return self.m.enc_proj(out[0]).numpy()

    @torch.no_grad()
    def predict(self, token: int, state: object) -> tuple[np.ndarray, object]:
        out, state = self.m.predictor(self.m.embed(torch.tensor([[token]])), state)
        return self.m.pred_proj(out[0]).numpy(), state

    def start(self) -> tuple[np.ndarray, object]:
        return self.predict(0, None)

    @torch.no_grad()
    def best(self, enc_row: np.ndarray, pred_out: np.ndarray) -> int:
        return int(self.m.out(torch.tanh(torch.from_numpy(enc_row + pred_out))).argmax())

    def weight_bytes(self) -> int:
        """Bytes of the weights the modules keep: int8 values, scales and zero points of
        quantized tensors (from the packed parameters), float tensors as they are."""
        total = 0
        for module in self.m.modules():
            if hasattr(module, "get_weight"):  # dynamically quantized LSTM
                tensors = [*module.get_weight().values(), *module.get_bias().values()]
            elif callable(getattr(module, "weight", None)):  # dynamically quantized Linear
                tensors = [module.weight(), module.bias()]
            else:
                tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            total += sum(_tensor_bytes(t) for t in tensors if t is not None)
        return total


def _tensor_bytes(t: torch.Tensor) -> int:
    if not t.is_quantized:
        return t.nbytes
    if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return t.int_repr().nbytes + t.q_per_channel_scales().nbytes + t.q_per_channel_zero_points().nbytes
    return t.int_repr().nbytes + 16  # one scale and zero point


def torch_fp32(device: DeviceModel) -> TorchPeer:
    return TorchPeer(TorchModules(device))


def torch_dynamic_int8(device: DeviceModel) -> TorchPeer:
    from torch.ao.quantization import quantize_dynamic

    modules = quantize_dynamic(TorchModules(device), {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    return TorchPeer(modules)


# -- ONNX Runtime ----------------------------------------------------------------
def _onnx_lstm_weights(w: dict[str, np.ndarray], prefix: str, layer: int) -> tuple[np.ndarray, ...]:
    def reorder(a: np.ndarray) -> np.ndarray:
        return np.concatenate([blk for blk in (np.split(a, 4, axis=0)[i] for i in _GATES_TORCH_TO_ONNX)])

    W = reorder(w[f"{prefix}.weight_ih_l{layer}"])[None]
    R = reorder(w[f"{prefix}.weight_hh_l{layer}"])[None]
    B = np.concatenate([reorder(w[f"{prefix}.bias_ih_l{layer}"]), reorder(w[f"{prefix}.bias_hh_l{layer}"])])[None]
    return W, R, B


def build_onnx_graphs(device: DeviceModel, out_dir: Path) -> dict[str, Path]:
    """Encoder (chunk), prediction step and joint step as fp32 ONNX files."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cfg, w = device.config, _dequantized(device)
    H, P, J, V = cfg.enc_hidden, cfg.pred_hidden, cfg.joint_dim, cfg.vocab_size
    D, n_mels = cfg.features.stacked_dim, cfg.features.n_mels
    F = TensorProto.FLOAT

    def init(name: str, a: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.ascontiguousarray(a), name)

    def save(name: str, nodes: list, inputs: list, outputs: list, inits: list) -> Path:
        graph = helper.make_graph(nodes, name, inputs, outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        path = out_dir / f"{name}.onnx"
        onnx.save(model, str(path))
        return path

    # encoder over a chunk: feats (T, D) -> enc (T, J), state per layer in and out
    nodes = [helper.make_node("Reshape", ["feats", "mel_shape"], ["mels"]),
             helper.make_node("Sub", ["mels", "mean"], ["centred"]),
             helper.make_node("Mul", ["centred", "inv_std"], ["normed"]),
             helper.make_node("Reshape", ["normed", "seq_shape"], ["x0"])]
    inits = [init("mel_shape", np.array([-1, D // n_mels, n_mels], np.int64)), init("mean", w["frontend.mean"]),
             init("inv_std", w["frontend.inv_std"]), init("seq_shape", np.array([-1, 1, D], np.int64)),
             init("squeeze_axes", np.array([1], np.int64)), init("flat_shape", np.array([-1, H], np.int64))]
    inputs = [helper.make_tensor_value_info("feats", F, ["T", D])]
    outputs = [helper.make_tensor_value_info("enc", F, ["T", J])]
    for layer in range(cfg.enc_layers):
        W, R, B = _onnx_lstm_weights(w, "encoder", layer)
        inits += [init(f"W{layer}", W), init(f"R{layer}", R), init(f"B{layer}", B)]
        nodes += [helper.make_node("LSTM", [f"x{layer}", f"W{layer}", f"R{layer}", f"B{layer}", "", f"h{layer}",
                                            f"c{layer}"], [f"y{layer}", f"h{layer}_out", f"c{layer}_out"],
                                   hidden_size=H),
                  helper.make_node("Squeeze", [f"y{layer}", "squeeze_axes"], [f"x{layer + 1}"])]
        inputs += [helper.make_tensor_value_info(f"{s}{layer}", F, [1, 1, H]) for s in ("h", "c")]
        outputs += [helper.make_tensor_value_info(f"{s}{layer}_out", F, [1, 1, H]) for s in ("h", "c")]
    nodes += [helper.make_node("Reshape", [f"x{cfg.enc_layers}", "flat_shape"], ["enc_h"]),
              helper.make_node("MatMul", ["enc_h", "enc_proj_w"], ["enc_mm"]),
              helper.make_node("Add", ["enc_mm", "enc_proj_b"], ["enc"])]
    inits += [init("enc_proj_w", w["joint.enc_proj.weight"].T), init("enc_proj_b", w["joint.enc_proj.bias"])]
    paths = {"encoder": save("encoder", nodes, inputs, outputs, inits)}

    # one prediction step: token (1,) -> pred_out (1, J), state in and out
    W, R, B = _onnx_lstm_weights(w, "predictor", 0)
    nodes = [helper.make_node("Gather", ["embed", "token"], ["emb"]),
             helper.make_node("Reshape", ["emb", "step_shape"], ["x"]),
             helper.make_node("LSTM", ["x", "W", "R", "B", "", "h", "c"], ["y", "h_out", "c_out"], hidden_size=P),
             helper.make_node("Reshape", ["y", "row_shape"], ["y_row"]),
             helper.make_node("MatMul", ["y_row", "proj_w"], ["proj_mm"]),
             helper.make_node("Add", ["proj_mm", "proj_b"], ["pred_out"])]
    inits = [init("embed", w["predictor.embed.weight"]), init("step_shape", np.array([1, 1, -1], np.int64)),
             init("row_shape", np.array([1, P], np.int64)), init("W", W), init("R", R), init("B", B),
             init("proj_w", w["joint.pred_proj.weight"].T), init("proj_b", w["joint.pred_proj.bias"])]
    inputs = [helper.make_tensor_value_info("token", TensorProto.INT64, [1])]
    inputs += [helper.make_tensor_value_info(s, F, [1, 1, P]) for s in ("h", "c")]
    outputs = [helper.make_tensor_value_info("pred_out", F, [1, J])]
    outputs += [helper.make_tensor_value_info(f"{s}_out", F, [1, 1, P]) for s in ("h", "c")]
    paths["predictor"] = save("predictor", nodes, inputs, outputs, inits)

    # one joint step with its argmax: enc row (1, J) + pred_out (1, J) -> token (1,)
    nodes = [helper.make_node("Add", ["enc", "pred"], ["sum"]), helper.make_node("Tanh", ["sum"], ["hidden"]),
             helper.make_node("MatMul", ["hidden", "out_w"], ["out_mm"]),
             helper.make_node("Add", ["out_mm", "out_b"], ["logits"]),
             helper.make_node("ArgMax", ["logits"], ["token"], axis=1, keepdims=0)]
    inits = [init("out_w", w["joint.out.weight"].T), init("out_b", w["joint.out.bias"])]
    inputs = [helper.make_tensor_value_info(s, F, [1, J]) for s in ("enc", "pred")]
    paths["joint"] = save("joint", nodes, inputs, [helper.make_tensor_value_info("token", TensorProto.INT64, [1])],
                          inits)
    return paths


def quantize_onnx_graphs(paths: dict[str, Path], out_dir: Path) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = {}
    for name, path in paths.items():
        quantized[name] = out_dir / f"{name}.int8.onnx"
        quantize_dynamic(path, quantized[name], per_channel=True, weight_type=QuantType.QInt8)
    return quantized


class OnnxPeer:
    def __init__(self, paths: dict[str, Path], enc_layers: int, enc_hidden: int, pred_hidden: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.paths = paths
        self.enc, self.pred, self.joint = (ort.InferenceSession(str(paths[n]), opts, providers=["CPUExecutionProvider"])
                                           for n in ("encoder", "predictor", "joint"))
        self.enc_layers, self.enc_hidden, self.pred_hidden = enc_layers, enc_hidden, pred_hidden

    def encode(self, feats: np.ndarray) -> np.ndarray:
        zeros = np.zeros((1, 1, self.enc_hidden), np.float32)
        feeds = {"feats": feats, **{f"{s}{i}": zeros for i in range(self.enc_layers) for s in ("h", "c")}}
        return self.enc.run(["enc"], feeds)[0]

    def predict(self, token: int, state: object) -> tuple[np.ndarray, object]:
        h, c = state
        pred_out, h, c = self.pred.run(None, {"token": np.array([token], np.int64), "h": h, "c": c})
        return pred_out, (h, c)

    def start(self) -> tuple[np.ndarray, object]:
        zeros = np.zeros((1, 1, self.pred_hidden), np.float32)
        return self.predict(0, (zeros, zeros))

    def best(self, enc_row: np.ndarray, pred_out: np.ndarray) -> int:
        return int(self.joint.run(None, {"enc": enc_row, "pred": pred_out})[0][0])

    def weight_bytes(self) -> int:
        import onnx
        from onnx import numpy_helper

        total = 0
        for path in self.paths.values():
            for tensor in onnx.load(str(path)).graph.initializer:
                array = numpy_helper.to_array(tensor)
                if array.size > 3:  # skip shape constants
                    total += array.nbytes
        return total


def onnx_peer(paths: dict[str, Path], device: DeviceModel) -> OnnxPeer:
    cfg = device.config
    return OnnxPeer(paths, cfg.enc_layers, cfg.enc_hidden, cfg.pred_hidden)


PeerFactory = Callable[[DeviceModel], Peer]
