"""ONNX import and the numpy reference interpreter.

:func:`load_onnx` turns an ONNX model (opset 13 or newer, as written by
``torch.onnx.export``, ``skl2onnx`` or onnxruntime's ``quantize_static``)
into a :class:`~braze.sw.compiler.ir.Graph`.  :func:`evaluate` runs a graph on numpy
arrays: float ops with ONNX float semantics, integer and QLinear ops exactly,
Braze's quantized ops (``domain="braze"``) bit-exactly as the accelerator's
``EPILOGUE`` (:mod:`braze.isa.arith`).  It is the oracle of the tests, the
engine of constant folding and the CPU fallback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from braze.isa import arith
from braze.isa.encoding import Activation, Memory
from braze.isa.errors import BrazeError

from .ir import Graph, InvalidGraph, Node, NodeKind, TensorInfo, constant_node, input_node, output_node

MIN_OPSET = 13

#: Ops the compiler maps onto the accelerator (or folds away).
COMPUTE_OPS = frozenset({
    "MatMul", "Gemm", "Conv", "Relu", "Clip", "Add", "Mul", "MaxPool", "AveragePool", "GlobalAveragePool",
    "Flatten", "Reshape", "Transpose", "Softmax", "Sigmoid", "QuantizeLinear", "DequantizeLinear",
    "QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger",
})
#: Shape arithmetic and small elementwise ops exporters emit; constant folding removes most of them.
SHAPE_OPS = frozenset({
    "Shape", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "ConstantOfShape", "Cast", "Identity",
    "Dropout", "Div", "Sub", "Neg", "Exp", "Sqrt", "Tanh", "Pow", "Max", "Min", "Expand", "Range", "Where",
    "Equal", "ArgMax", "Size",
})
SUPPORTED_OPS = COMPUTE_OPS | SHAPE_OPS
CONTROL_OPS = frozenset({"Loop", "If", "Scan"})
#: Braze's own ops (see :mod:`braze.sw.compiler.quantize`).
BRAZE_DOMAIN = "braze"


class ModelLoadError(BrazeError):
    """The model file cannot be read, fails the ONNX checker or uses an unsupported opset."""


class UnsupportedOperator(BrazeError):
    """An operator the compiler does not support (and fallback was not allowed)."""

    def __init__(self, op_type: str, node: str, reason: str = ""):
        self.op_type = op_type
        self.node = node
        detail = f": {reason}" if reason else ""
        super().__init__(f"unsupported operator {op_type} in node {node!r}{detail}"
                         f"{'' if reason else ' (load with allow_fallback=True to run it on the CPU)'}")


class EvaluationError(BrazeError):
    """A node cannot be evaluated on its inputs."""


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
    if opset is None or opset < MIN_OPSET:
        raise ModelLoadError(f"{source}: default-domain opset {opset} is too old; Braze needs opset "
                             f">= {MIN_OPSET} (re-export it or use onnx.version_converter)")
    if input_shapes:
        proto = _set_input_shapes(proto, input_shapes, source)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as error:
        raise ModelLoadError(f"{source}: shape inference failed: {error}") from error

    graph = proto.graph
    infos: dict[str, TensorInfo] = {}
    for value_info in (*graph.input, *graph.value_info, *graph.output):
        infos[value_info.name] = _tensor_info(value_info, source)
    nodes: list[Node] = []
    initializers = {init.name for init in graph.initializer}
    for init in graph.initializer:
        value = _tensor_value(init, f"{source}: initializer {init.name!r}")
        nodes.append(constant_node(init.name, value))
        infos[init.name] = TensorInfo(init.name, value.shape, value.dtype.name)
    for value_info in graph.input:
        if value_info.name not in initializers:
            nodes.append(input_node(value_info.name))
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


def _tensor_info(value_info: onnx.ValueInfoProto, source: str) -> TensorInfo:
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
    op_type = proto_node.op_type
    domain = "" if proto_node.domain in ("", "ai.onnx") else proto_node.domain
    if domain == "" and op_type == "Constant":
        value = _constant_attr(proto_node, name)
        return constant_node(proto_node.output[0], value).replace(name=name)
    if domain == "" and op_type in CONTROL_OPS:
        raise UnsupportedOperator(op_type, name, "control flow is not supported (and cannot fall back to the "
                                  "CPU yet); unroll or remove it before export")
    attrs = {a.name: _attribute(a) for a in proto_node.attribute}
    node = Node(name, NodeKind.OPERATOR, op_type, tuple(proto_node.input), tuple(proto_node.output), attrs,
                domain=domain)
    reason = _unsupported_reason(node, infos)
    if reason is None:
        return node
    if not allow_fallback:
        raise UnsupportedOperator(op_type, name, reason)
    opset = opsets.get(proto_node.domain, opsets.get("", MIN_OPSET))
    return node.replace(device="cpu", attrs={**attrs, "onnx_node": proto_node.SerializeToString(),
                                              "onnx_opset": opset})


def _unsupported_reason(node: Node, infos: Mapping[str, TensorInfo]) -> str | None:
    """``None`` when the accelerator flow supports ``node``, else why not."""
    if node.domain != "" or node.op_type not in SUPPORTED_OPS:
        return ""
    if node.op_type in ("Conv", "QLinearConv", "ConvInteger"):
        weight = infos.get(node.inputs[3 if node.op_type == "QLinearConv" else 1])
        if weight is not None and weight.shape is not None and len(weight.shape) != 4:
            return f"only 2-D convolution is supported (weight has rank {len(weight.shape)})"
        if node.attrs.get("group", 1) != 1:
            return f"only group=1 is supported (got group={node.attrs['group']})"
        if any(d != 1 for d in node.attrs.get("dilations", ())):
            return f"only dilation 1 is supported (got dilations={list(node.attrs['dilations'])})"
    if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.attrs.get("block_size", 0):
        return "blocked quantization (block_size) is not supported"
    return None


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
        elif node.kind is NodeKind.OUTPUT:
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
    implementation = _OPS.get(node.qualified_op)
    try:
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


# -- helpers ----------------------------------------------------------------------------------------

def _axis_shape(values: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """Reshape 1-D per-channel ``values`` to broadcast along ``axis`` of a rank-``rank`` tensor."""
    values = np.asarray(values)
    if values.ndim == 0:
        return values
    shape = [1] * rank
    shape[axis % rank] = values.size
    return values.reshape(shape)


def _int64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(np.int64)


def _saturate_to(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(x, info.min, info.max).astype(dtype)


def conv_pads(input_hw: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int],
              dilations: tuple[int, int], attrs: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """Explicit ``(top, left, bottom, right)`` padding of a conv or pool, resolving ``auto_pad``."""
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(input_hw, kernel, strides, dilations, strict=True):
            out = -(-size // s)
            pads.append(max((out - 1) * s + (k - 1) * d + 1 - size, 0))
        begin = [p // 2 if auto_pad == "SAME_UPPER" else p - p // 2 for p in pads]
        return begin[0], begin[1], pads[0] - begin[0], pads[1] - begin[1]
    if auto_pad == "VALID":
        return 0, 0, 0, 0
    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    return pads[0], pads[1], pads[2], pads[3]


def _conv_geometry(x_shape, kernel, attrs, *, ceil_mode: bool = False):
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    pads = conv_pads(tuple(x_shape[2:]), kernel, strides, dilations, attrs)
    out = []
    for axis in range(2):
        size = x_shape[2 + axis] + pads[axis] + pads[axis + 2]
        span = (kernel[axis] - 1) * dilations[axis] + 1
        if ceil_mode:
            count = -(-(size - span) // strides[axis]) + 1
            if (count - 1) * strides[axis] >= x_shape[2 + axis] + pads[axis]:
                count -= 1           # the last window would start in the end padding only
        else:
            count = (size - span) // strides[axis] + 1
        out.append(count)
    return strides, dilations, pads, tuple(out)


def _windows(x: np.ndarray, kernel, strides, dilations, pads, out, fill) -> np.ndarray:
    """``(N, C, kh, kw, oh, ow)`` patches of ``x`` padded with ``fill`` (extra end padding as needed)."""
    need_h = (out[0] - 1) * strides[0] + (kernel[0] - 1) * dilations[0] + 1
    need_w = (out[1] - 1) * strides[1] + (kernel[1] - 1) * dilations[1] + 1
    extra_h = max(need_h - (x.shape[2] + pads[0] + pads[2]), 0)
    extra_w = max(need_w - (x.shape[3] + pads[1] + pads[3]), 0)
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2] + extra_h), (pads[1], pads[3] + extra_w)),
                    constant_values=fill)
    patches = np.empty((x.shape[0], x.shape[1], kernel[0], kernel[1], out[0], out[1]), dtype=x.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            top, left = i * dilations[0], j * dilations[1]
            patches[:, :, i, j] = padded[:, :, top: top + strides[0] * (out[0] - 1) + 1: strides[0],
                                         left: left + strides[1] * (out[1] - 1) + 1: strides[1]]
    return patches


def conv2d(x: np.ndarray, w: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """2-D convolution (NCHW, OIHW, zero padding) in the dtype of ``x`` and ``w``'s common type."""
    if x.ndim != 4 or w.ndim != 4:
        raise EvaluationError(f"only 2-D convolution is implemented "
                              f"(input rank {x.ndim}, weight rank {w.ndim})")
    group = int(attrs.get("group", 1))
    kernel = tuple(w.shape[2:])
    strides, dilations, pads, out = _conv_geometry(x.shape, kernel, attrs)
    patches = _windows(x, kernel, strides, dilations, pads, out, 0)
    n, c = x.shape[:2]
    patches = patches.reshape(n, group, (c // group) * kernel[0] * kernel[1], out[0] * out[1])
    weights = w.reshape(group, w.shape[0] // group, -1)
    y = np.matmul(weights[None], patches)                      # (N, G, O/G, P)
    return y.reshape(n, w.shape[0], out[0], out[1])


def _pool(node: Node, x: np.ndarray, kind: str) -> np.ndarray:
    kernel = tuple(node.attrs["kernel_shape"])
    if x.ndim != 4 or len(kernel) != 2:
        raise EvaluationError(f"only 2-D pooling is implemented (input rank {x.ndim})")
    strides, dilations, pads, out = _conv_geometry(x.shape, kernel, node.attrs,
                                                   ceil_mode=bool(node.attrs.get("ceil_mode", 0)))
    if kind == "max":
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        return _windows(x, kernel, strides, dilations, pads, out, fill).max(axis=(2, 3))
    sums = _windows(x, kernel, strides, dilations, pads, out, 0).sum(axis=(2, 3), dtype=np.float64)
    ones = np.ones((1, 1) + x.shape[2:], dtype=np.float64)
    if node.attrs.get("count_include_pad", 0):
        # Explicit padding counts, the extension ceil_mode adds does not.
        ones = np.pad(ones, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=1)
        pads = (0, 0, 0, 0)
    counts = _windows(ones, kernel, strides, dilations, pads, out, 0).sum(axis=(2, 3))
    return (sums / counts).astype(x.dtype)


def _quantize_linear(node: Node, x, scale, zero_point=None):
    axis = node.attrs.get("axis", 1)
    if zero_point is not None:
        dtype = zero_point.dtype
    elif node.attrs.get("output_dtype"):
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(node.attrs["output_dtype"]))
    else:
        dtype = np.dtype(np.uint8)
    scale = _axis_shape(scale, axis, x.ndim)
    zp = _axis_shape(zero_point if zero_point is not None else np.zeros((), dtype), axis, x.ndim)
    with np.errstate(over="ignore"):        # a value beyond the float range saturates like any other
        scaled = np.rint(x.astype(np.float32) / scale.astype(np.float32))
    return _saturate_to(scaled.astype(np.float64) + zp.astype(np.float64), dtype)


def _dequantize_linear(node: Node, x, scale, zero_point=None):
    axis = node.attrs.get("axis", 1)
    scale = _axis_shape(scale, axis, x.ndim)
    zp = _axis_shape(zero_point if zero_point is not None else np.zeros((), np.int64), axis, x.ndim)
    return ((_int64(x) - _int64(zp)).astype(np.float32) * scale).astype(scale.dtype)


def _requantize_float(acc: np.ndarray, multiplier: np.ndarray, y_zp: np.ndarray) -> np.ndarray:
    """ONNX QLinear* output stage: ``saturate(round_half_even(acc * multiplier) + y_zp)`` in float32."""
    scaled = np.rint(acc.astype(np.float32) * multiplier.astype(np.float32))
    return _saturate_to(scaled.astype(np.float64) + _int64(y_zp), y_zp.dtype)


def _matmul_integer(a, b, a_zp, b_zp):
    a = _int64(a) - (_int64(a_zp).reshape(-1, 1) if a_zp is not None and np.ndim(a_zp) == 1 else
                     _int64(a_zp if a_zp is not None else 0))
    b = _int64(b) - _int64(b_zp if b_zp is not None else 0)
    return np.matmul(a, b)


def _qlinear_matmul(node, a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp):
    acc = _matmul_integer(a, b, a_zp, b_zp)
    return _requantize_float(acc, np.asarray(a_s, np.float32) * np.asarray(b_s, np.float32) / y_s, y_zp)


def _conv_integer(node, x, w, x_zp, w_zp):
    x = _int64(x) - _int64(x_zp if x_zp is not None else 0)
    w = _int64(w) - _axis_shape(_int64(w_zp if w_zp is not None else 0), 0, 4)
    return conv2d(x, w, node.attrs)


def _qlinear_conv(node, x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp, bias=None):
    acc = _conv_integer(node, x, w, x_zp, w_zp)
    if bias is not None:
        acc = acc + _axis_shape(_int64(bias), 1, 4)
    multiplier = _axis_shape(np.asarray(x_s, np.float32) * np.asarray(w_s, np.float32) / y_s, 1, 4)
    return _requantize_float(acc, multiplier, y_zp)


def _gemm(node, a, b, c=None):
    flatten = node.attrs.get("flatten_a")
    if flatten is not None:
        a = a.reshape(int(np.prod(a.shape[:flatten])), -1)
    if node.attrs.get("transA", 0):
        a = a.T
    if node.attrs.get("transB", 0):
        b = b.T
    y = node.attrs.get("alpha", 1.0) * (a @ b) if node.attrs.get("alpha", 1.0) != 1.0 else a @ b
    if c is not None:
        y = y + (node.attrs.get("beta", 1.0) * c if node.attrs.get("beta", 1.0) != 1.0 else c)
    return y.astype(a.dtype)


def _softmax(node, x):
    axis = node.attrs.get("axis", -1)
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)


def _clip(node, x, lo=None, hi=None):
    if lo is not None:
        x = np.maximum(x, lo.astype(x.dtype))
    if hi is not None:
        x = np.minimum(x, hi.astype(x.dtype))
    return x


def _reshape(node, x, shape):
    shape = [int(d) for d in shape]
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _flatten(node, x):
    axis = node.attrs.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _slice(node, x, starts, ends, axes=None, steps=None):
    axes = range(len(starts)) if axes is None else [int(a) % x.ndim for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        index[axis] = slice(int(start), int(end), int(step))
    return x[tuple(index)]


def _div(node, a, b):
    if a.dtype.kind in "iu":
        quotient = np.abs(_int64(a)) // np.abs(_int64(b))
        return (np.sign(a) * np.sign(b) * quotient).astype(a.dtype)   # truncates toward zero, as C does
    return (a / b).astype(a.dtype)


def _squeeze(node, x, axes=None):
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(int(a) for a in axes))


def _unsqueeze(node, x, axes):
    rank = x.ndim + len(axes)
    result = x
    for axis in sorted(int(a) % rank for a in axes):
        result = np.expand_dims(result, axis)
    return result


def _shape(node, x):
    shape = np.array(x.shape, dtype=np.int64)
    return shape[node.attrs.get("start", 0): node.attrs.get("end", None)]


def _cast(node, x):
    return x.astype(helper.tensor_dtype_to_np_dtype(node.attrs["to"]))


def _constant_of_shape(node, shape):
    value = node.attrs.get("value", np.zeros(1, np.float32))
    return np.full([int(d) for d in shape], value.reshape(-1)[0], dtype=value.dtype)


def _gather(node, x, indices):
    axis = node.attrs.get("axis", 0) % x.ndim
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    return np.take(x, indices, axis=axis)


def _dropout(node, x, ratio=None, training_mode=None):
    if training_mode is not None and bool(training_mode):
        raise EvaluationError(f"node {node.name!r}: Dropout in training mode is random; export for inference")
    return x, np.ones(x.shape, dtype=bool)


def _argmax(node, x):
    axis = node.attrs.get("axis", 0)
    if node.attrs.get("select_last_index", 0):
        result = x.shape[axis] - 1 - np.argmax(np.flip(x, axis), axis=axis)
    else:
        result = np.argmax(x, axis=axis)
    result = result.astype(np.int64)
    return np.expand_dims(result, axis) if node.attrs.get("keepdims", 1) else result


# -- Braze's quantized ops ------------------------------------------------------------------------

#: Values of the ``act`` attribute of Braze's quantized ops.
ACTIVATIONS = {"none": Activation.NONE, "relu": Activation.RELU, "clip": Activation.CLIP}


def braze_epilogue(node: Node, acc: np.ndarray, bias: np.ndarray | None,
                   residual: np.ndarray | None = None) -> np.ndarray:
    """The ``EPILOGUE`` stage of a Braze quantized op on an ``(rows, n)`` int32 tile, bit-exact.

    Attributes (see :mod:`braze.sw.compiler.quantize`): ``mult``, ``shift`` (per
    column, or absent: no requantize), ``out_zp``, ``act`` (``"none"``,
    ``"relu"``, ``"clip"``), ``clip_lo``, ``clip_hi``, ``out`` (``"spad"``
    for int8, ``"acc"`` for int32).  With an int8 ``(rows, n)`` ``residual``
    (zero point attribute ``residual_zp``) the result is
    ``act(sat(requant(acc) + out_zp + residual - residual_zp))``: the
    hardware adds the raw residual, so ``residual_zp`` is folded into the
    requantize stage's zero point (exact: both are added in int32 before
    any saturation).
    """
    attrs = node.attrs
    n = acc.shape[-1]
    mult = shift = None
    if attrs.get("mult") is not None:
        mult = np.broadcast_to(np.asarray(attrs["mult"], np.int64), (n,))
        shift = np.broadcast_to(np.asarray(attrs["shift"], np.int64), (n,))
    out_zp = int(attrs.get("out_zp", 0))
    if residual is not None:
        out_zp -= int(attrs.get("residual_zp", 0))
    return arith.epilogue(
        arith.wrap32(acc), bias=None if bias is None else _int64(bias), mult=mult, shift=shift,
        residual=None if residual is None else _int64(residual),
        act=ACTIVATIONS[attrs.get("act", "none")],
        out=Memory.ACC if attrs.get("out", "spad") == "acc" else Memory.SPAD,
        out_zp=out_zp, clip_lo=int(attrs.get("clip_lo", 0)), clip_hi=int(attrs.get("clip_hi", 0)))


def _braze_qmatmul(node, x, w, bias=None, residual=None):
    flatten = node.attrs.get("flatten_a")
    if flatten is not None:
        x = x.reshape(int(np.prod(x.shape[:flatten])), -1)
    lead = x.shape[:-1]
    acc = (_int64(x).reshape(-1, x.shape[-1]) - int(node.attrs.get("x_zero_point", 0))) @ _int64(w)
    tile = None if residual is None else residual.reshape(-1, w.shape[-1])
    return braze_epilogue(node, acc, bias, tile).reshape(*lead, w.shape[-1])


def _braze_qconv(node, x, w, bias=None, residual=None):
    acc = conv2d(_int64(x) - int(node.attrs.get("x_zero_point", 0)), _int64(w), node.attrs)
    n, o, h, wd = acc.shape
    tile = acc.transpose(0, 2, 3, 1).reshape(-1, o)
    res_tile = None if residual is None else residual.transpose(0, 2, 3, 1).reshape(-1, o)
    return braze_epilogue(node, tile, bias, res_tile).reshape(n, h, wd, o).transpose(0, 3, 1, 2)


def _braze_qadd(node, x, y):
    """``sat8((x - x_zp) + (y - y_zp) + out_zp)``: int8 addition at equal scales (the unfused residual)."""
    attrs = node.attrs
    total = (_int64(x) - int(attrs.get("x_zp", 0))) + (_int64(y) - int(attrs.get("y_zp", 0))) \
        + int(attrs.get("out_zp", 0))
    return np.clip(total, -128, 127).astype(np.int8)


def _unary(fn):
    return lambda node, x: fn(x).astype(x.dtype)


def _binary(fn):
    return lambda node, a, b: fn(a, b).astype(a.dtype)


_OPS: dict[str, Callable[..., Any]] = {
    "MatMul": lambda node, a, b: np.matmul(a, b),
    "Gemm": _gemm,
    "Conv": lambda node, x, w, b=None: (conv2d(x, w, node.attrs) + (0 if b is None else _axis_shape(b, 1, 4)))
    .astype(x.dtype),
    "Relu": lambda node, x: np.maximum(x, np.zeros((), x.dtype)),
    "Clip": _clip,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _div,
    "Pow": lambda node, a, b: np.power(a, b).astype(a.dtype),
    "Max": lambda node, *xs: np.maximum.reduce(np.broadcast_arrays(*xs)).astype(xs[0].dtype),
    "Min": lambda node, *xs: np.minimum.reduce(np.broadcast_arrays(*xs)).astype(xs[0].dtype),
    "Equal": lambda node, a, b: np.equal(a, b),
    "Where": lambda node, c, a, b: np.where(c, a, b),
    "Neg": _unary(np.negative),
    "Exp": _unary(np.exp),
    "Sqrt": _unary(np.sqrt),
    "Tanh": _unary(np.tanh),
    "Sigmoid": _unary(lambda x: 1.0 / (1.0 + np.exp(-x))),
    "Softmax": _softmax,
    "MaxPool": lambda node, x: _pool(node, x, "max"),
    "AveragePool": lambda node, x: _pool(node, x, "average"),
    "GlobalAveragePool": lambda node, x: x.mean(axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda node, x: np.transpose(x, node.attrs.get("perm")),
    "Identity": lambda node, x: x,
    "Dropout": _dropout,
    "Cast": _cast,
    "Shape": _shape,
    "Size": lambda node, x: np.array(x.size, dtype=np.int64),
    "Gather": _gather,
    "Slice": _slice,
    "Concat": lambda node, *xs: np.concatenate(xs, axis=node.attrs["axis"]),
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "ConstantOfShape": _constant_of_shape,
    "Expand": lambda node, x, shape: x * np.ones([int(d) for d in shape], dtype=x.dtype),
    "Range": lambda node, start, limit, delta: np.arange(start, limit, delta, dtype=np.asarray(start).dtype),
    "ArgMax": _argmax,
    "QuantizeLinear": _quantize_linear,
    "DequantizeLinear": _dequantize_linear,
    "QLinearMatMul": _qlinear_matmul,
    "QLinearConv": _qlinear_conv,
    "MatMulInteger": lambda node, a, b, a_zp=None, b_zp=None: _matmul_integer(a, b, a_zp, b_zp)
    .astype(np.int32),
    "ConvInteger": lambda node, x, w, x_zp=None, w_zp=None: _conv_integer(node, x, w, x_zp, w_zp)
    .astype(np.int32),
    f"{BRAZE_DOMAIN}.QMatMul": _braze_qmatmul,
    f"{BRAZE_DOMAIN}.QConv": _braze_qconv,
    f"{BRAZE_DOMAIN}.QAdd": _braze_qadd,
}


def supports(node: Node) -> bool:
    """Whether :func:`evaluate` has a built-in implementation of ``node``'s op."""
    return node.qualified_op in _OPS


__all__ = [
    "load_onnx", "evaluate", "evaluate_node", "conv2d", "conv_pads", "braze_epilogue", "supports",
    "ModelLoadError", "UnsupportedOperator", "EvaluationError", "InvalidGraph",
    "SUPPORTED_OPS", "COMPUTE_OPS", "SHAPE_OPS", "CONTROL_OPS", "BRAZE_DOMAIN", "MIN_OPSET",
]
