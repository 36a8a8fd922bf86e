"""Table activations: element-wise functions of one int8 tensor as a 256-entry lookup table.

A quantized graph computes an element-wise function such as Sigmoid, Tanh, GELU (the ``Gelu`` op or
the ``Div``/``Erf``/``Add``/``Mul``/``Mul`` chain ``torch.onnx.export`` writes), HardSwish, HardSigmoid,
SiLU (``x * Sigmoid(x)``), LeakyRelu or Exp as ``DQ(x) -> float ops -> Q``: a dequantization of one
int8 tensor, float operators, and a quantization to int8.  The result depends on one int8 value per
element, so the whole chain is a table of 256 int8 entries: :func:`lower_table_activations` replaces
it with ``braze.QTable(x)``, whose ``table`` attribute holds ``Q(f(DQ(q)))`` for every ``q``, computed
with the host operators (:data:`~braze.sw.compiler.host_ops.OPS`) the frontend's evaluator runs, on
the 256 values at once.  The op is therefore exactly the evaluator's chain, by construction.

``table[e]`` is the output for the int8 input whose two's-complement byte is ``e`` (``e = q mod 256``):
the order of the activation table of the accelerator's ``TABLE`` instruction (see
:mod:`braze.isa.encoding`), so the attribute is loaded as it is.  The fusion engine puts a ``QTable``
that follows a ``QMatMul``/``QConv`` into its ``EPILOGUE`` (``act="table"``); alone, it runs as the
:func:`~braze.sw.compiler.kernels.table` kernel.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .frontend import BRAZE_DOMAIN
from .host_ops import OPS
from .ir import Graph, Node, NodeKind, QuantParams

__all__ = ["TABLE_OPS", "lower_table_activations", "table_of", "apply_table", "QTABLE"]

QTABLE = f"{BRAZE_DOMAIN}.QTable"
TABLE_ENTRIES = 256

#: Element-wise float operators a table may absorb: every input is the chain's own tensor or a scalar
#: constant, and the output has the shape of the (non-scalar) input.
TABLE_OPS = frozenset({
    "Sigmoid", "Tanh", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal", "Sin", "Cos", "Softsign",
    "Softplus", "Mish", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu",
    "HardSigmoid", "HardSwish", "Gelu", "Swish", "Clip", "Identity", "Floor", "Ceil", "Round", "Sign",
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min",
})


def _scalar_constant(graph: Graph, tensor: str) -> bool:
    value = graph.constant(tensor)
    return value is not None and value.size == 1


def _dequantize_source(graph: Graph, node: Node) -> bool:
    """``node`` is a DequantizeLinear of an int8 tensor with scalar (per-tensor) parameters."""
    if node.op_type != "DequantizeLinear" or node.domain:
        return False
    if graph.tensor(node.inputs[0]).dtype != "int8":
        return False
    params = [t for t in node.inputs[1:] if t]
    return all(_scalar_constant(graph, t) for t in params)


def _requantization(graph: Graph, node: Node) -> bool:
    """``node`` is a DequantizeLinear of a QuantizeLinear's output, both with scalar parameters."""
    if node.op_type != "DequantizeLinear" or node.domain or node.device != "accel":
        return False
    producer = graph.producer(node.inputs[0])
    if producer is None or producer.op_type != "QuantizeLinear" or producer.domain \
            or producer.device != "accel":
        return False
    return all(_scalar_constant(graph, t) for t in (*node.inputs[1:], *producer.inputs[1:]) if t)


def _same_dequantization(graph: Graph, first: Node, second: Node) -> bool:
    """Two DequantizeLinear nodes of one tensor with equal parameters (onnxruntime writes one per reader)."""
    if first.inputs[0] != second.inputs[0] or len(first.inputs) != len(second.inputs):
        return False
    return all(np.array_equal(graph.constant(a), graph.constant(b))
               for a, b in zip(first.inputs[1:], second.inputs[1:], strict=True) if a or b)


def _chain(graph: Graph, quantize: Node) -> tuple[Node, list[Node]] | None:
    """``(dequantize, element-wise nodes)`` of a table-able chain ending at ``quantize``, or None.

    Walks back from the QuantizeLinear's input through :data:`TABLE_OPS` whose other inputs are
    scalar constants, and through ``Q -> DQ`` pairs with scalar parameters (the quantization
    onnxruntime's QDQ format puts after every operator: an element-wise function too), until every
    path ends at one DequantizeLinear of an int8 tensor that no such pair produces.
    """
    source: Node | None = None
    members: dict[str, Node] = {}
    pending = [quantize.inputs[0]]
    seen: set[str] = set()
    while pending:
        tensor = pending.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        if graph.constant(tensor) is not None:
            if not _scalar_constant(graph, tensor):
                return None
            continue                            # a scalar, e.g. quantized and dequantized by the chain
        producer = graph.producer(tensor)
        if producer is None or producer.kind is not NodeKind.OPERATOR:
            return None
        if producer.op_type == "DequantizeLinear" and not producer.domain and producer.device == "accel" \
                and all(_scalar_constant(graph, t) for t in producer.inputs if t):
            members[producer.name] = producer   # a quantized scalar constant (the 1 and 0.5 of GELU)
            continue
        if _requantization(graph, producer):
            quantize_ = graph.producer(producer.inputs[0])
            members[producer.name] = producer
            members[quantize_.name] = quantize_
            pending.append(quantize_.inputs[0])
            continue
        if _dequantize_source(graph, producer):
            if source is not None and source.name != producer.name:
                if not _same_dequantization(graph, source, producer):
                    return None                 # two int8 sources: not a function of one value
                members[producer.name] = producer   # another DQ of the same tensor (one per reader)
                continue
            source = producer
            continue
        if producer.op_type not in TABLE_OPS or producer.domain or producer.device != "accel" \
                or len([t for t in producer.outputs if t]) != 1:
            return None
        members[producer.name] = producer
        for operand in producer.inputs:
            if operand and not _scalar_constant(graph, operand):
                pending.append(operand)
    if source is None or not members:
        return None
    shape = graph.tensor(source.outputs[0]).shape
    if shape is not None and graph.tensor(quantize.inputs[0]).shape not in (None, shape):
        return None                             # a constant broadcast the chain to another shape
    order = [node for node in graph.operators() if node.name in members]
    return source, order


