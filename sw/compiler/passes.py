"""Pure graph-to-graph passes.

Every pass takes a :class:`~braze.sw.compiler.ir.Graph` and returns a new one; the
argument is never changed (graphs are immutable).  A pass that finds nothing
to do returns its argument.  :func:`run_passes` chains passes, checks each
result with :func:`~braze.sw.validate.validate` and records what each pass
changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from .frontend import evaluate_node, supports
from .ir import Graph, Node, NodeKind, TensorInfo, constant_info, constant_node
from .validate import validate

Pass = Callable[[Graph], Graph]

#: Ops constant folding leaves alone although it could evaluate them: they carry the
#: quantization structure of QDQ models, which :mod:`braze.sw.compiler.quantize` reads.
KEEP_UNFOLDED = frozenset({"QuantizeLinear", "DequantizeLinear"})
#: Ops whose value is not a function of their inputs (only reachable through the CPU fallback).
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------

def bypass(graph: Graph, node: Node, source: str) -> Graph | None:
    """Remove ``node`` (one output) so that its readers read ``source`` instead.

    A graph output keeps its name: then ``source`` is renamed instead, which
    is impossible (``None``) when ``source`` is itself a graph input or output.
    """
    target = node.outputs[0]
    if target not in graph.outputs:
        return graph.edit(remove=[node.name]).rewire({target: source})
    if source in graph.inputs or source in graph.outputs:
        return None
    info = graph.tensors.get(target) or dataclasses.replace(graph.tensor(source), name=target)
    renamed = graph.edit(remove=[node.name]).rename(source, target)
    return renamed.edit(tensors=[info])


def _static_shape(graph: Graph, tensor: str) -> tuple[int, ...] | None:
    info = graph.tensor(tensor)
    return tuple(info.shape) if info.static else None


# ---------------------------------------------------------------------------------------------------
# Passes
# ---------------------------------------------------------------------------------------------------

def remove_dead(graph: Graph) -> Graph:
    """Remove nodes no graph output (or monitoring point) depends on (graph inputs always stay)."""
    view = graph.nx
    live: set[str] = set()
    for node in graph.nodes:
        if node.kind in (NodeKind.OUTPUT, NodeKind.MONITOR):
            live.add(node.name)
            live |= _ancestors(view, node.name)
    dead = [n.name for n in graph.nodes if n.name not in live and n.kind is not NodeKind.INPUT]
    return graph.edit(remove=dead) if dead else graph


def _ancestors(view, name: str) -> set[str]:
    import networkx as nx

    return nx.ancestors(view, name)


def is_noop(graph: Graph, node: Node) -> bool:
    """Whether ``node`` passes its first input through unchanged."""
    if node.kind is not NodeKind.OPERATOR or node.domain or not node.inputs or not node.inputs[0]:
        return False
    op = node.op_type
    if op == "Identity":
        return True
    if op == "Dropout":
        training = graph.constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        if len(node.inputs) > 2 and node.inputs[2] and (training is None or bool(training)):
            return False                         # training mode (or unknown): it drops values
        return all(not graph.consumers(t) and t not in graph.outputs for t in node.outputs[1:] if t)
    if op == "Cast":
        source = graph.tensor(node.inputs[0]).dtype
        return source is not None and source == graph.tensor(node.outputs[0]).dtype
    if op == "Transpose":
        perm = node.attrs.get("perm")
        return perm is not None and list(perm) == list(range(len(perm)))
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        before, after = _static_shape(graph, node.inputs[0]), _static_shape(graph, node.outputs[0])
        return before is not None and before == after
    return False


def remove_identities(graph: Graph) -> Graph:
    """Remove no-ops: Identity, inference Dropout, Cast to the same type, identity Transpose,
    Reshape/Flatten/Squeeze/Unsqueeze to the same (static) shape."""
    for original in graph.topological_order():
        node = graph.node(original.name)         # an earlier removal may have rewired its input
        if is_noop(graph, node):
            graph = bypass(graph, node, node.inputs[0]) or graph
    return graph


def fold_constants(graph: Graph) -> Graph:
    """Evaluate operators whose inputs are all constant (and ``Shape``/``Size`` of static shapes).

    ``QuantizeLinear``/``DequantizeLinear`` stay (:data:`KEEP_UNFOLDED`).  The
    folded value keeps the tensor's quantization parameters.
    """
    values = {n.outputs[0]: n.value for n in graph.nodes if n.kind is NodeKind.CONSTANT}
    substitute: dict[str, list[Node]] = {}
    new_infos: list[TensorInfo] = []
    for node in graph.topological_order():
        if node.kind is not NodeKind.OPERATOR or node.op_type in KEEP_UNFOLDED | NONDETERMINISTIC:
            continue
        shape = _static_shape(graph, node.inputs[0]) if node.inputs and node.inputs[0] else None
        if node.op_type == "Shape" and not node.domain and shape is not None:
            dims = np.array(shape, dtype=np.int64)
            results = [dims[node.attrs.get("start", 0): node.attrs.get("end", None)]]
        elif node.op_type == "Size" and not node.domain and shape is not None:
            results = [np.array(int(np.prod(shape)), dtype=np.int64)]
        elif all(not t or t in values for t in node.inputs) and (supports(node) or "onnx_node" in node.attrs):
            results = evaluate_node(node, *[values[t] if t else None for t in node.inputs])
            if any(isinstance(value, list) or value is None for value in results):
                continue                 # a sequence or optional is no constant tensor
        else:
            continue
        replacement = []
        for tensor, value in zip(node.outputs, results, strict=False):
            if not tensor:
                continue
            value = np.asarray(value)
            values[tensor] = value
            name = graph.unique_name(f"const:{tensor}")
            replacement.append(constant_node(tensor, value).replace(name=name))
            new_infos.append(constant_info(tensor, value, graph.tensor(tensor).quant))
        substitute[node.name] = replacement
    if not substitute:
        return graph
    return graph.edit(substitute=substitute, tensors=new_infos)


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold an inference ``BatchNormalization`` into the ``Conv`` before it (as the TorchScript exporter
    does and the dynamo exporter does not), so the convolution is quantized and runs on the chip.

    Only where the Conv has constant float weights (and bias), its output is read by the
    BatchNormalization alone, and the normalization's scale, bias, mean and variance are constant:
    ``W' = W * s`` per output channel and ``b' = (b - mean) * s + B`` with ``s = scale / sqrt(var +
    epsilon)``, computed in float64 and stored as the weights' float type.  Equal to the two operators
    up to float rounding (a relative 1e-6 or so), like any exporter's folding.
    """
    for norm in graph.operators():
        if norm.op_type != "BatchNormalization" or norm.domain or norm.attrs.get("training_mode", 0) \
                or len([t for t in norm.outputs if t]) != 1 or len(norm.inputs) != 5:
            continue
        conv = graph.producer(norm.inputs[0])
        if conv is None or conv.kind is not NodeKind.OPERATOR or conv.op_type != "Conv" or conv.domain \
                or len(graph.consumers(conv.outputs[0])) != 1 or conv.outputs[0] in graph.outputs:
            continue
        weights = graph.constant(conv.inputs[1])
        bias = graph.constant(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else None
        params = [graph.constant(t) for t in norm.inputs[1:]]
        has_bias = len(conv.inputs) > 2 and bool(conv.inputs[2])
        if weights is None or weights.dtype.kind != "f" or (has_bias and bias is None) \
                or any(p is None for p in params):
            continue
        channels = weights.shape[0]
        if any(np.asarray(p).shape != (channels,) for p in params):
            continue
        scale, shift, mean, var = (np.asarray(p, np.float64) for p in params)
        factor = scale / np.sqrt(var + float(norm.attrs.get("epsilon", 1e-5)))
        folded_w = (weights.astype(np.float64) * factor.reshape(-1, *[1] * (weights.ndim - 1)))
        folded_b = ((bias.astype(np.float64) if bias is not None else 0.0) - mean) * factor + shift
        w_name, b_name = graph.unique_name(f"{conv.name}_bn_w"), graph.unique_name(f"{conv.name}_bn_b")
        folded_w, folded_b = folded_w.astype(weights.dtype), folded_b.astype(weights.dtype)
        nodes = [constant_node(w_name, folded_w), constant_node(b_name, folded_b),
                 conv.replace(inputs=(conv.inputs[0], w_name, b_name), outputs=(norm.outputs[0],))]
        graph = graph.edit(remove=[norm.name], substitute={conv.name: nodes},
                           tensors=[constant_info(w_name, folded_w), constant_info(b_name, folded_b)])
        return fold_batchnorm(graph)          # the graph changed: look again from the start
    return graph


def _quant_constants(graph: Graph, node: Node):
    scale = graph.constant(node.inputs[1])
    zero_point = graph.constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    return scale, zero_point


def cancel_quant_pairs(graph: Graph) -> Graph:
    """Replace ``QuantizeLinear(DequantizeLinear(q))`` by ``q`` when both use the same constant
    scale, zero point, axis and integer type: then the round trip is exactly the identity.

    (``DequantizeLinear(QuantizeLinear(x))`` rounds, so it is never removed.)
    """
    mapping: dict[str, str] = {}
    removed: list[Node] = []
    for node in graph.topological_order():
        if node.kind is not NodeKind.OPERATOR or node.domain or node.op_type != "QuantizeLinear":
            continue
        dq = graph.producer(node.inputs[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.domain:
            continue
        q_scale, q_zp = _quant_constants(graph, node)
        d_scale, d_zp = _quant_constants(graph, dq)
        if q_scale is None or d_scale is None or q_scale.shape != d_scale.shape:
            continue
        if not np.array_equal(q_scale, d_scale) or q_scale.dtype != d_scale.dtype:
            continue
        if q_scale.size > 1 and node.attrs.get("axis", 1) != dq.attrs.get("axis", 1):
            continue
        source_dtype = graph.tensor(dq.inputs[0]).dtype
        q_zp = np.zeros(q_scale.shape, np.uint8) if q_zp is None else q_zp
        d_zp = np.zeros(d_scale.shape, source_dtype or np.uint8) if d_zp is None else d_zp
        if q_zp.dtype != d_zp.dtype or source_dtype != q_zp.dtype.name or not np.array_equal(q_zp, d_zp):
            continue
        mapping[node.outputs[0]] = dq.inputs[0]
        removed.append(node)
    for node in removed:
        result = bypass(graph, graph.node(node.name), mapping[node.outputs[0]])
        if result is not None:
            graph = result
    return graph


def fold_layouts(graph: Graph) -> Graph:
    """Fold layout changes into the operators that use them.

    * ``Gemm(transB=1)`` with a constant B: B is stored transposed and ``transB`` dropped,
      so every weight is ``(K, N)``.
    * ``Transpose`` of a constant feeding ``MatMul``/``Gemm``: folded into the weight.
    * ``Flatten``/``Reshape`` to 2-D feeding a ``Gemm``'s A: the Gemm reads the unflattened
      tensor, with the layout note ``flatten_a=axis`` (rows = product of the dims before ``axis``).
    """
    substitute: dict[str, Node | list[Node]] = {}
    add: list[Node] = []
    infos: list[TensorInfo] = []
    for node in graph.operators():
        if node.domain or node.op_type not in ("Gemm", "MatMul"):
            continue
        new = node
        weight = graph.constant(node.inputs[1])
        transpose = graph.producer(node.inputs[1])
        if transpose is not None and transpose.op_type == "Transpose" and not transpose.domain \
                and graph.constant(transpose.inputs[0]) is not None:
            weight = np.transpose(graph.constant(transpose.inputs[0]), transpose.attrs.get("perm"))
        if node.op_type == "Gemm" and node.attrs.get("transB", 0) and weight is not None and weight.ndim == 2:
            weight = weight.T
            new = new.with_attrs(transB=None)
        if new is not node or weight is not graph.constant(node.inputs[1]):
            name = graph.unique_name(f"{node.inputs[1]}_kn")
            add.append(constant_node(name, weight))
            infos.append(constant_info(name, weight))
            new = new.replace(inputs=(new.inputs[0], name, *new.inputs[2:]))
        if node.op_type == "Gemm" and new.attrs.get("flatten_a") is None and not new.attrs.get("transA", 0):
            axis = _flatten_axis(graph, graph.producer(new.inputs[0]))
            if axis is not None:
                source = graph.producer(new.inputs[0]).inputs[0]
                new = new.replace(inputs=(source, *new.inputs[1:])).with_attrs(flatten_a=axis)
        if new is not node:
            substitute[node.name] = new
    if not substitute:
        return graph
    return graph.edit(substitute=substitute, add=add, tensors=infos)


def _flatten_axis(graph: Graph, producer: Node | None) -> int | None:
    """The axis at which ``producer`` flattens its input to 2-D, if it is such a Flatten/Reshape."""
    if producer is None or producer.domain or producer.kind is not NodeKind.OPERATOR:
        return None
    before = _static_shape(graph, producer.inputs[0]) if producer.inputs else None
    if producer.op_type == "Flatten":
        rank = len(graph.tensor(producer.inputs[0]).shape or ())
        return producer.attrs.get("axis", 1) % (rank + 1) if rank else None
    if producer.op_type != "Reshape" or before is None:
        return None
    after = _static_shape(graph, producer.outputs[0])
    if after is None or len(after) != 2:
        return None
    for axis in range(len(before) + 1):
        if int(np.prod(before[:axis])) == after[0] and int(np.prod(before[axis:])) == after[1]:
            return axis
    return None


# ---------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PassRecord:
    """What one pass changed: node names removed, added and replaced."""

    name: str
    nodes_before: int
    nodes_after: int
    removed: tuple[str, ...]
    added: tuple[str, ...]
    replaced: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.removed or self.added or self.replaced)

    def __str__(self) -> str:
        if not self.changed:
            return f"{self.name}: no change"
        parts = [f"-{len(self.removed)}" if self.removed else "", f"+{len(self.added)}" if self.added else "",
                 f"~{len(self.replaced)}" if self.replaced else ""]
        detail = "; ".join(f"{label} {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
                           for label, names in (("removed", self.removed), ("added", self.added),
                                                ("replaced", self.replaced)) if names)
        return (f"{self.name}: {self.nodes_before} -> {self.nodes_after} nodes "
                f"({' '.join(p for p in parts if p)}): {detail}")


def diff(name: str, before: Graph, after: Graph) -> PassRecord:
    old = {n.name: n for n in before.nodes}
    new = {n.name: n for n in after.nodes}
    return PassRecord(
        name, len(old), len(new),
        tuple(n for n in old if n not in new), tuple(n for n in new if n not in old),
        tuple(n for n in new if n in old and new[n] is not old[n]))


DEFAULT_PASSES: tuple[Pass, ...] = (fold_constants, remove_identities, cancel_quant_pairs, fold_batchnorm,
                                    fold_layouts, remove_dead)


def run_passes(graph: Graph, passes: Sequence[Pass] = DEFAULT_PASSES, *, check: bool = True,
               until_fixed: bool = False, max_rounds: int = 8) -> tuple[Graph, list[PassRecord]]:
    """Apply ``passes`` in order and record what each changed.

    Parameters
    ----------
    check : bool
        Validate the input and every pass's result (:func:`~braze.sw.validate.validate`).
    until_fixed : bool
        Repeat the whole list until a round changes nothing (at most ``max_rounds``).

    Returns
    -------
    (Graph, list of PassRecord)
    """
    if check:
        validate(graph)
    records: list[PassRecord] = []
    for _ in range(max_rounds if until_fixed else 1):
        round_changed = False
        for pass_ in passes:
            result = pass_(graph)
            if check:
                validate(result)
            record = diff(getattr(pass_, "__name__", repr(pass_)), graph, result)
            records.append(record)
            round_changed |= record.changed
            graph = result
        if not round_changed:
            break
    return graph, records


def simplify(graph: Graph, *, check: bool = True) -> Graph:
    """The default passes until nothing changes."""
    return run_passes(graph, DEFAULT_PASSES, check=check, until_fixed=True)[0]


__all__ = ["Pass", "PassRecord", "DEFAULT_PASSES", "run_passes", "simplify", "diff", "bypass", "is_noop",
           "remove_dead", "remove_identities", "fold_constants", "cancel_quant_pairs", "fold_batchnorm",
           "fold_layouts",
           "KEEP_UNFOLDED"]
