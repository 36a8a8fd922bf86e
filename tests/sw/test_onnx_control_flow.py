"""If, Loop and Scan in Braze's own evaluator: subgraphs run by recursion, outer-scope names visible
inside them; onnxruntime is the oracle, onnx's ReferenceEvaluator is forbidden throughout."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx_models import make_model, run_ort

from braze.sw.compiler.frontend import ModelLoadError, UnsupportedOperator, evaluate, load_onnx
from braze.sw.compiler.passes import simplify
from braze.sw.runtime import InferenceSession
from braze.sw.runtime.conformance import _reference_forbidden


def _info(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def _weights(rng, *shape):
    return rng.normal(0, 0.5, shape).astype(np.float32)


def _if_model(rng) -> object:
    """x -> MatMul -> If(sum > 0: h * outer scale + outer bias; else: -h, itself holding a nested If
    that reads the outermost x) -> MatMul -> y.  The branches read ``h``, ``scale`` and ``x`` from
    outer scopes."""
    inner_then = helper.make_graph([helper.make_node("Abs", ["x"], ["ax"]),
                                    helper.make_node("ReduceMean", ["ax"], ["inner"], keepdims=0)],
                                   "inner_then", [], [_info("inner", TensorProto.FLOAT, [])])
    half = helper.make_tensor("v", TensorProto.FLOAT, [], [0.5])
    inner_else = helper.make_graph([helper.make_node("Constant", [], ["inner_c"], value=half)],
                                   "inner_else", [], [_info("inner_c", TensorProto.FLOAT, [])])
    then_branch = helper.make_graph([helper.make_node("Mul", ["h", "scale"], ["hs"]),
                                     helper.make_node("Add", ["hs", "bias"], ["then_out"])],
                                    "then", [], [_info("then_out", TensorProto.FLOAT, None)])
    else_branch = helper.make_graph([helper.make_node("Less", ["scale", "bias"], ["nested_cond"]),
                                     helper.make_node("Cast", ["nested_cond"], ["nested_cond_f"], to=1),
                                     helper.make_node("ReduceMax", ["nested_cond_f"], ["nc"], keepdims=0),
                                     helper.make_node("Cast", ["nc"], ["nested"], to=9),
                                     helper.make_node("If", ["nested"], ["m"], then_branch=inner_then,
                                                      else_branch=inner_else),
                                     helper.make_node("Neg", ["h"], ["nh"]),
                                     helper.make_node("Mul", ["nh", "m"], ["else_out"])],
                                    "else", [], [_info("else_out", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0, name="total"),
             helper.make_node("Greater", ["total", "zero"], ["positive"], name="positive"),
             helper.make_node("If", ["positive"], ["g"], name="branch", then_branch=then_branch,
                              else_branch=else_branch),
             helper.make_node("MatMul", ["g", "w2"], ["y"], name="mm2")]
    return make_model(nodes, [("x", np.float32, [4, 8])], [("y", np.float32, [4, 6])],
                      [("w1", _weights(rng, 8, 16)), ("w2", _weights(rng, 16, 6)), ("zero", np.float32(0)),
                       ("scale", _weights(rng, 16)), ("bias", _weights(rng, 16))])


def _loop_model(rng, *, trip: bool = True, cond: bool = True) -> object:
    """A Loop over the rows of an outer-scope tensor: h accumulates tanh(h + row) until the running
    sum passes a limit, the tenth step or the trip count ends; scan output: h at each step.  Loop
    inputs left out with ``trip``/``cond`` False."""
    body = helper.make_graph(
        [helper.make_node("Mod", ["i", "six"], ["wrapped"]),
         helper.make_node("Unsqueeze", ["wrapped", "axis0"], ["i1"]),
         helper.make_node("Add", ["i1", "one"], ["i2"]),
         helper.make_node("Slice", ["rows", "i1", "i2"], ["row"]),
         helper.make_node("Add", ["h_in", "row"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h_out"]),
         helper.make_node("ReduceSum", ["h_out"], ["s"], keepdims=0),
         helper.make_node("Less", ["s", "limit"], ["below"]),
         helper.make_node("Less", ["i", "nine"], ["early"]),
         helper.make_node("And", ["below", "early"], ["cond_out"]),
         helper.make_node("Identity", ["h_out"], ["step"])],
        "body",
        [_info("i", TensorProto.INT64, []), _info("cond_in", TensorProto.BOOL, []),
         _info("h_in", TensorProto.FLOAT, [1, 8])],
        [_info("cond_out", TensorProto.BOOL, []), _info("h_out", TensorProto.FLOAT, [1, 8]),
         _info("step", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor("axis0", TensorProto.INT64, [1], [0]),
         helper.make_tensor("six", TensorProto.INT64, [], [6]),
         helper.make_tensor("nine", TensorProto.INT64, [], [9]),
         helper.make_tensor("one", TensorProto.INT64, [1], [1])])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h0"], name="mm"),
             helper.make_node("Loop", ["trip" if trip else "", "go" if cond else "", "h0"], ["h", "steps"],
                              name="loop", body=body)]
    inits = [("w", _weights(rng, 4, 8)), ("rows", _weights(rng, 6, 8)), ("limit", np.float32(2.0)),
             ("trip", np.int64(5)), ("go", np.bool_(True))]
    return make_model(nodes, [("x", np.float32, [1, 4])],
                      [("h", np.float32, [1, 8]), ("steps", np.float32, ["n", 1, 8])], inits)


def _scan_model(rng, directions=(0, 1), axes=(0, 1), out_dirs=(1,), out_axes=(1,)) -> object:
    """Scan with two scan inputs (one reversed, one along axis 1), a running sum state, one scan
    output; the body reads an outer-scope weight."""
    body = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["ab"]),
         helper.make_node("Mul", ["ab", "gain"], ["abg"]),
         helper.make_node("Add", ["state_in", "abg"], ["state_out"]),
         helper.make_node("Relu", ["state_out"], ["out"])],
        "scan_body",
        [_info("state_in", TensorProto.FLOAT, [3]), _info("a", TensorProto.FLOAT, [3]),
         _info("b", TensorProto.FLOAT, [3])],
        [_info("state_out", TensorProto.FLOAT, [3]), _info("out", TensorProto.FLOAT, [3])])
    node = helper.make_node("Scan", ["s0", "a_seq", "b_seq"], ["s", "outs"], num_scan_inputs=2, body=body,
                            scan_input_directions=list(directions), scan_input_axes=list(axes),
                            scan_output_directions=list(out_dirs), scan_output_axes=list(out_axes))
    return make_model([node], [("s0", np.float32, [3]), ("a_seq", np.float32, [5, 3]),
                               ("b_seq", np.float32, [3, 5])],
                      [("s", np.float32, [3]), ("outs", np.float32, [3, 5])], [("gain", _weights(rng, 3))])


def _strict_evaluate(model, feeds):
    with _reference_forbidden():
        return evaluate(simplify(load_onnx(model)), feeds)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_if_with_outer_scope_names_and_a_nested_if_matches_onnxruntime(sign):
    rng = np.random.default_rng(0)
    model = _if_model(rng)
    x = (np.abs(rng.normal(size=(4, 8))) * sign).astype(np.float32)
    got = _strict_evaluate(model, {"x": x})["y"]
    np.testing.assert_allclose(got, run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("trip", "cond"), [(True, True), (True, False), (False, True)])
def test_loop_trip_count_condition_and_scan_outputs_match_onnxruntime(trip, cond):
    rng = np.random.default_rng(1)
    model = _loop_model(rng, trip=trip, cond=cond)
    x = rng.normal(size=(1, 4)).astype(np.float32)
    got = _strict_evaluate(model, {"x": x})
    want = run_ort(model, {"x": x})
    assert got["steps"].shape == want[1].shape
    np.testing.assert_allclose(got["h"], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["steps"], want[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("directions", "out_dirs", "out_axes"), [((0, 1), (1,), (1,)), ((1, 0), (0,), (0,))])
def test_scan_directions_and_axes_match_onnxruntime(directions, out_dirs, out_axes):
    rng = np.random.default_rng(2)
    model = _scan_model(rng, directions=directions, out_dirs=out_dirs, out_axes=out_axes)
    feeds = {"s0": rng.normal(size=3).astype(np.float32), "a_seq": rng.normal(size=(5, 3)).astype(np.float32),
             "b_seq": rng.normal(size=(3, 5)).astype(np.float32)}
    got = _strict_evaluate(model, feeds)
    want = run_ort(model, feeds)
    np.testing.assert_allclose(got["s"], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["outs"], want[1], rtol=1e-5, atol=1e-6)


def test_loop_without_trip_count_or_condition_is_refused_naming_the_node():
    rng = np.random.default_rng(1)
    model = _loop_model(rng, trip=False, cond=False)
    with pytest.raises(ModelLoadError, match=r"node 'loop'.*neither a trip count nor a condition"):
        load_onnx(model)


def test_if_branches_with_different_output_counts_are_refused_naming_the_node():
    one = helper.make_graph([helper.make_node("Identity", ["x"], ["a"])], "one", [],
                            [_info("a", TensorProto.FLOAT, [2])])
    two = helper.make_graph([helper.make_node("Identity", ["x"], ["b"]),
                             helper.make_node("Neg", ["x"], ["nx"])], "two", [],
                            [_info("b", TensorProto.FLOAT, [2]), _info("nx", TensorProto.FLOAT, [2])])
    choose = helper.make_node("If", ["c"], ["y"], name="choose", then_branch=one, else_branch=two)
    model = make_model([choose],
                       [("c", np.bool_, []), ("x", np.float32, [2])], [("y", np.float32, [2])])
    with pytest.raises(ModelLoadError, match=r"node 'choose'.*then_branch has 1 outputs and else_branch 2"):
        load_onnx(model)


def test_unsupported_operator_inside_a_subgraph_is_named_with_its_path():
    body = helper.make_graph([helper.make_node("Det", ["m"], ["d"], name="det")], "then", [],
                             [_info("d", TensorProto.FLOAT, [])])
    other = helper.make_graph([helper.make_node("ReduceSum", ["m"], ["e"], keepdims=0)], "else", [],
                              [_info("e", TensorProto.FLOAT, [])])
    choose = helper.make_node("If", ["c"], ["y"], name="choose", then_branch=body, else_branch=other)
    model = make_model([choose],
                       [("c", np.bool_, []), ("m", np.float32, [2, 2])], [("y", np.float32, [])])
    with pytest.raises(UnsupportedOperator, match=r"Det in node 'choose/then_branch/det'"):
        load_onnx(model)


def test_session_runs_if_on_the_host_around_accelerator_partitions():
    """A float model with If between two MatMuls: loads in InferenceSession; uncalibrated it equals
    onnxruntime; calibrated, both MatMuls run on the accelerator, the If on the host, and the output
    equals Braze's evaluator of the quantized graph bit for bit."""
    rng = np.random.default_rng(3)
    model = _if_model(rng)
    x = np.abs(rng.normal(size=(4, 8))).astype(np.float32)
    with _reference_forbidden(), pytest.warns(UserWarning, match="no calibration data"):
        float_session = InferenceSession(model, config="tiny")
    for sign in (1.0, -1.0):
        (y,) = float_session.run(None, {"x": x * sign})
        np.testing.assert_allclose(y, run_ort(model, {"x": x * sign})[0], rtol=1e-5, atol=1e-5)
    calibration = [{"x": (np.abs(rng.normal(size=(4, 8))) * s).astype(np.float32)} for s in (1, -1, 1, -1)]
    with _reference_forbidden():
        session = InferenceSession(model, config="tiny", calibration=calibration)
        for sign in (1.0, -1.0):
            (y,) = session.run(None, {"x": x * sign})
            assert np.array_equal(y, evaluate(session.graph_before, {"x": x * sign})["y"])
    placement = session.compiled.placement
    assert sum(place.startswith("accel") for place in placement.values()) >= 2
    assert any(name.startswith("branch") and place.startswith("cpu") for name, place in placement.items())


