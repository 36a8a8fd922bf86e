"""Small ONNX models the compiler tests share, built with ``onnx.helper`` (no downloads)."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

OPSET = 17


def make_model(
    nodes, inputs, outputs, initializers=(), *, opset: int = OPSET, name: str = "test", extra_opsets=()
) -> onnx.ModelProto:
    """A checked model; ``inputs``/``outputs`` are ``(name, numpy dtype, shape)`` triples."""

    def info(name, dtype, shape):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)

    graph = helper.make_graph(
        nodes,
        name,
        [info(*i) for i in inputs],
        [info(*o) for o in outputs],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run_ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def run_reference(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """The ONNX specification's own implementation (``onnx.reference``): exact integer arithmetic on
    every CPU.  onnxruntime's x86 u8s8 kernels on CPUs without VNNI sum pairs of uint8 x int8 products
    in saturating int16 (``vpmaddubsw``), so its QLinear results depend on the machine it runs on."""
    return ReferenceEvaluator(model).run(None, feeds)


def conv_model(seed: int = 0, *, batch: int = 2) -> onnx.ModelProto:
    """Conv-ReLU-MaxPool-Conv-ReLU-GlobalAveragePool-Flatten-Gemm, random weights (float)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.4, (4, 1, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 4).astype(np.float32)
    w2 = rng.normal(0, 0.3, (6, 4, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 6).astype(np.float32)
    w3 = rng.normal(0, 0.4, (5, 6)).astype(np.float32)
    b3 = rng.normal(0, 0.1, 5).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1),
    ]
    return make_model(
        nodes,
        [("x", np.float32, [batch, 1, 8, 8])],
        [("y", np.float32, [batch, 5])],
        [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("w3", w3), ("b3", b3)],
        name="convnet",
    )


@functools.cache
def digits_data():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return x, digits.target


@functools.cache
def digits_mlp_bytes() -> bytes:
    """An MLP classifier trained on scikit-learn's digits, exported by skl2onnx (probabilities only)."""
    import warnings

    from skl2onnx import to_onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x, y = digits_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier = MLPClassifier(hidden_layer_sizes=(32,), max_iter=60, random_state=0).fit(
            x[:1200], y[:1200]
        )
    model = to_onnx(classifier, x[:1], options={"zipmap": False}, target_opset={"": OPSET, "ai.onnx.ml": 3})
    return model.SerializeToString()


def digits_mlp() -> onnx.ModelProto:
    return onnx.load_from_string(digits_mlp_bytes())


__all__ = ["TensorProto", "make_model", "run_ort", "conv_model", "digits_data", "digits_mlp", "OPSET"]


def quantize_qdq(model: onnx.ModelProto, directory, shape, rng, batches: int = 4):
    """``model`` quantized by onnxruntime's ``quantize_static`` (QDQ, uint8 activations, per-channel int8
    weights) on ``batches`` random inputs ``x`` of ``shape``; returns the quantized file's path."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": rng.normal(size=shape).astype(np.float32)} for _ in range(batches)])

        def get_next(self):
            return next(self.batches, None)

    onnx.save(model, directory / "float.onnx")
    quantize_static(directory / "float.onnx", directory / "qdq.onnx", Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return directory / "qdq.onnx"
