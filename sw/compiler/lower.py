"""Lowering: a fused, quantized graph to a compiled model that runs on any Braze device.

What runs where
---------------
Every operator node becomes one *step* of a straight-line plan:

* **Kernel steps** (the accelerator): ``braze.QMatMul`` -> :func:`~braze.sw.compiler.kernels.gemm`,
  ``braze.QConv`` -> :func:`~braze.sw.compiler.kernels.conv2d` (NHWC, implicit im2col),
  int8 ``MaxPool`` -> :func:`~braze.sw.compiler.kernels.maxpool2d`, int8 ``Relu``/``Clip`` ->
  :func:`~braze.sw.compiler.kernels.relu` / :func:`~braze.sw.compiler.kernels.clip`, ``braze.QAdd`` ->
  :func:`~braze.sw.compiler.kernels.add`, ``braze.QActMatMul`` (two activations, attention) ->
  :func:`~braze.sw.compiler.kernels.batched_gemm` (or ``gemm`` for a B shared by the batch) with
  both operands on the device, zero points accumulated on the array.  The epilogue (bias,
  requantize, residual, activation) of a node is fused into its kernel; the input zero point is
  folded into the bias (``bias - x_zp * colsum(w)``), the residual's zero
  point into the requantize stage's (``out_zp - residual_zp``); the residual
  operand has the output's device layout.
* **Layer fusion**: ``braze.QConvChain`` (:mod:`~braze.sw.compiler.chain`) -> one
  :func:`~braze.sw.compiler.kernels.conv2d_chain` kernel for all its layers, each layer's epilogue
  folded as a ``QConv``'s; the activations between the layers stay in the scratchpad.
* **Views**: ``Reshape``/``Flatten``/``Squeeze``/``Unsqueeze``/``Identity`` of a
  tensor that lives on the device in a row-major layout cost nothing: the
  output names the same bytes.
* **CPU steps**: everything else (QuantizeLinear/DequantizeLinear, float
  ops, Softmax, Sigmoid, CPU-fallback ops, and accelerator ops whose
  attributes no kernel implements -- unequal strides, dilations, average
  pooling of int8 with ONNX's truncating semantics...) runs on the host with
  :func:`braze.sw.compiler.frontend.evaluate_node`, so results are those of
  :func:`~braze.sw.compiler.frontend.evaluate` exactly.  :attr:`CompiledModel.placement`
  says why each CPU node is there.
* **Transfers** between host and device memory are explicit steps (and
  ``TRANSFER`` nodes in :attr:`CompiledModel.graph`); the layout change
  NCHW <-> NHWC of 4-D tensors happens on the host as part of the transfer.
  Convolutions keep NHWC between kernels, and a ``QMatMul`` that flattens an
  NHWC tensor gets its weight rows permuted instead of the tensor transposed.
* **Padding**: a convolution whose padding is asymmetric, or whose input
  zero point is nonzero (the kernel pads with raw zeros, the ONNX semantics
  pad with the zero point), reads an input padded on the host with the zero
  point (a ``Pad`` node), and runs unpadded.

External memory
---------------
Weights and parameters (written once, :meth:`CompiledModel.load`), one
counter snapshot per kernel, the programs, and an arena for activations in
which buffers whose lifetimes ended are reused (first fit over step
intervals).  Kernels come from the :class:`~braze.sw.compiler.cache.KernelCache` at a
canonical placement and are relocated (:func:`relocate`) to the addresses
chosen here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from braze.isa import INSN_BYTES, SNAPSHOT_BYTES, Config, Instruction, Opcode
from braze.isa.encoding import FORMAT_BY_OPCODE
from braze.isa.errors import BrazeError

from . import kernels as kernel_lib
from .cache import KernelCache, default_cache, encoded_words
from .chain import QCONV_CHAIN, fc_node, layer_nodes
from .frontend import BRAZE_DOMAIN, conv_pads
from .ir import Graph, Node, NodeKind, TensorInfo
from .kernels import Kernel, KernelError
from .kernels.guard import if_guard as guard_kernel
from .kernels.loops import MIN_SHRINK, loops_if_no_slower
from .validate import validate

__all__ = ["LoweringError", "KernelRecipe", "NodeKernel", "plan_node", "relocate", "relocated_words", "lower",
           "PlacedKernels",
           "CompiledModel", "KernelStep", "CpuStep", "PadStep", "TransferStep", "Buffer", "DeviceTensor",
           "IfGuard", "GuardPlan"]

ALIGN = kernel_lib.OPERAND_ALIGN
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


class LoweringError(BrazeError):
    """The graph cannot be lowered (unknown shapes, external memory too small, ...); names the node."""


# ---------------------------------------------------------------------------------------------------
# From a node to a kernel
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KernelRecipe:
    """A kernel-library call without placement: ``kernels.<kind>(config, *args, **options)``.

    Its :attr:`signature` (fused-operator kind, shapes, dtypes and options) is the cache key.
    """

    kind: str
    args: tuple
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def signature(self) -> tuple:
        return (self.kind, self.args, self.options)

    def build(self, config: Config) -> Kernel:
        return getattr(kernel_lib, self.kind)(config, *self.args, **dict(self.options))

    def kernel(self, config: Config, cache: KernelCache | None) -> Kernel:
        if cache is None:
            return self.build(config)
        return cache.get_or_build(self.signature, config, lambda: self.build(config))

    def looped_kernel(self, config: Config, cache: KernelCache | None) -> Kernel:
        """:meth:`kernel` with its repeated runs as counted loops where the timing model predicts it
        no slower (the timing model charges each taken BRANCH's fetch restart as the RTL pays it) and
        that removes at least :data:`~braze.sw.compiler.kernels.loops.MIN_SHRINK` of its instructions
        (:func:`~braze.sw.compiler.kernels.loops.loops_if_no_slower`; the kernel itself otherwise),
        cached under its own key: only the kernels the lowering places are rolled, never the
        candidates fusion and tiling price."""
        def rolled() -> Kernel:
            return loops_if_no_slower(self.kernel(config, cache), min_shrink=MIN_SHRINK)

        if cache is None:
            return rolled()
        return cache.get_or_build((*self.signature, ("loops", MIN_SHRINK)), config, rolled)


@dataclasses.dataclass
class NodeKernel:
    """How one accelerator node maps onto a kernel.

    ``inputs`` maps kernel operands to (graph tensor, device layout the kernel
    needs; ``"any"`` for element-wise kernels); ``constants`` holds the
    weights and the bias / requantize rows, which :meth:`param_values` packs
    into the kernel's constant operands; ``host_pad`` is
    ``(top, left, bottom, right, value)`` when the input must be padded on
    the host first.
    """

    node: Node
    recipe: KernelRecipe
    inputs: dict[str, tuple[str, str]]
    output: tuple[str, str]
    constants: dict[str, Any]
    host_pad: tuple[int, int, int, int, int] | None = None

    def param_values(self, kernel: Kernel) -> dict[str, np.ndarray]:
        values = {}
        if "B" in self.constants:
            values["B"] = self.constants["B"]
        if "zp" in kernel.operands:          # zero-point constant tiles of an activation product
            values["zp"] = kernel_lib.zero_point_rows(kernel)
        if "params" in kernel.operands:
            values["params"] = kernel_lib.pack_params(
                kernel, **{k: self.constants[k] for k in kernel.param_rows})
        if "table" in kernel.operands:
            values["table"] = kernel_lib.pack_table(self.constants["table"])
        layers = self.constants.get("chain_layers", ())
        for index, (weights, rows) in enumerate(layers, start=1):
            # A conv2d_chain kernel (braze.QConvChain): B<i> and params<i> per layer.
            values[f"B{index}"] = kernel_lib.conv2d_weights(kernel.config, weights, kernel, f"B{index}")
            if rows:
                values[f"params{index}"] = np.stack([np.asarray(row, np.int64) for row in rows.values()])
        if self.constants.get("chain_fc") is not None:     # its closing FC layer
            weights, rows = self.constants["chain_fc"]
            values[f"B{len(layers) + 1}"] = kernel_lib.chain_fc_weights(kernel.config, weights, kernel)
            if rows:
                values[f"params{len(layers) + 1}"] = np.stack([np.asarray(row, np.int64)
                                                               for row in rows.values()])
        return values


def _static(graph: Graph, tensor: str, node: Node) -> tuple[int, ...]:
    info = graph.tensor(tensor)
    if not info.static:
        raise LoweringError(f"node {node.name!r}: tensor {tensor!r} has no static shape ({info}); "
                            "give the session concrete input shapes")
    return tuple(int(d) for d in info.shape)


def _wrap32(values: np.ndarray) -> np.ndarray:
    return ((np.asarray(values, np.int64) + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int64)


def _epilogue(node: Node, n: int, bias: np.ndarray | None, colsum: np.ndarray
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Kernel options and constant rows of a Braze op's epilogue (input zero point folded into the bias)."""
    attrs = node.attrs
    x_zp = int(attrs.get("x_zero_point", 0))
    options: dict[str, Any] = {}
    constants: dict[str, Any] = {}
    if bias is not None or x_zp:
        total = np.zeros(n, np.int64) if bias is None else np.asarray(bias, np.int64).reshape(-1)
        constants["bias"] = _wrap32(total - x_zp * colsum)
        options["bias"] = True
    out_zp = int(attrs.get("out_zp", 0))
    if _residual(node):
        # The EPILOGUE adds the raw int8 residual; its zero point joins the requantize stage's (exact:
        # both are int32 additions before any saturation).
        options["residual"] = True
        out_zp -= int(attrs.get("residual_zp", 0))
    if attrs.get("mult") is not None:
        options["requant"] = True
        constants["mult"] = np.broadcast_to(np.asarray(attrs["mult"], np.int64), (n,)).copy()
        constants["shift"] = np.broadcast_to(np.asarray(attrs["shift"], np.int64), (n,)).copy()
        if out_zp:
            options["out_zp"] = out_zp
    act = attrs.get("act", "none")
    if act != "none":
        options["act"] = act
    if act == "clip":
        options["clip"] = (int(attrs.get("clip_lo", 0)), int(attrs.get("clip_hi", 0)))
    if act == "table":
        constants["table"] = np.asarray(attrs["table"], np.int64)    # a kernel operand, not an option
    options["out"] = "int32" if attrs.get("out", "spad") == "acc" else "int8"
    if attrs.get("tiling") is not None:
        options["tiling"] = attrs["tiling"]          # forced by the fusion engine's choice
    return options, constants


def _residual(node: Node) -> str | None:
    """The residual input of a Braze matrix op (its fourth input), if any."""
    return node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None


def _options(options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(options.items()))


def plan_node(graph: Graph, node: Node, x_layout: str | None = None) -> NodeKernel | str:
    """The kernel of an operator node, or the reason it runs on the CPU.

    ``x_layout`` is the device layout its first input already has (``"NHWC"``,
    ``"plain"`` or None when it is on the host); it only decides whether a
    ``QMatMul`` that flattens a 4-D input permutes its weights.
    """
    if node.kind is not NodeKind.OPERATOR:
        return "not an operator"
    if node.device == "cpu":
        return "CPU fallback op"
    op = node.qualified_op
    try:
        if op == f"{BRAZE_DOMAIN}.QMatMul":
            return _plan_qmatmul(graph, node, x_layout)
        if op == f"{BRAZE_DOMAIN}.QConv":
            return _plan_qconv(graph, node)
        if op == QCONV_CHAIN:
            return _plan_qconvchain(graph, node)
        if op == "MaxPool":
            return _plan_maxpool(graph, node)
        if op in ("Relu", "Clip"):
            return _plan_clip(graph, node)
        if op == f"{BRAZE_DOMAIN}.QAdd":
            return _plan_qadd(graph, node, x_layout)
        if op == f"{BRAZE_DOMAIN}.QTable":
            return _plan_qtable(graph, node)
        if op == f"{BRAZE_DOMAIN}.QActMatMul":
            return _plan_qactmatmul(graph, node)
    except KernelError as error:
        return f"no kernel: {error}"
    return f"{op} has no accelerator kernel"


def _plan_qmatmul(graph: Graph, node: Node, x_layout: str | None) -> NodeKernel | str:
    x_name = node.inputs[0]
    shape = _static(graph, x_name, node)
    w = graph.constant(node.inputs[1])
    bias = graph.constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    flatten = node.attrs.get("flatten_a")
    if flatten is not None:
        m, k = int(np.prod(shape[:flatten], dtype=np.int64)), int(np.prod(shape[flatten:], dtype=np.int64))
    else:
        m, k = int(np.prod(shape[:-1], dtype=np.int64)), shape[-1]
    n = w.shape[1]
    weights = np.asarray(w, np.int8)
    layout = "plain"
    # flatten_a=0 of one image is flatten_a=1 (m = 1 either way): the same NHWC weight permutation.
    if len(shape) == 4 and (flatten == 1 or (flatten == 0 and shape[0] == 1)) and x_layout == "NHWC":
        # The input stays NHWC: permute the weight rows from (c, h, w) to (h, w, c) order instead.
        _, c, h, wd = shape
        weights = np.ascontiguousarray(weights.reshape(c, h, wd, n).transpose(1, 2, 0, 3).reshape(k, n))
        layout = "NHWC"
    options, constants = _epilogue(node, n, bias, weights.astype(np.int64).sum(axis=0))
    constants["B"] = weights
    recipe = KernelRecipe("gemm", (m, k, n), _options(options))
    if node.attrs.get("skip_zero_blocks") is not None and not _residual(node):
        # The fusion engine's zero-block-skipping candidate (:func:`~braze.sw.compiler.fusion.fuse`
        # ``profiles``), priced at the profiled fraction of zero blocks.
        options.pop("tiling", None)
        options["expected_zero_fraction"] = float(node.attrs["skip_zero_blocks"])
        options["chunks"] = int(node.attrs.get("skip_chunks", 1))     # the block size the profile priced
        recipe = KernelRecipe("skipping_gemm", (m, k, n), _options(options))
    inputs = {"A": (x_name, layout)}
    if _residual(node):
        inputs["residual"] = (_residual(node), "plain")
    return NodeKernel(node, recipe, inputs, (node.outputs[0], "plain"), constants)


def _plan_qactmatmul(graph: Graph, node: Node) -> NodeKernel | str:
    """A product of two activations, ``[..., M, K] @ [..., K, N]``: both operands are device tensors
    ("plain", row-major), the batch one :func:`~braze.sw.compiler.kernels.batched_gemm` (a B shared by
    the whole batch: one GEMM over all the rows of A).  Zero points run on the array too
    (``batched_gemm(zero_points=)``, with ``K * za * zb`` in the bias)."""
    za, zb = int(node.attrs.get("a_zero_point", 0)), int(node.attrs.get("b_zero_point", 0))
    a_shape, b_shape = _static(graph, node.inputs[0], node), _static(graph, node.inputs[1], node)
    # Heads-interleaved operands ([..., rows, H, cols]; fold_head_transposes): the logical shapes.
    flags = [int(bool(node.attrs.get(key))) for key in ("a_heads", "b_heads", "out_heads")]
    if flags[0]:
        a_shape = (*a_shape[:-3], a_shape[-2], a_shape[-3], a_shape[-1])
    if flags[1]:
        b_shape = (*b_shape[:-3], b_shape[-2], b_shape[-3], b_shape[-1])
    *a_batch, m, k = a_shape
    *b_batch, _, n = b_shape
    bias = np.full(n, k * za * zb, np.int64) if za and zb else None
    options, constants = _epilogue(node, n, bias, np.zeros(n, np.int64))
    inputs = {"A": (node.inputs[0], "plain"), "B": (node.inputs[1], "plain")}
    a_count, b_count = (int(np.prod(batch, dtype=np.int64)) for batch in (a_batch, b_batch))
    out_count = int(np.prod(np.broadcast_shapes(tuple(a_batch), tuple(b_batch)), dtype=np.int64))
    if za or zb:
        options.pop("tiling", None)        # gemm tilings: the tiling pass does not price batched_gemm
        options["zero_points"] = (za, zb)
    if any(flags):
        if not (a_count == b_count == out_count) or not a_batch:
            return f"heads layout with a broadcast batch (A {a_shape}, B {b_shape})"
        heads = int(np.broadcast_shapes(tuple(a_batch), tuple(b_batch))[-1])   # the head axis
        options["heads"] = tuple(heads if flag else 1 for flag in flags)
        recipe = KernelRecipe("batched_gemm", (b_count, m, k, n), _options(options))
    elif b_count == 1 and (za or zb):
        options["b_batched"] = False
        recipe = KernelRecipe("batched_gemm", (1, a_count * m, k, n), _options(options))
    elif b_count == 1:
        recipe = KernelRecipe("gemm", (a_count * m, k, n), _options(options))
    elif a_count == b_count == out_count:      # slice g of A with slice g of B (size-1 dims aside)
        recipe = KernelRecipe("batched_gemm", (b_count, m, k, n), _options(options))
    else:
        return f"broadcast of A {a_shape} over a batched B {b_shape} (no kernel reads A once per slice)"
    return NodeKernel(node, recipe, inputs, (node.outputs[0], "plain"), constants)


def _plan_qconv(graph: Graph, node: Node) -> NodeKernel | str:
    x_name = node.inputs[0]
    n, c, h, wd = _static(graph, x_name, node)
    w = np.asarray(graph.constant(node.inputs[1]), np.int8)
    bias = graph.constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    k_out, _, kh, kw = w.shape
    strides = tuple(node.attrs.get("strides", (1, 1)))
    dilations = tuple(node.attrs.get("dilations", (1, 1)))
    group = int(node.attrs.get("group", 1))
    if group != 1:
        # A grouped (or depthwise) convolution is the dense one whose weights are zero between groups:
        # exact in integers, and the array computes the zeros instead of idling (group times the MACs).
        dense = np.zeros((k_out, c, kh, kw), np.int8)
        for g in range(group):
            rows, cols = slice(g * k_out // group, (g + 1) * k_out // group), slice(g * (c // group),
                                                                                    (g + 1) * (c // group))
            dense[rows, cols] = w[rows]
        w = dense
    if dilations[0] != dilations[1]:
        return f"unequal dilations {dilations}"
    if strides[0] != strides[1]:
        return f"unequal strides {strides}"
    pads = conv_pads((h, wd), (kh, kw), strides, dilations, node.attrs)
    x_zp = int(node.attrs.get("x_zero_point", 0))
    host_pad = None
    pad = pads[0]
    if any(p != pad for p in pads) or (pad and x_zp):
        host_pad = (*pads, x_zp)
        h, wd, pad = h + pads[0] + pads[2], wd + pads[1] + pads[3], 0
    options, constants = _epilogue(node, k_out, bias, w.astype(np.int64).sum(axis=(1, 2, 3)))
    if int(node.attrs.get("pool", 1)) > 1:            # max pooling fused by the fusion engine
        options["pool"] = int(node.attrs["pool"])
    if dilations[0] > 1:
        options["dilation"] = int(dilations[0])
    if node.attrs.get("conv_layout") is not None:
        options["layout"] = node.attrs["conv_layout"]      # forced by the layout pass (compiler/layouts.py)
                                                           # or kept by specialise_tilings
    recipe = KernelRecipe("conv2d", (n, c, h, wd, k_out, kh, kw, strides[0], pad), _options(options))
    # Weights in the layout conv2d_weights gives (channels padded to a multiple of rows) need the config:
    constants["weights_oihw"] = w
    inputs = {"x": (x_name, "NHWC")}
    if _residual(node):
        inputs["residual"] = (_residual(node), "NHWC")
    return NodeKernel(node, recipe, inputs, (node.outputs[0], "NHWC"), constants, host_pad)


def _layer_epilogue(options: dict[str, Any]) -> dict[str, Any]:
    """A chain layer's epilogue (:class:`~.kernels.ConvLayer`'s and :class:`~.kernels.FCLayer`'s
    keyword arguments) from :func:`_epilogue`'s kernel options."""
    return {"bias": bool(options.get("bias")), "requant": bool(options.get("requant")),
            "act": options.get("act", "none"), "clip": options.get("clip"),
            "out_zp": int(options.get("out_zp", 0))}


def _epilogue_rows(rows: dict[str, Any]) -> dict[str, Any]:
    """The per-channel constant rows a chain layer's epilogue reads (of :func:`_epilogue`'s)."""
    return {name: rows[name] for name in ("bias", "mult", "shift") if name in rows}


def _plan_qconvchain(graph: Graph, node: Node) -> NodeKernel | str:
    """A ``braze.QConvChain``: one :func:`~braze.sw.compiler.kernels.conv2d_chain` kernel, every layer's
    epilogue as :func:`_plan_qconv` folds it (the input zero point into the bias)."""
    x_name = node.inputs[0]
    n, c, h, wd = _static(graph, x_name, node)
    layers, constants = [], []
    height, width = h, wd
    pool = 1
    for index, layer in enumerate(layer_nodes(node), start=1):
        w = np.asarray(graph.constant(layer.inputs[1]), np.int8)
        bias = graph.constant(layer.inputs[2]) if layer.inputs[2] else None
        k_out, _, kh, kw = w.shape
        pads = conv_pads((height, width), (kh, kw), (1, 1), (1, 1), layer.attrs)
        if len(set(pads)) != 1:
            return f"layer {index}: asymmetric pads {pads} (a chain's layers pad alike on every side)"
        if pads[0] and int(layer.attrs.get("x_zero_point", 0)):
            return (f"layer {index}: padding of an input with zero point {layer.attrs['x_zero_point']} "
                    "(the chain kernel pads with zeros)")
        options, rows = _epilogue(layer, k_out, bias, w.astype(np.int64).sum(axis=(1, 2, 3)))
        if options.get("out") != "int8" or "residual" in options:
            return f"layer {index}: not an int8 output without a residual"
        layers.append(kernel_lib.ConvLayer(k_out, kh, kw, pads[0], **_layer_epilogue(options)))
        constants.append((w, _epilogue_rows(rows)))
        height, width = height + 2 * pads[0] - kh + 1, width + 2 * pads[0] - kw + 1
        pool = int(layer.attrs.get("pool", 1))
    options: dict[str, Any] = {"pool": pool} if pool > 1 else {}
    fc, closing = fc_node(node), None
    if fc is not None:
        # The FC layer of the chain kernel (its weight rows ordered by chain_fc_weights in param_values).
        w = np.asarray(graph.constant(fc.inputs[1]), np.int8)
        n_out = w.shape[1]
        bias = graph.constant(fc.inputs[2]) if fc.inputs[2] else None
        fc_options, rows = _epilogue(fc, n_out, bias, w.astype(np.int64).sum(axis=0))
        options["fc"] = kernel_lib.FCLayer(n_out, **_layer_epilogue(fc_options))
        closing = (w, _epilogue_rows(rows))
    recipe = KernelRecipe("conv2d_chain", (n, c, h, wd, tuple(layers)), _options(options))
    output = (node.outputs[0], "NHWC" if fc is None else "plain")
    return NodeKernel(node, recipe, {"x": (x_name, "NHWC")}, output,
                      {"chain_layers": tuple(constants), "chain_fc": closing})


def _plan_maxpool(graph: Graph, node: Node) -> NodeKernel | str:
    x = graph.tensor(node.inputs[0])
    if x.dtype != "int8":
        return f"MaxPool of {x.dtype} (the accelerator pools int8)"
    if len([t for t in node.outputs if t]) != 1:
        return "MaxPool with an Indices output"
    n, c, h, wd = _static(graph, node.inputs[0], node)
    kh, kw = node.attrs["kernel_shape"]
    strides = tuple(node.attrs.get("strides", (1, 1)))
    if tuple(node.attrs.get("dilations", (1, 1))) != (1, 1) or node.attrs.get("ceil_mode", 0) \
            or node.attrs.get("storage_order", 0) or strides[0] != strides[1]:
        return "MaxPool with dilations, ceil_mode, storage_order or unequal strides"
    pads = conv_pads((h, wd), (kh, kw), strides, (1, 1), node.attrs)
    if any(p != pads[0] for p in pads):
        return f"asymmetric pads {pads}"
    recipe = KernelRecipe("maxpool2d", (n, c, h, wd, kh, kw, strides[0], pads[0]))
    return NodeKernel(node, recipe, {"x": (node.inputs[0], "NHWC")}, (node.outputs[0], "NHWC"), {})


def _plan_clip(graph: Graph, node: Node) -> NodeKernel | str:
    x = graph.tensor(node.inputs[0])
    if x.dtype != "int8":
        return f"{node.op_type} of {x.dtype} (the accelerator's element-wise ops are int8)"
    elements = int(np.prod(_static(graph, node.inputs[0], node), dtype=np.int64))
    if node.op_type == "Relu":
        recipe = KernelRecipe("relu", ((elements,),))
    else:
        bounds = []
        for index, default in ((1, -128), (2, 127)):
            name = node.inputs[index] if len(node.inputs) > index else ""
            value = graph.constant(name) if name else None
            if name and value is None:
                return "Clip with bounds that are not constants"
            bounds.append(default if value is None else int(np.asarray(value).reshape(-1)[0]))
        lo, hi = max(bounds[0], -128), min(bounds[1], 127)
        if lo > hi:
            return f"Clip with empty range {bounds}"
        recipe = KernelRecipe("clip", ((elements,), lo, hi))
    # Element-wise: any layout; the output keeps the input's ("any" is resolved by the lowering).
    return NodeKernel(node, recipe, {"x": (node.inputs[0], "any")}, (node.outputs[0], "any"), {})


def _plan_qtable(graph: Graph, node: Node) -> NodeKernel | str:
    """A table activation alone (not after a GEMM or convolution): the element-wise ``table`` kernel."""
    elements = int(np.prod(_static(graph, node.inputs[0], node), dtype=np.int64))
    recipe = KernelRecipe("table", ((elements,),))
    constants = {"table": np.asarray(node.attrs["table"], np.int64)}
    return NodeKernel(node, recipe, {"x": (node.inputs[0], "any")}, (node.outputs[0], "any"), constants)


def _plan_qadd(graph: Graph, node: Node, x_layout: str | None) -> NodeKernel | str:
    shape = _static(graph, node.inputs[0], node)
    other = _static(graph, node.inputs[1], node)
    if tuple(other) != tuple(shape):
        return f"operands of shapes {list(shape)} and {list(other)} (a broadcast; the kernel adds one shape)"
    elements = int(np.prod(shape, dtype=np.int64))
    options = {key: int(node.attrs[key]) for key in ("x_zp", "y_zp", "out_zp") if int(node.attrs.get(key, 0))}
    if "shift" in node.attrs:       # operands at two scales: exact products, one rounding of their sum
        options.update(x_scale=(int(node.attrs["x_mult"]), 0), y_scale=(int(node.attrs["y_mult"]), 0),
                       out_shift=int(node.attrs["shift"]))
    recipe = KernelRecipe("add", ((elements,),), _options(options))
    # Element-wise, but both operands must share one layout: the second follows the first.
    inputs = {"x": (node.inputs[0], "any"), "y": (node.inputs[1], x_layout or "plain")}
    return NodeKernel(node, recipe, inputs, (node.outputs[0], "any"), {})


def node_kernel(graph: Graph, node: Node, config: Config, cache: KernelCache | None = None,
                x_layout: str | None = None) -> tuple[NodeKernel, Kernel] | None:
    """:func:`plan_node` and the (canonically placed) kernel, or None for a CPU node."""
    plan = plan_node(graph, node, x_layout)
    if isinstance(plan, str):
        return None
    try:
        return plan, plan.recipe.kernel(config, cache)
    except KernelError:
        return None


def relocate(kernel: Kernel, addrs: Mapping[str, int]) -> Kernel:
    """The kernel with its operands moved to ``addrs`` (by operand name; others stay).

    Every LOAD, STORE and COUNTERS address lies inside one operand, so moving an
    operand moves the addresses that point into it.  Zero-fill LOADs read nothing.
    """
    shifts = [(op.addr, op.end, addrs[op.name] - op.addr) for op in kernel.operands.values()
              if op.name in addrs]
    instructions = []
    for insn in kernel.instructions:
        if insn.opcode in (Opcode.LOAD, Opcode.STORE, Opcode.COUNTERS) and \
                not (insn.opcode is Opcode.LOAD and insn.zero):
            for start, end, delta in shifts:
                if start <= insn.dram < end:
                    # Built directly (not Instruction.replace): only the address changes, and it stays
                    # inside external memory, so the checks of Instruction.make would repeat themselves.
                    args = dict(insn.args) | {"dram": insn.dram + delta}
                    insn = Instruction(insn.opcode, MappingProxyType(args), insn.deps)
                    break
        instructions.append(insn)
    operands = {name: dataclasses.replace(op, addr=addrs.get(name, op.addr))
                for name, op in kernel.operands.items()}
    return dataclasses.replace(kernel, instructions=instructions, operands=operands)


_DRAM_SLOT = {op: next((offset for spec, offset, _ in FORMAT_BY_OPCODE[op].slots if spec.name == "dram"))
              for op in (Opcode.LOAD, Opcode.STORE, Opcode.COUNTERS)}


def relocated_words(kernel: Kernel, addrs: Mapping[str, int]) -> list[int]:
    """The encoded program of ``relocate(kernel, addrs)``, patched word by word (no re-encoding)."""
    shifts = [(op.addr, op.end, addrs[op.name] - op.addr) for op in kernel.operands.values()
              if op.name in addrs]
    words = list(encoded_words(kernel))
    for index, insn in enumerate(kernel.instructions):
        offset = _DRAM_SLOT.get(insn.opcode)
        if offset is None or (insn.opcode is Opcode.LOAD and insn.zero):
            continue
        for start, end, delta in shifts:
            if start <= insn.dram < end:
                words[index] += delta << offset       # the new address still fits the 32-bit field
                break
    return words


# ---------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class Buffer:
    """A region of external memory; ``first``/``last`` are the plan steps that use it."""

    name: str
    nbytes: int
    kind: str                      # "const", "counters", "program" or "activation"
    first: int = 0
    last: int = 0
    addr: int = -1

    def use(self, step: int) -> None:
        self.first = min(self.first, step)
        self.last = max(self.last, step)


@dataclasses.dataclass
class DeviceTensor:
    """A graph tensor held on the device: its buffer, layout, logical (ONNX) shape and dtype."""

    tensor: str
    buffer: Buffer
    layout: str                    # "NHWC" (a logical NCHW tensor stored NHWC) or "plain" (row-major)
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def device_shape(self) -> tuple[int, ...]:
        if self.layout == "NHWC":
            n, c, h, w = self.shape
            return (n, h, w, c)
        return self.shape


@dataclasses.dataclass
class KernelStep:
    """One kernel on the device: ``kernel`` as generated (canonical placement), :attr:`placed` as it runs."""

    name: str
    ops: tuple[str, ...]           # the graph nodes it implements (several when fused)
    op_types: tuple[str, ...]
    kernel: Kernel
    operands: dict[str, DeviceTensor]
    params: dict[str, tuple[Buffer, np.ndarray]]
    counters: Buffer
    segment: int = -1
    _placed: Kernel | None = dataclasses.field(default=None, repr=False)

    @property
    def addrs(self) -> dict[str, int]:
        """Where each operand lives, once memory is allocated."""
        addrs = {name: value.buffer.addr for name, value in self.operands.items()}
        addrs.update({name: buffer.addr for name, (buffer, _) in self.params.items()})
        addrs["counters"] = self.counters.addr
        return addrs

    @property
    def placed(self) -> Kernel:
        """The kernel relocated to :attr:`addrs` (built on first use: the runtime only needs the binary)."""
        if self._placed is None:
            self._placed = relocate(self.kernel, self.addrs)
        return self._placed


class PlacedKernels(Mapping):
    """Kernel step name -> placed :class:`~braze.sw.compiler.Kernel`, relocated when first looked up."""

    def __init__(self, steps: list[KernelStep]):
        self._steps = {step.name: step for step in steps}

    def __getitem__(self, name: str) -> Kernel:
        return self._steps[name].placed

    def __iter__(self):
        return iter(self._steps)

    def __len__(self) -> int:
        return len(self._steps)


@dataclasses.dataclass
class CpuStep:
    node: Node
    reason: str


@dataclasses.dataclass
class PadStep:
    """Pad a host tensor's H and W with a value (the input zero point of the convolution after it)."""

    source: str
    target: str
    pads: tuple[int, int, int, int]
    value: int


@dataclasses.dataclass
class TransferStep:
    """``"to_device"``: write a host tensor (NCHW -> NHWC if needed); ``"to_host"``: read it back."""

    direction: str
    value: DeviceTensor


@dataclasses.dataclass
class Segment:
    """Consecutive kernel steps linked into one program (one device run)."""

    index: int
    steps: list[KernelStep]
    program: Buffer
    binary: bytes = b""


@dataclasses.dataclass(frozen=True)
class IfGuard:
    """An ONNX ``If`` to run on chip: :func:`lower` links both branches' kernels into one program.

    The graph given to :func:`lower` holds the If's predecessor and its else branch (the then
    branch runs on the host from ``needed``).  ``cond`` (a graph output, one bool) is what the
    host's evaluation of the graph says; on chip it is ``max(tensor) >= threshold``
    (``condition="ge"``) or ``max(tensor) < threshold`` (``"lt"``), ``tensor`` an int8 tensor a
    kernel computes -- the caller proves the two equal for every int8 value (see
    :mod:`braze.sw.runtime.onchip_if`).  ``needed`` names the graph outputs the then branch needs
    (``cond`` among them); every node that none of them depends on is the else branch's, and its
    kernels and host steps are skipped when the condition holds.
    """

    tensor: str
    threshold: int
    condition: str
    cond: str
    needed: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class GuardPlan:
    """How a guarded :class:`CompiledModel` runs: the guard kernel step, the registers it leaves the
    maximum and the threshold in, and what to skip after the program when the condition holds."""

    guard: IfGuard
    step: str                          # the guard's kernel step name
    max_register: int
    threshold_register: int
    else_kernels: frozenset[str]       # kernel step names of the else branch (no snapshot when skipped)
    else_steps: frozenset[int]         # indices of host steps after the program that only the else needs

    def holds(self, maximum: int) -> bool:
        """The on-chip condition for the maximum the guard computed (the branch over the else kernels)."""
        threshold = self.guard.threshold
        return maximum >= threshold if self.guard.condition == "ge" else maximum < threshold


@dataclasses.dataclass
class CompiledModel:
    """A graph lowered for one configuration: the plan, memory map, kernels and the lowered graph.

    Attributes
    ----------
    graph : Graph
        The lowered graph: device tensors are ``<name>@dram``, transfers are
        ``TRANSFER`` nodes, host padding is a ``Pad`` node; it evaluates to the
        same outputs as the graph it came from.
    steps : list
        :class:`KernelStep`, :class:`CpuStep`, :class:`PadStep`, :class:`TransferStep` in order.
    segments : list of Segment
        Runs of kernel steps, each linked into one program.
    kernels : mapping of str to Kernel
        Every placed kernel by step name (relocated on first lookup).
    placement : dict of str to str
        Every operator node: ``"accel"`` (which kernel) or why it runs on the CPU.
    memory_bytes : int
        External memory the model uses.
    """

    source: Graph
    graph: Graph
    config: Config
    steps: list
    segments: list[Segment]
    kernels: Mapping[str, Kernel]
    placement: dict[str, str]
    buffers: list[Buffer]
    memory_bytes: int
    #: With :func:`lower`'s ``guard``: the on-chip If's condition, registers and else-only steps.
    guard: GuardPlan | None = None

    def load(self, device) -> None:
        """Write weights, parameters and programs to a device (once per device)."""
        if device.config != self.config:
            raise LoweringError(f"model compiled for config {self.config.name!r}, device has "
                                f"{device.config.name!r}")
        for step in self.steps:
            if isinstance(step, KernelStep):
                for buffer, value in step.params.values():
                    device.write(buffer.addr, np.ascontiguousarray(value))
        for segment in self.segments:
            device.write(segment.program.addr, segment.binary)

    def asm(self) -> dict[str, str]:
        return {name: kernel.asm for name, kernel in self.kernels.items()}


class _Lowering:
    def __init__(self, graph: Graph, config: Config, cache: KernelCache | None, loops: bool = True):
        self.graph = graph
        self.config = config
        self.cache = cache
        self.loops = loops
        self.steps: list = []
        self.buffers: list[Buffer] = []
        self.device: dict[str, DeviceTensor] = {}
        self.host: set[str] = set()
        self.placement: dict[str, str] = {}
        # The lowered graph, built alongside.
        self.nodes: list[Node] = []
        self.infos: dict[str, TensorInfo] = dict(graph.tensors)
        # With an IfGuard (set by lower): the else branch's nodes, the steps they made, the guard's step.
        self.guard: IfGuard | None = None
        self.else_nodes: frozenset[str] = frozenset()
        self.else_steps: set[int] = set()
        self.guard_step: KernelStep | None = None

    def buffer(self, name: str, nbytes: int, kind: str) -> Buffer:
        step = len(self.steps)
        buffer = Buffer(name, max(int(nbytes), 1), kind, step, step)
        self.buffers.append(buffer)
        return buffer

    # -- tensor movement ----------------------------------------------------------------------------
    def dram_name(self, tensor: str) -> str:
        return f"{tensor}@dram"

    def info_as(self, tensor: str, name: str) -> None:
        self.infos[name] = dataclasses.replace(self.infos.get(tensor) or TensorInfo(tensor), name=name)

    def to_host(self, tensor: str) -> None:
        if tensor in self.host:
            return
        value = self.device[tensor]
        value.buffer.use(len(self.steps))
        self.steps.append(TransferStep("to_host", value))
        self.nodes.append(Node(f"transfer:{tensor}:to_host", NodeKind.TRANSFER, "Transfer",
                               (self.dram_name(tensor),), (tensor,), {"src": "dram", "dst": "host"}))
        self.host.add(tensor)

    def to_device(self, tensor: str, layout: str, node: Node) -> DeviceTensor:
        """The device copy of ``tensor`` in ``layout`` (``"any"``: whatever it has), moving it if needed."""
        current = self.device.get(tensor)
        if current is not None and (layout in ("any", current.layout)):
            return current
        if current is not None:
            self.to_host(tensor)          # a layout change goes through the host
        info = self.infos.get(tensor) or TensorInfo(tensor)
        if not info.static:
            raise LoweringError(f"node {node.name!r}: tensor {tensor!r} has no static shape ({info}); "
                                "give the session concrete input shapes")
        shape = tuple(int(d) for d in info.shape)
        if layout == "any":
            layout = "plain"
        if layout == "NHWC" and len(shape) != 4:
            raise LoweringError(f"node {node.name!r}: tensor {tensor!r} of shape {shape} cannot be NHWC")
        dtype = np.dtype(info.dtype)
        buffer = self.buffer(tensor, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, "activation")
        value = DeviceTensor(tensor, buffer, layout, shape, dtype)
        self.steps.append(TransferStep("to_device", value))
        # A second device copy in another layout needs no new graph node: the lowered graph is logical
        # (layouts are the plan's business), and ``tensor@dram`` already exists.
        if current is None:
            self.nodes.append(Node(f"transfer:{tensor}:to_device", NodeKind.TRANSFER, "Transfer",
                                   (tensor,), (self.dram_name(tensor),), {"src": "host", "dst": "dram"}))
            self.info_as(tensor, self.dram_name(tensor))
        self.device[tensor] = value
        return value

    # -- steps ----------------------------------------------------------------------------------------
    def cpu(self, node: Node, reason: str) -> None:
        for tensor in node.inputs:
            if tensor and tensor not in self.host and tensor in self.device:
                self.to_host(tensor)
        self.steps.append(CpuStep(node, reason))
        self.nodes.append(node)
        self.host.update(t for t in node.outputs if t)
        self.placement[node.name] = f"cpu: {reason}"

    def view(self, node: Node) -> bool:
        """A reshape-like op of a device-only tensor in a row-major layout: alias its bytes."""
        if not node.inputs:                  # SequenceEmpty, RandomNormal, ...: nothing to alias
            return False
        source = node.inputs[0]
        value = self.device.get(source)
        if value is None or source in self.host or node.op_type not in VIEW_OPS or node.domain:
            return False
        out = node.outputs[0]
        info = self.graph.tensor(out)
        if not info.static:
            return False
        if value.layout == "NHWC" and value.shape[2:] != (1, 1):
            return False
        shape = tuple(int(d) for d in info.shape)
        self.device[out] = DeviceTensor(out, value.buffer, "plain", shape, value.dtype)
        value.buffer.use(len(self.steps))
        inputs = (self.dram_name(source), *node.inputs[1:])
        self.nodes.append(node.replace(inputs=inputs, outputs=(self.dram_name(out),)))
        self.info_as(out, self.dram_name(out))
        self.placement[node.name] = "accel: view (no data movement)"
        return True

    def kernel(self, node: Node, plan: NodeKernel, kernel: Kernel) -> None:
        config = self.config
        graph = self.graph
        operands: dict[str, DeviceTensor] = {}
        kernel_node = node
        first = next(iter(plan.inputs))
        for operand, (tensor, layout) in plan.inputs.items():
            if plan.host_pad is not None and operand == first:   # the padded input, not a residual
                tensor = self.pad(node, tensor, plan.host_pad)
                kernel_node = kernel_node.with_attrs(pads=[0, 0, 0, 0], auto_pad=None)
            operands[operand] = self.to_device(tensor, layout, node)
        step_index = len(self.steps)
        for value in operands.values():
            value.buffer.use(step_index)
        out_tensor, out_layout = plan.output
        if out_layout == "any":
            out_layout = next(iter(operands.values())).layout
        info = graph.tensor(out_tensor)
        shape = _static(graph, out_tensor, node)
        dtype = np.dtype(info.dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        out_buffer = self.buffer(out_tensor, nbytes, "activation")
        operands["out"] = DeviceTensor(out_tensor, out_buffer, out_layout, shape, dtype)
        self.device[out_tensor] = operands["out"]
        constants = dict(plan.constants)
        if "weights_oihw" in constants:
            constants["B"] = kernel_lib.conv2d_weights(config, constants.pop("weights_oihw"), kernel)
        plan = dataclasses.replace(plan, constants=constants)
        params = {}
        for name, value in plan.param_values(kernel).items():
            expected = kernel.operands[name]
            if value.shape != expected.shape:
                raise LoweringError(f"node {node.name!r}: constant operand {name} has shape {value.shape}, "
                                    f"the kernel expects {expected.shape}")
            params[name] = (self.buffer(f"{node.name}.{name}", expected.nbytes, "const"),
                            value.astype(expected.dtype))
        counters = self.buffer(f"{node.name}.counters", SNAPSHOT_BYTES, "counters")
        # Kernel names become file names (braze compile): keep them to letters, digits, '_' and '-'.
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", node.name).strip("_") or "op"
        name = f"k{sum(isinstance(s, KernelStep) for s in self.steps)}_{kernel.name}_{safe}"
        ops = tuple(node.attrs.get("fused_ops", (node.name,)))
        op_types = tuple(node.attrs.get("fused_op_types", (node.qualified_op,)))
        self.steps.append(KernelStep(name, ops, op_types, kernel, operands, params, counters))
        # Device operands are read from external memory: the lowered node names their ``@dram`` copies.
        on_device = {tensor: self.dram_name(operands[operand].tensor)
                     for operand, (tensor, _) in plan.inputs.items()}
        inputs = (on_device[node.inputs[0]], *(on_device.get(t, t) for t in node.inputs[1:]))
        self.nodes.append(kernel_node.replace(inputs=inputs, outputs=(self.dram_name(out_tensor),))
                          .with_attrs(kernel=name))
        self.info_as(out_tensor, self.dram_name(out_tensor))
        self.placement[node.name] = f"accel: {name}"

    def pad(self, node: Node, tensor: str, host_pad: tuple[int, int, int, int, int]) -> str:
        top, left, bottom, right, value = host_pad
        if tensor not in self.host:
            self.to_host(tensor)
        target = self.graph.unique_name(f"{tensor}_padded_{node.name}")
        info = self.graph.tensor(tensor)
        n, c, h, w = info.shape
        padded_shape = (n, c, h + top + bottom, w + left + right)
        self.infos[target] = dataclasses.replace(info, name=target, shape=padded_shape)
        self.steps.append(PadStep(tensor, target, (top, left, bottom, right), value))
        const_name = f"{target}_pads"
        pads_value = np.array([0, 0, top, left, 0, 0, bottom, right], np.int64)
        value_name = f"{target}_value"
        self.nodes.append(Node(f"const:{const_name}", NodeKind.CONSTANT, "Constant", (), (const_name,),
                               value=pads_value))
        self.nodes.append(Node(f"const:{value_name}", NodeKind.CONSTANT, "Constant", (), (value_name,),
                               value=np.array(value, np.dtype(info.dtype))))
        self.infos[const_name] = TensorInfo(const_name, (8,), "int64")
        self.infos[value_name] = TensorInfo(value_name, (), info.dtype)
        self.nodes.append(Node(f"pad:{target}", NodeKind.OPERATOR, "Pad", (tensor, const_name, value_name),
                               (target,), {"mode": "constant"}, device="cpu"))
        self.host.add(target)
        return target

    def _zero_size(self, node: Node) -> bool:
        """Whether ``node`` reads or writes a tensor with a zero dimension (ONNX allows them)."""
        for tensor in (*node.inputs, *node.outputs):
            shape = self.graph.tensor(tensor).shape if tensor else None
            if shape is not None and any(d == 0 for d in shape):
                return True
        return False

    # -- an If on chip ----------------------------------------------------------------------------------
    def _guarded_order(self) -> tuple[list[Node], Node | None]:
        """The nodes in the order one guarded program needs: host nodes that need no kernel, the kernels
        the then branch needs, the else branch's kernels, then host nodes that read kernel results; and
        the first node after which the guard goes (None: at the end)."""
        graph, guard = self.graph, self.guard
        order = list(graph.topological_order())
        producer = {t: n for n in order for t in n.outputs if t}
        needed: set[str] = set()
        stack = [producer[t] for t in guard.needed if t in producer]
        while stack:
            node = stack.pop()
            if node.name not in needed:
                needed.add(node.name)
                stack.extend(producer[t] for t in node.inputs if t in producer)
        self.else_nodes = frozenset(n.name for n in order
                                    if n.kind is NodeKind.OPERATOR and n.name not in needed)
        accel: set[str] = set()
        for node in order:
            if node.kind is not NodeKind.OPERATOR or self._zero_size(node):
                continue
            source = producer.get(node.inputs[0]) if node.inputs else None
            view = node.op_type in VIEW_OPS and not node.domain and source is not None \
                and source.name in accel
            if view or isinstance(plan_node(graph, node), NodeKernel):
                accel.add(node.name)
        after: set[str] = set()
        for node in order:
            reads = [producer[t] for t in node.inputs if t in producer]
            if node.name not in accel and any(p.name in accel or p.name in after for p in reads):
                after.add(node.name)
            if node.name in accel and any(p.name in after for p in reads):
                raise LoweringError(f"If guard: kernel node {node.name!r} reads a tensor the host computes "
                                    f"from a kernel's result; the branches cannot run as one program")
        head = [n for n in order if n.name not in accel and n.name not in after]
        then_kernels = [n for n in order if n.name in accel and n.name not in self.else_nodes]
        else_kernels = [n for n in order if n.name in accel and n.name in self.else_nodes]
        tail = [n for n in order if n.name in after]
        following = (else_kernels + tail + [None])[0]
        return head + then_kernels + else_kernels + tail, following

    def _add_guard_step(self) -> None:
        """The guard kernel (its branch offset and registers are set by :func:`lower`, once known)."""
        guard = self.guard
        value = self.device.get(guard.tensor)
        if value is None or value.dtype != np.int8:
            raise LoweringError(f"If guard: tensor {guard.tensor!r} is not an int8 tensor a kernel computes")
        try:
            kernel = guard_kernel(self.config, int(np.prod(value.shape)), guard.threshold, guard.condition, 0,
                                  max_register=1, threshold_register=2)
        except KernelError as error:
            raise LoweringError(f"If guard on {guard.tensor!r}: {error}") from error
        value.buffer.use(len(self.steps))
        counters = self.buffer("if_guard.counters", SNAPSHOT_BYTES, "counters")
        name = f"k{sum(isinstance(s, KernelStep) for s in self.steps)}_if_guard"
        self.guard_step = KernelStep(name, (f"If({guard.cond})",), ("braze.IfGuard",), kernel, {"x": value},
                                     {}, counters)
        self.steps.append(self.guard_step)
        self.placement[f"If({guard.cond})"] = f"accel: {name}"

    # -- the whole graph -------------------------------------------------------------------------------
    def run(self) -> None:
        graph = self.graph
        order, guard_before = graph.topological_order(), None
        if self.guard is not None:
            order, guard_before = self._guarded_order()
        previous, first = None, 0
        for node in order:
            if previous is not None and previous.name in self.else_nodes:
                self.else_steps.update(range(first, len(self.steps)))
            if self.guard is not None and node is guard_before:
                self._add_guard_step()
            previous, first = node, len(self.steps)
            if node.kind in (NodeKind.INPUT, NodeKind.CONSTANT):
                self.nodes.append(node)
                self.host.update(node.outputs)
                continue
            if node.kind is NodeKind.OUTPUT:
                continue
            if node.kind is not NodeKind.OPERATOR:
                self.cpu(node, f"{node.kind.value} node")
                continue
            if self._zero_size(node):
                self.cpu(node, "zero-size tensor (nothing for a kernel to compute)")
                continue
            if self.view(node):
                continue
            x = self.device.get(node.inputs[0]) if node.inputs else None
            plan = plan_node(graph, node, x.layout if x is not None else None)
            if isinstance(plan, str):
                self.cpu(node, plan)
                continue
            try:
                if self.loops and self.guard is None:
                    kernel = plan.recipe.looped_kernel(self.config, self.cache)
                else:
                    kernel = plan.recipe.kernel(self.config, self.cache)
            except KernelError as error:
                self.cpu(node, f"no kernel: {error}")
                continue
            self.kernel(node, plan, kernel)
        if previous is not None and previous.name in self.else_nodes:
            self.else_steps.update(range(first, len(self.steps)))
        if self.guard is not None and self.guard_step is None:
            self._add_guard_step()
        for tensor in graph.outputs:
            if tensor not in self.host:
                first = len(self.steps)
                self.to_host(tensor)
                source = graph.producer(tensor)
                if source is not None and source.name in self.else_nodes:
                    self.else_steps.update(range(first, len(self.steps)))
        for node in graph.nodes:
            if node.kind is NodeKind.OUTPUT:
                self.nodes.append(node)


def _allocate(buffers: list[Buffer], config: Config, where: str) -> int:
    """Addresses for every buffer: constants, counters and programs first, then the activation arena with
    first-fit reuse of buffers whose step intervals do not overlap.  Returns the bytes used."""
    cursor = 0

    def aligned(value: int) -> int:
        return -(-value // ALIGN) * ALIGN

    for kind in ("const", "counters", "program"):
        for buffer in buffers:
            if buffer.kind == kind:
                buffer.addr = aligned(cursor)
                cursor = buffer.addr + buffer.nbytes
    arena = aligned(cursor)
    placed: list[Buffer] = []
    end = arena
    for buffer in sorted((b for b in buffers if b.kind == "activation"), key=lambda b: (b.first, -b.nbytes)):
        live = sorted((b for b in placed if not (b.last < buffer.first or buffer.last < b.first)),
                      key=lambda b: b.addr)
        candidate = arena
        for other in live:
            if candidate + buffer.nbytes <= other.addr:
                break
            candidate = max(candidate, aligned(other.addr + other.nbytes))
        buffer.addr = candidate
        placed.append(buffer)
        end = max(end, candidate + buffer.nbytes)
    if end > config.dram_bytes:
        raise LoweringError(f"{where}: needs {end} bytes of external memory, config {config.name!r} "
                            f"has {config.dram_bytes}")
    return end


def _registers_used(kernels) -> set[int]:
    """Scalar registers any instruction of ``kernels`` names (register fields, SCALAR/BRANCH/PREDICATE)."""
    used = set()
    for kernel in kernels:
        for insn in kernel.instructions:
            for field, value in insn.args.items():
                if field.endswith("_reg") or (insn.opcode in (Opcode.SCALAR, Opcode.BRANCH, Opcode.PREDICATE)
                                              and field in ("dst", "src1", "src2", "a", "b")):
                    used.add(int(value))
    return used - {0}


def _finish_guard(lowering: _Lowering) -> GuardPlan:
    """Check that the kernels form one program, and give the guard its branch offset and registers."""
    steps = lowering.steps
    kernel_at = [i for i, step in enumerate(steps) if isinstance(step, KernelStep)]
    between = [steps[i] for i in range(kernel_at[0], kernel_at[-1] + 1)
               if not isinstance(steps[i], KernelStep)]
    if between:
        what = between[0]
        detail = (f"{what.direction} transfer of {what.value.tensor!r}" if isinstance(what, TransferStep)
                  else f"host step {getattr(getattr(what, 'node', None), 'name', what)!r}")
        raise LoweringError(f"If guard: a {detail} sits between the kernels; the branches cannot run as one "
                            f"program")
    guard_index = steps.index(lowering.guard_step)
    else_kernels = [steps[i] for i in kernel_at if i in lowering.else_steps]
    if any(steps.index(k) < guard_index for k in else_kernels):
        raise LoweringError("If guard: an else-branch kernel runs before the condition is known")
    free = [r for r in range(7, 0, -1) if r not in _registers_used(steps[i].kernel for i in kernel_at
                                                                      if steps[i] is not lowering.guard_step)]
    if len(free) < 2:
        raise LoweringError("If guard: the kernels use every scalar register; none is left for the condition")
    guard = lowering.guard
    step = lowering.guard_step
    skip = sum(len(k.kernel.instructions) for k in else_kernels)
    step.kernel = guard_kernel(lowering.config, step.kernel.operands["x"].shape[0], guard.threshold,
                               guard.condition, skip, max_register=free[0], threshold_register=free[1])
    after = {i for i in lowering.else_steps if i > kernel_at[-1]}
    return GuardPlan(guard, step.name, free[0], free[1], frozenset(k.name for k in else_kernels),
                     frozenset(after))


def lower(graph: Graph, config: Config, *, cache: KernelCache | None = None, check: bool = True,
          guard: IfGuard | None = None, loops: bool = True) -> CompiledModel:
    """Lower a (fused) quantized graph for ``config``; see the module documentation.

    With ``loops`` (the default) each kernel's repeated runs become counted loops wherever the timing
    model predicts that no slower and it shortens the program by at least
    :data:`~braze.sw.compiler.kernels.loops.MIN_SHRINK` (:meth:`KernelRecipe.looped_kernel`):
    the units receive the straight-line kernel's instructions exactly, the program's bytes and
    instruction fetches fall.  Not with ``guard``: the guard's registers must outlive every kernel
    of the program, and rolled loops set registers of their own.

    With ``guard`` (:class:`IfGuard`), the graph's kernels become one program in which a guard kernel
    (:func:`~braze.sw.compiler.kernels.guard.if_guard`) tests the condition on chip and branches over
    the else branch's kernels; :attr:`CompiledModel.guard` says what the runtime skips.  A graph whose
    kernels cannot form one program (a host step between them) raises :class:`LoweringError`.
    """
    if cache is None:
        cache = default_cache()
    lowering = _Lowering(graph, config, cache, loops)
    lowering.guard = guard
    lowering.run()
    steps = lowering.steps
    guard_plan = _finish_guard(lowering) if guard is not None else None
    # Segments: maximal runs of consecutive kernel steps, one program each.
    segments: list[Segment] = []
    current: list[KernelStep] = []

    def close() -> None:
        if current:
            program = lowering.buffer(f"program{len(segments)}",
                                      (sum(len(s.kernel.instructions) for s in current) + 1) * 16, "program")
            segments.append(Segment(len(segments), list(current), program))
            current.clear()

    for step in steps:
        if isinstance(step, KernelStep):
            step.segment = len(segments)
            current.append(step)
        else:
            close()
    close()
    memory = _allocate(lowering.buffers, config, f"graph {graph.name!r}")
    halt = Instruction.make(Opcode.HALT).to_bytes()
    for segment in segments:
        words: list[int] = []
        for step in segment.steps:
            words += relocated_words(step.kernel, step.addrs)
        # The linked program (braze.sw.compiler.kernels.link): every kernel's instructions, then HALT.
        segment.binary = b"".join(word.to_bytes(INSN_BYTES, "little") for word in words) + halt
    lowered = Graph(lowering.nodes, {k: v for k, v in lowering.infos.items()}, name=graph.name,
                    opset=graph.opset)
    used = {t for n in lowered.nodes for t in (*n.inputs, *n.outputs) if t}
    lowered = lowered.replace(tensors={k: v for k, v in lowering.infos.items() if k in used})
    if check:
        validate(lowered)
    placed = PlacedKernels([step for step in steps if isinstance(step, KernelStep)])
    return CompiledModel(graph, lowered, config, steps, segments, placed, lowering.placement,
                         lowering.buffers, memory, guard_plan)

