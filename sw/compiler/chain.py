"""Layer fusion: ``braze.QConvChain``, stride-1 quantized convolutions one after another in one node.

A chain node stands for ``QConv -> QConv [-> ...]`` (each with its epilogue, the last maybe with its
max pooling fused) whose intermediate activations never leave the chip: it lowers to one
:func:`~braze.sw.compiler.kernels.conv2d_chain` kernel, in which each layer's ``EPILOGUE`` writes
straight into the next layer's input rows in the scratchpad.  The fusion engine offers it
(:func:`~braze.sw.compiler.fusion.fuse`, the ``conv_chain`` opportunity) and prices it against the
separate kernels with the cost model in use.

The node
--------
``braze.QConvChain(x, w1, b1, w2, b2, ...)``: per layer an int8 OIHW weight constant and an
optional int32 bias (``""`` when absent), so ``1 + 2 * layers`` inputs.  Attribute ``layers``: per
layer, the attributes of the ``braze.QConv`` node it was made of, as a tuple of ``(name, value)``
pairs (lists and arrays as tuples, so the node stays immutable and its fingerprint exact).  Its
output is the last layer's.  The value is by definition that of the layers evaluated one after the
other (:func:`layer_nodes`), so the chain is exact.

With attribute ``fc`` (the attributes of a ``braze.QMatMul`` with ``flatten_a=1``, as pairs) and two
more inputs (its weights and optional bias), the chain ends in that fully connected layer on the
flattened output of the last convolution (:func:`fc_node`): a small CNN in one node and one kernel.

Rules (:func:`check_chain`, run by :func:`~braze.sw.compiler.validate.validate`): every layer has
stride 1, no dilation, one group, symmetric padding, int8 output with requantization, an activation
among none/relu/clip and no residual; only the last layer pools; a layer's input zero point is the
one the layer before writes; the input channels of a layer are the output channels of the one before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .frontend import BRAZE_DOMAIN, conv_pads
from .ir import Graph, Node, NodeKind

__all__ = ["QCONV_CHAIN", "chain_layers", "layer_nodes", "fc_node", "chain_node", "with_pool", "with_fc",
           "check_chain", "chain_output_shape", "can_be_inner", "can_be_last", "can_close"]

#: The chain operator's qualified name.
QCONV_CHAIN = f"{BRAZE_DOMAIN}.QConvChain"
QCONV = f"{BRAZE_DOMAIN}.QConv"
QMATMUL = f"{BRAZE_DOMAIN}.QMatMul"

#: Attributes of the fused node that are not a layer's own (bookkeeping of fusion and tiling).
_NOT_LAYER = ("fused_ops", "fused_op_types", "tiling", "kernel")


def _frozen(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return tuple(value.reshape(-1).tolist()) if value.ndim else value.item()
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _layer_attrs(node: Node) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((key, _frozen(value)) for key, value in node.attrs.items() if key not in _NOT_LAYER))


def chain_layers(node: Node) -> list[dict[str, Any]]:
    """The attributes of each layer of a chain node (or of a ``QConv``: one layer)."""
    if node.qualified_op == QCONV:
        return [dict(_layer_attrs(node))]
    return [dict(layer) for layer in node.attrs.get("layers", ())]


def layer_nodes(node: Node) -> list[Node]:
    """The ``braze.QConv`` nodes a chain node stands for (or the ``QConv`` itself), in order; a
    layer's input is named ``<chain>/layer<i>`` after the first."""
    if node.qualified_op == QCONV:
        return [node]
    layers = chain_layers(node)
    nodes, source = [], node.inputs[0]
    for index, attrs in enumerate(layers):
        last = index == len(layers) - 1
        target = f"{node.name}/layer{index + 2}"
        if last:
            target = f"{node.name}/fc" if node.attrs.get("fc") is not None else node.outputs[0]
        weights, bias = node.inputs[1 + 2 * index: 3 + 2 * index]
        nodes.append(Node(f"{node.name}[{index + 1}]", NodeKind.OPERATOR, "QConv", (source, weights, bias),
                          (target,), attrs, domain=BRAZE_DOMAIN))
        source = target
    return nodes


