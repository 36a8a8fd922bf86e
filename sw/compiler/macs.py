"""Multiply-accumulates of a graph's matrix operators, from static shapes.

:func:`count_macs` counts every matrix operator (``Conv``, ``ConvTranspose``, ``MatMul``, ``Gemm``,
their integer and QLinear forms and Braze's quantized ``QConv``/``QMatMul``/``QActMatMul``), float
or quantized, so a report can say what fraction of a model's MACs its kernels run.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from braze.isa.errors import BrazeError

from .ir import Graph, Node

__all__ = ["node_macs", "count_macs"]

#: Convolution -> index of its weight input (``(out, in/group, k...)``).
_CONV_WEIGHT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "braze.QConv": 1}


def node_macs(node: Node, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one operator node given every tensor's shape (0 for non-matrix ops).

    Convolutions: output elements times the weight's ``in/group x kernel`` size (ConvTranspose:
    input elements times ``out/group x kernel``); matrix products (any operator whose name ends in
    ``MatMul``, and ``Gemm``): output elements times the inner dimension.  A node whose shapes are
    unknown raises :class:`BrazeError`.
    """
    op = node.qualified_op

    def shape(index: int) -> tuple[int, ...]:
        tensor = node.inputs[index] if index >= 0 else node.outputs[0]
        if tensor not in shapes:
            raise BrazeError(f"node {node.name!r} ({op}): no static shape for {tensor!r}")
        return tuple(int(d) for d in shapes[tensor])

    if op in _CONV_WEIGHT:
        return int(np.prod(shape(-1), dtype=np.int64) * np.prod(shape(_CONV_WEIGHT[op])[1:], dtype=np.int64))
    if op == "ConvTranspose":
        return int(np.prod(shape(0), dtype=np.int64) * np.prod(shape(1)[1:], dtype=np.int64))
    if op == "Gemm":
        b = shape(1)
        return int(np.prod(shape(-1), dtype=np.int64)) * (b[1] if node.attrs.get("transB", 0) else b[0])
    if op.endswith("MatMul"):
        # Every matrix product (MatMul, MatMulInteger, QLinearMatMul, Braze's QMatMul and QActMatMul)
        # has A first and the inner dimension last in A -- also when A is stored heads-interleaved
        # (QActMatMul's ``a_heads``: [..., rows, H, K]); QMatMul's ``flatten_a`` flattens A from an axis.
        a = shape(0)
        flatten = node.attrs.get("flatten_a")
        inner = int(np.prod(a[flatten:], dtype=np.int64)) if flatten is not None else a[-1]
        return int(np.prod(shape(-1), dtype=np.int64)) * inner
    return 0


def count_macs(graph: Graph, shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, int]:
    """MACs of every matrix operator of ``graph`` (node name -> MACs), from ``shapes`` or the graph's
    own static tensor shapes."""
    if shapes is None:
        shapes = {name: info.shape for name, info in graph.tensors.items() if info.static}
    counts = {}
    for node in graph.operators():
        macs = node_macs(node, shapes)
        if macs:
            counts[node.name] = macs
    return counts
