"""The ONNX backend: run_node / run_model / prepare, devices, and what runs on the accelerator."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_models import make_model

from braze.sw.runtime.backend import BrazeBackend


def test_matmul_integer_runs_on_the_accelerator_exactly():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 12), dtype=np.uint8)
    b = rng.integers(-128, 128, (12, 7), dtype=np.int8)
    a_zp = np.uint8(131)
    node = helper.make_node("MatMulInteger", ["a", "b", "a_zp"], ["y"], name="mmi")
    model = make_model([node], [("a", np.uint8, [5, 12]), ("b", np.int8, [12, 7]), ("a_zp", np.uint8, [])],
                       [("y", np.int32, [5, 7])])
    rep = BrazeBackend.prepare(model, "CPU")
    (y,) = rep.run([a, b, a_zp])
    assert y.dtype == np.int32
    assert np.array_equal(y, (a.astype(np.int64) - int(a_zp)) @ b.astype(np.int64))
    # b and a_zp were frozen into constants, so the product ran as a gemm kernel.
    assert rep.last_session.compiled.placement["mmi_q"].startswith("accel: k0_gemm")
    assert rep.last_session.report().kernels[0].macs == 5 * 12 * 7


def test_run_node_and_float_ops_on_the_cpu():
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    (y,) = BrazeBackend.run_node(helper.make_node("Relu", ["x"], ["y"]), [x])
    assert np.array_equal(y, np.maximum(x, 0))
    (z,) = BrazeBackend.run_node(helper.make_node("Softmax", ["x"], ["z"], axis=1), [x])
    expected = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    assert np.allclose(z, expected, rtol=1e-5)


def test_int8_relu_runs_as_a_kernel():
    x = np.random.default_rng(2).integers(-128, 128, (2, 3, 5), dtype=np.int8)
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", np.int8, [2, 3, 5])],
                       [("y", np.int8, [2, 3, 5])])
    rep = BrazeBackend.prepare(model, "golden")
    (y,) = rep.run({"x": x})
    assert np.array_equal(y, np.maximum(x, 0))
    assert rep.last_session.compiled.placement["relu"].startswith("accel")


def test_devices():
    assert BrazeBackend.supports_device("CPU") and BrazeBackend.supports_device("golden")
    assert BrazeBackend.supports_device("verilator")
    assert not BrazeBackend.supports_device("CUDA")
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, [2])],
                       [("y", np.float32, [2])])
    with pytest.raises(ValueError, match="no device 'CUDA'"):
        BrazeBackend.prepare(model, "CUDA")
