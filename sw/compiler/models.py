"""The demo's models: an MLP and a small CNN trained on scikit-learn's digits, exported to ONNX.

Everything here is the repository's own numpy code: no downloads (scikit-learn
ships the 1797 8x8 digit images), no deep-learning framework.  Training is
deterministic for a given seed on a given machine and takes a few seconds.

* :func:`load_digits_split` — the fixed train/validation split, pixels scaled to ``[0, 1]``.
* :class:`MLP` (``64 -> 64 -> 32 -> 10``, ReLU) and :class:`CNN`
  (``conv 3x3, 8 ch -> ReLU -> conv 3x3, 16 ch -> ReLU -> maxpool 2x2 -> flatten -> dense 10``,
  unpadded by default: 8x8 -> 6x6 -> 4x4 -> 2x2),
  each with a numpy forward pass, backpropagation, and :meth:`~MLP.to_onnx`.
* :func:`train` — mini-batch Adam on the softmax cross-entropy; :func:`train_mlp`, :func:`train_cnn`.
* :func:`calibration_set` — training images for the quantizer.
* :func:`check_export` — the exported model, run by onnxruntime, against the numpy model.

The ONNX graphs are written the way ``torch.onnx.export`` writes the same
networks: opset 17, a symbolic batch dimension, ``Gemm(transB=1)`` with
``(out, in)`` weights for dense layers, ``Conv``/``Relu``/``MaxPool``/``Flatten``,
node names like ``/fc1/Gemm`` and logits as the output (optionally a final
``Softmax``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from braze.isa.errors import BrazeError

#: Opset of the exported models (what current exporters write by default).
OPSET = 17
#: The ONNX IR version of the exported files: what onnxruntime 1.18 and later read.
IR_VERSION = 8
INPUT_NAME = "x"
OUTPUT_NAME = "logits"
CLASSES = 10
IMAGE_SIZE = 8


class ExportMismatch(BrazeError):
    """onnxruntime's outputs of an exported model differ from the numpy model's."""


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DigitsSplit:
    """The digits data set split once: flat ``(n, 64)`` float32 pixels in ``[0, 1]``, int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


@functools.cache
def load_digits_split(validation_fraction: float = 0.2, seed: int = 0) -> DigitsSplit:
    """scikit-learn's bundled digits, shuffled with ``seed`` and split; the last part validates.

    The arrays are read-only (the split is cached and shared).
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie in (0, 1), not {validation_fraction!r}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = round(len(x) * validation_fraction)
    train, val = order[:-n_val], order[-n_val:]
    arrays = [x[train], y[train], x[val], y[val]]
    for array in arrays:
        array.setflags(write=False)
    return DigitsSplit(*arrays)


# ---------------------------------------------------------------------------------------------------
# Layers: forward and backward in numpy
# ---------------------------------------------------------------------------------------------------

def _im2col(x: np.ndarray, k: int, pad: int) -> np.ndarray:
    """``(n, c, h, w) -> (n, ho, wo, c*k*k)``, patch elements in OIHW weight order (c, ky, kx)."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    cols = np.empty((n, c, k, k, ho, wo), dtype=x.dtype)
    for ky in range(k):
        for kx in range(k):
            cols[:, :, ky, kx] = padded[:, :, ky:ky + ho, kx:kx + wo]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n, ho, wo, c * k * k)


def _col2im(cols: np.ndarray, shape: tuple[int, int, int, int], k: int, pad: int) -> np.ndarray:
    """Adjoint of :func:`_im2col`: scatter-add patch gradients back onto the input."""
    n, c, h, w = shape
    ho, wo = cols.shape[1:3]
    patches = cols.reshape(n, ho, wo, c, k, k).transpose(0, 3, 4, 5, 1, 2)
    padded = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    for ky in range(k):
        for kx in range(k):
            padded[:, :, ky:ky + ho, kx:kx + wo] += patches[:, :, ky, kx]
    return padded[:, :, pad:pad + h, pad:pad + w]


def _conv_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, pad: int):
    """2-D convolution, stride 1, as ONNX Conv (cross-correlation); returns output and cache."""
    k = weight.shape[-1]
    cols = _im2col(x, k, pad)
    out = cols @ weight.reshape(len(weight), -1).T + bias
    return out.transpose(0, 3, 1, 2), (x.shape, cols)


