"""ONNX import and the numpy reference interpreter.

:func:`load_onnx` turns an ONNX model (opset 13 or newer, as written by
``torch.onnx.export``, ``skl2onnx`` or onnxruntime's ``quantize_static``)
into a :class:`~braze.sw.compiler.ir.Graph`.  :func:`evaluate` runs a graph on numpy
arrays with Braze's own operator implementations (:mod:`braze.sw.compiler.host_ops`):
float ops with ONNX float semantics, integer and QLinear ops exactly,
Braze's quantized ops (``domain="braze"``) bit-exactly as the accelerator's
``EPILOGUE`` (:mod:`braze.isa.arith`).  It is the oracle of the tests, the
engine of constant folding and the host side of every compiled model.

What loads
----------
An operator is *supported* when :mod:`~braze.sw.compiler.host_ops` implements it (the
accelerator runs a subset of those; lowering decides which nodes, per node).  Support is
checked after constant folding: a node that folds away (shape arithmetic of static shapes) or
that no output depends on never blocks a model.  Anything else is an
:class:`UnsupportedOperator` naming the node, its op type and why -- or, with
``allow_fallback=True``, a CPU node run by onnx's ``ReferenceEvaluator``: an opt-in last
resort, never counted as support (such nodes carry the attribute ``onnx_node``).

Control flow (``If``, ``Loop``, ``Scan``) is an operator like the others: its subgraphs are imported
with it (an unsupported operator inside one is refused naming its path, ``loop/body/node``), the
outer-scope tensors they read become extra inputs of the node, and :func:`evaluate` runs them by
recursion (:mod:`braze.sw.compiler.host_ops.control`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from braze.isa.errors import BrazeError

from . import host_ops
from .host_ops import OPS as _OPS
from .host_ops import EvaluationError, braze_epilogue, conv2d, conv_pads
from .host_ops.quant import BRAZE_DOMAIN
from .ir import Graph, InvalidGraph, Node, NodeKind, TensorInfo, constant_node, input_node, output_node

MIN_OPSET = 13

#: Ops the compiler maps onto the accelerator (or folds away), when their types and attributes fit
#: a kernel; every other supported op runs on the host.
COMPUTE_OPS = frozenset({
    "MatMul", "Gemm", "Conv", "Relu", "Clip", "Add", "Mul", "MaxPool", "AveragePool", "GlobalAveragePool",
    "Flatten", "Reshape", "Transpose", "Softmax", "Sigmoid", "QuantizeLinear", "DequantizeLinear",
    "QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger",
})
#: Ops of the default ONNX domain Braze implements natively (:mod:`braze.sw.compiler.host_ops`).
SUPPORTED_OPS = frozenset(op for op in _OPS if "." not in op)
#: Supported ops that are not accelerator candidates: shape arithmetic, element-wise and the rest.
SHAPE_OPS = SUPPORTED_OPS - COMPUTE_OPS
#: Operators with subgraphs (imported with them, run by recursion: :mod:`.host_ops.control`).
CONTROL_OPS = frozenset({"Loop", "If", "Scan", "SequenceMap"})


class ModelLoadError(BrazeError):
    """The model file cannot be read, fails the ONNX checker or uses an unsupported opset."""


class UnsupportedOperator(BrazeError):
    """An operator the compiler does not support (and fallback was not allowed)."""

    def __init__(self, op_type: str, node: str, reason: str = ""):
        self.op_type = op_type
        self.node = node
        detail = reason or ("Braze has no implementation of it (load with allow_fallback=True to run it "
                            "on the CPU with onnx's reference evaluator)")
        super().__init__(f"unsupported operator {op_type} in node {node!r}: {detail}")


# ---------------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------------

def load_onnx(model: str | os.PathLike | bytes | onnx.ModelProto, *, allow_fallback: bool = False,
              input_shapes: Mapping[str, tuple[int | str | None, ...]] | None = None) -> Graph:
    """Import an ONNX model.

    Parameters
    ----------
    model : path, bytes or onnx.ModelProto
        The model.  A file that cannot be parsed or fails ``onnx.checker`` raises
        :class:`ModelLoadError` naming the file.
    allow_fallback : bool
        Import operators the compiler does not support as ``device="cpu"``
        nodes instead of raising :class:`UnsupportedOperator`.
    input_shapes : mapping, optional
        Replace the declared shapes of graph inputs (e.g. fix a symbolic batch
        dimension) before shape inference.

    Returns
    -------
    Graph
        One node per ONNX node (``Constant`` nodes become ``CONSTANT`` nodes),
        one per initializer, graph input and graph output; tensor metadata
        from ONNX shape inference.
    """
    source = _describe(model)
    proto = _read(model, source)
    try:
        onnx.checker.check_model(proto)
    except Exception as error:  # the checker raises several exception types
        raise ModelLoadError(f"{source}: fails the ONNX checker: {error}") from error
    opsets = {(imp.domain or ""): imp.version for imp in proto.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx"))
    uses_default = any(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    if opset is None and not uses_default:
        opset = MIN_OPSET           # only other domains' operators: the default opset does not matter
    if opset is None or opset < MIN_OPSET:
        raise ModelLoadError(f"{source}: default-domain opset {opset} is too old; Braze needs opset "
                             f">= {MIN_OPSET} (re-export it or use onnx.version_converter)")
    if input_shapes:
        proto = _set_input_shapes(proto, input_shapes, source)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as error:
        raise ModelLoadError(f"{source}: shape inference failed: {error}") from error

    result = _import_graph(proto.graph, source, opsets, opset, allow_fallback)
    unsupported = {n.name: n.attrs["unsupported"] for n in result.nodes if "unsupported" in n.attrs}
    return _check_support_after_folding(result, unsupported) if unsupported else result


def _import_graph(graph: onnx.GraphProto, source: str, opsets: Mapping[str, int], opset: int,
                  allow_fallback: bool, captures: tuple[str, ...] = (), subgraph: bool = False) -> Graph:
    """One ONNX graph (the model's, or a subgraph with the outer-scope names it reads as ``captures``:
    extra graph inputs after its own) as a :class:`Graph`."""
    infos: dict[str, TensorInfo] = {}
    for name in captures:
        infos[name] = TensorInfo(name)
    for value_info in (*graph.input, *graph.value_info, *graph.output):
        infos[value_info.name] = _tensor_info(value_info, source, lenient=subgraph)
    nodes: list[Node] = []
    initializers = {init.name for init in graph.initializer}
    for init in graph.initializer:
        value = _tensor_value(init, f"{source}: initializer {init.name!r}")
        nodes.append(constant_node(init.name, value))
        infos[init.name] = TensorInfo(init.name, value.shape, value.dtype.name)
    for value_info in graph.input:
        if value_info.name not in initializers:
            nodes.append(input_node(value_info.name))
    nodes.extend(input_node(name) for name in captures)
    used_names = {n.name for n in nodes}
    for index, proto_node in enumerate(graph.node):
        name = proto_node.name or f"{proto_node.op_type}_{index}"
        while name in used_names:
            name = f"{name}_{index}"
        used_names.add(name)
        try:
            nodes.append(_import_node(proto_node, name, opsets, infos, allow_fallback))
        except ModelLoadError as error:       # a malformed attribute: say where
            raise ModelLoadError(f"{source}: node {name!r}: {error}") from None
        if nodes[-1].kind is NodeKind.CONSTANT:
            value = nodes[-1].value
            infos[proto_node.output[0]] = TensorInfo(proto_node.output[0], value.shape, value.dtype.name)
    for value_info in graph.output:
        nodes.append(output_node(value_info.name))
    return Graph(nodes, infos, name=graph.name or "model", opset=opset)


def _check_support_after_folding(graph: Graph, unsupported: Mapping[str, str]) -> Graph:
    """Fold constants (natively) and drop dead nodes; then any unsupported node left is an error.

    Shape arithmetic that exporters emit (``Shape -> Gather -> Mod -> Concat -> Reshape`` ...)
    folds away for static shapes, and a node no output depends on does not matter: neither may
    make a model fail to load.  The folded graph is returned (it has no unsupported node).
    """
    from .passes import fold_constants, remove_dead  # passes build on this module

    previous = None
    while previous is not graph:
        previous, graph = graph, remove_dead(fold_constants(graph))
    for node in graph.topological_order():
        if node.name in unsupported:
            raise UnsupportedOperator(node.op_type, node.name, unsupported[node.name])
    return graph


def _describe(model: Any) -> str:
    if isinstance(model, str | os.PathLike):
        return f"ONNX model {os.fspath(model)!r}"
    return "ONNX model <in memory>"


def _read(model: Any, source: str) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        if isinstance(model, bytes):
            return onnx.load_from_string(model)
        if not os.path.exists(model):
            raise ModelLoadError(f"{source}: no such file")
        return onnx.load(os.fspath(model))
    except ModelLoadError:
        raise
    except Exception as error:  # protobuf's DecodeError, OSError, ...
        raise ModelLoadError(f"{source}: cannot be read as an ONNX model: {error}") from error


def _set_input_shapes(proto: onnx.ModelProto, shapes: Mapping[str, tuple], source: str) -> onnx.ModelProto:
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    inputs = {vi.name: vi for vi in proto.graph.input}
    for name, shape in shapes.items():
        if name not in inputs:
            raise ModelLoadError(f"{source}: input_shapes names {name!r}, "
                                 f"but the inputs are {sorted(inputs)}")
        tensor_type = inputs[name].type.tensor_type
        tensor_type.ClearField("shape")
        for dim in shape:
            entry = tensor_type.shape.dim.add()
            if isinstance(dim, int):
                entry.dim_value = dim
            elif isinstance(dim, str):
                entry.dim_param = dim
    for value_info in list(proto.graph.value_info):
        proto.graph.value_info.remove(value_info)   # stale shapes would contradict the new ones
    for output in proto.graph.output:
        output.type.tensor_type.ClearField("shape")
    return proto


def _tensor_info(value_info: onnx.ValueInfoProto, source: str, *, lenient: bool = False) -> TensorInfo:
    """A value's metadata; a negative declared dimension is an error (``lenient``, in a subgraph, where
    exporters write -1 for "any": unknown)."""
    tensor_type = value_info.type.tensor_type
    dtype = None
    if tensor_type.elem_type:
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(f"{source}: tensor {value_info.name!r} has unknown element type "
                                 f"{tensor_type.elem_type}") from None
    shape = None
    if tensor_type.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                      for d in tensor_type.shape.dim)
        if lenient:
            shape = tuple(None if isinstance(d, int) and d < 0 else d for d in shape)
        if any(isinstance(d, int) and d < 0 for d in shape):
            raise ModelLoadError(f"{source}: tensor {value_info.name!r} is declared with a negative "
                                 f"dimension: {list(shape)}")
    return TensorInfo(value_info.name, shape, dtype)


def _tensor_value(tensor: onnx.TensorProto, what: str) -> np.ndarray:
    """A tensor's data as an array; data that contradicts its dims or type is a :class:`ModelLoadError`.

    (The ONNX checker does not compare a tensor's data with its dims.)
    """
    try:
        return numpy_helper.to_array(tensor)
    except Exception as error:   # onnx raises ValueError, TypeError, ... for inconsistent tensors
        raise ModelLoadError(f"{what}: malformed tensor (dims {list(tensor.dims)}, data type "
                             f"{tensor.data_type}): {error}") from None


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise ModelLoadError(f"{what}: string is not UTF-8: {value[:40]!r}") from None


def _attribute(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    what = f"attribute {attr.name!r}"
    if isinstance(value, bytes):
        return _text(value, what)
    if isinstance(value, onnx.TensorProto):
        return _tensor_value(value, what)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [_text(v, what) for v in value]
    if isinstance(value, onnx.GraphProto):
        return value.SerializeToString()
    return value


def _import_node(proto_node: onnx.NodeProto, name: str, opsets: Mapping[str, int],
                 infos: Mapping[str, TensorInfo], allow_fallback: bool) -> Node:
    """One ONNX node as an IR node.

    An operator Braze does not implement becomes, with ``allow_fallback``, a CPU node run by
    onnx's reference evaluator (attributes ``onnx_node``, ``onnx_opset``); without, a node with
    the attribute ``unsupported`` (the reason), which :func:`load_onnx` refuses unless it folds
    away or is dead.
    """
    op_type = proto_node.op_type
    domain = "" if proto_node.domain in ("", "ai.onnx") else proto_node.domain
    if domain == "" and op_type == "Constant":
        value = _constant_attr(proto_node, name)
        return constant_node(proto_node.output[0], value).replace(name=name)
    attrs = {a.name: _attribute(a) for a in proto_node.attribute}
    if domain == "" and op_type in CONTROL_OPS:
        return _import_control(proto_node, name, attrs, opsets, allow_fallback)
    node = Node(name, NodeKind.OPERATOR, op_type, tuple(proto_node.input), tuple(proto_node.output), attrs,
                domain=domain)
    reason = host_ops.unsupported_reason(node, infos) if domain != BRAZE_DOMAIN else None
    if reason is None:
        return node
    if not allow_fallback:
        return node.replace(device="cpu", attrs={**attrs, "unsupported": reason})
    opset = opsets.get(proto_node.domain, opsets.get("", MIN_OPSET))
    return node.replace(device="cpu", attrs={**attrs, "onnx_node": proto_node.SerializeToString(),
                                              "onnx_opset": opset})


# ---------------------------------------------------------------------------------------------------
# Control flow: If, Loop, Scan with subgraphs
# ---------------------------------------------------------------------------------------------------

def _free_names(graph: onnx.GraphProto) -> list[str]:
    """Outer-scope tensor names ``graph`` reads (its nested subgraphs' included), in first-use order."""
    defined = {init.name for init in graph.initializer} | {i.name for i in graph.input}
    defined |= {init.values.name for init in graph.sparse_initializer}
    free: dict[str, None] = {}
    for node in graph.node:
        names = list(node.input)
        for attr in node.attribute:
            names += _free_names(attr.g) if attr.type == onnx.AttributeProto.GRAPH else []
            for sub in attr.graphs:
                names += _free_names(sub)
        free.update((name, None) for name in names if name and name not in defined)
        defined.update(node.output)
    free.update((o.name, None) for o in graph.output if o.name not in defined)
    return list(free)


def _import_control(proto_node: onnx.NodeProto, name: str, attrs: dict[str, Any], opsets: Mapping[str, int],
                    allow_fallback: bool) -> Node:
    """An ``If``/``Loop``/``Scan`` node: an operator whose subgraphs the evaluator runs by recursion.

    The outer-scope tensors its subgraphs read become extra inputs after the ONNX inputs (attribute
    ``captures`` names them as the subgraphs do), so that dependency order, dead-code removal and
    renaming passes see them; the subgraphs are imported now, so that an operator Braze lacks inside
    one is refused at load time, naming the path to it.
    """
    subgraphs = {attr.name: attr.g for attr in proto_node.attribute if attr.type == onnx.AttributeProto.GRAPH}
    captures = tuple(dict.fromkeys(n for g in subgraphs.values() for n in _free_names(g)))
    opset = opsets.get("", opsets.get("ai.onnx", MIN_OPSET))
    attrs = {**attrs, "captures": captures, "subgraph_fallback": allow_fallback, "subgraph_opset": opset}
    node = Node(name, NodeKind.OPERATOR, proto_node.op_type, (*proto_node.input, *captures),
                tuple(proto_node.output), attrs)
    for attr_name in subgraphs:
        try:
            graph = subgraph(node, attr_name)
        except UnsupportedOperator as error:
            raise UnsupportedOperator(error.op_type, f"{name}/{attr_name}/{error.node}",
                                      str(error).split(": ", 1)[1]) from None
        for inner in graph.nodes:
            if "unsupported" in inner.attrs:
                raise UnsupportedOperator(inner.op_type, f"{name}/{attr_name}/{inner.name}",
                                          inner.attrs["unsupported"])
    reason = host_ops.unsupported_reason(node, {})
    if reason is not None:                 # malformed, whatever the inputs: _import_node says where
        raise ModelLoadError(f"{node.op_type}: {reason}")
    return node


def subgraph(node: Node, attr: str) -> Graph:
    """The subgraph ``attr`` of the control-flow ``node`` as a :class:`Graph`: inputs are its own formal
    inputs, then the node's ``captures``."""
    return _subgraph(node.attrs[attr], node.attrs["captures"], node.attrs["subgraph_fallback"],
                     node.attrs["subgraph_opset"])


@functools.lru_cache(maxsize=256)
def _subgraph(serialized: bytes, captures: tuple[str, ...], allow_fallback: bool, opset: int) -> Graph:
    proto = onnx.GraphProto.FromString(serialized)
    mine = set(_free_names(proto))
    return _import_graph(proto, f"subgraph {proto.name!r}", {"": opset}, opset, allow_fallback,
                         tuple(name for name in captures if name in mine), subgraph=True)


def _constant_attr(proto_node: onnx.NodeProto, name: str) -> np.ndarray:
    for attr in proto_node.attribute:
        value = _attribute(attr)
        if attr.name == "value":
            return value
        if attr.name in ("value_float", "value_floats"):
            return np.array(value, dtype=np.float32)
        if attr.name in ("value_int", "value_ints"):
            return np.array(value, dtype=np.int64)
    raise UnsupportedOperator("Constant", name, "only dense value/value_float(s)/value_int(s) constants")


# ---------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------

Observer = Callable[[str, np.ndarray], None]


def evaluate(graph: Graph, inputs: Mapping[str, np.ndarray], *, observe: Observer | None = None,
             keep: bool = False) -> dict[str, np.ndarray]:
    """Run ``graph`` on numpy inputs.

    Parameters
    ----------
    graph : Graph
    inputs : mapping of str to array
        One array per graph input, of the input's dtype (it is converted
        losslessly when possible) and shape.
    observe : callable(tensor name, value), optional
        Called for every tensor as it is computed (inputs and operator
        outputs, not constants); :mod:`braze.sw.compiler.profile` uses it.
    keep : bool
        Return every computed tensor, not only the graph outputs.

    Returns
    -------
    dict of str to array
        The graph outputs in order (or every tensor with ``keep``).
    """
    values: dict[str, np.ndarray] = {}
    missing = [name for name in graph.inputs if name not in inputs]
    if missing:
        raise EvaluationError(f"graph {graph.name!r}: no value given for inputs {missing}")
    for node in graph.topological_order():
        if node.kind is NodeKind.INPUT:
            tensor = node.outputs[0]
            values[tensor] = _coerce_input(graph.tensor(tensor), inputs[tensor])
        elif node.kind is NodeKind.CONSTANT:
            values[node.outputs[0]] = node.value
            continue
        elif node.kind in (NodeKind.OUTPUT, NodeKind.MONITOR):
            continue
        elif node.kind is NodeKind.TRANSFER:
            values[node.outputs[0]] = values[node.inputs[0]]
        elif node.kind is NodeKind.CONTROL:
            raise EvaluationError(f"node {node.name!r}: control flow ({node.op_type}) cannot be evaluated")
        else:
            args = [values[t] if t else None for t in node.inputs]
            results = _run_operator(node, args)
            for tensor, value in zip(node.outputs, results, strict=False):
                if tensor:
                    values[tensor] = value
        if observe is not None:
            for tensor in node.outputs:
                if tensor in values:
                    observe(tensor, values[tensor])
    if keep:
        return values
    return {name: values[name] for name in graph.outputs}


def evaluate_node(node: Node, *args: np.ndarray | None) -> list[np.ndarray]:
    """Evaluate one operator node on its input values."""
    return _run_operator(node, list(args))


def _coerce_input(info: TensorInfo, value: Any) -> np.ndarray:
    if (isinstance(value, list) or value is None) and info.dtype is None and info.shape is None:
        return value                 # a sequence (list of arrays) or an empty optional, as given
    array = np.asarray(value)
    if info.dtype is not None and array.dtype.name != info.dtype:
        if not np.can_cast(array.dtype, info.dtype, casting="same_kind"):
            raise EvaluationError(f"input {info.name!r}: expected {info.dtype}, got {array.dtype.name}")
        array = array.astype(info.dtype)
    if info.shape is not None:
        ok = array.ndim == len(info.shape) and all(
            not isinstance(d, int) or d == s for d, s in zip(info.shape, array.shape, strict=True))
        if not ok:
            raise EvaluationError(f"input {info.name!r}: expected shape {info.shape}, got {array.shape}")
    return array


def _run_operator(node: Node, args: list[np.ndarray | None]) -> list[np.ndarray]:
    # A fallback node runs on the reference evaluator even when an implementation exists: it is
    # there because Braze's implementation refused the node's attributes.
    implementation = None if "onnx_node" in node.attrs else _OPS.get(node.qualified_op)
    try:
        if "unsupported" in node.attrs:
            raise EvaluationError(f"node {node.name!r}: unsupported operator {node.qualified_op}: "
                                  f"{node.attrs['unsupported'] or 'no implementation'}")
        if implementation is not None:
            result = implementation(node, *args)
        elif "onnx_node" in node.attrs:
            result = _run_reference(node, args)
        else:
            raise EvaluationError(f"node {node.name!r}: no evaluator for operator {node.qualified_op}")
    except BrazeError:
        raise
    except Exception as error:
        shapes = [None if a is None else (a.shape, a.dtype.name) for a in args]
        raise EvaluationError(f"node {node.name!r} ({node.qualified_op}) on inputs {shapes}: {error}") \
            from error
    return list(result) if isinstance(result, tuple | list) else [result]


def _run_reference(node: Node, args: list[np.ndarray | None]) -> list[np.ndarray]:
    """CPU fallback for ops Braze does not implement: onnx's reference evaluator on the one node."""
    from onnx.reference import ReferenceEvaluator

    proto = onnx.NodeProto.FromString(node.attrs["onnx_node"])
    feeds = {name: value for name, value in zip(proto.input, args, strict=False) if name}
    graph = helper.make_graph(
        [proto], "fallback",
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for name, v in feeds.items()],
        [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in proto.output])
    if proto.domain in ("", "ai.onnx"):
        opsets = [helper.make_opsetid("", node.attrs["onnx_opset"])]
    else:
        opsets = [helper.make_opsetid("", MIN_OPSET),
                  helper.make_opsetid(proto.domain, node.attrs["onnx_opset"])]
    model = helper.make_model(graph, opset_imports=opsets)
    return ReferenceEvaluator(model).run(None, feeds)


def supports(node: Node) -> bool:
    """Whether :func:`evaluate` runs ``node`` with Braze's own implementation of its op."""
    return node.qualified_op in _OPS and "onnx_node" not in node.attrs and "unsupported" not in node.attrs


__all__ = [
    "load_onnx", "evaluate", "evaluate_node", "subgraph", "conv2d", "conv_pads", "braze_epilogue", "supports",
    "ModelLoadError", "UnsupportedOperator", "EvaluationError", "InvalidGraph",
    "SUPPORTED_OPS", "COMPUTE_OPS", "SHAPE_OPS", "CONTROL_OPS", "BRAZE_DOMAIN", "MIN_OPSET",
]
