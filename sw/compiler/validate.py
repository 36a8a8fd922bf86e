"""The validity check of the compiler's IR, separate from the passes.

:func:`validate` checks a :class:`~braze.sw.compiler.ir.Graph` and raises
:class:`~braze.sw.compiler.ir.InvalidGraph` naming the first offending node and the
problem.  Every pass must map valid graphs to valid graphs; the tests run it
before and after each pass.

Checks: node kinds are well-formed; the graph is acyclic; every tensor read
is produced exactly once and every graph output exists; per operator, the
arity, dtypes and (where known) shapes agree (e.g. MatMul inner dimensions,
Conv channels, broadcastable elementwise operands); quantized nodes carry
their quantization parameters; transfers move one tensor between two
different known places without changing it; monitoring points read one
tensor and gather statistics that fit it (:mod:`~braze.sw.compiler.monitors`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .chain import QCONV_CHAIN, check_chain
from .frontend import BRAZE_DOMAIN, supports
from .ir import LOCATIONS, Graph, InvalidGraph, Node, NodeKind, TensorInfo
from .monitors import check_monitor

__all__ = ["validate", "InvalidGraph"]

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def validate(graph: Graph) -> Graph:
    """Check ``graph``; return it unchanged, or raise :class:`InvalidGraph`."""
    for node in graph.nodes:
        _check_kind(graph, node)
    for node in graph.nodes:
        for tensor in node.inputs:
            if not tensor:
                continue
            count = len(graph.producers(tensor))
            if count == 0:
                raise InvalidGraph(f"reads tensor {tensor!r}, which no node produces", node=node.name)
        for tensor in node.outputs:
            if tensor and len(graph.producers(tensor)) > 1:
                others = [n.name for n in graph.producers(tensor)]
                raise InvalidGraph(f"tensor {tensor!r} is produced {len(others)} times (by {others})",
                                   node=node.name)
    if not graph.outputs:
        raise InvalidGraph(f"graph {graph.name!r} has no outputs")
    if len(set(graph.outputs)) != len(graph.outputs):
        raise InvalidGraph(f"graph {graph.name!r} lists an output twice: {list(graph.outputs)}")
    graph.topological_order()                   # raises on a cycle
    for node in graph.nodes:
        if node.kind is NodeKind.OPERATOR:
            _check_operator(graph, node)
    return graph


def _check_kind(graph: Graph, node: Node) -> None:
    def fail(problem: str):
        raise InvalidGraph(problem, node=node.name)

    counts = {NodeKind.INPUT: (0, 1), NodeKind.OUTPUT: (1, 0), NodeKind.CONSTANT: (0, 1),
              NodeKind.TRANSFER: (1, 1)}
    if node.kind in counts:
        n_in, n_out = counts[node.kind]
        if len(node.inputs) != n_in or len(node.outputs) != n_out or not all(node.inputs + node.outputs):
            fail(f"a {node.kind.value} node has {n_in} input(s) and {n_out} output(s), "
                 f"got {list(node.inputs)} -> {list(node.outputs)}")
    if node.kind is NodeKind.CONSTANT:
        if node.value is None:
            fail("constant without a value")
        info = graph.tensor(node.outputs[0])
        if info.dtype is not None and info.dtype != node.value.dtype.name:
            fail(f"constant value is {node.value.dtype.name} but its tensor is declared {info.dtype}")
        if info.shape is not None and tuple(info.shape) != node.value.shape:
            fail(f"constant value has shape {node.value.shape} but its tensor is declared {info.shape}")
    if node.kind is NodeKind.TRANSFER:
        src, dst = node.attrs.get("src"), node.attrs.get("dst")
        if src not in LOCATIONS or dst not in LOCATIONS or src == dst:
            fail(f"transfer from {src!r} to {dst!r}: both must be different places among {LOCATIONS}")
        before, after = graph.tensor(node.inputs[0]), graph.tensor(node.outputs[0])
        if (before.dtype, before.shape) != (after.dtype, after.shape):
            fail(f"transfer changes the tensor: {before} -> {after}")
    if node.kind is NodeKind.OPERATOR and node.device == "cpu" and not supports(node) \
            and "onnx_node" not in node.attrs:
        fail(f"CPU fallback node {node.qualified_op} has neither a built-in evaluator nor its ONNX node")
    if node.kind is NodeKind.OPERATOR and node.device == "accel" and node.domain not in ("", BRAZE_DOMAIN):
        fail(f"operator {node.qualified_op} of a foreign domain must run on the CPU")
    if node.kind is NodeKind.CONTROL and not node.op_type:
        fail("control-flow node without an op type")
    if node.kind is NodeKind.MONITOR:
        problem = check_monitor(graph, node)
        if problem:
            fail(problem)


# -- per-operator checks -----------------------------------------------------------------------------

def _info(graph: Graph, node: Node, index: int) -> TensorInfo:
    present = index < len(node.inputs) and node.inputs[index]
    return graph.tensor(node.inputs[index]) if present else TensorInfo("")


def _known(*dims) -> bool:
    return all(isinstance(d, int) for d in dims)


def _broadcastable(a: tuple, b: tuple) -> bool:
    for x, y in zip(reversed(a), reversed(b), strict=False):
        if _known(x, y) and x != y and x != 1 and y != 1:
            return False
    return True


def _check_operator(graph: Graph, node: Node) -> None:
    def fail(problem: str):
        raise InvalidGraph(problem, node=node.name)

    arity = _ARITY.get(node.qualified_op)
    if arity is not None:
        present = len(node.inputs)
        low, high = arity
        if not low <= present <= high or any(not node.inputs[i] for i in range(low)):
            fail(f"{node.qualified_op} takes {low}..{high} inputs (the first {low} required), "
                 f"got {list(node.inputs)}")
    if not any(node.outputs):
        fail(f"{node.qualified_op} has no output")
    if not node.outputs[0] and node.qualified_op in _CHECKS:
        # The checked operators' first output is required (an LSTM's first output is optional).
        fail(f"{node.qualified_op} has no first output (outputs {list(node.outputs)})")
    check = _CHECKS.get(node.qualified_op)
    if check is not None:
        check(graph, node, fail)


def _check_output_shape(graph, node, fail, expected: tuple) -> None:
    """The declared output shape agrees with ``expected`` wherever both dims are known."""
    declared = graph.tensor(node.outputs[0]).shape
    if declared is None:
        return
    if len(declared) != len(expected) or any(_known(d, e) and d != e for d, e in zip(declared, expected,
                                                                                      strict=True)):
        fail(f"output {node.outputs[0]!r} is declared {declared}, but the operands give {expected}")


def _check_matmul(graph, node, fail):
    a, b = _info(graph, node, 0), _info(graph, node, 1)
    if a.dtype and b.dtype and a.dtype != b.dtype:
        fail(f"MatMul operands differ in type: {a.dtype} and {b.dtype}")
    if a.shape and b.shape:
        k_a = a.shape[-1]
        k_b = b.shape[0] if len(b.shape) == 1 else b.shape[-2]
        if _known(k_a, k_b) and k_a != k_b:
            fail(f"MatMul inner dimensions differ: {a.name} is {a.shape}, {b.name} is {b.shape}")
        if len(a.shape) == 2 and len(b.shape) == 2:
            _check_output_shape(graph, node, fail, (a.shape[0], b.shape[1]))


def _gemm_operands(graph, node):
    a, b = _info(graph, node, 0), _info(graph, node, 1)
    a_shape, b_shape = a.shape, b.shape
    if a_shape is not None and node.attrs.get("flatten_a") is not None:
        axis = node.attrs["flatten_a"]
        head, tail = a_shape[:axis], a_shape[axis:]
        a_shape = (int(np.prod(head)) if _known(*head) else None,
                   int(np.prod(tail)) if _known(*tail) else None)
    if a_shape is not None and node.attrs.get("transA", 0):
        a_shape = a_shape[::-1]
    if b_shape is not None and node.attrs.get("transB", 0):
        b_shape = b_shape[::-1]
    return a, b, a_shape, b_shape


def _check_gemm(graph, node, fail):
    a, b, a_shape, b_shape = _gemm_operands(graph, node)
    if a.dtype and b.dtype and a.dtype != b.dtype:
        fail(f"Gemm operands differ in type: {a.dtype} and {b.dtype}")
    if a_shape is not None and len(a_shape) != 2 or b_shape is not None and len(b_shape) != 2:
        fail(f"Gemm needs 2-D operands, got {a.shape} and {b.shape}")
    if a_shape and b_shape and _known(a_shape[1], b_shape[0]) and a_shape[1] != b_shape[0]:
        fail(f"Gemm inner dimensions differ: A is {a_shape}, B is {b_shape} (after flatten/transpose)")
    c = _info(graph, node, 2)
    if c.shape is not None and a_shape and b_shape and not _broadcastable((a_shape[0], b_shape[1]), c.shape):
        fail(f"Gemm bias {c.shape} does not broadcast to {(a_shape[0], b_shape[1])}")
    if a_shape and b_shape:
        _check_output_shape(graph, node, fail, (a_shape[0], b_shape[1]))


def _check_conv(graph, node, fail, *, x_index=0, w_index=1, bias_index=2):
    x, w = _info(graph, node, x_index), _info(graph, node, w_index)
    if node.domain == BRAZE_DOMAIN and (x.shape is not None and len(x.shape) != 4
                                        or w.shape is not None and len(w.shape) != 4):
        fail(f"only 2-D convolution (rank-4 input and weight) is quantized, got {x.shape} and {w.shape}")
    if x.shape is not None and w.shape is not None and len(x.shape) != len(w.shape):
        fail(f"convolution input and weight differ in rank: {x.shape} and {w.shape}")
    if x.shape and w.shape and _known(x.shape[1], w.shape[1]):
        group = node.attrs.get("group", 1)
        if x.shape[1] != w.shape[1] * group:
            fail(f"Conv input has {x.shape[1]} channels, weight expects {w.shape[1]}x{group} groups")
    bias = _info(graph, node, bias_index)
    if bias.shape is not None and w.shape and (len(bias.shape) != 1 or _known(bias.shape[0], w.shape[0])
                                               and bias.shape[0] != w.shape[0]):
        fail(f"Conv bias has shape {bias.shape}, expected ({w.shape[0]},)")


def _check_elementwise(graph, node, fail):
    infos = [_info(graph, node, i) for i in range(len(node.inputs))]
    dtypes = {i.dtype for i in infos if i.dtype}
    if len(dtypes) > 1 and node.op_type not in ("Pow", "Where"):
        fail(f"{node.op_type} operands differ in type: {sorted(dtypes)}")
    shapes = [i.shape for i in infos if i.shape is not None]
    for first in shapes:
        for second in shapes:
            if not _broadcastable(first, second):
                fail(f"{node.op_type} operands do not broadcast: {shapes}")


def _check_qdq(graph, node, fail):
    x, scale, zp = _info(graph, node, 0), _info(graph, node, 1), _info(graph, node, 2)
    if scale.dtype and np.dtype(scale.dtype).kind != "f":
        fail(f"{node.op_type} scale must be a float tensor, got {scale.dtype}")
    # quantize_static writes a per-tensor scale of shape (1,) with a scalar zero point: compare sizes.
    if zp.dtype and scale.shape is not None and zp.shape is not None \
            and int(np.prod(scale.shape)) != int(np.prod(zp.shape)):
        fail(f"{node.op_type} scale {scale.shape} and zero point {zp.shape} differ in shape")
    if node.op_type == "QuantizeLinear" and x.dtype and np.dtype(x.dtype).kind != "f":
        fail(f"QuantizeLinear input must be float, got {x.dtype}")
    if node.op_type == "DequantizeLinear" and x.dtype and np.dtype(x.dtype).kind not in "iu" \
            and "float8" not in x.dtype:
        fail(f"DequantizeLinear input must be an integer or float8 tensor, got {x.dtype}")


def _check_braze(graph, node, fail):
    """Braze's quantized ops: int8 operands, int32 bias, complete and in-range requantization."""
    x, w, bias = _info(graph, node, 0), _info(graph, node, 1), _info(graph, node, 2)
    if x.dtype not in (None, "int8"):
        fail(f"quantized input {x.name!r} must be int8, got {x.dtype}")
    if graph.constant(node.inputs[1]) is None or w.dtype != "int8":
        fail(f"weight {w.name!r} must be an int8 constant, got {w}")
    if x.quant is None:
        fail(f"quantized input {x.name!r} has no quantization parameters")
    if x.quant.zero_point[0] != node.attrs.get("x_zero_point", 0):
        fail(f"x_zero_point {node.attrs.get('x_zero_point', 0)} differs from input's {x.quant.zero_point[0]}")
    n = w.shape[-1] if node.op_type == "QMatMul" else w.shape[0]
    k = w.shape[0] if node.op_type == "QMatMul" else w.shape[1]
    if node.op_type == "QMatMul" and x.shape is not None:
        width = x.shape[-1]
        if node.attrs.get("flatten_a") is not None:
            tail = x.shape[node.attrs["flatten_a"]:]
            width = int(np.prod(tail)) if _known(*tail) else None
        if _known(width) and width != k:
            fail(f"QMatMul inner dimensions differ: input {x.shape}, weight {w.shape}")
    if node.op_type == "QConv":
        _check_conv(graph, node, fail)
        pool = node.attrs.get("pool", 1)
        if isinstance(pool, bool) or not isinstance(pool, (int, np.integer)) or pool < 1:
            fail(f"pool must be a positive integer (fused max pooling window and stride), got {pool!r}")
        if pool > 1 and (node.attrs.get("out", "spad") != "spad" or len(node.inputs) > 3 and node.inputs[3]):
            fail("fused pooling needs an int8 output (out='spad') and no residual input")
    if node.inputs[2:] and node.inputs[2]:
        if bias.dtype != "int32" or bias.shape != (n,):
            fail(f"bias {bias.name!r} must be int32 of shape ({n},), got {bias}")
    out = node.attrs.get("out", "spad")
    if out not in ("spad", "acc"):
        fail(f"out must be 'spad' or 'acc', got {out!r}")
    mult, shift = node.attrs.get("mult"), node.attrs.get("shift")
    if (mult is None) != (shift is None):
        fail("requantization needs both mult and shift")
    if mult is not None:
        mult, shift = np.asarray(mult), np.asarray(shift)
        if mult.shape not in ((n,), ()) or shift.shape not in ((n,), ()):
            fail(f"mult {mult.shape} and shift {shift.shape} must be per column (n={n}) or scalar")
        if mult.min() < INT32_MIN or mult.max() > INT32_MAX or shift.min() < 0 or shift.max() > 63:
            fail(f"mult must be int32 and shift 0..63, got mult {mult.min()}..{mult.max()}, "
                 f"shift {shift.min()}..{shift.max()}")
    elif out == "spad":
        fail("an int8 output needs requantization (mult and shift)")
    act = node.attrs.get("act", "none")
    if act not in ("none", "relu", "clip", "table"):
        fail(f"act must be 'none', 'relu', 'clip' or 'table', got {act!r}")
    if (act == "table") != (node.attrs.get("table") is not None):
        fail("act='table' needs the 256-entry table attribute, and only it has one")
    if act == "table":
        _check_table(node, fail)
    y = graph.tensor(node.outputs[0])
    expected = "int8" if out == "spad" else "int32"
    if y.dtype not in (None, expected):
        fail(f"output {y.name!r} must be {expected} (out={out!r}), got {y.dtype}")
    if out == "spad":
        if y.quant is None:
            fail(f"quantized output {y.name!r} has no quantization parameters")
        # A table activation maps the requantized value onto the output's own quantization.
        if y.quant.zero_point[0] != node.attrs.get("out_zp", 0) and act != "table":
            fail(f"out_zp {node.attrs.get('out_zp', 0)} differs from the output's zero point "
                 f"{y.quant.zero_point}")
    if len(node.inputs) > 3 and node.inputs[3]:
        residual = _info(graph, node, 3)
        if out != "spad":
            fail("a residual input needs an int8 output (out='spad')")
        if residual.dtype not in (None, "int8"):
            fail(f"residual {residual.name!r} must be int8, got {residual.dtype}")
        if residual.shape is not None and y.shape is not None and _known(*residual.shape, *y.shape) \
                and tuple(residual.shape) != tuple(y.shape):
            fail(f"residual {residual.name!r} of shape {residual.shape} differs from the output's {y.shape}")
        if residual.quant is None or residual.quant.zero_point[0] != node.attrs.get("residual_zp", 0):
            fail(f"residual_zp {node.attrs.get('residual_zp', 0)} differs from residual {residual.name!r}'s "
                 f"quantization {residual.quant}")


