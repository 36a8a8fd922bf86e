"""ONNX import and the numpy reference interpreter, against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_models import OPSET, conv_model, digits_data, digits_mlp, make_model, run_ort, run_reference

from braze.isa.errors import BrazeError
from braze.sw.compiler.frontend import (
    SUPPORTED_OPS,
    EvaluationError,
    ModelLoadError,
    UnsupportedOperator,
    evaluate,
    load_onnx,
)
from braze.sw.compiler.ir import NodeKind
from braze.sw.compiler.validate import validate

RNG_SEED = 1234


def _rand(rng, shape, dtype=np.float32, low=-3, high=3):
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 1, shape).astype(dtype)
    return rng.integers(low, high, shape, endpoint=True).astype(dtype)


def _single(op, inputs, initializers=(), outputs=1, **attrs):
    """A one-node model: ``inputs`` are (name, array) fed at run time, initializers are constants."""
    names = [n for n, _ in inputs] + [n for n, _ in initializers]
    out_names = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op, names, out_names, name=f"the_{op.lower()}", **attrs)
    graph_inputs = [(n, v.dtype, list(v.shape)) for n, v in inputs]
    graph = helper.make_graph(
        [node],
        "single",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(d)), s)
            for n, d, s in graph_inputs
        ],
        [helper.make_empty_tensor_value_info(n) for n in out_names],
        [onnx.numpy_helper.from_array(np.asarray(v), n) for n, v in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)  # types the outputs for onnxruntime
    return model, {n: v for n, v in inputs}


def _cases():
    rng = np.random.default_rng(RNG_SEED)
    f = lambda *shape: _rand(rng, shape)  # noqa: E731
    u8 = lambda *shape: rng.integers(0, 255, shape, endpoint=True).astype(np.uint8)  # noqa: E731
    i8 = lambda *shape: rng.integers(-128, 127, shape, endpoint=True).astype(np.int8)  # noqa: E731
    i64 = lambda *values: np.array(values, dtype=np.int64)  # noqa: E731
    x4 = f(2, 3, 7, 6)
    return {
        "matmul": ("MatMul", [("a", f(4, 5)), ("b", f(5, 3))], [], {}),
        "matmul_batched": ("MatMul", [("a", f(2, 4, 5))], [("b", f(5, 3))], {}),
        "gemm": (
            "Gemm",
            [("a", f(5, 4))],
            [("b", f(3, 5)), ("c", f(3))],
            {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0},
        ),
        "gemm_no_bias": ("Gemm", [("a", f(4, 5)), ("b", f(5, 3))], [], {}),
        "conv_pads": (
            "Conv",
            [("x", x4)],
            [("w", f(4, 3, 3, 3)), ("b", f(4))],
            {"pads": [1, 0, 2, 1], "strides": [2, 1]},
        ),
        "conv_same_upper": (
            "Conv",
            [("x", x4)],
            [("w", f(4, 3, 3, 2))],
            {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        ),
        "conv_same_lower": ("Conv", [("x", x4)], [("w", f(4, 3, 2, 2))], {"auto_pad": "SAME_LOWER"}),
        "conv_valid": ("Conv", [("x", x4)], [("w", f(2, 3, 3, 3))], {"auto_pad": "VALID"}),
        "relu": ("Relu", [("x", f(3, 4))], [], {}),
        "clip": ("Clip", [("x", f(3, 4))], [("lo", np.float32(-0.5)), ("hi", np.float32(0.7))], {}),
        "add_broadcast": ("Add", [("a", f(2, 3, 4)), ("b", f(3, 1))], [], {}),
        "mul": ("Mul", [("a", f(2, 3)), ("b", f(2, 3))], [], {}),
        "sub": ("Sub", [("a", f(2, 3)), ("b", f(3))], [], {}),
        "div": ("Div", [("a", f(2, 3))], [("b", np.float32([1.5, -2.0, 4.0]))], {}),
        "div_int": ("Div", [("a", i64(7, -7, 9, -9))], [("b", i64(2, 2, -4, -4))], {}),
        "maxpool": (
            "MaxPool",
            [("x", x4)],
            [],
            {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1]},
        ),
        "maxpool_ceil": (
            "MaxPool",
            [("x", x4)],
            [],
            {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
        ),
        "avgpool": ("AveragePool", [("x", x4)], [], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
        "avgpool_include": (
            "AveragePool",
            [("x", x4)],
            [],
            {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1, "strides": [2, 2]},
        ),
        "avgpool_same": ("AveragePool", [("x", x4)], [], {"kernel_shape": [2, 3], "auto_pad": "SAME_UPPER"}),
        "global_avgpool": ("GlobalAveragePool", [("x", x4)], [], {}),
        "flatten": ("Flatten", [("x", x4)], [], {"axis": 2}),
        "reshape": ("Reshape", [("x", x4)], [("s", i64(0, -1, 6))], {}),
        "transpose": ("Transpose", [("x", x4)], [], {"perm": [0, 2, 3, 1]}),
        "softmax": ("Softmax", [("x", f(3, 5))], [], {}),
        "softmax_axis": ("Softmax", [("x", f(2, 3, 5))], [], {"axis": 1}),
        "sigmoid": ("Sigmoid", [("x", f(3, 5))], [], {}),
        "quantize_uint8": (
            "QuantizeLinear",
            [("x", f(4, 6) * 3)],
            [("s", np.float32(0.05)), ("z", np.uint8(130))],
            {},
        ),
        "quantize_int8_axis": (
            "QuantizeLinear",
            [("x", f(4, 3) * 3)],
            [("s", np.float32([0.02, 0.05, 0.1])), ("z", np.int8([0, -3, 5]))],
            {"axis": 1},
        ),
        "dequantize_axis": (
            "DequantizeLinear",
            [("x", i8(3, 4))],
            [("s", np.float32([0.1, 0.2, 0.3])), ("z", np.int8([1, 0, -2]))],
            {"axis": 0},
        ),
        "dequantize_int32": (
            "DequantizeLinear",
            [("x", rng.integers(-5000, 5000, 6).astype(np.int32))],
            [("s", np.float32(0.001))],
            {},
        ),
        "matmul_integer": (
            "MatMulInteger",
            [("a", u8(4, 6))],
            [("b", i8(6, 3)), ("az", np.uint8(128)), ("bz", np.int8(0))],
            {},
        ),
        "conv_integer": (
            "ConvInteger",
            [("x", u8(1, 2, 5, 5))],
            [("w", u8(3, 2, 3, 3)), ("xz", np.uint8(120)), ("wz", np.uint8(127))],
            {"pads": [1, 1, 1, 1]},
        ),
        "shape": ("Shape", [("x", x4)], [], {"start": 1}),
        "gather": ("Gather", [("x", f(4, 5))], [("i", i64(3, -1, 0))], {"axis": 1}),
        "slice": (
            "Slice",
            [("x", x4)],
            [("st", i64(1, -1)), ("en", i64(100, -100)), ("ax", i64(2, 3)), ("sp", i64(2, -2))],
            {},
        ),
        "concat": ("Concat", [("a", f(2, 3)), ("b", f(2, 1))], [], {"axis": 1}),
        "unsqueeze": ("Unsqueeze", [("x", f(2, 3))], [("ax", i64(0, -1))], {}),
        "squeeze": ("Squeeze", [("x", f(1, 3, 1))], [("ax", i64(2))], {}),
        "constant_of_shape": (
            "ConstantOfShape",
            [("s", i64(2, 3))],
            [],
            {"value": helper.make_tensor("v", TensorProto.INT64, [1], [7])},
        ),
        "cast": ("Cast", [("x", f(3, 4) * 10)], [], {"to": TensorProto.INT32}),
        "identity": ("Identity", [("x", f(3))], [], {}),
        "neg": ("Neg", [("x", f(3))], [], {}),
        "exp": ("Exp", [("x", f(3))], [], {}),
        "sqrt": ("Sqrt", [("x", np.abs(f(3)))], [], {}),
        "tanh": ("Tanh", [("x", f(3))], [], {}),
        "pow": ("Pow", [("x", np.abs(f(3)))], [("p", np.float32(1.5))], {}),
        "max": ("Max", [("a", f(2, 3)), ("b", f(3))], [], {}),
        "min": ("Min", [("a", f(2, 3)), ("b", f(3))], [], {}),
        "expand": ("Expand", [("x", f(3, 1))], [("s", i64(2, 3, 4))], {}),
        "range": ("Range", [], [("a", np.int64(2)), ("b", np.int64(11)), ("d", np.int64(3))], {}),
        "where": ("Where", [("c", f(2, 3) > 0), ("a", f(2, 3)), ("b", f(2, 3))], [], {}),
        "equal": ("Equal", [("a", i64(1, 2, 3)), ("b", i64(1, 0, 3))], [], {}),
        "argmax": ("ArgMax", [("x", f(3, 5))], [], {"axis": 1, "keepdims": 0}),
    }


CASES = _cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_evaluate_matches_onnxruntime(case):
    op, inputs, initializers, attrs = CASES[case]
    model, feeds = _single(op, inputs, initializers, **attrs)
    expected = run_ort(model, feeds)
    graph = validate(load_onnx(model))
    actual = list(evaluate(graph, feeds).values())
    # Integer ops are exact: against ONNX's reference, which is exact on every CPU (onnxruntime's
    # u8s8 products saturate without VNNI; see run_reference).
    exact = run_reference(model, feeds) if any(a.dtype.kind != "f" for a in actual) else expected
    for got, want, exact_want in zip(actual, expected, exact, strict=True):
        assert got.dtype == want.dtype, (case, got.dtype, want.dtype)
        assert got.shape == want.shape, (case, got.shape, want.shape)
        if got.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(got, exact_want)


def test_dropout_inference_is_identity_with_mask():
    rng = np.random.default_rng(RNG_SEED)
    model, feeds = _single("Dropout", [("x", _rand(rng, (3, 4)))], outputs=2)
    got = evaluate(load_onnx(model), feeds)
    want = run_ort(model, feeds)
    np.testing.assert_array_equal(got["y0"], want[0])
    np.testing.assert_array_equal(got["y1"], want[1])


@pytest.mark.parametrize("op", ["QLinearMatMul", "QLinearConv"])
@pytest.mark.parametrize("seed", [0, 1])
def test_qlinear_ops_within_one_step_of_the_onnx_reference(op, seed):
    """The integer accumulation is exact; the float requantization may round a tie differently.

    The reference is ONNX's own (onnxruntime's u8s8 kernels saturate on CPUs without VNNI: see
    :func:`run_reference`)."""
    rng = np.random.default_rng(seed)
    if op == "QLinearMatMul":
        x = rng.integers(0, 255, (5, 16), endpoint=True).astype(np.uint8)
        w = rng.integers(-127, 127, (16, 6), endpoint=True).astype(np.int8)
        w_scale = np.float32(0.01)
        extra = []
        y_shape = [5, 6]
    else:
        x = rng.integers(0, 255, (1, 3, 6, 6), endpoint=True).astype(np.uint8)
        w = rng.integers(-127, 127, (4, 3, 3, 3), endpoint=True).astype(np.int8)
        w_scale = rng.uniform(0.005, 0.02, 4).astype(np.float32)
        extra = [("bias", rng.integers(-3000, 3000, 4).astype(np.int32))]
        y_shape = [1, 4, 6, 6]
    initializers = [
        ("xs", np.float32(0.02)),
        ("xz", np.uint8(131)),
        ("w", w),
        ("ws", w_scale),
        ("wz", np.zeros(np.shape(w_scale), np.int8)),
        ("ys", np.float32(0.4)),
        ("yz", np.uint8(120)),
        *extra,
    ]
    attrs = {"pads": [1, 1, 1, 1]} if op == "QLinearConv" else {}
    node = helper.make_node(op, ["x", *[n for n, _ in initializers]], ["y"], **attrs)
    model = make_model([node], [("x", np.uint8, list(x.shape))], [("y", np.uint8, y_shape)], initializers)
    want = run_reference(model, {"x": x})[0]
    got = evaluate(validate(load_onnx(model)), {"x": x})["y"]
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert np.mean(got == want) > 0.9


def test_skl2onnx_mlp_matches_onnxruntime_with_cpu_fallback():
    x, _ = digits_data()
    model = digits_mlp()
    graph = validate(load_onnx(model, allow_fallback=True))
    fallback = [n for n in graph.nodes if n.device == "cpu"]
    assert [n.op_type for n in fallback] == ["ArrayFeatureExtractor"]
    got = evaluate(graph, {"X": x[:40]})
    label, probabilities = run_ort(model, {"X": x[:40]})
    np.testing.assert_array_equal(got["label"], label)
    np.testing.assert_allclose(got["probabilities"], probabilities, rtol=1e-5, atol=1e-6)


def test_skl2onnx_mlp_without_fallback_names_the_foreign_op():
    with pytest.raises(UnsupportedOperator, match="ArrayFeatureExtractor.*allow_fallback"):
        load_onnx(digits_mlp())


def test_conv_model_matches_onnxruntime():
    model = conv_model(3, batch=2)
    x = np.random.default_rng(3).normal(size=(2, 1, 8, 8)).astype(np.float32)
    got = evaluate(validate(load_onnx(model)), {"x": x})["y"]
    np.testing.assert_allclose(got, run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_unsupported_operator_names_op_and_node():
    model, _ = _single("Det", [("x", np.zeros((2, 2), np.float32))])
    with pytest.raises(UnsupportedOperator, match=r"Det.*'the_det'.*no implementation") as info:
        load_onnx(model)
    assert isinstance(info.value, BrazeError)
    assert info.value.op_type == "Det" and info.value.node == "the_det"


def test_fallback_op_runs_on_cpu_with_onnx_semantics():
    x = np.random.default_rng(0).normal(size=(3, 4, 4)).astype(np.float32)
    model, feeds = _single("Det", [("x", x)])
    graph = validate(load_onnx(model, allow_fallback=True))
    (node,) = [n for n in graph.nodes if n.kind is NodeKind.OPERATOR]
    assert node.device == "cpu"
    np.testing.assert_allclose(evaluate(graph, feeds)["y0"], run_ort(model, feeds)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("outputs", [["", "y_h"], ["", "", "y_c"], ["y", "y_h"]])
def test_an_lstm_with_unnamed_optional_outputs(outputs):
    """Issue 10, defect 5: an LSTM whose first (optional) output is unnamed was "LSTM has no output"."""
    rng = np.random.default_rng(0)
    hidden = 3
    weights = [("W", _rand(rng, (1, 4 * hidden, 2))), ("R", _rand(rng, (1, 4 * hidden, hidden)))]
    model = make_model([helper.make_node("LSTM", ["x", "W", "R"], outputs, hidden_size=hidden, name="lstm")],
                       [("x", np.float32, [5, 1, 2])], [(outputs[-1], np.float32, [1, 1, hidden])], weights)
    graph = validate(load_onnx(model))                 # Braze's own LSTM (no fallback)
    x = _rand(rng, (5, 1, 2))
    np.testing.assert_allclose(evaluate(graph, {"x": x})[outputs[-1]], run_ort(model, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)


def test_tensor_data_that_contradicts_its_dims_is_a_load_error():
    """Found by ``braze bench fuzz``: an initializer whose dims disagree with its data (the ONNX checker
    does not compare them) raised numpy's ValueError from the loader."""
    model = _single("Add", [("x", np.zeros(4, np.float32))], [("c", np.ones(4, np.float32))])[0]
    model.graph.initializer[0].dims[0] = 3           # more data than the dims hold
    with pytest.raises(ModelLoadError, match=r"initializer 'c': malformed tensor \(dims \[3\]"):
        load_onnx(model.SerializeToString())
    constant = helper.make_node("Constant", [], ["k"], name="k_node",
                                value=numpy_helper.from_array(np.ones(3, np.float32)))
    constant.attribute[0].t.dims[0] = 2
    broken = make_model([constant, helper.make_node("Add", ["x", "k"], ["y"])], [("x", np.float32, [3])],
                        [("y", np.float32, [3])])
    with pytest.raises(ModelLoadError, match=r"node 'k_node': attribute 'value': malformed tensor"):
        load_onnx(broken)


