"""The fusion engine: which operators of a quantized graph share one kernel, chosen by a cost model.

Pipeline
--------
1. :func:`split_activations` puts the graph in per-operator form: a
   ``QMatMul``/``QConv`` whose activation the quantizer already folded in
   gets it back as a separate int8 ``Clip`` node (exact: clipping commutes
   with the int8 saturation for bounds inside int8), and one whose residual
   addition the quantizer folded in (a fourth, int8 input at the output's
   scale) gets it back as a ``braze.QAdd`` node of the int8 product and the
   residual.  This is also the unfused baseline (``fuse=False``): one kernel
   per ONNX operator, each intermediate tensor written to external memory
   and read back.  The split residual is exact except where the product
   before the addition leaves int8: the separate form saturates it (the
   semantics of a QDQ graph that quantizes the product at the output's
   parameters), the fused epilogue adds in int32 and saturates once.
2. :func:`find_opportunities` lists fusion opportunities:

   ``epilogue``
       ``QMatMul``/``QConv`` followed by its only reader, an int8 ``Relu`` or
       ``Clip`` (the activation; bias and requantization are always in the
       epilogue) -- candidates: two kernels, or the activation fused into
       the kernel's ``EPILOGUE``, in the tiling the kernel library picks
       and in forced tilings (half the M tile; single buffering).
   ``pool``
       an int8 activation followed by ``MaxPool`` (pooling after
       activation) -- candidates: activation then pool, or pool first and
       the activation on the pooled, smaller tensor (exact: max commutes
       with a monotone clip).
   ``conv_pool``
       ``QConv`` with an int8 output (its activation fused or none) followed
       by its only reader, a ``MaxPool`` whose window is its stride, without
       padding -- candidates: two kernels, or the pooling in the convolution
       kernel (the ``pool`` attribute; :func:`~braze.sw.compiler.kernels.conv2d`),
       so the unpooled output never leaves the chip.  Exact: max commutes with
       the epilogue's monotone requantization and activation.  In the row-major
       layout the fused kernel computes the pixels of a window in separate
       blocks, so it needs ``pool`` times as many (shorter) A LOADs and loses
       where LOADs are the bottleneck; for a batch of small images the
       pixel-major and resident-input layouts (:func:`~braze.sw.compiler.kernels.conv2d`
       ``layout``) pool ``G`` images' rows per VECTOR instead (digits CNN's
       conv2, batch 64, default, RTL: 25,233 cycles fused against 22,804 +
       10,828 separate).  The cost model decides.
   ``chain``
       two element-wise clips in a row -- candidates: two kernels or one with
       the intersected bounds.
   ``table``
       ``QMatMul``/``QConv`` (int8 output, no activation, no fused pooling)
       followed by its only reader, a ``braze.QTable`` (a Sigmoid, GELU,
       HardSwish, SiLU ... chain, :mod:`braze.sw.compiler.tables`) --
       candidates: two kernels (the table alone is
       :func:`~braze.sw.compiler.kernels.table`), or the table in the kernel's
       ``EPILOGUE`` (``act="table"``: a ``TABLE`` instruction loads it once per
       kernel).  Exact: the table maps the int8 value the separate form
       stores.  A node with a table activation is not pooled by the
       ``conv_pool`` fusion (a table need not be monotone).
   ``skip``
       a ``QMatMul`` (no residual) whose A input is the output of an
       activation (Relu, Clip, or a Braze op with one fused) and whose profile
       (``fuse(profiles=...)``, :meth:`~braze.sw.compiler.profile.TensorProfile.zero_block_fraction`)
       has all-zero blocks at the skipping kernel's granularity (its M tile by
       ``rows``) -- candidates: the node as it is, or
       :func:`~braze.sw.compiler.kernels.skipping_gemm`, which tests each K-block of
       A on chip and branches over the MATMULs of an all-zero one, priced at
       the profiled fraction (a dense A costs it more than the library's
       kernel: its MATMULs are one K-block long).  Exact: a zero block adds
       nothing.  Decided after every other opportunity, on the fused nodes.
   ``residual``
       ``QMatMul``/``QConv`` (no activation yet) followed by its only reader,
       a ``braze.QAdd`` of its output and another int8 tensor, all three at
       one scale and the sum's zero point the product's -- candidates: two
       kernels, or the addition in the kernel's ``EPILOGUE`` (the residual's
       zero point folded into the requantize stage's ``out_zp``).  An
       activation after the addition then becomes an ``epilogue``
       opportunity of the fused node.
   ``conv_chain``
       layer fusion: a ``QConv`` (or a ``braze.QConvChain``) followed by its only reader, a
       ``QConv`` (maybe with its pooling fused), or a chain followed by a ``MaxPool`` its last layer
       can do as ``conv_pool``'s -- stride 1, no dilation or groups, int8 outputs, no residual,
       symmetric padding only of inputs whose zero point is 0 (:func:`~braze.sw.compiler.chain.can_be_last`)
       -- candidates: the kernels as they are, or one ``braze.QConvChain`` node
       (:mod:`~braze.sw.compiler.chain`), one :func:`~braze.sw.compiler.kernels.conv2d_chain`
       kernel in which each layer's ``EPILOGUE`` writes the next layer's input rows in the
       scratchpad (the intermediate activation never crosses the bus).  Offered after every other
       opportunity, so that the layers have their activations and pooling already; a chain whose
       layers do not fit the scratchpad has no kernel and drops out.  A chain followed by a
       ``QMatMul`` of its output flattened from axis 1 (:func:`~braze.sw.compiler.chain.can_close`)
       is a ``conv_chain`` opportunity too: the FC layer closes the chain in the same kernel (a
       small CNN in one kernel).  Measured on the RTL (verilator, default): a padded 2-layer stack
       (batch 10, 6 -> 8 -> 5 channels, 7x7) is chained on its merits (16.7% predicted), 8,657 cycles
       against 12,221; the digits CNN forced into one kernel (``force``), 256 images: 148,736 cycles
       and 48,992 external bytes against the fused plan's 152,468 and 231,008.  The digits CNN's conv1 ->
       conv2+pool, batch 64, default: 35,374 predicted cycles chained against 35,846 separate (1.3%,
       under the threshold; 14,944 external bytes against 51,808 on the RTL): taken as no slower with
       79% fewer bytes (:data:`BYTES_TIE_BREAK`), and then the FC layer closes the chain the same way.

3. For each opportunity every candidate is priced by a :class:`~braze.sw.compiler.cost.CostModel`
   (kernels generated through the kernel cache; each kernel library call
   searches tilings itself within a budget, so a forced tiling sometimes
   wins); the cheapest candidate replaces the separate form only if it
   saves at least ``threshold`` of the predicted cycles.  Under the ``cycles`` objective, external
   bytes break near-ties: a fused candidate predicted no slower than the separate kernels that moves
   at least :data:`BYTES_TIE_BREAK` fewer external bytes is taken even when its cycle gain is under
   the threshold (the decision says so), as it is predicted as fast and frees the bus and the
   energy the bytes cost -- the digits CNN's ``conv_chain`` on default, batch 64: 1.3% fewer
   predicted cycles, 79% fewer bytes.  A chosen forced
   tiling is kept as the node's ``tiling`` attribute for the lowering.
   Layouts are not candidates: the lowering always keeps convolution
   outputs NHWC and folds a flatten into permuted weights (no transpose).

Residual additions come from the quantizer already folded into the Braze op
(:func:`braze.sw.compiler.quantize.insert_qdq` quantizes the residual at the Add
output's parameters; imported QDQ models only where the scales are equal);
additions at other scales stay float on the host and are not fused.

Every pass is Graph -> Graph and its result passes :func:`~braze.sw.validate.validate`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np

from braze.isa import Config

from .cache import KernelCache, default_cache
from .chain import (
    QCONV_CHAIN,
    can_be_inner,
    can_be_last,
    can_close,
    chain_node,
    layer_nodes,
    with_fc,
    with_pool,
)
from .cost import Cost, CostModel, TimingCostModel, check_objective
from .frontend import BRAZE_DOMAIN, conv_pads
from .ir import Graph, Node, NodeKind, TensorInfo, constant_info, constant_node
from .kernels import Kernel, Tiling
from .kernels.common import KernelError
from .kernels.looped import best_skipping_chunks, skipping_tile_rows
from .lower import node_kernel, plan_node
from .profile import TensorProfile
from .tables import QTABLE
from .validate import validate

__all__ = ["split_activations", "find_opportunities", "Opportunity", "Candidate", "FusionDecision", "fuse",
           "DEFAULT_THRESHOLD", "BYTES_TIE_BREAK", "skip_opportunities", "OPPORTUNITY_KINDS"]

#: Fuse only when the fused candidate is predicted at least this fraction faster.
DEFAULT_THRESHOLD = 0.02
#: Under the ``cycles`` objective, a fused candidate predicted no slower than the separate kernels is
#: taken below the threshold when it moves at least this fraction fewer external bytes (None: never).
BYTES_TIE_BREAK: float | None = 0.25
#: The kinds of :class:`Opportunity`.
OPPORTUNITY_KINDS = ("epilogue", "pool", "conv_pool", "chain", "table", "skip", "residual", "conv_chain")
MATRIX_OPS = (f"{BRAZE_DOMAIN}.QMatMul", f"{BRAZE_DOMAIN}.QConv")


def _ops_of(node: Node) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (tuple(node.attrs.get("fused_ops", (node.name,))),
            tuple(node.attrs.get("fused_op_types", (node.qualified_op,))))


def _clip_bounds(graph: Graph, node: Node) -> tuple[int, int] | None:
    """Int8 bounds of an int8 Relu/Clip with constant bounds, else None."""
    if node.kind is not NodeKind.OPERATOR or node.domain or node.device != "accel" or not node.inputs \
            or graph.tensor(node.inputs[0]).dtype != "int8":
        return None
    if node.op_type == "Relu":
        return 0, 127
    if node.op_type != "Clip":
        return None
    bounds = []
    for index, default in ((1, -128), (2, 127)):
        name = node.inputs[index] if len(node.inputs) > index else ""
        value = graph.constant(name) if name else None
        if name and value is None:
            return None
        bounds.append(default if value is None else int(np.asarray(value).reshape(-1)[0]))
    lo, hi = max(bounds[0], -128), min(bounds[1], 127)
    return (lo, hi) if lo <= hi else None


def _clip_nodes(graph: Graph, name: str, source: str, target: str, lo: int, hi: int,
                ops: tuple[str, ...] | None = None) -> tuple[list[Node], list[TensorInfo]]:
    lo_name, hi_name = graph.unique_name(f"{name}_lo"), graph.unique_name(f"{name}_hi")
    lo_value, hi_value = np.array(lo, np.int8), np.array(hi, np.int8)
    attrs = {"fused_ops": ops} if ops else {}
    nodes = [constant_node(lo_name, lo_value), constant_node(hi_name, hi_value),
             Node(name, NodeKind.OPERATOR, "Clip", (source, lo_name, hi_name), (target,), attrs)]
    return nodes, [constant_info(lo_name, lo_value), constant_info(hi_name, hi_value)]


def _residual_of(node: Node) -> str | None:
    return node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None


def _split_residuals(graph: Graph) -> Graph:
    """Every residual addition folded into a ``QMatMul``/``QConv`` becomes a ``braze.QAdd`` (and its
    activation a ``Clip``)."""
    substitute: dict[str, list[Node]] = {}
    infos: list[TensorInfo] = []
    for node in graph.operators():
        residual = _residual_of(node)
        if node.qualified_op not in MATRIX_OPS or residual is None or "fused_ops" in node.attrs:
            continue
        out = node.outputs[0]
        out_zp = int(node.attrs.get("out_zp", 0))
        pre = graph.unique_name(f"{out}_pre_residual")
        matrix = node.replace(inputs=node.inputs[:3], outputs=(pre,)).with_attrs(
            act="none", clip_lo=None, clip_hi=None, residual_zp=None)
        act = node.attrs.get("act", "none")
        summed = graph.unique_name(f"{out}_pre_act") if act != "none" else out
        add = Node(graph.unique_name(f"{node.name}_residual"), NodeKind.OPERATOR, "QAdd", (pre, residual),
                   (summed,), {"x_zp": out_zp, "y_zp": int(node.attrs.get("residual_zp", 0)),
                               "out_zp": out_zp}, domain=BRAZE_DOMAIN)
        replacement = [matrix, add]
        infos.append(dataclasses.replace(graph.tensor(out), name=pre))
        if act != "none":
            lo, hi = ((int(node.attrs.get("clip_lo", 0)), int(node.attrs.get("clip_hi", 0))) if act == "clip"
                      else (0, 127))
            clip_nodes, clip_infos = _clip_nodes(graph, graph.unique_name(f"{node.name}_act"), summed, out,
                                                 max(lo, -128), min(hi, 127))
            replacement += clip_nodes
            infos += [dataclasses.replace(graph.tensor(out), name=summed), *clip_infos]
        substitute[node.name] = replacement
    if not substitute:
        return graph
    return validate(graph.edit(substitute=substitute, tensors=infos))


def split_activations(graph: Graph) -> Graph:
    """Per-operator form: every activation folded into a ``QMatMul``/``QConv`` becomes its own ``Clip``,
    every residual addition its own ``braze.QAdd``."""
    graph = _split_residuals(graph)
    substitute: dict[str, list[Node]] = {}
    infos: list[TensorInfo] = []
    for node in graph.operators():
        if node.qualified_op not in MATRIX_OPS or node.attrs.get("act", "none") != "clip" \
                or node.attrs.get("out", "spad") != "spad" or "fused_ops" in node.attrs:
            continue
        lo, hi = int(node.attrs.get("clip_lo", 0)), int(node.attrs.get("clip_hi", 0))
        if not -128 <= lo <= hi <= 127:
            continue
        out = node.outputs[0]
        pre = graph.unique_name(f"{out}_pre_act")
        matrix = node.replace(outputs=(pre,)).with_attrs(act="none", clip_lo=None, clip_hi=None)
        clip_name = graph.unique_name(f"{node.name}_act")
        clip_nodes, clip_infos = _clip_nodes(graph, clip_name, pre, out, lo, hi)
        substitute[node.name] = [matrix, *clip_nodes]
        infos += [dataclasses.replace(graph.tensor(out), name=pre), *clip_infos]
    if not substitute:
        return graph
    return validate(graph.edit(substitute=substitute, tensors=infos))


@dataclasses.dataclass(frozen=True)
class Opportunity:
    kind: str                  # "epilogue", "pool", "conv_pool", "chain", "residual", "table" or "skip"
    nodes: tuple[str, ...]     # producer first

    def __str__(self) -> str:
        return f"{self.kind}({' -> '.join(self.nodes)})"


@dataclasses.dataclass
class Candidate:
    """One way to implement an opportunity: the rewritten graph and the kernels of the nodes involved."""

    name: str
    graph: Graph
    nodes: tuple[str, ...]
    kernels: list = dataclasses.field(default_factory=list)
    cost: Cost | None = None


@dataclasses.dataclass
class FusionDecision:
    opportunity: Opportunity
    candidates: list[tuple[str, Cost]]
    chosen: str
    gain: float                # predicted fraction of the objective saved against the separate candidate
    objective: str = "cycles"
    replayed: bool = False     # taken over from a decision at another input shape (``fuse(replay=...)``)
    forced: bool = False       # its kind was forced (``fuse(force=...)``): taken whatever the gain
    by_bytes: bool = False     # taken under the threshold: no slower, far fewer bytes (BYTES_TIE_BREAK)

    def __str__(self) -> str:
        if self.replayed:
            return f"{self.opportunity}: -> {self.chosen} (the decision at another input shape)"
        costs = ", ".join(f"{name}: {cost.describe()}" for name, cost in self.candidates)
        what = "" if self.objective == "cycles" else f" in {self.objective}"
        forced = "forced, " if self.forced else ""
        by_bytes = ""
        if self.by_bytes:
            separate, chosen = (dict(self.candidates)[name] for name in ("separate", self.chosen))
            by_bytes = f", {100 * (1 - chosen.bytes / separate.bytes):.0f}% fewer bytes: no slower, taken"
        return (f"{self.opportunity}: {costs} -> {self.chosen} ({forced}{100 * self.gain:.1f}% predicted "
                f"gain{what}{by_bytes})")


def _sole_reader(graph: Graph, tensor: str) -> Node | None:
    readers = graph.consumers(tensor)
    if len(readers) != 1 or tensor in graph.outputs:
        return None
    return readers[0]


def _fusable_residual(graph: Graph, node: Node, reader: Node) -> bool:
    """``reader`` is a ``QAdd`` of ``node``'s int8 output (first operand) and another tensor at one scale,
    with the sum's zero point the product's: the epilogue's residual stage computes it."""
    if reader.qualified_op != f"{BRAZE_DOMAIN}.QAdd" or reader.inputs[0] != node.outputs[0] \
            or reader.inputs[1] == node.outputs[0] or _residual_of(node) is not None \
            or "shift" in reader.attrs \
            or node.attrs.get("act", "none") != "none" or node.attrs.get("out", "spad") != "spad":
        return False
    infos = [graph.tensor(t) for t in (node.outputs[0], reader.inputs[1], reader.outputs[0])]
    if any(info.quant is None or info.dtype != "int8" or len(info.quant.scale) != 1 for info in infos) \
            or len({np.float32(info.quant.scale[0]) for info in infos}) != 1:
        return False
    out_zp = int(node.attrs.get("out_zp", 0))
    return int(reader.attrs.get("x_zp", 0)) == out_zp == int(reader.attrs.get("out_zp", 0))