def _check_table(node, fail):
    table = np.asarray(node.attrs.get("table", ()))
    if table.shape != (256,) or table.dtype.kind not in "iu" or table.min() < -128 or table.max() > 127:
        fail(f"table must be 256 int8 entries, got shape {table.shape}")


def _check_qtable(graph, node, fail):
    """Braze's table activation: an int8 input and output of one shape, a 256-entry int8 table."""
    x, y = _info(graph, node, 0), graph.tensor(node.outputs[0])
    for key, info in (("input", x), ("output", y)):
        if info.dtype not in (None, "int8"):
            fail(f"QTable {key} {info.name!r} must be int8, got {info.dtype}")
    if x.shape is not None and y.shape is not None and tuple(x.shape) != tuple(y.shape):
        fail(f"QTable input {x.shape} and output {y.shape} must have one shape")
    _check_table(node, fail)


def _check_qadd(graph, node, fail):
    """Braze's int8 addition: int8 operands of one shape, zero points that match the tensors'."""
    infos = {"x": _info(graph, node, 0), "y": _info(graph, node, 1), "out": graph.tensor(node.outputs[0])}
    shapes = [info.shape for info in infos.values() if info.shape is not None]
    if any(len(shape) != len(shapes[0]) or any(isinstance(a, int) and isinstance(b, int) and a != b
                                               for a, b in zip(shape, shapes[0], strict=True))
           for shape in shapes):
        fail(f"QAdd operands and output must have one shape, got {[str(s) for s in shapes]}")
    for key, info in infos.items():
        if info.dtype not in (None, "int8"):
            fail(f"QAdd {key} {info.name!r} must be int8, got {info.dtype}")
        zero_point = node.attrs.get(f"{key}_zp", 0)
        if info.quant is not None and info.quant.zero_point[0] != zero_point:
            fail(f"{key}_zp {zero_point} differs from {info.name!r}'s zero point {info.quant.zero_point[0]}")
    scaled = [key for key in ("x_mult", "y_mult", "shift") if key in node.attrs]
    if scaled and len(scaled) != 3:
        fail(f"QAdd at two scales needs x_mult, y_mult and shift, got only {scaled}")
    if scaled and not (all(-(1 << 15) <= int(node.attrs[k]) < (1 << 15) for k in ("x_mult", "y_mult"))
                       and 0 <= int(node.attrs["shift"]) <= 31):
        fail(f"QAdd multipliers must be int16 and the shift 0..31, got x_mult={node.attrs['x_mult']}, "
             f"y_mult={node.attrs['y_mult']}, shift={node.attrs['shift']}")