def fc_node(node: Node) -> Node | None:
    """The ``braze.QMatMul`` closing a chain node (reading its last convolution's output, named
    ``<chain>/fc``), or None."""
    if node.qualified_op != QCONV_CHAIN or node.attrs.get("fc") is None:
        return None
    convs = len(node.attrs["layers"])
    source = f"{node.name}/fc"
    return Node(f"{node.name}[fc]", NodeKind.OPERATOR, "QMatMul", (source, *node.inputs[1 + 2 * convs:]),
                node.outputs, dict(node.attrs["fc"]), domain=BRAZE_DOMAIN)


def _weights_and_bias(node: Node) -> tuple[str, str]:
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    return node.inputs[1], bias


def chain_node(graph: Graph, first: Node, second: Node) -> Node:
    """One chain node for ``first`` (a ``QConv`` or chain) followed by ``second`` (a ``QConv``), named
    as ``first`` and writing ``second``'s output; ``fused_ops`` lists every operator it covers."""
    layers, inputs = [], [first.inputs[0]]
    for node in (first, second):
        if node.qualified_op == QCONV_CHAIN:
            layers += list(node.attrs["layers"])
            inputs += node.inputs[1:]
        else:
            layers.append(_layer_attrs(node))
            inputs += _weights_and_bias(node)
    ops = tuple(first.attrs.get("fused_ops", (first.name,))) \
        + tuple(second.attrs.get("fused_ops", (second.name,)))
    op_types = tuple(first.attrs.get("fused_op_types", (first.qualified_op,))) \
        + tuple(second.attrs.get("fused_op_types", (second.qualified_op,)))
    return Node(first.name, NodeKind.OPERATOR, "QConvChain", tuple(inputs), (second.outputs[0],),
                {"layers": tuple(layers), "fused_ops": ops, "fused_op_types": op_types}, domain=BRAZE_DOMAIN)


def with_pool(node: Node, pool: int, ops: tuple[str, ...], op_types: tuple[str, ...], output: str) -> Node:
    """The chain ``node`` with a ``pool`` x ``pool`` max pooling fused into its last layer."""
    layers = list(node.attrs["layers"])
    layers[-1] = tuple(sorted({**dict(layers[-1]), "pool": int(pool)}.items()))
    return node.replace(outputs=(output,)).with_attrs(layers=tuple(layers), fused_ops=ops,
                                                      fused_op_types=op_types)


def with_fc(node: Node, matmul: Node, ops: tuple[str, ...], op_types: tuple[str, ...]) -> Node:
    """The chain ``node`` closed by ``matmul`` (a ``QMatMul`` of its flattened output)."""
    return node.replace(inputs=(*node.inputs, *_weights_and_bias(matmul)), outputs=matmul.outputs).with_attrs(
        fc=_layer_attrs(matmul), fused_ops=ops, fused_op_types=op_types)


def can_close(graph: Graph, node: Node, reader: Node) -> bool:
    """``reader`` can close chain ``node`` as its FC layer: a ``QMatMul`` on the accelerator of the
    chain's output flattened from axis 1, int8 out with requantization, no residual, an activation
    among none/relu/clip, not skipping zero blocks."""
    return node.qualified_op == QCONV_CHAIN and node.attrs.get("fc") is None \
        and reader.qualified_op == QMATMUL and reader.device == "accel" \
        and reader.inputs[0] == node.outputs[0] and reader.attrs.get("flatten_a") == 1 \
        and not (len(reader.inputs) > 3 and reader.inputs[3]) \
        and reader.attrs.get("skip_zero_blocks") is None and graph.constant(reader.inputs[1]) is not None \
        and _fc_problem(reader.attrs) is None


def _epilogue_problem(attrs: Mapping[str, Any], what: str) -> str | None:
    """Why the epilogue of a chain's layer (``what``) is not one the chain kernel does (None: it is)."""
    if attrs.get("out", "spad") != "spad" or attrs.get("mult") is None:
        return "not an int8 output with requantization"
    if attrs.get("act", "none") not in ("none", "relu", "clip"):
        return f"activation {attrs.get('act')!r} ({what} has none, relu or clip)"
    return None


def _fc_problem(attrs: Mapping[str, Any]) -> str | None:
    if attrs.get("flatten_a") != 1:
        return f"flatten_a={attrs.get('flatten_a')!r} (a chain's FC layer flattens from axis 1)"
    return _epilogue_problem(attrs, "a chain's FC layer")


