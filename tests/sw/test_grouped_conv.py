"""Grouped, depthwise and dilated convolutions on the accelerator: quantized, lowered, bit-exact."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_models import make_model, quantize_qdq

from braze.isa import Config
from braze.sim.device import open_device
from braze.sw.compiler import kernels as lib
from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.frontend import evaluate
from braze.sw.compiler.kernels import run_kernel
from braze.sw.runtime.session import InferenceSession

TINY = Config.preset("tiny")


def _mobile_block(seed: int) -> onnx.ModelProto:
    """Pointwise conv -> ReLU -> 3x3 depthwise conv (group = channels) -> ReLU -> dilated 3x3 conv with
    two groups -> ReLU, float weights (MobileNet-style blocks and a dilated context layer)."""
    rng = np.random.default_rng(seed)
    weights = [("w1", rng.normal(0, 0.5, (8, 3, 1, 1))), ("b1", rng.normal(0, 0.1, 8)),
               ("w2", rng.normal(0, 0.5, (8, 1, 3, 3))), ("b2", rng.normal(0, 0.1, 8)),
               ("w3", rng.normal(0, 0.3, (6, 4, 3, 3))), ("b3", rng.normal(0, 0.1, 6))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="pointwise"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="depthwise", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="dilated", group=2, dilations=[2, 2],
                         pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["c3"], ["y"], name="relu3"),
    ]
    return make_model(nodes, [("x", np.float32, [2, 3, 9, 9])], [("y", np.float32, [2, 6, 9, 9])],
                      [(name, value.astype(np.float32)) for name, value in weights], name="mobile_block")


@pytest.mark.parametrize("fuse", [True, False])
def test_grouped_depthwise_and_dilated_convolutions_run_on_the_chip_exactly(fuse):
    rng = np.random.default_rng(2)
    calibration = rng.normal(size=(8, 3, 9, 9)).astype(np.float32)[:2]
    session = InferenceSession(_mobile_block(1), config="tiny", calibration=calibration, fuse=fuse,
                               cache=KernelCache(disk=False))
    placement = session.compiled.placement
    for name in ("pointwise", "depthwise", "dilated"):
        where = [value for key, value in placement.items() if key.startswith(name)]
        assert where and all(value.startswith("accel") for value in where), (name, where)
    x = rng.normal(size=(2, 3, 9, 9)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    assert np.array_equal(y, evaluate(session.graph_before, {"x": x})["y"])
    assert np.count_nonzero(y) > y.size // 4          # not all clipped away


def test_dilated_kernel_equals_the_zero_expanded_kernel():
    """A dilated convolution is the convolution with zeros between the taps: both kernels agree."""
    rng = np.random.default_rng(5)
    n, c, h, k_out, dilation, pad = 2, 5, 10, 4, 3, 2
    weights = rng.integers(-128, 128, (k_out, c, 3, 3), dtype=np.int8)
    span = 2 * dilation + 1
    expanded = np.zeros((k_out, c, span, span), np.int8)
    expanded[:, :, ::dilation, ::dilation] = weights
    x = rng.integers(-128, 128, (n, h, h, c), dtype=np.int8)
    dilated = lib.conv2d(TINY, n, c, h, h, k_out, 3, 3, 1, pad, out="int32", dilation=dilation)
    plain = lib.conv2d(TINY, n, c, h, h, k_out, span, span, 1, pad, out="int32")
    assert dilated.operands["out"].shape == plain.operands["out"].shape == (n, h + 2 * pad - span + 1,
                                                                            h + 2 * pad - span + 1, k_out)
    with open_device("golden", TINY) as device:
        got = run_kernel(device, dilated, {"x": x, "B": lib.conv2d_weights(TINY, weights)}).outputs["out"]
        expected = run_kernel(device, plain, {"x": x, "B": lib.conv2d_weights(TINY, expanded)}).outputs["out"]
    assert np.array_equal(got, expected)
    assert len(dilated.instructions) < len(plain.instructions)      # 9 taps, not 49


def test_depthwise_qdq_model_from_onnxruntime_runs_on_the_chip(tmp_path):
    rng = np.random.default_rng(6)
    path = quantize_qdq(_mobile_block(3), tmp_path, (2, 3, 9, 9), rng)
    session = InferenceSession(str(path), config="tiny", cache=KernelCache(disk=False))
    x = rng.normal(size=(2, 3, 9, 9)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    assert np.array_equal(y, evaluate(session.graph_before, {"x": x})["y"])
    kernels = [where for where in session.compiled.placement.values() if where.startswith("accel: k")]
    assert len(set(kernels)) >= 3                     # the three convolutions, none on the host