def test_loop_building_a_sequence_runs_in_a_session_and_matches_onnxruntime():
    """Loop-carried sequence (SequenceEmpty, SequenceInsert in the body), then ConcatFromSequence and
    SplitToSequence/SequenceAt: sequences are Python lists through the evaluator and the session."""
    body = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["fi"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["x", "fi"], ["scaled"]),
         helper.make_node("SequenceInsert", ["seq_in", "scaled"], ["seq_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [_info("i", TensorProto.INT64, []), _info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_sequence_value_info("seq_in", TensorProto.FLOAT, None)],
        [_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_sequence_value_info("seq_out", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("SequenceEmpty", [], ["empty"], dtype=TensorProto.FLOAT),
             helper.make_node("Loop", ["n", "", "empty"], ["seq"], body=body, name="loop"),
             helper.make_node("ConcatFromSequence", ["seq"], ["stacked"], axis=0, new_axis=1),
             helper.make_node("SplitToSequence", ["stacked", "sizes"], ["parts"], axis=0),
             helper.make_node("SequenceAt", ["parts", "last"], ["y"])]
    model = make_model(nodes, [("x", np.float32, [3]), ("n", np.int64, [])], [("y", np.float32, [None, 3])],
                       [("sizes", np.array([1, 3], np.int64)), ("last", np.int64(-1))])
    x = np.array([1.0, -2.0, 0.5], np.float32)
    with _reference_forbidden():
        session = InferenceSession(model, config="tiny")
        (y,) = session.run(None, {"x": x, "n": np.array(4, np.int64)})
    want = run_ort(model, {"x": x, "n": np.array(4, np.int64)})[0]
    assert y.shape == want.shape == (3, 3)
    np.testing.assert_array_equal(y, want)