def _conv_backward(dout: np.ndarray, weight: np.ndarray, cache, pad: int):
    x_shape, cols = cache
    k = weight.shape[-1]
    n, _, ho, wo = dout.shape
    # One contiguous 2-D product each: numpy's batched matmul on strided 4-D views is far slower.
    flat = np.ascontiguousarray(dout.transpose(0, 2, 3, 1)).reshape(n * ho * wo, -1)
    dweight = (flat.T @ cols.reshape(len(flat), -1)).reshape(weight.shape)
    dbias = flat.sum(axis=0)
    dcols = (flat @ weight.reshape(len(weight), -1)).reshape(n, ho, wo, -1)
    dx = _col2im(dcols, x_shape, k, pad)
    return dx, dweight, dbias


def _maxpool2_forward(x: np.ndarray):
    """2x2 max pooling, stride 2; the cache is the index of each window's maximum (first on ties)."""
    n, c, h, w = x.shape
    windows = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(n, c, h // 2, w // 2, 4)
    index = windows.argmax(axis=-1)
    return np.take_along_axis(windows, index[..., None], axis=-1)[..., 0], (x.shape, index)


def _maxpool2_backward(dout: np.ndarray, cache):
    (n, c, h, w), index = cache
    windows = np.zeros((n, c, h // 2, w // 2, 4), dtype=dout.dtype)
    np.put_along_axis(windows, index[..., None], dout[..., None], axis=-1)
    return windows.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of ``softmax(logits)`` against integer labels, and its gradient."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    loss = -float(log_probs[rows, labels].mean())
    grad = np.exp(log_probs)
    grad[rows, labels] -= 1
    return loss, grad / len(labels)


def _he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------

class DigitsModel:
    """What both models share: parameters by name, prediction, ONNX export."""

    name: str
    #: Shape of one sample as the model (and its ONNX input) takes it.
    sample_shape: tuple[int, ...]
    params: dict[str, np.ndarray]

    def inputs(self, x: np.ndarray) -> np.ndarray:
        """Flat ``(n, 64)`` pixels (or already shaped samples) as this model's float32 input batch."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim < 2 or x[0].size != int(np.prod(self.sample_shape)):
            raise ValueError(f"{self.name}: expected a batch of {int(np.prod(self.sample_shape))}-pixel "
                             f"samples, got an array of shape {x.shape}")
        return x.reshape(len(x), *self.sample_shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The logits of a batch (flat or shaped samples)."""
        return self._forward(self.inputs(x))[0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x).argmax(axis=1)

    def accuracy(self, x: np.ndarray, labels: np.ndarray) -> float:
        return float((self.predict(x) == np.asarray(labels)).mean())

    def loss_and_gradients(self, x: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        logits, cache = self._forward(self.inputs(x))
        loss, dlogits = softmax_cross_entropy(logits, labels)
        return loss, self._backward(dlogits, cache)

    def _forward(self, x: np.ndarray):
        raise NotImplementedError

    def _backward(self, dlogits: np.ndarray, cache) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _onnx_nodes(self) -> tuple[list[onnx.NodeProto], str]:
        raise NotImplementedError

    def to_onnx(self, *, softmax: bool = False) -> onnx.ModelProto:
        """The model as an exporter writes it (checked by ``onnx.checker``).

        Input ``x`` of shape ``(batch, *sample_shape)``, output ``logits``
        ``(batch, 10)`` — or, with ``softmax``, ``probabilities`` after a final Softmax.
        """
        nodes, last = self._onnx_nodes()
        output = OUTPUT_NAME
        if softmax:
            output = "probabilities"
            nodes.append(helper.make_node("Softmax", [last], [output], name="/softmax/Softmax", axis=1))
        elif last != OUTPUT_NAME:
            raise AssertionError(f"the last node of {self.name} must write {OUTPUT_NAME!r}")
        graph = helper.make_graph(
            nodes, f"braze_digits_{self.name}",
            [helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT,
                                           ["batch", *self.sample_shape])],
            [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, ["batch", CLASSES])],
            [numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name)
             for name, value in self.params.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="braze.sw.models", producer_version="0.1.0")
        model.ir_version = IR_VERSION
        model.doc_string = f"{self.describe()}, trained on scikit-learn's digits"
        onnx.checker.check_model(model, full_check=True)
        return model

    def describe(self) -> str:
        raise NotImplementedError

    def save(self, path: str | os.PathLike, *, softmax: bool = False) -> str:
        """Write :meth:`to_onnx` to ``path``; returns the path as a string."""
        onnx.save_model(self.to_onnx(softmax=softmax), os.fspath(path))
        return os.fspath(path)


class MLP(DigitsModel):
    """A multilayer perceptron on flat 64-pixel digits: dense layers with ReLU between them.

    Parameters
    ----------
    sizes : sequence of int
        Widths from input to output; the default is ``64 -> 64 -> 32 -> 10``.
    seed : int
        Seed of the He-normal initial weights.
    """

    name = "mlp"

    def __init__(self, sizes: Sequence[int] = (64, 64, 32, CLASSES), *, seed: int = 0):
        sizes = tuple(int(size) for size in sizes)
        if len(sizes) < 2 or sizes[0] != IMAGE_SIZE * IMAGE_SIZE or sizes[-1] != CLASSES \
                or min(sizes) < 1:
            raise ValueError(f"MLP sizes must run from {IMAGE_SIZE * IMAGE_SIZE} inputs to {CLASSES} "
                             f"classes with positive widths, not {sizes}")
        self.sizes = sizes
        self.sample_shape = (sizes[0],)
        rng = np.random.default_rng(seed)
        self.params = {}
        for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
            # Torch's Linear layout: weight (out, in); exported as Gemm(transB=1).
            self.params[f"fc{layer}.weight"] = _he_normal(rng, (fan_out, fan_in), fan_in)
            self.params[f"fc{layer}.bias"] = np.zeros(fan_out, np.float32)

    @property
    def layers(self) -> int:
        return len(self.sizes) - 1

    def describe(self) -> str:
        return "MLP " + " -> ".join(map(str, self.sizes)) + " with ReLU"

    def _forward(self, x):
        activations = [x]
        for layer in range(1, self.layers + 1):
            x = x @ self.params[f"fc{layer}.weight"].T + self.params[f"fc{layer}.bias"]
            if layer < self.layers:
                x = np.maximum(x, 0)
            activations.append(x)
        return x, activations

    def _backward(self, dlogits, activations):
        grads = {}
        delta = dlogits
        for layer in range(self.layers, 0, -1):
            below = activations[layer - 1]
            grads[f"fc{layer}.weight"] = delta.T @ below
            grads[f"fc{layer}.bias"] = delta.sum(axis=0)
            if layer > 1:
                delta = (delta @ self.params[f"fc{layer}.weight"]) * (below > 0)
        return grads

    def _onnx_nodes(self):
        nodes, x = [], INPUT_NAME
        for layer in range(1, self.layers + 1):
            out = OUTPUT_NAME if layer == self.layers else f"/fc{layer}/Gemm_output_0"
            nodes.append(helper.make_node("Gemm", [x, f"fc{layer}.weight", f"fc{layer}.bias"], [out],
                                          name=f"/fc{layer}/Gemm", alpha=1.0, beta=1.0, transB=1))
            x = out
            if layer < self.layers:
                out = f"/relu{layer}/Relu_output_0"
                nodes.append(helper.make_node("Relu", [x], [out], name=f"/relu{layer}/Relu"))
                x = out
        return nodes, x


class CNN(DigitsModel):
    """A small convolutional network on ``1x8x8`` digits.

    ``conv 3x3 (channels[0]) -> ReLU -> conv 3x3 (channels[1]) -> ReLU -> maxpool 2x2 ->
    flatten -> dense 10``; both convolutions have stride 1 and padding ``pad``.

    Parameters
    ----------
    channels : (int, int)
        Output channels of the two convolutions (default 8 and 16).
    pad : int
        Zero padding of each convolution: 1 keeps the 8x8 size, 0 shrinks it to 6x6 and 4x4.
    seed : int
        Seed of the He-normal initial weights.
    """

    name = "cnn"
    sample_shape = (1, IMAGE_SIZE, IMAGE_SIZE)

    def __init__(self, channels: tuple[int, int] = (8, 16), *, pad: int = 0, seed: int = 0):
        c1, c2 = (int(c) for c in channels)
        if min(c1, c2) < 1 or pad not in (0, 1):
            raise ValueError(f"CNN channels must be positive and pad 0 or 1, not channels={channels}, "
                             f"pad={pad}")
        self.channels, self.pad = (c1, c2), pad
        side = IMAGE_SIZE - 2 * (2 - 2 * pad)       # each unpadded 3x3 conv takes 2 pixels off
        self.pooled = side // 2
        flat = c2 * self.pooled * self.pooled
        rng = np.random.default_rng(seed)
        self.params = {
            "conv1.weight": _he_normal(rng, (c1, 1, 3, 3), 9),
            "conv1.bias": np.zeros(c1, np.float32),
            "conv2.weight": _he_normal(rng, (c2, c1, 3, 3), 9 * c1),
            "conv2.bias": np.zeros(c2, np.float32),
            "fc.weight": _he_normal(rng, (CLASSES, flat), flat),
            "fc.bias": np.zeros(CLASSES, np.float32),
        }

    def describe(self) -> str:
        c1, c2 = self.channels
        return (f"CNN conv3x3({c1}, pad {self.pad}) -> ReLU -> conv3x3({c2}, pad {self.pad}) -> ReLU -> "
                f"maxpool 2x2 -> flatten -> dense {CLASSES}")

    def _forward(self, x):
        p = self.params
        c1, conv1 = _conv_forward(x, p["conv1.weight"], p["conv1.bias"], self.pad)
        r1 = np.maximum(c1, 0)
        c2, conv2 = _conv_forward(r1, p["conv2.weight"], p["conv2.bias"], self.pad)
        r2 = np.maximum(c2, 0)
        pooled, pool = _maxpool2_forward(r2)
        flat = pooled.reshape(len(x), -1)
        logits = flat @ p["fc.weight"].T + p["fc.bias"]
        return logits, (conv1, r1, conv2, r2, pool, flat, pooled.shape)

    def _backward(self, dlogits, cache):
        conv1, r1, conv2, r2, pool, flat, pooled_shape = cache
        p = self.params
        grads = {"fc.weight": dlogits.T @ flat, "fc.bias": dlogits.sum(axis=0)}
        dpooled = (dlogits @ p["fc.weight"]).reshape(pooled_shape)
        dc2 = _maxpool2_backward(dpooled, pool) * (r2 > 0)
        dr1, grads["conv2.weight"], grads["conv2.bias"] = _conv_backward(dc2, p["conv2.weight"], conv2,
                                                                         self.pad)
        _, grads["conv1.weight"], grads["conv1.bias"] = _conv_backward(dr1 * (r1 > 0), p["conv1.weight"],
                                                                       conv1, self.pad)
        return grads

    def _onnx_nodes(self):
        pads = [self.pad] * 4
        conv = dict(dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=pads, strides=[1, 1])
        return [
            helper.make_node("Conv", [INPUT_NAME, "conv1.weight", "conv1.bias"], ["/conv1/Conv_output_0"],
                             name="/conv1/Conv", **conv),
            helper.make_node("Relu", ["/conv1/Conv_output_0"], ["/relu1/Relu_output_0"], name="/relu1/Relu"),
            helper.make_node("Conv", ["/relu1/Relu_output_0", "conv2.weight", "conv2.bias"],
                             ["/conv2/Conv_output_0"], name="/conv2/Conv", **conv),
            helper.make_node("Relu", ["/conv2/Conv_output_0"], ["/relu2/Relu_output_0"], name="/relu2/Relu"),
            helper.make_node("MaxPool", ["/relu2/Relu_output_0"], ["/pool/MaxPool_output_0"],
                             name="/pool/MaxPool", ceil_mode=0, kernel_shape=[2, 2], pads=[0, 0, 0, 0],
                             strides=[2, 2]),
            helper.make_node("Flatten", ["/pool/MaxPool_output_0"], ["/flatten/Flatten_output_0"],
                             name="/flatten/Flatten", axis=1),
            helper.make_node("Gemm", ["/flatten/Flatten_output_0", "fc.weight", "fc.bias"], [OUTPUT_NAME],
                             name="/fc/Gemm", alpha=1.0, beta=1.0, transB=1),
        ], OUTPUT_NAME


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrainingLog:
    """Per-epoch mean training loss and the final accuracies of one :func:`train` run."""

    losses: tuple[float, ...]
    train_accuracy: float
    val_accuracy: float


def train(model: DigitsModel, data: DigitsSplit, *, epochs: int, batch_size: int = 32, lr: float = 3e-3,
          seed: int = 0) -> TrainingLog:
    """Mini-batch Adam on the softmax cross-entropy; updates ``model.params`` in place.

    Deterministic: the batch order comes from ``seed``.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"train needs epochs >= 1, batch_size >= 1 and lr > 0, not epochs={epochs}, "
                         f"batch_size={batch_size}, lr={lr}")
    # Small matrices: BLAS threads only contend (on a loaded 2-core machine, by a factor of
    # hundreds), and one thread also fixes the summation order.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _train(model, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)


def _train(model: DigitsModel, data: DigitsSplit, *, epochs: int, batch_size: int, lr: float, seed: int
           ) -> TrainingLog:
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    first = {name: np.zeros_like(value) for name, value in model.params.items()}
    second = {name: np.zeros_like(value) for name, value in model.params.items()}
    rng = np.random.default_rng(seed)
    x, y = data.x_train, data.y_train
    step, losses = 0, []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        total = 0.0
        for start in range(0, len(x), batch_size):
            batch = order[start:start + batch_size]
            loss, grads = model.loss_and_gradients(x[batch], y[batch])
            total += loss * len(batch)
            step += 1
            for name, grad in grads.items():
                first[name] = beta1 * first[name] + (1 - beta1) * grad
                second[name] = beta2 * second[name] + (1 - beta2) * grad * grad
                m_hat = first[name] / (1 - beta1 ** step)
                v_hat = second[name] / (1 - beta2 ** step)
                step_size = lr * m_hat / (np.sqrt(v_hat) + eps)
                model.params[name] = (model.params[name] - step_size).astype(np.float32)
        losses.append(total / len(x))
    return TrainingLog(tuple(losses), model.accuracy(x, y), model.accuracy(data.x_val, data.y_val))


def train_mlp(data: DigitsSplit | None = None, *, epochs: int = 40, seed: int = 0) -> tuple[MLP, TrainingLog]:
    """The demo's MLP (``64 -> 64 -> 32 -> 10``), trained; returns the model and its log."""
    model = MLP(seed=seed)
    return model, train(model, data or load_digits_split(), epochs=epochs, seed=seed)


def train_cnn(data: DigitsSplit | None = None, *, epochs: int = 30, seed: int = 0, pad: int = 0
              ) -> tuple[CNN, TrainingLog]:
    """The demo's CNN (8 and 16 channels), trained; returns the model and its log.

    Unpadded by default: on 8x8 digits it is as accurate within a point or two, and needs half
    the accelerator cycles of the padded network (which the demo runs on a simulated RTL).
    """
    model = CNN(pad=pad, seed=seed)
    return model, train(model, data or load_digits_split(), epochs=epochs, seed=seed)


def calibration_set(model: DigitsModel, data: DigitsSplit | None = None, *, samples: int = 128,
                    seed: int = 0) -> np.ndarray:
    """``samples`` training images (never validation ones), shaped as ``model``'s input, for calibration."""
    data = data or load_digits_split()
    if not 1 <= samples <= len(data.x_train):
        raise ValueError(f"calibration samples must lie in [1, {len(data.x_train)}], not {samples}")
    chosen = np.sort(np.random.default_rng(seed).choice(len(data.x_train), samples, replace=False))
    return model.inputs(data.x_train[chosen])


# ---------------------------------------------------------------------------------------------------
# Export check
# ---------------------------------------------------------------------------------------------------

def run_onnxruntime(model: onnx.ModelProto | str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """The first output of ``model`` on input ``x``, computed by onnxruntime on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: np.asarray(x, np.float32)})[0]


def check_export(model: DigitsModel, exported: onnx.ModelProto | str | os.PathLike, x: np.ndarray, *,
                 atol: float = 1e-4) -> float:
    """Run ``exported`` on ``x`` with onnxruntime and compare with the numpy model.

    Returns the largest absolute difference of the logits; raises
    :class:`ExportMismatch` if it exceeds ``atol`` or if any prediction differs
    (float32 summation order may differ, the answers may not).
    """
    x = model.inputs(x)
    expected = model.forward(x)
    got = run_onnxruntime(exported, x)
    if got.shape != expected.shape:
        raise ExportMismatch(f"{model.name}: onnxruntime returned shape {got.shape}, numpy {expected.shape}")
    difference = float(np.abs(got - expected).max())
    disagree = int((got.argmax(axis=1) != expected.argmax(axis=1)).sum())
    if difference > atol or disagree:
        raise ExportMismatch(f"{model.name}: exported logits differ from numpy's by up to {difference:.3g} "
                             f"(tolerance {atol}); {disagree} of {len(x)} predictions differ")
    return difference


__all__ = ["CLASSES", "CNN", "MLP", "OPSET", "DigitsModel", "DigitsSplit", "ExportMismatch", "TrainingLog",
           "calibration_set", "check_export", "load_digits_split", "run_onnxruntime",
           "softmax_cross_entropy", "train", "train_cnn", "train_mlp"]