def _fusable_pool(graph: Graph, node: Node, reader: Node) -> bool:
    """``reader`` is an int8 ``MaxPool`` of ``node``'s int8 output (no residual input, not pooled yet)
    with a square window equal to its stride, no padding, dilation, ceil mode or indices."""
    if reader.op_type != "MaxPool" or reader.domain or node.attrs.get("out", "spad") != "spad" \
            or node.attrs.get("pool", 1) != 1 or _residual_of(node) is not None \
            or node.attrs.get("act", "none") == "table" \
            or len([t for t in reader.outputs if t]) != 1 or graph.tensor(node.outputs[0]).dtype != "int8":
        return False
    shape = graph.tensor(node.outputs[0]).shape
    kernel = tuple(reader.attrs.get("kernel_shape", ()))
    if shape is None or len(shape) != 4 or len(kernel) != 2 or kernel[0] != kernel[1] \
            or not all(isinstance(d, int) for d in shape[2:]):
        return False
    attrs = reader.attrs
    if tuple(attrs.get("strides", (1, 1))) != kernel or tuple(attrs.get("dilations", (1, 1))) != (1, 1) \
            or attrs.get("ceil_mode", 0) or attrs.get("storage_order", 0):
        return False
    return conv_pads(tuple(shape[2:]), kernel, kernel, (1, 1), attrs) == (0, 0, 0, 0) \
        and min(shape[2:]) >= kernel[0] > 1