def _plain_conv(attrs: Mapping[str, Any]) -> str | None:
    """Why a layer with these attributes cannot be in a chain (None: it can)."""
    if tuple(attrs.get("strides", (1, 1))) != (1, 1):
        return f"strides {tuple(attrs.get('strides'))} (a chain's layers have stride 1)"
    if tuple(attrs.get("dilations", (1, 1))) != (1, 1):
        return f"dilations {tuple(attrs.get('dilations'))} (a chain's layers are not dilated)"
    if int(attrs.get("group", 1)) != 1:
        return f"group {attrs.get('group')} (a chain's layers are dense)"
    return _epilogue_problem(attrs, "a chain's convolution")


def _pads(attrs: Mapping[str, Any], kernel: tuple[int, int], spatial: tuple[int, int]) -> tuple[int, ...]:
    return conv_pads(spatial, kernel, (1, 1), (1, 1), attrs)


def can_be_inner(graph: Graph, node: Node) -> bool:
    """``node`` (a ``QConv`` or chain on the accelerator) can be followed by another layer in a chain:
    a ``QConv`` that :func:`can_be_last` and does not pool, or a chain whose last layer does not pool."""
    if node.qualified_op == QCONV_CHAIN:
        return node.device == "accel" and int(chain_layers(node)[-1].get("pool", 1)) == 1 \
            and node.attrs.get("fc") is None
    return can_be_last(graph, node) and int(node.attrs.get("pool", 1)) == 1


def can_be_last(graph: Graph, node: Node) -> bool:
    """``node`` is a ``QConv`` on the accelerator that can be a chain's layer (it may pool): stride 1,
    no dilation or groups, int8 output, no residual, symmetric padding and, where it pads, a zero
    input zero point (the kernel pads with raw zeros)."""
    if node.kind is not NodeKind.OPERATOR or node.qualified_op != QCONV or node.device != "accel" \
            or (len(node.inputs) > 3 and node.inputs[3]) or _plain_conv(node.attrs) is not None:
        return False
    x, w = graph.tensor(node.inputs[0]), graph.constant(node.inputs[1])
    if w is None or np.asarray(w).ndim != 4 or x.shape is None or len(x.shape) != 4 \
            or not all(isinstance(d, int) for d in x.shape[2:]):
        return False
    pads = _pads(node.attrs, tuple(np.asarray(w).shape[2:]), tuple(x.shape[2:]))
    return len(set(pads)) == 1 and (pads[0] == 0 or int(node.attrs.get("x_zero_point", 0)) == 0)