def _check_qlinear_matmul(graph, node, fail, *, b_index=3):
    a, b = _info(graph, node, 0), _info(graph, node, b_index)
    for info in (a, b):
        if info.dtype and info.dtype not in ("int8", "uint8"):
            fail(f"{node.op_type} operand {info.name!r} must be int8 or uint8, got {info.dtype}")
    if a.shape and b.shape and _known(a.shape[-1], b.shape[-2] if len(b.shape) > 1 else b.shape[0]) \
            and a.shape[-1] != (b.shape[-2] if len(b.shape) > 1 else b.shape[0]):
        fail(f"{node.op_type} inner dimensions differ: {a.shape} and {b.shape}")


def _check_qactmatmul(graph, node, fail):
    """Braze's product of two int8 activations (``QActMatMul``): int8 operands whose inner dimensions
    agree, int8 zero points."""
    a, b = _info(graph, node, 0), _info(graph, node, 1)
    for key in ("a_zero_point", "b_zero_point"):
        if not -128 <= int(node.attrs.get(key, 0)) <= 127:
            fail(f"{key} {node.attrs[key]} is not int8")
    for info in (a, b):
        if info.dtype not in (None, "int8"):
            fail(f"{node.op_type} operand {info.name!r} must be int8, got {info.dtype}")
        if info.shape is not None and len(info.shape) < 2:
            fail(f"{node.op_type} operand {info.name!r} must have at least 2 dimensions, got {info.shape}")
    for key, info in (("a_heads", a), ("b_heads", b)):
        if node.attrs.get(key) and info.shape is not None and len(info.shape) < 3:
            fail(f"{key}: operand {info.name!r} of shape {info.shape} has no head axis")
    k_b = -3 if node.attrs.get("b_heads") else -2
    if a.shape and b.shape and len(b.shape) >= -k_b and _known(a.shape[-1], b.shape[k_b]) \
            and a.shape[-1] != b.shape[k_b]:
        fail(f"{node.op_type} inner dimensions differ: {a.shape} and {b.shape}")
    if node.attrs.get("out", "spad") == "spad" and node.attrs.get("mult") is None:
        fail("an int8 output needs requantization (mult and shift)")


