"""The residual ``Add`` of two int8 tensors at different scales (as onnxruntime's QDQ quantizer writes
it for ResNet and MobileNetV2 skip connections) runs on the accelerator's vector unit as one
``braze.QAdd``: bit-exact against Braze's evaluator, within one output step of onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_models import make_model, run_ort

from braze.isa.arith import round_shift
from braze.sw.compiler.frontend import evaluate
from braze.sw.runtime import InferenceSession

SHAPE = [2, 8, 5, 5]


def _qdq_add(a_scale: float, b_scale: float, y_scale: float, dtype=np.uint8, zero_points=(131, 120, 125)):
    """``Q(DQ(Q(a)) + DQ(Q(b)))`` then DQ: the residual pattern of a QDQ model, on float inputs."""
    za, zb, zy = (np.array(z, dtype) for z in zero_points)
    nodes = [helper.make_node("QuantizeLinear", ["a", "sa", "za"], ["qa"], name="qa"),
             helper.make_node("DequantizeLinear", ["qa", "sa", "za"], ["da"], name="da"),
             helper.make_node("QuantizeLinear", ["b", "sb", "zb"], ["qb"], name="qb"),
             helper.make_node("DequantizeLinear", ["qb", "sb", "zb"], ["db"], name="db"),
             helper.make_node("Add", ["da", "db"], ["s"], name="residual"),
             helper.make_node("QuantizeLinear", ["s", "sy", "zy"], ["qy"], name="qy"),
             helper.make_node("DequantizeLinear", ["qy", "sy", "zy"], ["y"], name="dy")]
    inits = [("sa", np.float32(a_scale)), ("sb", np.float32(b_scale)), ("sy", np.float32(y_scale)),
             ("za", za), ("zb", zb), ("zy", zy)]
    return make_model(nodes, [("a", np.float32, SHAPE), ("b", np.float32, SHAPE)], [("y", np.float32, SHAPE)],
                      inits)


def _feeds(rng, scale=3.0):
    return {name: rng.normal(0, scale, SHAPE).astype(np.float32) for name in ("a", "b")}


@pytest.mark.parametrize(("scales", "dtype", "zero_points"), [
    ((0.031, 0.017, 0.043), np.uint8, (131, 120, 125)),
    ((0.05, 0.011, 0.02), np.int8, (3, -4, 0)),          # an operand scale above the output's
])
def test_two_scale_residual_add_runs_on_the_vector_unit(scales, dtype, zero_points):
    model = _qdq_add(*scales, dtype=dtype, zero_points=zero_points)
    session = InferenceSession(model, config="tiny")
    (qadd,) = [n for n in session.graph_before.operators() if n.qualified_op == "braze.QAdd"]
    assert {"x_mult", "y_mult", "shift"} <= set(qadd.attrs)
    placement = session.compiled.placement
    assert placement[qadd.name].startswith("accel"), placement
    assert "Add" not in [n.op_type for n in session.graph_before.operators()]    # the float Add is gone
    rng = np.random.default_rng(5)
    for _ in range(3):
        feeds = _feeds(rng)
        (y,) = session.run(None, feeds)
        assert np.array_equal(y, evaluate(session.graph_before, feeds)["y"])  # golden == Braze's definition
        want = run_ort(model, feeds)[0]
        steps = np.abs(y - want) / np.float32(scales[2])
        assert steps.max() <= 1.01                      # at most one output step from onnxruntime ...
        assert np.mean(steps < 0.01) >= 0.99            # ... and identical almost everywhere


def test_two_scale_qadd_definition():
    """``braze.QAdd`` with x_mult/y_mult/shift: the exact int32 sum rounded once, then out_zp, sat8."""
    model = _qdq_add(0.031, 0.017, 0.043)
    session = InferenceSession(model, config="tiny")
    (qadd,) = [n for n in session.graph_before.operators() if n.qualified_op == "braze.QAdd"]
    attrs = qadd.attrs
    assert abs(attrs["x_mult"] / 2 ** attrs["shift"] - np.float32(0.031) / np.float32(0.043)) < 2.0 ** -14
    assert abs(attrs["y_mult"] / 2 ** attrs["shift"] - np.float32(0.017) / np.float32(0.043)) < 2.0 ** -14
    assert max(abs(attrs["x_mult"]), abs(attrs["y_mult"])) <= 32767
    from braze.sw.compiler.frontend import evaluate_node

    x = np.arange(-128, 128, dtype=np.int8)
    y = x[::-1].copy()
    (got,) = evaluate_node(qadd, x, y)
    exact = (x.astype(np.int64) - attrs["x_zp"]) * attrs["x_mult"] + (y.astype(np.int64) - attrs["y_zp"]) \
        * attrs["y_mult"]
    want = np.clip(round_shift(exact, attrs["shift"]) + attrs["out_zp"], -128, 127)
    np.testing.assert_array_equal(got, want)


def test_one_scale_residual_add_stays_a_plain_qadd():
    """All three scales equal: the plain int8 addition (no multipliers), which fusion can fold into a
    producer's epilogue."""
    model = _qdq_add(0.02, 0.02, 0.02)
    session = InferenceSession(model, config="tiny")
    (qadd,) = [n for n in session.graph_before.operators() if n.qualified_op == "braze.QAdd"]
    assert "shift" not in qadd.attrs
    feeds = _feeds(np.random.default_rng(6), scale=0.8)
    (y,) = session.run(None, feeds)
    np.testing.assert_allclose(y, run_ort(model, feeds)[0], atol=1e-6)
