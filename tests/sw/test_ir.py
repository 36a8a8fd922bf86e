"""The graph IR and its validity check."""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np
import pytest
from onnx_models import conv_model, digits_mlp

from braze.isa.errors import BrazeError
from braze.sw.compiler.frontend import load_onnx
from braze.sw.compiler.ir import (
    Graph,
    InvalidGraph,
    Node,
    NodeKind,
    QuantParams,
    TensorInfo,
    constant_info,
    constant_node,
    input_node,
    output_node,
)
from braze.sw.compiler.validate import validate


def _op(name, op_type, inputs, outputs, **attrs):
    return Node(name, NodeKind.OPERATOR, op_type, inputs, outputs, attrs)


def _mlp_graph():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    nodes = [
        input_node("x"),
        constant_node("w", w),
        _op("mm", "MatMul", ("x", "w"), ("h",)),
        _op("act", "Relu", ("h",), ("y",)),
        output_node("y"),
    ]
    tensors = {
        "x": TensorInfo("x", (2, 4), "float32"),
        "w": constant_info("w", w),
        "h": TensorInfo("h", (2, 3), "float32"),
        "y": TensorInfo("y", (2, 3), "float32"),
    }
    return Graph(nodes, tensors, name="mlp")


def test_graph_is_a_networkx_multidigraph_with_one_edge_per_use():
    nodes = [input_node("x"), _op("sq", "Mul", ("x", "x"), ("y",)), output_node("y")]
    graph = Graph(nodes, {"x": TensorInfo("x", (3,), "float32"), "y": TensorInfo("y", (3,), "float32")})
    view = graph.nx
    assert isinstance(view, nx.MultiDiGraph)
    assert view.number_of_edges("input:x", "sq") == 2  # Mul(x, x) reads x twice
    assert {d["tensor"] for _, _, d in view.edges(data=True)} == {"x", "y"}
    view.remove_node("sq")  # a copy: the graph is unchanged
    assert "sq" in graph


def test_queries():
    graph = _mlp_graph()
    assert graph.inputs == ("x",) and graph.outputs == ("y",)
    assert graph.producer("h").name == "mm"
    assert [n.name for n in graph.consumers("h")] == ["act"]
    assert graph.constant("w").shape == (4, 3) and graph.constant("h") is None
    assert [n.name for n in graph.operators()] == ["mm", "act"]
    assert graph.tensor("unknown") == TensorInfo("unknown")


def test_topological_order_is_deterministic_and_follows_construction_order():
    # Two independent branches: ties are broken by construction order, whatever the insertion order of edges.
    def build(order):
        ops = {
            "a": _op("a", "Relu", ("x",), ("ya",)),
            "b": _op("b", "Relu", ("x",), ("yb",)),
            "c": _op("c", "Add", ("ya", "yb"), ("y",)),
        }
        return Graph([input_node("x"), *[ops[k] for k in order], output_node("y")])

    assert [n.name for n in build("abc").topological_order()][1:4] == ["a", "b", "c"]
    assert [n.name for n in build("bac").topological_order()][1:4] == ["b", "a", "c"]
    assert [n.name for n in build("cba").topological_order()][1:4] == ["b", "a", "c"]  # c must wait


def test_nodes_and_constants_are_immutable():
    graph = _mlp_graph()
    node = graph.node("mm")
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.op_type = "Gemm"
    with pytest.raises(TypeError):
        node.attrs["x"] = 1
    with pytest.raises(ValueError):
        graph.constant("w")[0, 0] = 5.0
    source = np.ones(3, np.float32)
    const = constant_node("c", source)
    source[0] = 7  # the node keeps a private copy
    assert const.value[0] == 1


