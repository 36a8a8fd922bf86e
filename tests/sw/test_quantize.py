"""Quantization: fixed-point multipliers, float models to int8, QDQ/QLinear models to Braze ops."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_models import conv_model, digits_data, digits_mlp, make_model, run_ort, run_reference

from braze.isa import arith
from braze.isa.encoding import Activation, Memory
from braze.sw.compiler.frontend import BRAZE_DOMAIN, evaluate, evaluate_node, load_onnx
from braze.sw.compiler.ir import InvalidGraph, Node, NodeKind, QuantParams, TensorInfo
from braze.sw.compiler.passes import simplify
from braze.sw.compiler.quantize import (
    QuantizationError,
    activation_params,
    lower_qdq,
    quantize,
    quantize_multiplier,
    quantize_weights,
    shift_uint8,
)
from braze.sw.compiler.validate import validate


def _braze_ops(graph):
    return [n for n in graph.operators() if n.domain == BRAZE_DOMAIN]


# -- numbers ----------


def test_quantize_multiplier_normalisation_and_precision():
    rng = np.random.default_rng(0)
    for real in np.exp2(rng.uniform(-32, 30, 2000)):
        mult, shift = quantize_multiplier(real)
        assert 1 << 30 <= mult < 1 << 31 and 0 <= shift <= 63
        assert abs(mult / 2.0**shift - real) <= real * 2.0**-31


def test_quantize_multiplier_requantizes_like_the_real_product():
    rng = np.random.default_rng(1)
    x = rng.integers(-(1 << 31), 1 << 31, 4000, dtype=np.int64)
    for real in (0.7, 0.0123, 3.3e-5, 1.0, 7.5):
        mult, shift = quantize_multiplier(real)
        got = arith.round_shift(x * mult, shift)
        exact = x * real  # float64: relative error 2**-53
        assert np.abs(got - exact).max() <= 0.5 + np.abs(exact).max() * 2.0**-30
    # Powers of two are exact, including the ties-to-even rounding.
    for k in range(0, 12):
        mult, shift = quantize_multiplier(2.0**-k)
        np.testing.assert_array_equal(
            arith.round_shift(x * mult, shift), np.round(x / 2.0**k).astype(np.int64)
        )


def test_quantize_multiplier_edge_cases():
    assert quantize_multiplier(1.0) == (1 << 30, 30)
    assert quantize_multiplier(math.nextafter(1.0, 0.0)) == (1 << 30, 30)  # rounds up to the next power
    mult, shift = quantize_multiplier(2.0**-40)  # below 2**-32: shift saturates
    assert shift == 63 and mult == 1 << 23
    for bad in (0.0, -0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="positive and finite"):
            quantize_multiplier(bad)
    with pytest.raises(ValueError, match="too large"):
        quantize_multiplier(2.0**31)


@pytest.mark.parametrize("lo, hi", [(-1.5, 3.0), (0.0, 6.0), (0.2, 0.9), (-4.0, -1.0), (0.0, 0.0)])
def test_activation_params_cover_the_range_and_zero(lo, hi):
    for symmetric in (False, True):
        params = activation_params(lo, hi, symmetric=symmetric)
        scale, zero = params.scale[0], params.zero_point[0]
        assert -128 <= zero <= 127
        assert round(min(lo, 0) / scale) + zero >= -128 and round(max(hi, 0) / scale) + zero <= 127
        if symmetric:
            assert zero == 0
        elif hi > lo:
            assert scale == pytest.approx((max(hi, 0) - min(lo, 0)) / 255, rel=1e-6)


def test_quantize_weights_per_channel_symmetric():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(16, 5)).astype(np.float32) * np.array([0.01, 0.1, 1, 10, 0], np.float32)
    q, scales = quantize_weights(w, axis=1)
    assert q.dtype == np.int8 and scales.shape == (5,)
    assert np.all(np.abs(q[:, :4]).max(axis=0) == 127) and np.all(q[:, 4] == 0)
    assert np.all(np.abs(q * scales - w) <= scales / 2 + 1e-9)


def test_uint8_to_int8_shift_is_exact():
    q = np.arange(256, dtype=np.uint8)
    for zero in (0, 1, 127, 128, 200, 255):
        q8, zero8 = shift_uint8(q, zero)
        assert q8.dtype == np.int8
        np.testing.assert_array_equal(q8.astype(int) - zero8, q.astype(int) - zero)
        dq = Node("dq", NodeKind.OPERATOR, "DequantizeLinear", ("q", "s", "z"), ("y",))
        scale = np.float32(0.0372)
        np.testing.assert_array_equal(
            evaluate_node(dq, q, scale, np.uint8(zero))[0], evaluate_node(dq, q8, scale, np.int8(zero8))[0]
        )
    # Quantizing to uint8 and shifting equals quantizing to int8 with zero point - 128, saturation included.
    x = np.random.default_rng(3).normal(0, 6, 5000).astype(np.float32)
    ql = Node("q", NodeKind.OPERATOR, "QuantizeLinear", ("x", "s", "z"), ("y",))
    for zero in (0, 77, 255):
        as_uint8 = evaluate_node(ql, x, np.float32(0.03), np.uint8(zero))[0]
        as_int8 = evaluate_node(ql, x, np.float32(0.03), np.int8(zero - 128))[0]
        np.testing.assert_array_equal(shift_uint8(as_uint8, zero)[0], as_int8)


def test_braze_qmatmul_is_the_folded_epilogue():
    """x_zero_point folded into the bias (what the kernels do) gives the same bits, wrap-around included."""
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 127, (9, 40), endpoint=True).astype(np.int8)
    w = rng.integers(-127, 127, (40, 6), endpoint=True).astype(np.int8)
    bias = rng.integers(-(1 << 31), 1 << 31, 6).astype(np.int32)
    mult = [quantize_multiplier(r)[0] for r in (0.01, 0.002, 0.3, 1e-4, 0.05, 0.07)]
    shift = [quantize_multiplier(r)[1] for r in (0.01, 0.002, 0.3, 1e-4, 0.05, 0.07)]
    node = Node(
        "q",
        NodeKind.OPERATOR,
        "QMatMul",
        ("x", "w", "b"),
        ("y",),
        {
            "x_zero_point": -7,
            "mult": tuple(mult),
            "shift": tuple(shift),
            "out_zp": 5,
            "act": "clip",
            "clip_lo": 5,
            "clip_hi": 127,
        },
        domain=BRAZE_DOMAIN,
    )
    got = evaluate_node(node, x, w, bias)[0]
    folded = bias.astype(np.int64) + 7 * w.astype(np.int64).sum(axis=0)
    want = arith.epilogue(
        arith.wrap32(x.astype(np.int64) @ w.astype(np.int64)),
        bias=arith.wrap32(folded),
        mult=np.array(mult),
        shift=np.array(shift),
        act=Activation.CLIP,
        out=Memory.SPAD,
        out_zp=5,
        clip_lo=5,
        clip_hi=127,
    )
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int8


# -- float models ----------


def test_quantized_digits_mlp_keeps_its_accuracy():
    x, y = digits_data()
    graph = load_onnx(digits_mlp(), allow_fallback=True, input_shapes={"X": (100, 64)})
    calibration = [{"X": x[i : i + 100]} for i in range(0, 600, 100)]
    quantized = quantize(graph, calibration)
    assert [n.op_type for n in _braze_ops(quantized)] == ["QMatMul", "QMatMul"]
    assert not [n for n in quantized.operators() if n.op_type in ("MatMul", "Gemm")]
    agree = correct_float = correct_int8 = 0
    worst = 0.0
    for start in range(1300, 1700, 100):
        batch = {"X": x[start : start + 100]}
        reference, result = evaluate(graph, batch), evaluate(quantized, batch)
        agree += int(np.sum(reference["label"] == result["label"]))
        correct_float += int(np.sum(reference["label"] == y[start : start + 100]))
        correct_int8 += int(np.sum(result["label"] == y[start : start + 100]))
        worst = max(worst, float(np.abs(reference["probabilities"] - result["probabilities"]).max()))
    assert agree >= 0.97 * 400
    assert correct_int8 >= correct_float - 8
    assert worst < 0.1


@pytest.mark.parametrize("method, symmetric", [("minmax", False), ("percentile", False), ("minmax", True)])
def test_quantized_conv_model_is_close_to_float(method, symmetric):
    rng = np.random.default_rng(7)
    graph = load_onnx(conv_model(7, batch=4))
    calibration = [{"x": rng.normal(size=(4, 1, 8, 8)).astype(np.float32)} for _ in range(8)]
    quantized = quantize(graph, calibration, method=method, symmetric_activations=symmetric)
    assert sorted(n.op_type for n in _braze_ops(quantized)) == ["QConv", "QConv", "QMatMul"]
    pool = next(n for n in quantized.operators() if n.op_type == "MaxPool")
    assert quantized.tensor(pool.inputs[0]).dtype == "int8"  # the pool runs on int8
    relu_convs = [n for n in _braze_ops(quantized) if n.op_type == "QConv"]
    assert all(n.attrs["act"] == "clip" and n.attrs["clip_lo"] == n.attrs["out_zp"] for n in relu_convs)
    for _ in range(3):
        x = rng.normal(size=(4, 1, 8, 8)).astype(np.float32)
        reference, result = evaluate(graph, {"x": x})["y"], evaluate(quantized, {"x": x})["y"]
        assert np.abs(reference - result).max() <= 0.05 * np.abs(reference).max() + 0.02


def test_quantize_leaves_the_float_graph_alone():
    graph = load_onnx(conv_model())
    before = graph.fingerprint()
    quantize(graph, [{"x": np.ones((2, 1, 8, 8), np.float32)}])
    assert graph.fingerprint() == before


# -- quantized ONNX models ----------


def _ort_quantized(tmp_path, activation_type):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(8)
            self.batches = iter([{"x": rng.normal(size=(2, 1, 8, 8)).astype(np.float32)} for _ in range(6)])

        def get_next(self):
            return next(self.batches, None)

    source, target = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(conv_model(9, batch=2), source)
    quantize_static(
        source,
        target,
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=getattr(QuantType, activation_type),
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return target


@pytest.mark.parametrize("activation_type", ["QUInt8", "QInt8"])
def test_onnxruntime_qdq_model_lowers_to_braze_ops(tmp_path, activation_type):
    path = _ort_quantized(tmp_path, activation_type)
    graph = validate(load_onnx(path))
    lowered = validate(simplify(lower_qdq(simplify(graph))))
    assert sorted(n.op_type for n in _braze_ops(lowered)) == ["QConv", "QConv", "QMatMul"]
    assert not [n for n in lowered.operators() if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert all(lowered.tensor(n.inputs[0]).dtype == "int8" for n in _braze_ops(lowered))
    y_scale = float(
        onnx.numpy_helper.to_array(next(i for i in onnx.load(path).graph.initializer if i.name == "y_scale"))
    )
    rng = np.random.default_rng(10)
    mismatches = 0
    for _ in range(4):
        x = rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
        want = run_ort(onnx.load(path), {"x": x})[0]
        got = evaluate(lowered, {"x": x})["y"]
        steps = np.abs(got - want) / y_scale
        assert steps.max() <= 1.0 + 1e-3  # fixed-point vs float requantization: at most one step
        mismatches += int(np.sum(steps > 0.5))
    assert mismatches <= 2


def _qlinear_model(op, rng):
    if op in ("QLinearMatMul", "MatMulInteger"):
        x = rng.integers(0, 255, (6, 24), endpoint=True).astype(np.uint8)
        w = rng.integers(-127, 127, (24, 5), endpoint=True).astype(np.int8)
        attrs, y_shape, channels = {}, [6, 5], 5
    else:
        x = rng.integers(0, 255, (2, 3, 6, 6), endpoint=True).astype(np.uint8)
        w = rng.integers(-127, 127, (4, 3, 3, 3), endpoint=True).astype(np.int8)
        attrs, y_shape, channels = {"pads": [1, 1, 1, 1], "strides": [2, 1]}, [2, 4, 3, 6], 4
    if op.startswith("QLinear"):
        initializers = [
            ("xs", np.float32(0.02)),
            ("xz", np.uint8(129)),
            ("w", w),
            ("ws", rng.uniform(0.002, 0.01, channels).astype(np.float32)),
            ("wz", np.zeros(channels, np.int8)),
            ("ys", np.float32(0.05)),
            ("yz", np.uint8(118)),
        ]
        if op == "QLinearConv":
            initializers.append(("bias", rng.integers(-4000, 4000, channels).astype(np.int32)))
        y_type = np.uint8
    else:
        initializers = [("w", w), ("xz", np.uint8(129))]
        y_type = np.int32
    names = ["x", *[n for n, _ in initializers]]
    if not op.startswith("QLinear"):
        names = ["x", "w", "xz"]
    node = helper.make_node(op, names, ["y"], name="the_op", **attrs)
    relu = helper.make_node("Identity", ["y"], ["out"], name="passthrough")
    model = make_model(
        [node, relu], [("x", np.uint8, list(x.shape))], [("out", y_type, y_shape)], initializers
    )
    return model, x


@pytest.mark.parametrize("op", ["QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger"])
def test_qlinear_and_integer_models_lower_to_braze_ops(op):
    rng = np.random.default_rng(11)
    model, x = _qlinear_model(op, rng)
    graph = validate(load_onnx(model))
    lowered = validate(simplify(lower_qdq(graph)))
    (braze,) = _braze_ops(lowered)
    assert braze.op_type == ("QConv" if "Conv" in op else "QMatMul")
    assert braze.attrs["x_zero_point"] == 1  # 129 shifted to int8
    # ONNX's reference implementation: onnxruntime's u8s8 kernels saturate on CPUs without VNNI.
    want = run_reference(model, {"x": x})[0]
    got = evaluate(lowered, {"x": x})["out"]
    assert got.dtype == want.dtype and got.shape == want.shape
    if op.startswith("QLinear"):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
        assert np.mean(got == want) > 0.9
    else:
        np.testing.assert_array_equal(got, want)  # integer ops: exact


def test_weights_that_do_not_fit_int8_are_rejected_by_name():
    w = np.full((4, 2), 200, np.uint8)
    node = helper.make_node("MatMulInteger", ["x", "w"], ["y"], name="wide")
    model = make_model([node], [("x", np.uint8, [3, 4])], [("y", np.int32, [3, 2])], [("w", w)])
    with pytest.raises(QuantizationError, match="'wide'.*int8 cannot hold"):
        lower_qdq(load_onnx(model))


def test_validate_checks_braze_ops():
    rng = np.random.default_rng(12)
    graph = quantize(load_onnx(conv_model()), [{"x": rng.normal(size=(2, 1, 8, 8)).astype(np.float32)}])
    op = next(n for n in _braze_ops(graph) if n.op_type == "QMatMul")
    with pytest.raises(InvalidGraph, match="mult .* must be per column"):
        validate(graph.edit(substitute={op.name: op.with_attrs(mult=op.attrs["mult"][:2])}))
    with pytest.raises(InvalidGraph, match="shift 0..63"):
        validate(graph.edit(substitute={op.name: op.with_attrs(shift=(64,) * len(op.attrs["shift"]))}))
    with pytest.raises(InvalidGraph, match="needs both mult and shift"):
        validate(graph.edit(substitute={op.name: op.with_attrs(shift=None)}))
    source = graph.tensor(op.inputs[0])
    with pytest.raises(InvalidGraph, match="no quantization parameters"):
        validate(graph.edit(tensors=[TensorInfo(source.name, source.shape, "int8")]))
    with pytest.raises(InvalidGraph, match="x_zero_point"):
        validate(
            graph.edit(tensors=[TensorInfo(source.name, source.shape, "int8", QuantParams((0.1,), (3,)))])
        )