def _fusable_table(graph: Graph, node: Node, reader: Node) -> bool:
    """``reader`` is a ``braze.QTable`` of ``node``'s int8 output, which has no activation or pooling yet."""
    return (reader.qualified_op == QTABLE and reader.inputs[0] == node.outputs[0]
            and node.attrs.get("act", "none") == "none" and node.attrs.get("out", "spad") == "spad"
            and node.attrs.get("pool", 1) == 1 and graph.tensor(node.outputs[0]).dtype == "int8")


def find_opportunities(graph: Graph) -> list[Opportunity]:
    """Every fusion opportunity, in topological order of the first node."""
    found = []
    for node in graph.operators():
        reader = _sole_reader(graph, node.outputs[0]) if node.outputs else None
        if reader is None:
            continue
        if node.qualified_op in MATRIX_OPS and node.attrs.get("act", "none") == "none" \
                and node.attrs.get("out", "spad") == "spad" and _clip_bounds(graph, reader) is not None:
            found.append(Opportunity("epilogue", (node.name, reader.name)))
        elif node.qualified_op in MATRIX_OPS and _fusable_table(graph, node, reader):
            found.append(Opportunity("table", (node.name, reader.name)))
        elif node.qualified_op in MATRIX_OPS and _fusable_residual(graph, node, reader):
            found.append(Opportunity("residual", (node.name, reader.name)))
        elif node.qualified_op == f"{BRAZE_DOMAIN}.QConv" and _fusable_pool(graph, node, reader):
            found.append(Opportunity("conv_pool", (node.name, reader.name)))
        elif _clip_bounds(graph, node) is not None:
            if reader.op_type == "MaxPool" and not reader.domain \
                    and graph.tensor(reader.inputs[0]).dtype == "int8" \
                    and len([t for t in reader.outputs if t]) == 1:
                found.append(Opportunity("pool", (node.name, reader.name)))
            elif _clip_bounds(graph, reader) is not None:
                found.append(Opportunity("chain", (node.name, reader.name)))
    # Layer fusion last: a convolution joins a chain once its own epilogue and pooling are decided.
    for node in graph.operators():
        reader = _sole_reader(graph, node.outputs[0]) if node.outputs else None
        if reader is not None and (can_be_inner(graph, node)
                                   and (can_be_last(graph, reader) and reader.inputs[0] == node.outputs[0]
                                        or node.qualified_op == QCONV_CHAIN
                                        and _fusable_chain_pool(graph, node, reader))
                                   or can_close(graph, node, reader)):
            found.append(Opportunity("conv_chain", (node.name, reader.name)))
    return found