def test_edits_return_new_graphs_and_leave_the_original():
    graph = _mlp_graph()
    before = graph.fingerprint()
    edited = graph.edit(substitute={"act": _op("act", "Sigmoid", ("h",), ("y",))})
    renamed = graph.rename("h", "hidden")
    rewired = graph.rewire({"h": "x"}, keep=["mm"])
    assert graph.fingerprint() == before
    assert edited.node("act").op_type == "Sigmoid" and graph.node("act").op_type == "Relu"
    assert renamed.producer("hidden").name == "mm" and renamed.tensor("hidden").shape == (2, 3)
    assert "h" not in renamed.tensors
    assert rewired.node("act").inputs == ("x",)
    assert edited.node("mm") is graph.node("mm")  # unchanged nodes are shared
    assert edited.fingerprint() != before


def test_edit_drops_metadata_of_vanished_tensors():
    graph = _mlp_graph()
    smaller = graph.edit(remove=["act"], substitute={"output:y": output_node("h").replace(name="output:y")})
    assert "y" not in smaller.tensors and smaller.outputs == ("h",)


def test_unique_names():
    graph = _mlp_graph()
    assert graph.unique_name("mm") == "mm_1"
    assert graph.unique_name("h") == "h_1"
    assert graph.unique_name("fresh") == "fresh"


def test_duplicate_node_names_are_rejected():
    with pytest.raises(InvalidGraph, match="'a'.*two nodes"):
        Graph([input_node("x"), _op("a", "Relu", ("x",), ("y",)), _op("a", "Relu", ("y",), ("z",))])


def test_printing():
    graph = load_onnx(conv_model())
    text = graph.to_text()
    assert "conv1: Conv(x, w1, b1)" in text and "float32[2x4x8x8]" in text
    dot = graph.to_dot()
    assert dot.startswith('digraph "convnet"') and dot.rstrip().endswith("}")
    assert dot.count("->") == graph.nx.number_of_edges()
    assert "Gemm" in dot and "float32[2x5]" in dot
    quantized = TensorInfo("q", (2, 3), "int8", QuantParams((0.5,), (-3,)))
    assert str(quantized) == "int8[2x3] [int8 s=0.5 zp=-3]"


def test_quant_params_are_checked():
    assert QuantParams([0.1, 0.2], [0, 0], axis=1).per_channel
    with pytest.raises(ValueError, match="2 scales but 1 zero points"):
        QuantParams((0.1, 0.2), (0,), axis=0)
    with pytest.raises(ValueError, match="need a channel axis"):
        QuantParams((0.1, 0.2), (0, 0))
    with pytest.raises(ValueError, match="positive"):
        QuantParams((0.0,), (0,))


def test_node_device_is_checked():
    with pytest.raises(ValueError, match="'gpu'"):
        Node("n", NodeKind.OPERATOR, "Relu", ("x",), ("y",), device="gpu")


# -- validate ----------


@pytest.mark.parametrize("model", [conv_model, digits_mlp])
def test_imported_models_are_valid(model):
    validate(load_onnx(model(), allow_fallback=True))


def test_missing_producer():
    graph = _mlp_graph().edit(remove=["const:w"])
    with pytest.raises(InvalidGraph, match="'mm'.*'w', which no node produces"):
        validate(graph)


def test_tensor_produced_twice():
    graph = _mlp_graph().edit(add=[_op("again", "Relu", ("x",), ("h",))])
    with pytest.raises(InvalidGraph, match="'h' is produced 2 times"):
        validate(graph)


def test_cycle():
    graph = _mlp_graph().edit(substitute={"mm": _op("mm", "MatMul", ("y", "w"), ("h",))})
    with pytest.raises(InvalidGraph, match="cycle") as info:
        validate(graph)
    assert isinstance(info.value, BrazeError)


def test_matmul_inner_dimensions():
    graph = _mlp_graph()
    bad = graph.edit(
        substitute={"const:w": constant_node("w", np.zeros((5, 3), np.float32))},
        tensors=[constant_info("w", np.zeros((5, 3), np.float32))],
    )
    with pytest.raises(InvalidGraph, match=r"'mm'.*inner dimensions differ"):
        validate(bad)


def test_constant_metadata_must_match_value():
    graph = _mlp_graph().edit(tensors=[TensorInfo("w", (4, 3), "float64")])
    with pytest.raises(InvalidGraph, match="float32 but its tensor is declared float64"):
        validate(graph)