def test_a_negative_declared_dimension_is_a_load_error():
    """Found by ``braze bench fuzz``: an input declared with dimension -3 loaded, and failed later."""
    model = _single("Relu", [("x", np.zeros((2, 3), np.float32))])[0]
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -3
    with pytest.raises(ModelLoadError, match=r"tensor 'x' is declared with a negative dimension: \[-3, 3\]"):
        load_onnx(model.SerializeToString())


def test_grouped_convolution_runs_natively():
    rng = np.random.default_rng(0)
    model, _ = _single("Conv", [("x", _rand(rng, (1, 4, 5, 5)))], [("w", _rand(rng, (4, 2, 3, 3)))], group=2)
    graph = load_onnx(model)                  # Braze's own evaluator runs it (the kernels do not)
    assert all("onnx_node" not in n.attrs for n in graph.nodes)
    x = _rand(rng, (1, 4, 5, 5))
    np.testing.assert_allclose(
        evaluate(graph, {"x": x})["y0"], run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-5
    )


def test_control_flow_runs_on_braze_s_own_evaluator():
    """An If imports as an operator whose branches read the outer scope's ``a``; each condition
    value takes its branch (more in test_control_flow.py)."""
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["a"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])],
    )
    node = helper.make_node(
        "If", ["c"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch
    )
    model = make_model([node], [("c", np.bool_, []), ("a", np.float32, [2])], [("y", np.float32, [2])])
    a = np.array([1.5, -2.0], np.float32)
    for fallback in (False, True):
        graph = load_onnx(model, allow_fallback=fallback)
        (node,) = graph.operators()
        assert node.op_type == "If" and node.inputs == ("c", "a") and "onnx_node" not in node.attrs
        for cond, want in ((True, a), (False, -a)):
            np.testing.assert_array_equal(evaluate(graph, {"c": np.array(cond), "a": a})["y"], want)


def test_corrupt_file_error_names_the_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xff\xff")
    with pytest.raises(ModelLoadError, match="broken.onnx"):
        load_onnx(path)
    with pytest.raises(ModelLoadError, match="missing.onnx.*no such file"):
        load_onnx(tmp_path / "missing.onnx")


def test_checker_failure_names_the_file(tmp_path):
    model, _ = _single("Relu", [("x", np.zeros((2,), np.float32))])
    model.graph.node[0].input[0] = "undefined_tensor"
    path = tmp_path / "bad_graph.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelLoadError, match="bad_graph.onnx.*checker"):
        load_onnx(str(path))


def test_old_opset_is_rejected():
    node = helper.make_node("Relu", ["x"], ["y"])
    model = make_model([node], [("x", np.float32, [2])], [("y", np.float32, [2])], opset=11)
    with pytest.raises(ModelLoadError, match="opset 11.*>= 13"):
        load_onnx(model)


def test_input_shapes_fix_symbolic_batch():
    graph = load_onnx(digits_mlp(), allow_fallback=True, input_shapes={"X": (7, 64)})
    assert graph.tensor("X").shape == (7, 64)
    assert graph.tensor("probabilities").shape == (7, 10)
    with pytest.raises(ModelLoadError, match="'Y'"):
        load_onnx(digits_mlp(), allow_fallback=True, input_shapes={"Y": (7, 64)})


def test_evaluate_checks_inputs():
    graph = load_onnx(conv_model())
    with pytest.raises(EvaluationError, match="'x'"):
        evaluate(graph, {})
    with pytest.raises(EvaluationError, match="shape"):
        evaluate(graph, {"x": np.zeros((2, 1, 8, 9), np.float32)})


def test_every_required_op_is_supported():
    required = {
        "MatMul",
        "Gemm",
        "Conv",
        "Relu",
        "Clip",
        "Add",
        "Mul",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "Flatten",
        "Reshape",
        "Transpose",
        "Softmax",
        "Sigmoid",
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearMatMul",
        "QLinearConv",
        "MatMulInteger",
        "ConvInteger",
        "Shape",
        "Gather",
        "Slice",
        "Concat",
        "Unsqueeze",
        "Squeeze",
        "ConstantOfShape",
        "Cast",
        "Identity",
        "Dropout",
        "Div",
        "Sub",
    }
    assert required <= SUPPORTED_OPS
    tested = {op for op, *_ in CASES.values()} | {"Dropout", "QLinearMatMul", "QLinearConv"}
    assert required - {"Constant"} <= tested