_ARITY: dict[str, tuple[int, int]] = {
    "MatMul": (2, 2), "Gemm": (2, 3), "Conv": (2, 3), "Relu": (1, 1), "Clip": (1, 3), "Add": (2, 2),
    "Sub": (2, 2), "Mul": (2, 2), "Div": (2, 2), "MaxPool": (1, 1), "AveragePool": (1, 1),
    "GlobalAveragePool": (1, 1), "Flatten": (1, 1), "Reshape": (2, 2), "Transpose": (1, 1), "Softmax": (1, 1),
    "Sigmoid": (1, 1), "QuantizeLinear": (2, 3), "DequantizeLinear": (2, 3), "QLinearMatMul": (8, 8),
    "QLinearConv": (8, 9), "MatMulInteger": (2, 4), "ConvInteger": (2, 4), "Identity": (1, 1),
    "Dropout": (1, 3), "Cast": (1, 1), "Shape": (1, 1), "Gather": (2, 2), "Slice": (3, 5),
    "Unsqueeze": (2, 2), "Squeeze": (1, 2), "ConstantOfShape": (1, 1),
    f"{BRAZE_DOMAIN}.QMatMul": (2, 4), f"{BRAZE_DOMAIN}.QConv": (2, 4), f"{BRAZE_DOMAIN}.QAdd": (2, 2),
    f"{BRAZE_DOMAIN}.QTable": (1, 1),
    f"{BRAZE_DOMAIN}.QActMatMul": (2, 2),
}

_CHECKS: dict[str, Callable] = {
    "MatMul": _check_matmul, "Gemm": _check_gemm, "Conv": _check_conv,
    "Add": _check_elementwise, "Sub": _check_elementwise,
    "Mul": _check_elementwise, "Div": _check_elementwise,
    "QuantizeLinear": _check_qdq, "DequantizeLinear": _check_qdq,
    "QLinearMatMul": _check_qlinear_matmul,
    "MatMulInteger": lambda g, n, f: _check_qlinear_matmul(g, n, f, b_index=1),
    "QLinearConv": lambda g, n, f: _check_conv(g, n, f, x_index=0, w_index=3, bias_index=8),
    "ConvInteger": lambda g, n, f: _check_conv(g, n, f, bias_index=99),
    f"{BRAZE_DOMAIN}.QMatMul": _check_braze, f"{BRAZE_DOMAIN}.QConv": _check_braze,
    f"{BRAZE_DOMAIN}.QAdd": _check_qadd,
    f"{BRAZE_DOMAIN}.QTable": _check_qtable,
    f"{BRAZE_DOMAIN}.QActMatMul": _check_qactmatmul,
    QCONV_CHAIN: check_chain,
}