def chain_output_shape(x_shape: tuple[int, ...], weights: list[tuple[int, ...]],
                       layers: list[Mapping[str, Any]]) -> tuple[int, ...]:
    """NCHW shape of a chain's output for an input of ``x_shape``."""
    n, _, h, w = x_shape
    channels = x_shape[1]
    for shape, attrs in zip(weights, layers, strict=True):
        channels, _, kh, kw = shape
        top, left, bottom, right = _pads(attrs, (kh, kw), (h, w))
        h, w = h + top + bottom - kh + 1, w + left + right - kw + 1
    pool = int(layers[-1].get("pool", 1))
    return (n, channels, h // pool, w // pool)


def check_chain(graph: Graph, node: Node, fail: Callable[[str], None]) -> None:
    """The validity rules of a chain node (see the module documentation); ``fail`` raises."""
    layers = node.attrs.get("layers")
    if not isinstance(layers, tuple) or not layers or not all(isinstance(layer, tuple) for layer in layers):
        fail("QConvChain needs a non-empty tuple of layers (each a tuple of (attribute, value) pairs)")
    fc = node.attrs.get("fc")
    arity = 1 + 2 * len(layers) + (2 if fc is not None else 0)
    if len(node.inputs) != arity:
        closing = " and an FC layer" if fc is not None else ""
        fail(f"QConvChain of {len(layers)} layers{closing} takes {arity} inputs (x, then weights and bias "
             f"per layer), got {len(node.inputs)}")
    x = graph.tensor(node.inputs[0])
    if x.dtype not in (None, "int8") or x.quant is None:
        fail(f"input {x.name!r} must be a quantized int8 tensor, got {x}")
    attrs = [dict(layer) for layer in layers]
    channels = x.shape[1] if x.shape is not None and len(x.shape) == 4 else None
    zero_point = x.quant.zero_point[0]
    shapes = []
    for index, layer in enumerate(attrs, start=1):
        weights, bias = node.inputs[2 * index - 1], node.inputs[2 * index]
        w = graph.constant(weights)
        if w is None or w.dtype != np.int8 or w.ndim != 4:
            fail(f"layer {index}: weight {weights!r} must be an int8 OIHW constant")
        shapes.append(w.shape)
        if channels is not None and isinstance(channels, int) and w.shape[1] != channels:
            fail(f"layer {index}: weight {weights!r} expects {w.shape[1]} input channels, the layer before "
                 f"gives {channels}")
        channels = w.shape[0]
        if bias:
            info = graph.tensor(bias)
            if info.dtype != "int32" or info.shape != (w.shape[0],):
                fail(f"layer {index}: bias {bias!r} must be int32 of shape ({w.shape[0]},), got {info}")
        problem = _plain_conv(layer)
        if problem:
            fail(f"layer {index}: {problem}")
        if int(layer.get("x_zero_point", 0)) != zero_point:
            fail(f"layer {index}: x_zero_point {layer.get('x_zero_point', 0)} differs from its input's zero "
                 f"point {zero_point} (the layer before's out_zp)")
        if int(layer.get("pool", 1)) != 1 and index != len(attrs):
            fail(f"layer {index}: only the last layer of a chain pools")
        mult, shift = np.asarray(layer["mult"]), np.asarray(layer.get("shift"))
        if mult.shape not in ((w.shape[0],), ()) or shift.shape not in ((w.shape[0],), ()):
            fail(f"layer {index}: mult {mult.shape} and shift {shift.shape} must be per output channel "
                 f"({w.shape[0]}) or scalar")
        zero_point = int(layer.get("out_zp", 0))
    if fc is not None:
        zero_point = _check_fc(graph, node, fail, x, shapes, attrs, zero_point)
    y = graph.tensor(node.outputs[0])
    if y.dtype not in (None, "int8") or y.quant is None or y.quant.zero_point[0] != zero_point:
        fail(f"output {y.name!r} must be int8 with zero point {zero_point} (the last layer's out_zp), "
             f"got {y}")
    if x.static and y.shape is not None:
        expected = chain_output_shape(tuple(x.shape), shapes[:len(attrs)], attrs)
        if fc is not None:
            expected = (expected[0], shapes[-1][1])
        if len(y.shape) != len(expected) or any(isinstance(d, int) and d != e
                                                for d, e in zip(y.shape, expected, strict=True)):
            fail(f"output {y.name!r} is declared {y.shape}, but the layers give {expected}")


def _check_fc(graph: Graph, node: Node, fail: Callable[[str], None], x, shapes: list, attrs: list,
              zero_point: int) -> int:
    """The rules of a chain's closing FC layer (appends its weight shape); returns its output zero point."""
    fc = dict(node.attrs["fc"])
    weights, bias = node.inputs[-2], node.inputs[-1]
    w = graph.constant(weights)
    problem = _fc_problem(fc)
    if problem:
        fail(f"FC layer: {problem}")
    if w is None or w.dtype != np.int8 or w.ndim != 2:
        fail(f"FC layer: weight {weights!r} must be an int8 (features, outputs) constant")
    if int(fc.get("x_zero_point", 0)) != zero_point:
        fail(f"FC layer: x_zero_point {fc.get('x_zero_point', 0)} differs from its input's zero point "
             f"{zero_point} (the last convolution's out_zp)")
    if x.static:
        _, c, h, wd = chain_output_shape(tuple(x.shape), shapes, attrs)
        if w.shape[0] != c * h * wd:
            fail(f"FC layer: weight {weights!r} has {w.shape[0]} rows, the last convolution gives "
                 f"{c}x{h}x{wd} = {c * h * wd} features")
    if bias and (graph.tensor(bias).dtype != "int32" or graph.tensor(bias).shape != (w.shape[1],)):
        fail(f"FC layer: bias {bias!r} must be int32 of shape ({w.shape[1]},), got {graph.tensor(bias)}")
    shapes.append(w.shape)
    return int(fc.get("out_zp", 0))