def test_elementwise_types_and_broadcast():
    nodes = [input_node("a"), input_node("b"), _op("add", "Add", ("a", "b"), ("y",)), output_node("y")]
    good = {"a": TensorInfo("a", (2, 3), "float32"), "b": TensorInfo("b", (3,), "float32")}
    validate(Graph(nodes, good))
    with pytest.raises(InvalidGraph, match="'add'.*do not broadcast"):
        validate(Graph(nodes, {**good, "b": TensorInfo("b", (4,), "float32")}))
    with pytest.raises(InvalidGraph, match="'add'.*differ in type"):
        validate(Graph(nodes, {**good, "b": TensorInfo("b", (3,), "int8")}))


def test_conv_channels():
    graph = load_onnx(conv_model())
    bad = graph.edit(tensors=[TensorInfo("p1", (2, 5, 4, 4), "float32")])
    with pytest.raises(InvalidGraph, match="'conv2'.*5 channels"):
        validate(bad)


def test_arity():
    nodes = [input_node("x"), _op("mm", "MatMul", ("x",), ("y",)), output_node("y")]
    with pytest.raises(InvalidGraph, match="'mm'.*MatMul takes 2..2 inputs"):
        validate(Graph(nodes))


def test_transfers_must_be_well_formed():
    graph = _mlp_graph()
    transfer = Node("t", NodeKind.TRANSFER, "Transfer", ("h",), ("h_dev",), {"src": "host", "dst": "device"})
    act = _op("act", "Relu", ("h_dev",), ("y",))
    info = TensorInfo("h_dev", (2, 3), "float32")
    validate(graph.edit(substitute={"act": [transfer, act]}, tensors=[info]))
    same_place = transfer.with_attrs(dst="host")
    with pytest.raises(InvalidGraph, match="'t'.*transfer from 'host' to 'host'"):
        validate(graph.edit(substitute={"act": [same_place, act]}, tensors=[info]))
    with pytest.raises(InvalidGraph, match="'t'.*transfer changes the tensor"):
        validate(
            graph.edit(substitute={"act": [transfer, act]}, tensors=[TensorInfo("h_dev", (3, 2), "float32")])
        )


def test_foreign_ops_must_run_on_cpu():
    graph = _mlp_graph().edit(
        substitute={"act": Node("act", NodeKind.OPERATOR, "Softplus", ("h",), ("y",), domain="com.example")}
    )
    with pytest.raises(InvalidGraph, match="must run on the CPU"):
        validate(graph)


def test_graph_needs_outputs():
    with pytest.raises(InvalidGraph, match="no outputs"):
        validate(Graph([input_node("x")]))


def test_declared_output_shape_must_match_operands():
    graph = _mlp_graph()
    with pytest.raises(InvalidGraph, match=r"'mm'.*'h' is declared \(2, 4\), but the operands give \(2, 3\)"):
        validate(graph.edit(tensors=[TensorInfo("h", (2, 4), "float32")]))


def test_transfer_evaluates_as_identity():
    from braze.sw.compiler.frontend import evaluate

    graph = _mlp_graph()
    transfer = Node("t", NodeKind.TRANSFER, "Transfer", ("h",), ("h_dev",), {"src": "dram", "dst": "spad"})
    moved = validate(
        graph.edit(
            substitute={"act": [transfer, _op("act", "Relu", ("h_dev",), ("y",))]},
            tensors=[TensorInfo("h_dev", (2, 3), "float32")],
        )
    )
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    np.testing.assert_array_equal(evaluate(moved, {"x": x})["y"], evaluate(graph, {"x": x})["y"])


def test_fingerprint_sees_array_attributes():
    graph = _mlp_graph()
    first = graph.edit(substitute={"act": graph.node("act").with_attrs(table=np.arange(20))})
    second = graph.edit(substitute={"act": graph.node("act").with_attrs(table=np.arange(20) * 2)})
    assert first.fingerprint() != second.fingerprint()
