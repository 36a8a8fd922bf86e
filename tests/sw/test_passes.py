"""The pure graph passes: each keeps the graph valid and its results identical."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_models import conv_model, digits_data, digits_mlp, make_model, run_ort

from braze.sw.compiler.cache import KernelCache
from braze.sw.compiler.frontend import evaluate, load_onnx
from braze.sw.compiler.ir import NodeKind
from braze.sw.compiler.passes import (
    DEFAULT_PASSES,
    cancel_quant_pairs,
    fold_batchnorm,
    fold_constants,
    fold_layouts,
    remove_dead,
    remove_identities,
    run_passes,
    simplify,
)
from braze.sw.compiler.quantize import quantize
from braze.sw.compiler.validate import validate
from braze.sw.runtime.session import InferenceSession

ALL_PASSES = (remove_dead, remove_identities, fold_constants, cancel_quant_pairs, fold_layouts)


def exported_model():
    """What torch.onnx.export writes for ``fc(x.view(x.size(0), -1))`` plus assorted no-ops."""
    rng = np.random.default_rng(5)
    w = rng.normal(size=(10, 48)).astype(np.float32)  # torch Linear stores (out, in)
    b = rng.normal(size=10).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["x"], ["x_id"], name="id"),
        helper.make_node("Shape", ["x_id"], ["shape"], name="shape"),
        helper.make_node("Constant", [], ["zero"], name="c0", value=helper.make_tensor("z", 7, [], [0])),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"], name="unsq"),
        helper.make_node("Concat", ["batch1", "minus_one"], ["new_shape"], name="concat", axis=0),
        helper.make_node("Reshape", ["x_id", "new_shape"], ["flat"], name="view"),
        helper.make_node("Dropout", ["flat"], ["dropped"], name="dropout"),
        helper.make_node("Cast", ["dropped"], ["cast"], name="cast", to=1),
        helper.make_node("Transpose", ["w"], ["wt"], name="w_t", perm=[1, 0]),
        helper.make_node("MatMul", ["cast", "wt"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "b"], ["logits"], name="bias"),
        helper.make_node("Transpose", ["logits"], ["same"], name="noop_t", perm=[0, 1]),
        helper.make_node("Relu", ["same"], ["unused"], name="dead_relu"),
        helper.make_node("Identity", ["same"], ["y"], name="out_id"),
    ]
    return make_model(
        nodes,
        [("x", np.float32, [2, 3, 4, 4])],
        [("y", np.float32, [2, 10])],
        [("axes", np.array([0], np.int64)), ("minus_one", np.array([-1], np.int64)), ("w", w), ("b", b)],
        name="exported",
    )


def gemm_model():
    rng = np.random.default_rng(6)
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w", "c"], ["y"], name="fc", transB=1),
    ]
    return make_model(
        nodes,
        [("x", np.float32, [3, 2, 2, 3])],
        [("y", np.float32, [3, 5])],
        [("w", rng.normal(size=(5, 12)).astype(np.float32)), ("c", rng.normal(size=5).astype(np.float32))],
    )


def qdq_model(same: bool = True):
    """x -> Q -> DQ -> Q -> DQ -> Relu; the middle DQ -> Q pair is an exact round trip when ``same``."""
    second_zero = np.uint8(17) if same else np.uint8(18)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q1"], name="q1"),
        helper.make_node("DequantizeLinear", ["q1", "s", "z"], ["d1"], name="d1"),
        helper.make_node("QuantizeLinear", ["d1", "s", "z2"], ["q2"], name="q2"),
        helper.make_node("DequantizeLinear", ["q2", "s", "z2"], ["d2"], name="d2"),
        helper.make_node("Relu", ["d2"], ["y"], name="relu"),
    ]
    return make_model(
        nodes,
        [("x", np.float32, [4, 8])],
        [("y", np.float32, [4, 8])],
        [("s", np.float32(0.03)), ("z", np.uint8(17)), ("z2", second_zero)],
    )


def quantized_conv():
    rng = np.random.default_rng(13)
    calibration = [{"x": rng.normal(size=(2, 1, 8, 8)).astype(np.float32)} for _ in range(3)]
    return quantize(load_onnx(conv_model()), calibration)


MODELS = {
    "quantized": (quantized_conv, lambda rng: {"x": rng.normal(size=(2, 1, 8, 8)).astype(np.float32)}),
    "conv": (
        lambda: load_onnx(conv_model()),
        lambda rng: {"x": rng.normal(size=(2, 1, 8, 8)).astype(np.float32)},
    ),
    "mlp": (lambda: load_onnx(digits_mlp(), allow_fallback=True), lambda rng: {"X": digits_data()[0][:16]}),
    "exported": (
        lambda: load_onnx(exported_model()),
        lambda rng: {"x": rng.normal(size=(2, 3, 4, 4)).astype(np.float32)},
    ),
    "gemm": (
        lambda: load_onnx(gemm_model()),
        lambda rng: {"x": rng.normal(size=(3, 2, 2, 3)).astype(np.float32)},
    ),
    "qdq": (
        lambda: load_onnx(qdq_model()),
        lambda rng: {"x": rng.normal(size=(4, 8)).astype(np.float32) * 3},
    ),
    "qdq_mismatch": (
        lambda: load_onnx(qdq_model(False)),
        lambda rng: {"x": rng.normal(size=(4, 8)).astype(np.float32) * 3},
    ),
}


def _equal_results(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("pass_", ALL_PASSES, ids=lambda p: p.__name__)
def test_pass_is_pure_valid_and_exact(model, pass_):
    build, feeds = MODELS[model]
    graph = validate(build())
    inputs = feeds(np.random.default_rng(0))
    before = graph.fingerprint()
    result = validate(pass_(graph))
    assert graph.fingerprint() == before  # the argument is untouched
    assert result.inputs == graph.inputs and result.outputs == graph.outputs
    _equal_results(evaluate(graph, inputs), evaluate(result, inputs))


@pytest.mark.parametrize("model", sorted(MODELS))
def test_pipeline_is_valid_exact_and_idempotent(model):
    build, feeds = MODELS[model]
    graph = build()
    inputs = feeds(np.random.default_rng(1))
    result, records = run_passes(graph, until_fixed=True)
    assert [r.name for r in records[: len(DEFAULT_PASSES)]] == [p.__name__ for p in DEFAULT_PASSES]
    assert not any(r.changed for r in records[-len(DEFAULT_PASSES) :])  # ended at a fixed point
    _equal_results(evaluate(graph, inputs), evaluate(result, inputs))
    assert simplify(result).fingerprint() == result.fingerprint()


def test_exported_shape_arithmetic_folds_away():
    graph = load_onnx(exported_model())
    result = simplify(graph)
    # Shape/Gather/Unsqueeze/Concat fold into the Reshape's shape; Identity, Dropout, Cast and the
    # identity Transpose go; the weight's Transpose folds into the constant; the dead Relu goes.
    assert [n.op_type for n in result.operators()] == ["Reshape", "MatMul", "Add"]
    reshape, matmul, _ = result.operators()
    np.testing.assert_array_equal(result.constant(reshape.inputs[1]), [2, -1])
    assert reshape.inputs[0] == "x" and matmul.inputs[0] == reshape.outputs[0]
    np.testing.assert_array_equal(result.constant(matmul.inputs[1]), graph.constant("w").T)


def test_remove_identities_keeps_output_names():
    graph = load_onnx(exported_model())
    result = remove_identities(graph)
    assert result.outputs == ("y",)
    removed = {n.name for n in graph.nodes} - {n.name for n in result.nodes}
    assert removed == {"id", "dropout", "cast", "noop_t", "out_id"}


def test_remove_dead_drops_unused_branch_but_keeps_inputs():
    graph = load_onnx(exported_model())
    result = remove_dead(graph)
    assert "dead_relu" not in result and "fc" in result
    assert result.inputs == ("x",)


def test_fold_constants_turns_shape_of_static_tensor_into_constant():
    graph = load_onnx(exported_model())
    result = fold_constants(graph)
    assert result.producer("new_shape").kind is NodeKind.CONSTANT
    np.testing.assert_array_equal(result.constant("new_shape"), [2, -1])
    assert result.producer("flat").op_type == "Reshape"  # depends on the input: stays


def test_cancel_quant_pairs_only_when_exact():
    exact = load_onnx(qdq_model(True))
    result = remove_dead(cancel_quant_pairs(exact))
    assert [n.op_type for n in result.operators()] == ["QuantizeLinear", "DequantizeLinear", "Relu"]
    mismatch = load_onnx(qdq_model(False))
    assert cancel_quant_pairs(mismatch) is mismatch


def test_fold_layouts_gemm_weight_and_flatten_note():
    graph = load_onnx(gemm_model())
    result = remove_dead(fold_layouts(graph))
    (gemm,) = result.operators()
    assert gemm.op_type == "Gemm" and "transB" not in gemm.attrs and gemm.attrs["flatten_a"] == 1
    assert gemm.inputs[0] == "x"
    np.testing.assert_array_equal(result.constant(gemm.inputs[1]), graph.constant("w").T)


def test_run_passes_records_changes():
    graph = load_onnx(exported_model())
    _, records = run_passes(graph, [remove_identities, remove_dead])
    identities, dead = records
    assert set(identities.removed) == {"id", "dropout", "cast", "noop_t", "out_id"}
    assert identities.nodes_before - identities.nodes_after == 5
    assert "remove_identities" in str(identities) and "removed" in str(identities)
    assert dead.removed == ("dead_relu",)
    assert not run_passes(graph, [cancel_quant_pairs])[1][0].changed


def test_run_passes_rejects_a_pass_that_breaks_the_graph():
    from braze.sw.compiler.ir import InvalidGraph

    def break_it(graph):
        return graph.edit(remove=["fc"])

    with pytest.raises(InvalidGraph, match="no node produces"):
        run_passes(load_onnx(exported_model()), [break_it])


def _conv_bn_model(*, second_reader: bool = False):
    """Conv -> BatchNormalization -> Relu (a model exported without folding); with ``second_reader`` the
    convolution's output is also a graph output, so the normalization cannot be folded into it."""
    rng = np.random.default_rng(8)
    params = [("w", rng.normal(0, 0.5, (4, 2, 3, 3))), ("b", rng.normal(0, 0.1, 4)),
              ("scale", rng.uniform(0.5, 1.5, 4)), ("shift", rng.uniform(-0.5, 0.5, 4)),
              ("mean", rng.uniform(-1, 1, 4)), ("var", rng.uniform(0.5, 2, 4))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"], name="bn",
                              epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["y"], name="relu")]
    outputs = [("y", np.float32, [2, 4, 6, 6])] + ([("c", np.float32, [2, 4, 6, 6])] if second_reader else [])
    return make_model(nodes, [("x", np.float32, [2, 2, 6, 6])], outputs,
                      [(name, value.astype(np.float32)) for name, value in params])


def test_batchnorm_folds_into_the_convolution_before_it():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, 2, 6, 6)).astype(np.float32)
    model = _conv_bn_model()
    folded = fold_batchnorm(load_onnx(model))
    assert validate(folded) is folded
    assert [n.op_type for n in folded.operators()] == ["Conv", "Relu"]
    np.testing.assert_allclose(evaluate(folded, {"x": x})["y"], run_ort(model, {"x": x})[0], rtol=1e-5,
                               atol=1e-5)
    # Quantized, the folded convolution runs on the chip (the normalization used to keep it float).
    session = InferenceSession(model, config="tiny", calibration=x, cache=KernelCache(disk=False))
    assert session.compiled.placement["conv_q"].startswith("accel")
    kept = load_onnx(_conv_bn_model(second_reader=True))
    assert fold_batchnorm(kept) is kept              # the unnormalized output is read elsewhere