def _fusable_chain_pool(graph: Graph, node: Node, reader: Node) -> bool:
    """``reader`` is a ``MaxPool`` the last layer of chain ``node`` can do (as ``conv_pool``'s)."""
    last = layer_nodes(node)[-1].replace(outputs=node.outputs)
    return _fusable_pool(graph, last, reader)


def _tiling_variants(graph: Graph, node: Node, config: Config, cache: KernelCache
                     ) -> list[tuple[str, Tiling]]:
    """Forced tilings to price against the kernel library's own choice: half the M tile, and single
    buffering (the library keeps its fastest tiling under the timing model; another cost model may
    disagree, which is what these candidates are for)."""
    built = node_kernel(graph, node, config, cache)
    if built is None:
        return []
    fields = {f.name for f in dataclasses.fields(Tiling)}
    chosen = Tiling(**{k: v for k, v in built[1].tiling.items() if k in fields})
    variants = []
    if chosen.m > 1:
        variants.append((f"tiling m={-(-chosen.m // 2)}", dataclasses.replace(chosen, m=-(-chosen.m // 2))))
    if chosen.buffers > 1 and not chosen.k_block:
        # Single buffering keeps one A tile of all K chunks (as the library's own single-buffered tilings).
        k = built[1].tiling.get("K") or built[1].operands["A"].shape[1]
        chunks = -(-k // config.rows)
        variants.append(("tiling single-buffered",
                         dataclasses.replace(chosen, buffers=1, first_pieces=1, a_slots=chunks)))
    return variants


def _fused_at_tilings(rewritten: Graph, name: str, fused: Node, config: Config, cache: KernelCache,
                      tiling_variants: bool) -> list[Candidate]:
    """The fused candidate, and with ``tiling_variants`` the same at the :func:`_tiling_variants`."""
    candidates = [Candidate("fused", rewritten, (name,))]
    for label, tiling in _tiling_variants(rewritten, fused, config, cache) if tiling_variants else []:
        variant = rewritten.edit(substitute={name: fused.with_attrs(tiling=tiling)})
        candidates.append(Candidate(f"fused, {label}", variant, (name,)))
    return candidates


def _candidates(graph: Graph, opportunity: Opportunity, config: Config, cache: KernelCache, *,
                tiling_variants: bool = True) -> list[Candidate]:
    first, second = (graph.node(name) for name in opportunity.nodes)
    separate = Candidate("separate", graph, opportunity.nodes)
    ops = _ops_of(first)[0] + _ops_of(second)[0]
    op_types = _ops_of(first)[1] + _ops_of(second)[1]
    if opportunity.kind == "epilogue":
        lo, hi = _clip_bounds(graph, second)
        out = second.outputs[0]
        fused = first.replace(outputs=(out,)).with_attrs(act="clip", clip_lo=lo, clip_hi=hi, fused_ops=ops,
                                                        fused_op_types=op_types)
        info = dataclasses.replace(graph.tensor(first.outputs[0]), name=out,
                                   shape=graph.tensor(out).shape or graph.tensor(first.outputs[0]).shape)
        rewritten = graph.edit(remove=[second.name], substitute={first.name: fused}, tensors=[info])
        return [separate, *_fused_at_tilings(rewritten, first.name, fused, config, cache, tiling_variants)]
    if opportunity.kind == "table":
        out = second.outputs[0]
        fused = first.replace(outputs=(out,)).with_attrs(act="table", table=tuple(second.attrs["table"]),
                                                        fused_ops=ops, fused_op_types=op_types)
        rewritten = graph.edit(remove=[second.name], substitute={first.name: fused})
        return [separate, Candidate("fused", rewritten, (first.name,))]
    if opportunity.kind == "residual":
        out = second.outputs[0]
        inputs = (*first.inputs[:3], *[""] * (3 - len(first.inputs)), second.inputs[1])
        fused = first.replace(inputs=inputs, outputs=(out,)).with_attrs(
            residual_zp=int(second.attrs.get("y_zp", 0)), fused_ops=ops, fused_op_types=op_types)
        rewritten = graph.edit(remove=[second.name], substitute={first.name: fused})
        return [separate, Candidate("fused", rewritten, (first.name,))]
    if opportunity.kind == "conv_pool":
        out = second.outputs[0]
        # A tiling forced on the convolution tiles the unpooled rows; the tiling pass picks one again.
        fused = first.replace(outputs=(out,)).with_attrs(pool=int(second.attrs["kernel_shape"][0]),
                                                        tiling=None, fused_ops=ops, fused_op_types=op_types)
        rewritten = graph.edit(remove=[second.name], substitute={first.name: fused})
        # Priced at other tilings too, as the tiling pass will retile it (the digits CNN's fused conv2+pool
        # on default: 27,529 analytic cycles at half its M tile, the one the tiling pass gives it, 29,177
        # at the library's; 34,878 measured on the RTL at the former).
        return [separate, *_fused_at_tilings(rewritten, first.name, fused, config, cache, tiling_variants)]
    if opportunity.kind == "conv_chain":
        # The layers in one conv2d_chain kernel; the intermediate activation stays in the scratchpad.
        if second.op_type == "MaxPool":
            fused = with_pool(first, int(second.attrs["kernel_shape"][0]), ops, op_types, second.outputs[0])
        elif second.op_type == "QMatMul":          # the chain closed by an FC layer
            fused = with_fc(first, second, ops, op_types)
        else:
            fused = chain_node(graph, first, second)
        rewritten = graph.edit(remove=[second.name], substitute={first.name: fused})
        return [separate, Candidate("chained", rewritten, (first.name,))]
    if opportunity.kind == "pool":
        lo, hi = _clip_bounds(graph, first)
        pooled = graph.unique_name(f"{second.outputs[0]}_before_act")
        pool = second.replace(inputs=(first.inputs[0],), outputs=(pooled,))
        clip_name = graph.unique_name(f"{first.name}_after_pool")
        clip_nodes, infos = _clip_nodes(graph, clip_name, pooled, second.outputs[0], lo, hi)
        infos.append(dataclasses.replace(graph.tensor(second.outputs[0]), name=pooled,
                                         quant=graph.tensor(first.inputs[0]).quant))
        rewritten = graph.edit(remove=[first.name], substitute={second.name: [pool, *clip_nodes]},
                               tensors=infos)
        return [separate, Candidate("pool-first", rewritten, (second.name, clip_name))]
    lo1, hi1 = _clip_bounds(graph, first)
    lo2, hi2 = _clip_bounds(graph, second)
    if hi1 < lo2:                      # disjoint ranges: the result is constant
        lo = hi = lo2
    elif lo1 > hi2:
        lo = hi = hi2
    else:
        lo, hi = max(lo1, lo2), min(hi1, hi2)
    name = graph.unique_name(f"{first.name}_{second.name}")
    clip_nodes, infos = _clip_nodes(graph, name, first.inputs[0], second.outputs[0], lo, hi, ops)
    rewritten = graph.edit(remove=[first.name], substitute={second.name: clip_nodes}, tensors=infos)
    return [separate, Candidate("merged", rewritten, (name,))]


def _kernels(candidate: Candidate, config: Config, cache: KernelCache) -> list[Kernel] | None:
    """The candidate's kernels (also kept on it), or None if one cannot be generated."""
    kernels = []
    for name in candidate.nodes:
        built = node_kernel(candidate.graph, candidate.graph.node(name), config, cache)
        if built is None:
            return None
        kernels.append(built[1])
    candidate.kernels = kernels
    return kernels


def _frugal(priced: list[tuple[Candidate, Cost]], tie_break: float | None) -> tuple[Candidate, Cost] | None:
    """Of the fused candidates predicted no slower than the separate one (``priced[0]``), the one
    moving the fewest external bytes, if it moves at least ``tie_break`` of them fewer (never when
    that is None)."""
    base = priced[0][1]
    if tie_break is None:
        return None
    frugal = [(c, cost) for c, cost in priced[1:]
              if cost.cycles <= base.cycles and cost.bytes < base.bytes
              and base.bytes - cost.bytes >= tie_break * base.bytes]
    return min(frugal, key=lambda pair: (pair[1].bytes, pair[1].cycles), default=None)


#: Kinds of node whose output is an activation's (the ``skip`` opportunity's "after a ReLU").
_ACTIVATIONS = ("relu", "clip")


def _after_activation(graph: Graph, tensor: str) -> bool:
    producer = graph.producer(tensor)
    if producer is None:
        return False
    return (producer.op_type in ("Relu", "Clip") and not producer.domain) \
        or producer.attrs.get("act", "none") in _ACTIVATIONS


def _profiled_zero_fraction(profile: TensorProfile, config: Config, M: int, K: int, N: int, param_rows: int,
                            out_int32: bool, chunks: int) -> float | None:
    """The profiled fraction of zero blocks of the skipping kernel of ``chunks`` K-chunks a block; None
    (not a candidate) when no block of that size is zero: it would only add the tests."""
    rows = skipping_tile_rows(config, M, K, N, param_rows=param_rows, out_int32=out_int32, chunks=chunks)
    return (profile.zero_block_fraction(rows, config.rows * chunks) or None) if rows else None


def skip_opportunities(graph: Graph, config: Config, profiles: Mapping[str, TensorProfile]
                       ) -> list[tuple[Opportunity, float, int]]:
    """The ``skip`` opportunities of ``graph``, each with its block size in K-chunks of ``rows`` (the one
    of :func:`~braze.sw.compiler.kernels.looped.best_skipping_chunks` at the profile) and the profiled
    fraction of zero blocks at it (the M tile of
    :func:`~braze.sw.compiler.kernels.looped.skipping_tile_rows` by ``chunks*rows``)."""
    found = []
    for node in graph.operators():
        if node.qualified_op != f"{BRAZE_DOMAIN}.QMatMul" or node.device != "accel" or _residual_of(node) \
                or node.attrs.get("act", "none") == "table" or node.attrs.get("skip_zero_blocks") is not None:
            continue
        profile = profiles.get(node.inputs[0])
        plan = plan_node(graph, node)
        if profile is None or isinstance(plan, str) or not _after_activation(graph, node.inputs[0]):
            continue
        M, K, N = plan.recipe.args
        options = dict(plan.recipe.options)
        param_rows = len(plan.constants.keys() & {"bias", "mult", "shift"})
        if K % config.rows or N % config.cols:
            continue
        kernel_options = {key: options[key] for key in ("bias", "requant", "act", "clip", "out_zp", "out")
                          if key in options}
        fraction_at = functools.partial(_profiled_zero_fraction, profile, config, M, K, N, param_rows,
                                        options.get("out") == "int32")
        try:
            chunks, fraction = best_skipping_chunks(config, M, K, N, fraction_at, **kernel_options)
        except KernelError:
            continue
        if fraction:
            found.append((Opportunity("skip", (node.name,)), fraction, chunks))
    return found


def _decide_skips(graph: Graph, config: Config, profiles: Mapping[str, TensorProfile],
                  cost_model: CostModel, threshold: float, cache: KernelCache, objective: str,
                  log: Callable[[FusionDecision], None] | None) -> tuple[Graph, list[FusionDecision]]:
    """Price every ``skip`` opportunity against the node as it is; take it when it saves ``threshold``."""
    decisions = []
    for opportunity, fraction, chunks in skip_opportunities(graph, config, profiles):
        node = graph.node(opportunity.nodes[0])
        rewritten = graph.edit(substitute={node.name: node.with_attrs(skip_zero_blocks=round(fraction, 4),
                                                                      skip_chunks=chunks)})
        candidates = [Candidate("separate", graph, opportunity.nodes),
                      Candidate(f"skip zero blocks ({100 * fraction:.0f}% zero) of {chunks * config.rows} "
                                f"columns", rewritten, opportunity.nodes)]
        built = [(c, kernels) for c in candidates if (kernels := _kernels(c, config, cache)) is not None]
        if len(built) < 2:
            continue
        costs = cost_model.predict_candidates([kernels for _, kernels in built], config,
                                              energy=objective != "cycles")
        (plain, plain_cost), (skip, skip_cost) = zip([c for c, _ in built], costs, strict=True)
        saved = plain_cost.value(objective) - skip_cost.value(objective)
        gain = saved / max(1.0, plain_cost.value(objective))
        chosen = skip if gain >= threshold else plain
        decision = FusionDecision(opportunity, [(plain.name, plain_cost), (skip.name, skip_cost)],
                                  chosen.name, gain if chosen is skip else 0.0, objective)
        decisions.append(decision)
        if log is not None:
            log(decision)
        if chosen is skip:
            graph = validate(rewritten)
    return graph, decisions


def fuse(graph: Graph, config: Config, *, cost_model: CostModel | None = None,
         threshold: float = DEFAULT_THRESHOLD, cache: KernelCache | None = None,
         log: Callable[[FusionDecision], None] | None = None,
         objective: str = "cycles", replay: Sequence[FusionDecision] = (),
         profiles: Mapping[str, TensorProfile] | None = None, force: Collection[str] = (),
         bytes_tie_break: float | None = BYTES_TIE_BREAK) -> tuple[Graph, list[FusionDecision]]:
    """Fuse where the cost model predicts a gain of at least ``threshold``; returns the graph and decisions.

    The gain is in ``objective`` (:data:`~braze.sw.compiler.cost.OBJECTIVES`: cycles, energy or
    the energy-delay product).  ``graph`` needs static shapes (kernels are generated to price
    candidates).

    ``replay``: decisions made for this graph at another input shape (a batch size, say).  An
    opportunity they decided is decided the same way without pricing (a forced tiling of the choice
    is left to the tiling pass: :func:`~braze.sw.compiler.tiling.specialise_tilings`); others are priced.

    ``profiles``: tensor profiles of ``graph`` (:func:`~braze.sw.compiler.profile.profile_graph`);
    with them, the ``skip`` opportunities are priced last, at the profiled zero-block fractions.

    ``force``: opportunity kinds (``"conv_chain"``, say) whose cheapest fused candidate is taken
    whatever its predicted gain, where one can be generated (to measure a fusion the cost model
    does not choose); the decision says it was forced.

    ``bytes_tie_break``: under the ``cycles`` objective, a fused candidate predicted no slower than the
    separate kernels that moves at least this fraction fewer external bytes is taken under the
    threshold (:data:`BYTES_TIE_BREAK`; None: never).
    """
    if not 0 <= threshold < 1:
        raise ValueError(f"fusion threshold must be in [0, 1), not {threshold!r}")
    if bytes_tie_break is not None and not 0 < bytes_tie_break <= 1:
        raise ValueError(f"bytes_tie_break must be in (0, 1] or None, not {bytes_tie_break!r}")
    forceable = [kind for kind in OPPORTUNITY_KINDS if kind != "skip"]
    unknown = sorted(set(force) - set(forceable))
    if unknown:
        raise ValueError(f"force={sorted(force)!r}: {', '.join(unknown)} not among the opportunity kinds "
                         f"that can be forced ({', '.join(forceable)})")
    check_objective(objective)
    cost_model = cost_model or TimingCostModel()
    cache = cache if cache is not None else default_cache()
    graph = split_activations(graph)
    decisions: list[FusionDecision] = []
    decided: set[tuple[str, tuple[str, ...]]] = set()
    replayed = {decision.opportunity: decision.chosen for decision in replay}
    while True:
        pending = [o for o in find_opportunities(graph) if (o.kind, o.nodes) not in decided]
        if not pending:
            break
        opportunity = pending[0]
        decided.add((opportunity.kind, opportunity.nodes))
        earlier = replayed.get(opportunity)
        chosen = None
        if earlier is not None:
            # The kind of candidate chosen before ("fused" for "fused, tiling m=96"), generating nothing.
            kind = earlier.split(",")[0]
            chosen = next((c for c in _candidates(graph, opportunity, config, cache, tiling_variants=False)
                           if c.name == kind), None)
            decision = FusionDecision(opportunity, [], kind, 0.0, objective, replayed=True)
        if chosen is None:
            candidates = _candidates(graph, opportunity, config, cache)
            # A candidate whose kernel cannot be generated (a forced tiling that does not fit) drops out.
            built = [(c, kernels) for c in candidates if (kernels := _kernels(c, config, cache)) is not None]
            costs = cost_model.predict_candidates([kernels for _, kernels in built], config,
                                                  energy=objective != "cycles")
            priced = [(c, cost) for (c, _), cost in zip(built, costs, strict=True)]
            if len(priced) < 2 or priced[0][0].name != "separate":
                continue
            base = priced[0][1]
            forced = opportunity.kind in force
            # Forced: the cheapest fused candidate, even if the separate kernels are cheaper.
            best, best_cost = min(priced[1:] if forced else priced, key=lambda pair: pair[1].key(objective))
            gain = (base.value(objective) - best_cost.value(objective)) / max(1.0, base.value(objective))
            chosen = best if best is not priced[0][0] and (gain >= threshold or forced) else priced[0][0]
            frugal = None
            if chosen is priced[0][0] and objective == "cycles":
                frugal = _frugal(priced, bytes_tie_break)
            by_bytes = frugal is not None
            if frugal is not None:
                best, best_cost = frugal
                chosen = best
                gain = (base.value(objective) - best_cost.value(objective)) / max(1.0, base.value(objective))
            decision = FusionDecision(opportunity, [(c.name, cost) for c, cost in priced], chosen.name,
                                      gain if chosen is best else 0.0, objective, forced=forced,
                                      by_bytes=by_bytes)
        decisions.append(decision)
        if log is not None:
            log(decision)
        if chosen.name != "separate":
            graph = validate(chosen.graph)
            # The rewritten nodes may open new opportunities (an epilogue after a merged chain).
            decided = {d for d in decided if all(n in graph for n in d[1])}
    if profiles:
        graph, skips = _decide_skips(graph, config, profiles, cost_model, threshold, cache, objective, log)
        decisions += skips
    return graph, decisions