def table_of(graph: Graph, dequantize: Node, chain: list[Node], quantize: Node) -> np.ndarray:
    """``Q(f(DQ(q)))`` for every int8 ``q``, in two's-complement byte order (entry ``q mod 256``).

    The chain runs through the same host operators as the frontend's evaluator, on the 256 values.
    """
    q = np.arange(-128, 128, dtype=np.int64).astype(np.int8)
    values: dict[str, np.ndarray] = {}

    def value(tensor: str) -> np.ndarray | None:
        if not tensor:
            return None
        if tensor == dequantize.inputs[0]:
            return q                            # the int8 source, read by another DQ of it
        if tensor in values:
            return values[tensor]
        return np.asarray(graph.constant(tensor))

    values[dequantize.outputs[0]] = OPS["DequantizeLinear"](dequantize, q, *(value(t) for t in
                                                                         dequantize.inputs[1:]))
    for node in chain:
        inputs = [value(t) for t in node.inputs]
        while inputs and inputs[-1] is None:
            inputs.pop()
        result = OPS[node.qualified_op](node, *inputs)
        values[node.outputs[0]] = result[0] if isinstance(result, tuple) else result
    out = OPS["QuantizeLinear"](quantize, values[quantize.inputs[0]],
                                *(value(t) for t in quantize.inputs[1:]))
    out = np.asarray(out).reshape(-1)
    if out.dtype != np.int8 or out.size != TABLE_ENTRIES:
        raise AssertionError(f"table of {quantize.name!r}: {out.dtype} x {out.size}")
    table = np.empty(TABLE_ENTRIES, np.int8)
    table[q.astype(np.int64) & 0xFF] = out
    return table


def apply_table(table, x: np.ndarray) -> np.ndarray:
    """``table[x mod 256]`` for an int8 tensor: what ``braze.QTable`` and ``act="table"`` compute."""
    return np.asarray(table, np.int8)[np.asarray(x).astype(np.int64) & 0xFF]


def lower_table_activations(graph: Graph) -> Graph:
    """Replace every ``DQ(int8 x) -> element-wise float ops -> Q(int8)`` chain by ``braze.QTable(x)``.

    The QuantizeLinear must have scalar parameters and an int8 output, the DequantizeLinear scalar
    parameters; the float nodes stay in the graph for their other readers (dead ones are dropped by
    :func:`~braze.sw.compiler.passes.simplify`).
    """
    substitute: dict[str, Node] = {}
    infos = []
    for node in graph.operators():
        if node.op_type != "QuantizeLinear" or node.domain or node.device != "accel":
            continue
        params = [t for t in node.inputs[1:] if t]
        if len(params) != 2 or not all(_scalar_constant(graph, t) for t in params) \
                or graph.constant(params[1]).dtype != np.int8 \
                or graph.tensor(node.outputs[0]).dtype != "int8":
            continue
        found = _chain(graph, node)
        if found is None:
            continue
        dequantize, chain = found
        table = table_of(graph, dequantize, chain, node)
        scale = float(np.asarray(graph.constant(params[0])).reshape(-1)[0])
        zero_point = int(np.asarray(graph.constant(params[1])).reshape(-1)[0])
        ops = tuple(n.name for n in (dequantize, *chain, node))
        op_types = tuple(n.qualified_op for n in (dequantize, *chain, node))
        substitute[node.name] = Node(
            graph.unique_name(f"{node.name}_table"), NodeKind.OPERATOR, "QTable", (dequantize.inputs[0],),
            (node.outputs[0],), {"table": tuple(int(v) for v in table), "fused_ops": ops,
                                 "fused_op_types": op_types}, domain=BRAZE_DOMAIN)
        out = graph.tensor(node.outputs[0])
        infos.append(dataclasses.replace(out, dtype="int8",
                                         quant=QuantParams((scale,), (zero_point,), None, "int8")))
    if not substitute:
        return graph
    return graph.edit(substitute=substitute, tensors=infos)
