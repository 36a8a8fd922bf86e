"""Quantization: float models to int8, and quantized ONNX models to Braze's int8 ops.

Braze's quantized ops
---------------------
Two ops of domain ``"braze"`` carry every quantized matrix product:

``QMatMul(x, w, bias?, residual?)``
    ``x`` int8 ``(..., K)`` (or any rank with the layout note ``flatten_a=axis``),
    ``w`` an int8 constant ``(K, N)``, ``bias`` an int32 constant ``(N,)``
    (the empty name when absent and a residual follows).
``QConv(x, w, bias?, residual?)``
    ``x`` int8 NCHW, ``w`` an int8 constant OIHW, ONNX Conv attributes
    (``strides``, ``pads``, ``auto_pad``); padding is the input zero point,
    i.e. a real zero.

``QActMatMul(a, b)``
    the product of two int8 *activations* (attention's ``Q @ K^T``, ``P @ V``), batched and
    broadcast as ONNX MatMul, with zero points ``a_zero_point``/``b_zero_point``; ``a_heads``,
    ``b_heads``, ``out_heads`` mark an operand (or the output) stored heads-interleaved
    (``[..., rows, H, cols]``, see :func:`fold_head_transposes`).

``residual`` (optional) is an int8 tensor of the output's shape and scale
with zero point ``residual_zp``: a residual connection ``Add`` folded in.

Both compute, exactly as the accelerator does, ``acc = sum((x - x_zero_point) * w)``
in int32 and then the ``EPILOGUE`` chain of :func:`braze.isa.arith.epilogue`:
``+ bias``, requantize with per-output-channel ``mult``/``shift`` and ``out_zp``,
activation ``act`` (``"none"``, ``"relu"``, ``"clip"`` with ``clip_lo``/``clip_hi``),
saturation to int8 (``out="spad"``) or int32 (``out="acc"``, no requantize,
used for ``MatMulInteger``/``ConvInteger``).  (Lowering folds ``x_zero_point``
into the bias: ``-x_zp * sum_k w[k, j]``.)  With a residual, the int32 value
after requantization (``out_zp`` included) gets ``residual - residual_zp``
added before the activation and the single saturation; the hardware adds
the raw residual, so lowering folds ``-residual_zp`` into its ``out_zp``
(exact: both are int32 additions before any saturation).  This is the QDQ
graph's ``Q(DQ(acc) + DQ(r))`` exactly (up to the requantize rounding every
Braze op has) when ``r``'s scale is the output's: ``(r - r_zp) * s / s`` is
an integer, so it commutes with the rounding.

Choices
-------
* Weights: per-output-channel **symmetric** int8 in ``[-127, 127]`` (zero
  point 0, so the array multiplies raw int8 values).
* Activations: per-tensor **asymmetric** int8 by default (``scale = (hi - lo) / 255``
  over a range widened to include 0, zero point in ``[-128, 127]``), or
  symmetric with ``symmetric_activations=True``.  ReLU after requantization
  is saturation at the zero point, so a fused ReLU becomes ``act="clip"``
  with ``clip_lo = out_zp``, ``clip_hi = 127``.
* Calibration: ``"minmax"`` (observed extremes, default) or ``"percentile"``
  (``[100-p, p]`` percentiles of the observed values, default ``p = 99.99``),
  over the user's calibration inputs (:mod:`braze.sw.compiler.profile`).
* Requantization multipliers: :func:`quantize_multiplier`.
* Residual connections: an ``Add`` of a MatMul/Gemm/Conv output (its only
  reader) and another tensor of its shape, optionally followed by Relu/Clip,
  is calibrated at the Add output; the product is requantized straight to
  the Add output's parameters and the other operand quantized at them too,
  so the addition folds exactly into the op (see above).
* uint8 activations (onnxruntime's ``QUInt8``) are shifted to int8 exactly:
  ``q8 = q - 128`` with ``zero_point8 = zero_point - 128``, so ``q8 - zero_point8 == q - zero_point``.

The float path (:func:`quantize`) first inserts QuantizeLinear/DequantizeLinear
pairs (:func:`insert_qdq`, the format onnxruntime's ``quantize_static`` writes),
then the same lowering as for imported QDQ models (:func:`lower_qdq`) turns
each ``DQ -> MatMul/Gemm/Conv [-> Relu/Clip] -> Q`` group into a Braze op.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

import numpy as np

from braze.isa.errors import BrazeError

from .frontend import BRAZE_DOMAIN
from .ir import Graph, Node, NodeKind, QuantParams, TensorInfo, constant_info, constant_node
from .kernels.common import MAX_VECTOR_MULT
from .passes import simplify
from .profile import profile_graph
from .tables import lower_table_activations
from .validate import validate

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
#: Symmetric weights use [-WEIGHT_MAX, WEIGHT_MAX], so negation never overflows.
WEIGHT_MAX = 127
#: Largest multiplier of a two-scale ``braze.QAdd``: the vector unit's int16 immediate.
MAX_QADD_MULT = MAX_VECTOR_MULT
#: Ops whose int8 output has exactly the input's quantization (they only select or move values).
SCALE_PRESERVING = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                              "Identity"})


class QuantizationError(BrazeError):
    """A model cannot be quantized as asked; names the node or tensor."""


# ---------------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------------

def quantize_multiplier(real: float) -> tuple[int, int]:
    """Fixed-point form of a positive real multiplier for the ``EPILOGUE`` requantize stage.

    Returns ``(mult, shift)`` with ``real ~= mult / 2**shift``, ``mult`` in
    ``[2**30, 2**31)`` (a positive int32 with 31 significant bits) and
    ``shift`` in ``0..63``, so that ``round_shift(x * mult, shift)``
    (:func:`braze.isa.arith.round_shift`) approximates ``x * real`` with a
    relative multiplier error below ``2**-31``.  Multipliers below ``2**-32``
    cannot keep 31 bits within ``shift <= 63``: they get ``shift = 63`` and a
    smaller ``mult`` (0 for ``real < 2**-64``).
    """
    real = float(real)
    if not (real > 0 and math.isfinite(real)):
        raise ValueError(f"requantization multiplier must be positive and finite, got {real!r}")
    mantissa, exponent = math.frexp(real)            # real = mantissa * 2**exponent, mantissa in [0.5, 1)
    mult = round(mantissa * (1 << 31))
    if mult == 1 << 31:
        mult, exponent = 1 << 30, exponent + 1
    shift = 31 - exponent
    if shift < 0:
        raise ValueError(f"requantization multiplier {real!r} is too large (must be < 2**31)")
    if shift > 63:
        return round(real * 2.0**63), 63
    return mult, shift


def activation_params(lo: float, hi: float, *, symmetric: bool = False) -> QuantParams:
    """int8 per-tensor parameters covering ``[lo, hi]`` (widened to include 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise QuantizationError(f"calibration range [{lo}, {hi}] is not finite")
    if symmetric:
        bound = max(-lo, hi)
        scale = bound / INT8_MAX if bound > 0 else 1.0
        return QuantParams((np.float32(scale),), (0,), None, "int8")
    scale = (hi - lo) / (INT8_MAX - INT8_MIN) if hi > lo else 1.0
    scale = float(np.float32(scale))
    zero_point = int(np.clip(round(INT8_MIN - lo / scale), INT8_MIN, INT8_MAX))
    return QuantParams((scale,), (zero_point,), None, "int8")


def quantize_weights(weights: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 weights: ``(q, scales)`` with ``weights ~= q * scales`` along ``axis``."""
    weights = np.asarray(weights, dtype=np.float32)
    reduce = tuple(i for i in range(weights.ndim) if i != axis % weights.ndim)
    bound = np.abs(weights).max(axis=reduce)
    scales = np.where(bound > 0, bound / WEIGHT_MAX, 1.0).astype(np.float32)
    shape = [1] * weights.ndim
    shape[axis % weights.ndim] = -1
    q = np.clip(np.rint(weights / scales.reshape(shape)), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
    return q, scales


def shift_uint8(values: np.ndarray, zero_point: int) -> tuple[np.ndarray, int]:
    """uint8 quantized values as int8, exactly: ``(values - 128, zero_point - 128)``."""
    values = np.asarray(values)
    if values.dtype != np.uint8:
        raise TypeError(f"shift_uint8 needs uint8 values, got {values.dtype}")
    return (values.astype(np.int16) - 128).astype(np.int8), int(zero_point) - 128


def quantize_bias(bias: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """int32 bias in units of ``x_scale * w_scale[j]`` (saturated)."""
    values = np.rint(np.asarray(bias, np.float64) / np.asarray(scales, np.float64))
    return np.clip(values, INT32_MIN, INT32_MAX).astype(np.int32)


# ---------------------------------------------------------------------------------------------------
# Float models: calibrate, insert Q/DQ
# ---------------------------------------------------------------------------------------------------

class CalibrationError(QuantizationError, ValueError):
    """Calibration data that cannot calibrate the model: non-finite values, or ranges that are not finite."""


def calibrate(graph: Graph, inputs: Iterable[Mapping[str, np.ndarray]], *, method: str = "minmax",
              percentile: float = 99.99) -> dict[str, tuple[float, float]]:
    """Activation ranges of every float tensor over the calibration inputs.

    Raises
    ------
    CalibrationError
        When a calibration input holds NaN or infinite values, or a tensor computed from the
        inputs does (a range that is not finite quantizes nothing meaningfully).
    """
    inputs = list(inputs)
    for index, feeds in enumerate(inputs):
        for name, value in feeds.items():
            value = np.asarray(value)
            if value.dtype.kind in "fc" and not np.isfinite(value).all():
                bad = ~np.isfinite(value)
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                raise CalibrationError(
                    f"calibration input {name!r} (set {index}) has {int(np.count_nonzero(np.isnan(value)))} "
                    f"NaN and {int(np.count_nonzero(np.isinf(value)))} infinite values (first at index "
                    f"{first}); calibration data must be finite")
    profiles = profile_graph(graph, inputs)
    ranges = {name: p.range(method, percentile) for name, p in profiles.items()
              if np.dtype(p.dtype).kind == "f"}
    for name, (low, high) in ranges.items():
        if not (math.isfinite(low) and math.isfinite(high)):
            raise CalibrationError(f"tensor {name!r} of graph {graph.name!r} reaches non-finite values on "
                                   f"the calibration data (range [{low}, {high}]); it cannot be quantized")
    return ranges


def fuse_bias_add(graph: Graph) -> Graph:
    """``Add(MatMul(x, W), c)`` with 2-D ``x``, constant 2-D ``W`` and a constant ``c`` of shape
    ``(N,)`` or ``(1, N)`` becomes ``Gemm(x, W, c)`` (when the MatMul has no other reader)."""
    substitute: dict[str, Node] = {}
    remove: list[str] = []
    add: list[Node] = []
    infos: list[TensorInfo] = []
    for node in graph.operators():
        if node.op_type != "MatMul" or node.domain or len(graph.consumers(node.outputs[0])) != 1:
            continue
        weight = graph.constant(node.inputs[1])
        x = graph.tensor(node.inputs[0])
        reader = graph.consumers(node.outputs[0])[0]
        if weight is None or weight.ndim != 2 or x.shape is None or len(x.shape) != 2 \
                or reader.op_type != "Add" or reader.domain or node.outputs[0] in graph.outputs:
            continue
        other = reader.inputs[1] if reader.inputs[0] == node.outputs[0] else reader.inputs[0]
        bias = graph.constant(other)
        if bias is None or bias.size != weight.shape[1] or bias.shape not in ((weight.shape[1],),
                                                                               (1, weight.shape[1])):
            continue
        name = graph.unique_name(f"{other}_bias")
        value = bias.reshape(-1).astype(weight.dtype)
        add.append(constant_node(name, value))
        infos.append(constant_info(name, value))
        substitute[reader.name] = Node(reader.name, NodeKind.OPERATOR, "Gemm",
                                       (node.inputs[0], node.inputs[1], name), reader.outputs)
        remove.append(node.name)
    if not substitute:
        return graph
    return graph.edit(remove=remove, substitute=substitute, add=add, tensors=infos)


class _Builder:
    """Collects the nodes and tensor metadata a rewrite adds to a graph."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.add: list[Node] = []
        self.substitute: dict[str, Node | list[Node]] = {}
        self.remove: set[str] = set()
        self.infos: dict[str, TensorInfo] = {}
        self.names: set[str] = set()

    def name(self, stem: str) -> str:
        name = self.graph.unique_name(stem)
        index = 1
        while name in self.names:
            name = self.graph.unique_name(f"{stem}_{index}")
            index += 1
        self.names.add(name)
        return name

    def constant(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.add.append(constant_node(name, value))
        self.infos[name] = constant_info(name, value)
        return name

    def op(self, op_type: str, inputs, outputs, *, domain: str = "", stem: str | None = None,
           **attrs) -> Node:
        node = Node(self.name(stem or f"{op_type}_{outputs[0]}"), NodeKind.OPERATOR, op_type, tuple(inputs),
                    tuple(outputs), attrs, domain=domain)
        self.add.append(node)
        return node

    def quantize(self, source: str, target: str, params: QuantParams, *,
                 info: TensorInfo | None = None) -> None:
        """``target = QuantizeLinear(source)`` with per-tensor ``params``."""
        dtype = np.dtype(params.dtype)
        scale = self.constant(f"{target}_scale", np.float32(params.scale[0]))
        zero = self.constant(f"{target}_zero_point", np.array(params.zero_point[0], dtype))
        self.op("QuantizeLinear", (source, scale, zero), (target,))
        shape = (info or self.graph.tensor(source)).shape
        self.infos[target] = TensorInfo(target, shape, dtype.name, params)

    def dequantize(self, source: str, target: str, params: QuantParams, *,
                   info: TensorInfo | None = None) -> None:
        """``target = DequantizeLinear(source)`` with per-tensor ``params``."""
        dtype = np.dtype(params.dtype)
        scale = self.constant(f"{source}_dq_scale", np.float32(params.scale[0]))
        zero = self.constant(f"{source}_dq_zero_point", np.array(params.zero_point[0], dtype))
        self.op("DequantizeLinear", (source, scale, zero), (target,))
        shape = (info or self.graph.tensor(source)).shape
        self.infos[target] = TensorInfo(target, shape, "float32")

    def build(self) -> Graph:
        return self.graph.edit(remove=self.remove, substitute=self.substitute, add=self.add,
                               tensors=self.infos.values())


def _fused_activation(graph: Graph, tensor: str) -> Node | None:
    """The Relu or constant-bound Clip that is the only reader of ``tensor``, if any."""
    readers = graph.consumers(tensor)
    if len(readers) != 1 or tensor in graph.outputs:
        return None
    reader = readers[0]
    if reader.domain or reader.kind is not NodeKind.OPERATOR:
        return None
    if reader.op_type == "Relu":
        return reader
    if reader.op_type == "Clip" and all(graph.constant(t) is not None for t in reader.inputs[1:] if t):
        return reader
    return None


def _residual_add(graph: Graph, node: Node) -> tuple[Node, str] | None:
    """``(add, other input)`` if the only reader of ``node``'s output is an element-wise ``Add`` of it and
    another float tensor of the same shape (a residual connection), else None."""
    tensor = node.outputs[0]
    readers = graph.consumers(tensor)
    if len(readers) != 1 or tensor in graph.outputs:
        return None
    add = readers[0]
    if add.op_type != "Add" or add.domain or add.kind is not NodeKind.OPERATOR or add.device != "accel" \
            or list(add.inputs).count(tensor) != 1:
        return None
    other = add.inputs[1] if add.inputs[0] == tensor else add.inputs[0]
    shapes = [graph.tensor(t).shape for t in (tensor, other, add.outputs[0])]
    if graph.constant(other) is not None or graph.tensor(other).dtype != "float32" \
            or any(shape is None or tuple(shape) != tuple(shapes[0]) for shape in shapes):
        return None
    return add, other


def _quantizable(graph: Graph, node: Node) -> bool:
    if node.kind is not NodeKind.OPERATOR or node.domain or node.device != "accel":
        return False
    weight = graph.constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.dtype.kind != "f" or graph.tensor(node.inputs[0]).dtype != "float32":
        return False
    bias = graph.constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if len(node.inputs) > 2 and node.inputs[2] and bias is None:
        return False
    if node.op_type == "MatMul":
        return weight.ndim == 2
    if node.op_type == "Gemm":
        return (weight.ndim == 2 and not node.attrs.get("transA", 0) and node.attrs.get("alpha", 1.0) == 1.0
                and node.attrs.get("beta", 1.0) == 1.0
                and (bias is None or bias.size == weight.shape[0 if node.attrs.get("transB", 0) else 1]))
    if node.op_type == "Conv":
        return weight.ndim == 4 and (bias is None or bias.ndim == 1)
    return False


def _activation_product(graph: Graph, node: Node) -> bool:
    """A float MatMul of two computed tensors (no constant), both of rank 2 or more."""
    if node.kind is not NodeKind.OPERATOR or node.domain or node.device != "accel" \
            or node.op_type != "MatMul":
        return False
    infos = [graph.tensor(t) for t in node.inputs]
    return all(graph.constant(t) is None for t in node.inputs) and all(
        info.dtype == "float32" and info.shape is not None and len(info.shape) >= 2 for info in infos)


def quantizable_operators(graph: Graph) -> list[Node]:
    """The float operators :func:`quantize` turns into int8 accelerator ops (MatMul, Gemm, Conv with
    constant float weights), in topological order."""
    graph = fuse_bias_add(simplify(graph))
    return [node for node in graph.operators() if _quantizable(graph, node)]


def insert_qdq(graph: Graph, ranges: Mapping[str, tuple[float, float]], *,
               symmetric_activations: bool = False) -> Graph:
    """Insert QuantizeLinear/DequantizeLinear around every quantizable MatMul, Gemm and Conv, and
    around every MatMul of two activations (both operands and the output quantized as activations).

    The result is a float "fake-quantized" QDQ graph, in the form of
    onnxruntime's ``quantize_static``: activations ``DQ(Q(x))`` (int8,
    :func:`activation_params` of ``ranges``), weights ``DQ(int8 const)``
    (:func:`quantize_weights`), biases ``DQ(int32 const)``.  A fused
    Relu/Clip stays between the op and its output ``Q``.  A residual ``Add``
    of the op's float output and another tensor of its shape (the op's only
    reader), optionally followed by Relu/Clip, is quantized as one group:
    the output ``Q`` after the Add (and activation) uses the *Add output's*
    calibrated parameters, and the other operand gets its own ``DQ(Q(.))``
    with those same parameters, so that :func:`lower_qdq` folds the
    addition exactly into the op's epilogue.  Scale-preserving ops
    (:data:`SCALE_PRESERVING`) reading a quantized tensor get an output ``Q``
    with the same parameters, so they run on int8 after lowering.
    """
    build = _Builder(graph)
    quantized: dict[str, QuantParams] = {}        # float tensor -> params of its DQ-produced value
    dequantized: dict[str, str] = {}               # float tensor -> DQ(Q(tensor)) inserted for readers
    claimed: set[str] = set()                      # residual Adds already quantized with their producer

    def params_of(tensor: str) -> QuantParams:
        if tensor not in ranges:
            raise QuantizationError(f"no calibration range for tensor {tensor!r} (was it computed?)")
        return activation_params(*ranges[tensor], symmetric=symmetric_activations)

    def fake_quantized(tensor: str) -> tuple[str, QuantParams]:
        if tensor in quantized:
            return tensor, quantized[tensor]
        if tensor not in dequantized:
            params = params_of(tensor)
            q, dq = build.name(f"{tensor}_q"), build.name(f"{tensor}_dq")
            build.quantize(tensor, q, params)
            build.dequantize(q, dq, params, info=graph.tensor(tensor))
            dequantized[tensor] = dq
            quantized[dq] = params
        return dequantized[tensor], quantized[dequantized[tensor]]

    def quantize_output(producer: Node, tensor: str, params: QuantParams) -> Node:
        """Make ``producer`` write ``<tensor>_float`` and ``tensor = DQ(Q(<tensor>_float))``."""
        raw, q = build.name(f"{tensor}_float"), build.name(f"{tensor}_q")
        build.infos[raw] = dataclasses.replace(graph.tensor(tensor), name=raw)
        build.quantize(raw, q, params, info=graph.tensor(tensor))
        build.dequantize(q, tensor, params, info=graph.tensor(tensor))
        quantized[tensor] = params
        return producer.replace(outputs=(raw, *producer.outputs[1:]))

    for node in graph.operators():
        if node.op_type in SCALE_PRESERVING and not node.domain and node.inputs[0] in quantized \
                and node.outputs[0] not in quantized and node.device == "accel":
            build.substitute[node.name] = quantize_output(node, node.outputs[0], quantized[node.inputs[0]])
            continue
        if _activation_product(graph, node):
            # Both operands quantized as activations (attention's Q @ K^T, P @ V): braze.QActMatMul.
            op = node.replace(inputs=(fake_quantized(node.inputs[0])[0], fake_quantized(node.inputs[1])[0]))
            activation = _fused_activation(graph, node.outputs[0])
            last = activation or op
            build.substitute[last.name] = quantize_output(last, last.outputs[0], params_of(last.outputs[0]))
            if activation is not None:
                build.substitute[node.name] = op
            continue
        if not _quantizable(graph, node):
            continue
        x, x_params = fake_quantized(node.inputs[0])
        weight = graph.constant(node.inputs[1])
        axis = 0 if node.op_type == "Conv" or node.attrs.get("transB", 0) else 1
        w_q, w_scales = quantize_weights(weight, axis)
        w_dq = build.name(f"{node.inputs[1]}_dq")
        build.op("DequantizeLinear", (build.constant(f"{node.inputs[1]}_quantized", w_q),
                                      build.constant(f"{node.inputs[1]}_scale", w_scales),
                                      build.constant(f"{node.inputs[1]}_zero_point", np.zeros(w_scales.shape,
                                                                                               np.int8))),
                 (w_dq,), axis=axis)
        build.infos[w_dq] = TensorInfo(w_dq, weight.shape, "float32")
        inputs = [x, w_dq]
        if len(node.inputs) > 2 and node.inputs[2]:
            bias_scales = (np.float32(x_params.scale[0]) * w_scales).astype(np.float32)
            b_q = quantize_bias(graph.constant(node.inputs[2]).reshape(-1), bias_scales)
            b_dq = build.name(f"{node.inputs[2]}_dq")
            build.op("DequantizeLinear", (build.constant(f"{node.inputs[2]}_quantized", b_q),
                                          build.constant(f"{node.inputs[2]}_scale", bias_scales),
                                          build.constant(f"{node.inputs[2]}_zero_point",
                                                         np.zeros(b_q.shape, np.int32))), (b_dq,), axis=0)
            build.infos[b_dq] = TensorInfo(b_dq, b_q.shape, "float32")
            inputs.append(b_dq)
        op = node.replace(inputs=tuple(inputs))
        activation = _fused_activation(graph, node.outputs[0])
        residual = _residual_add(graph, node) if activation is None else None
        if residual is not None and residual[0].name not in claimed:
            add, other = residual
            claimed.add(add.name)
            add_params = params_of(add.outputs[0])
            # The residual operand at the Add output's parameters: its own Q/DQ pair, whatever other
            # readers of the tensor use.
            q, dq = build.name(f"{other}_residual_q"), build.name(f"{other}_residual_dq")
            build.quantize(other, q, add_params, info=graph.tensor(other))
            build.dequantize(q, dq, add_params, info=graph.tensor(other))
            add = add.replace(inputs=tuple(dq if t == other else t for t in add.inputs))
            build.substitute[node.name] = op
            after = _fused_activation(graph, add.outputs[0])
            if after is None:
                build.substitute[add.name] = quantize_output(add, add.outputs[0], add_params)
            else:
                build.substitute[add.name] = add
                build.substitute[after.name] = quantize_output(after, after.outputs[0], add_params)
            continue
        last = activation or op
        final = last.outputs[0]
        replacement = quantize_output(last, final, params_of(final))
        if activation is None:
            build.substitute[node.name] = replacement
        else:
            build.substitute[node.name] = op
            build.substitute[activation.name] = replacement
    return build.build()


def quantize(graph: Graph, calibration: Iterable[Mapping[str, np.ndarray]], *, method: str = "minmax",
             percentile: float = 99.99, symmetric_activations: bool = False) -> Graph:
    """Quantize a float graph to Braze's int8 ops.

    Simplifies the graph, fuses MatMul+Add into Gemm, calibrates activation
    ranges on ``calibration`` (a list of input dicts), inserts Q/DQ
    (:func:`insert_qdq`) and lowers them (:func:`lower_qdq`).  Ops that are not
    quantizable stay float, between DequantizeLinear and QuantizeLinear.
    """
    graph = fuse_bias_add(simplify(graph))
    ranges = calibrate(graph, list(calibration), method=method, percentile=percentile)
    fake = insert_qdq(graph, ranges, symmetric_activations=symmetric_activations)
    validate(fake)
    return validate(simplify(lower_qdq(fake)))


# ---------------------------------------------------------------------------------------------------
# QDQ and QLinear/Integer models -> Braze ops
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _QTensor:
    """A quantized tensor as an int8 tensor name and its per-tensor parameters."""

    name: str
    scale: float
    zero_point: int


def _scalar_params(graph: Graph, scale_name: str, zero_name: str | None) -> tuple[float, int, str] | None:
    scale = graph.constant(scale_name)
    zero = graph.constant(zero_name) if zero_name else None
    if scale is None or scale.size != 1 or (zero_name and (zero is None or zero.size != 1)):
        return None
    dtype = zero.dtype.name if zero is not None else "uint8"
    return float(scale.reshape(-1)[0]), int(zero.reshape(-1)[0]) if zero is not None else 0, dtype


def _channel_params(graph: Graph, scale_name: str, zero_name: str | None):
    scale = graph.constant(scale_name)
    zero = graph.constant(zero_name) if zero_name else None
    if scale is None or (zero_name and zero is None):
        return None
    return np.asarray(scale, np.float64).reshape(-1), (np.zeros(1, np.int64) if zero is None
                                                        else np.asarray(zero, np.int64).reshape(-1))


def _dq_parts(graph: Graph, tensor: str):
    """``(source, scale, zero-point name, axis)`` if ``tensor`` is produced by a DequantizeLinear."""
    producer = graph.producer(tensor)
    if producer is None or producer.op_type != "DequantizeLinear" or producer.domain:
        return None
    zero = producer.inputs[2] if len(producer.inputs) > 2 and producer.inputs[2] else None
    return producer.inputs[0], producer.inputs[1], zero, producer.attrs.get("axis", 1)


def _one_shape(shapes) -> bool:
    """Whether tensors of these shapes have one shape as far as is known: one rank, and per axis equal
    sizes, or only symbolic ones (exporters name one batch differently on different tensors; once
    static, lowering keeps a broadcast after all on the host)."""
    if any(shape is None or len(shape) != len(shapes[0]) for shape in shapes):
        return False
    for dims in zip(*shapes, strict=True):
        sizes = {d for d in dims if isinstance(d, int)}
        if sizes and (len(sizes) != 1 or any(not isinstance(d, int) for d in dims)):
            return False
    return True


def _only_quantize_reader(graph: Graph, tensor: str) -> Node | None:
    readers = graph.consumers(tensor)
    if len(readers) == 1 and tensor not in graph.outputs and readers[0].op_type == "QuantizeLinear" \
            and not readers[0].domain:
        return readers[0]
    return None


def _int8_weights(node: Node, values: np.ndarray, zero_points: np.ndarray, axis: int) -> np.ndarray:
    """``values - zero_points`` (per channel along ``axis``) as int8, or a clear error."""
    shape = [1] * values.ndim
    shape[axis % values.ndim] = -1
    zero = zero_points.reshape(shape) if zero_points.size > 1 else zero_points.reshape(())
    centred = values.astype(np.int64) - zero
    if centred.min() < INT8_MIN or centred.max() > INT8_MAX:
        raise QuantizationError(f"node {node.name!r}: weights minus their zero point span "
                                f"{centred.min()}..{centred.max()}, which int8 cannot hold")
    return centred.astype(np.int8)


class _Lowering:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.build = _Builder(graph)
        self.int8: dict[str, _QTensor] = {}    # quantized tensor -> its int8 form

    # -- int8 forms of tensors --------------------------------------------------------------------
    def as_int8(self, tensor: str, scale: float, zero_point: int, dtype: str) -> _QTensor:
        """The int8 form of quantized ``tensor`` (uint8 tensors are shifted by 128, exactly)."""
        if tensor in self.int8:
            return self.int8[tensor]
        graph, build = self.graph, self.build
        params8 = QuantParams((scale,), (zero_point - 128 if dtype == "uint8" else zero_point,), None, "int8")
        if dtype == "int8":
            result = _QTensor(tensor, scale, zero_point)
            build.infos[tensor] = dataclasses.replace(graph.tensor(tensor), dtype="int8", quant=params8)
        elif dtype == "uint8":
            name = build.name(f"{tensor}_s8")
            producer = graph.producer(tensor)
            if producer is not None and producer.op_type == "QuantizeLinear" and not producer.domain:
                # Requantize the float source straight to int8: same scale, zero point - 128.
                build.quantize(producer.inputs[0], name, params8, info=graph.tensor(tensor))
            else:
                float_name = build.name(f"{tensor}_dq")
                build.dequantize(tensor, float_name, QuantParams((scale,), (zero_point,), None, "uint8"))
                build.quantize(float_name, name, params8, info=graph.tensor(tensor))
            result = _QTensor(name, scale, zero_point - 128)
        else:
            raise QuantizationError(f"tensor {tensor!r}: quantized type {dtype} is not int8 or uint8")
        self.int8[tensor] = result
        return result

    def publish(self, tensor: str, result: _QTensor, dtype: str, shape) -> None:
        """Record that int8 ``result`` holds quantized ``tensor``; keep ``tensor`` itself available.

        For a uint8 ``tensor``, an exact conversion back is added (and removed
        later as dead code if nothing reads it).
        """
        self.int8[tensor] = result
        params8 = QuantParams((result.scale,), (result.zero_point,), None, "int8")
        self.build.infos[result.name] = TensorInfo(result.name, shape, "int8", params8)
        if dtype == "uint8":
            float_name = self.build.name(f"{tensor}_dq")
            self.build.dequantize(result.name, float_name, params8, info=TensorInfo(tensor, shape))
            self.build.quantize(float_name, tensor,
                                QuantParams((result.scale,), (result.zero_point + 128,), None, "uint8"),
                                info=TensorInfo(tensor, shape))

    def output_name(self, tensor: str, dtype: str) -> str:
        return tensor if dtype == "int8" else self.build.name(f"{tensor}_s8")

    # -- the Braze op -------------------------------------------------------------------------------
    def emit(self, node: Node, x: _QTensor, weights: np.ndarray, bias: np.ndarray | None,
             real: np.ndarray | None, out: _QTensor | None, out_shape, act: str = "none",
             clip: tuple[int, int] = (0, 0), residual: _QTensor | None = None) -> None:
        build = self.build
        op_type = "QConv" if weights.ndim == 4 else "QMatMul"
        inputs = [x.name, build.constant(f"{node.name}_w8", weights)]
        if bias is not None:
            inputs.append(build.constant(f"{node.name}_bias32", bias.astype(np.int32)))
        attrs = {"x_zero_point": x.zero_point, "act": act}
        if residual is not None:
            inputs += [""] * (3 - len(inputs)) + [residual.name]
            attrs["residual_zp"] = residual.zero_point
        if act == "clip":
            attrs.update(clip_lo=int(clip[0]), clip_hi=int(clip[1]))
        if op_type == "QConv":
            attrs.update({k: node.attrs[k] for k in ("strides", "pads", "auto_pad", "dilations", "group")
                          if k in node.attrs})
        elif node.attrs.get("flatten_a") is not None:
            attrs["flatten_a"] = node.attrs["flatten_a"]
        if real is None:
            attrs["out"] = "acc"
            output = node.outputs[0]
            build.infos[output] = TensorInfo(output, out_shape, "int32")
        else:
            try:
                pairs = [quantize_multiplier(r) for r in real]
            except ValueError as error:
                raise QuantizationError(f"node {node.name!r}: {error}") from None
            attrs.update(mult=tuple(p[0] for p in pairs), shift=tuple(p[1] for p in pairs),
                         out_zp=out.zero_point, out="spad")
            output = out.name
        build.op(op_type, inputs, (output,), domain=BRAZE_DOMAIN, stem=f"{node.name}_q", **attrs)
        if x.name not in build.infos and x.name in self.graph.tensors:
            build.infos[x.name] = dataclasses.replace(
                self.graph.tensor(x.name), dtype="int8", quant=QuantParams((x.scale,), (x.zero_point,)))

    # -- patterns -------------------------------------------------------------------------------------
    def lower_qdq_group(self, node: Node) -> bool:
        """``DQ(x) -> MatMul/Gemm/Conv(DQ(w), bias) [-> Relu/Clip] -> Q``."""
        graph = self.graph
        if node.op_type not in ("MatMul", "Gemm", "Conv") or node.domain or node.device != "accel":
            return False
        if node.op_type == "Gemm" and (node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0
                                       or node.attrs.get("beta", 1.0) != 1.0):
            return False
        x_parts, w_parts = _dq_parts(graph, node.inputs[0]), _dq_parts(graph, node.inputs[1])
        if x_parts is None or w_parts is None:
            return False
        x_params = _scalar_params(graph, x_parts[1], x_parts[2])
        weights = graph.constant(w_parts[0])
        w_params = _channel_params(graph, w_parts[1], w_parts[2])
        if x_params is None or weights is None or w_params is None or weights.dtype.kind not in "iu":
            return False
        activation = _fused_activation(graph, node.outputs[0])
        last = activation or node
        quantize = _only_quantize_reader(graph, last.outputs[0])
        add = residual = None
        if quantize is None and activation is None:
            add, residual, activation = self._residual(node)
            last = activation or add
            quantize = _only_quantize_reader(graph, last.outputs[0]) if last is not None else None
        if quantize is None:
            return False
        bias_add = None
        if activation is None and residual is None and not (len(node.inputs) > 2 and node.inputs[2]):
            bias_add = self._requantized_bias_add(quantize)
            if bias_add is not None:
                quantize, activation = bias_add[2], bias_add[3]
        y_params = _scalar_params(graph, quantize.inputs[1], quantize.inputs[2] if len(quantize.inputs) > 2
                                  else None)
        if y_params is None:
            return False
        if residual is not None and (np.float32(residual[1]) != np.float32(y_params[0])
                                     or residual[3] not in ("int8", "uint8")):
            return False           # only a residual at the output's scale adds exactly in the epilogue
        # Weights as (K, N) for QMatMul or OIHW for QConv, channel scales along N / O.
        transposed = node.op_type == "Gemm" and node.attrs.get("transB", 0)
        channel_axis = 0 if node.op_type == "Conv" or transposed else weights.ndim - 1
        w_scales, w_zeros = w_params
        if w_scales.size > 1 and w_parts[3] % weights.ndim != channel_axis:
            return False
        w8 = _int8_weights(node, weights, w_zeros, w_parts[3] if w_zeros.size > 1 else channel_axis)
        if weights.ndim not in (2, 4) or (weights.ndim == 4) != (node.op_type == "Conv"):
            return False
        if transposed:
            w8 = np.ascontiguousarray(w8.T)
        channels = w8.shape[0] if node.op_type == "Conv" else w8.shape[1]
        w_scales = np.broadcast_to(w_scales, (channels,))
        x_scale, x_zero, x_dtype = x_params
        acc_scales = np.float32(x_scale) * w_scales.astype(np.float32)
        bias = None
        if len(node.inputs) > 2 and node.inputs[2]:
            bias = self._bias(node, node.inputs[2], acc_scales, channels)
            if bias is None:
                return False
        elif bias_add is not None:
            if bias_add[1].size != channels:
                return False
            bias = quantize_bias(bias_add[1], acc_scales)
        y_scale, y_zero, y_dtype = y_params
        x = self.as_int8(x_parts[0], x_scale, x_zero, x_dtype)
        out = _QTensor(self.output_name(quantize.outputs[0], y_dtype), y_scale,
                       y_zero - 128 if y_dtype == "uint8" else y_zero)
        act, clip = "none", (0, 0)
        if activation is not None:
            act, clip = self._activation(graph, activation, out)
        real = acc_scales.astype(np.float64) / y_scale
        shape = graph.tensor(quantize.outputs[0]).shape
        r = None if residual is None else self.as_int8(*residual)
        self.emit(node, x, w8, bias, real, out, shape, act, clip, residual=r)
        self.publish(quantize.outputs[0], out, y_dtype, shape)
        self.build.remove.update(n.name for n in (node, add, activation, quantize) if n is not None)
        if bias_add is not None:
            self.build.remove.update(n.name for n in bias_add[0])
        return True

    def _requantized_bias_add(self, quantize: Node
                              ) -> tuple[list[Node], np.ndarray, Node, Node | None] | None:
        """``Q -> DQ -> Add(., bias) [-> Relu/Clip] -> Q2`` after a product's ``Q``, with a constant bias
        (float, or DQ of a constant) along the last axis: a 3-D ``nn.Linear`` as the exporters write it
        (MatMul, then Add), quantized by onnxruntime.  Returns ``([Q, DQ, Add], float bias, Q2,
        activation)``: the bias joins the product's epilogue and the product requantizes straight to
        ``Q2``'s parameters (one rounding instead of two); None when the pattern does not match."""
        graph = self.graph
        q_out = quantize.outputs[0]
        readers = graph.consumers(q_out)
        if len(readers) != 1 or q_out in graph.outputs or readers[0].op_type != "DequantizeLinear" \
                or readers[0].domain:
            return None
        dequantize = readers[0]
        q_params = _scalar_params(graph, quantize.inputs[1], quantize.inputs[2] if len(quantize.inputs) > 2
                                  else None)
        dq_params = _scalar_params(graph, dequantize.inputs[1], dequantize.inputs[2]
                                   if len(dequantize.inputs) > 2 else None)
        if q_params is None or q_params != dq_params:
            return None
        tensor = dequantize.outputs[0]
        readers = graph.consumers(tensor)
        if len(readers) != 1 or tensor in graph.outputs:
            return None
        add = readers[0]
        if add.op_type != "Add" or add.domain or add.device != "accel" or list(add.inputs).count(tensor) != 1:
            return None
        other = add.inputs[1] if add.inputs[0] == tensor else add.inputs[0]
        bias = self._constant_float(other)
        out_shape = graph.tensor(add.outputs[0]).shape
        if bias is None or out_shape is None or graph.tensor(tensor).shape != out_shape \
                or any(d != 1 for d in bias.shape[:-1]) or bias.ndim > len(out_shape):
            return None
        activation = _fused_activation(graph, add.outputs[0])
        final = _only_quantize_reader(graph, (activation or add).outputs[0])
        if final is None:
            return None
        return [quantize, dequantize, add], bias.reshape(-1), final, activation

    def _constant_float(self, tensor: str) -> np.ndarray | None:
        """The float value of a constant, or of a DequantizeLinear of a constant (per tensor or per
        channel along its last axis), else None."""
        graph = self.graph
        value = graph.constant(tensor)
        if value is not None:
            return value.astype(np.float64) if value.dtype.kind == "f" else None
        parts = _dq_parts(graph, tensor)
        raw = None if parts is None else graph.constant(parts[0])
        params = None if parts is None else _channel_params(graph, parts[1], parts[2])
        if raw is None or params is None or raw.ndim == 0 or raw.dtype.kind not in "iu":
            return None
        scales, zeros = params
        if (scales.size > 1 or zeros.size > 1) and parts[3] % raw.ndim != raw.ndim - 1:
            return None
        return (raw.astype(np.float64) - zeros.astype(np.float64)) * np.float32(scales).astype(np.float64)

    def lower_act_matmul(self, node: Node) -> bool:
        """``DQ(a) -> MatMul(., DQ(b)) [-> Relu/Clip] -> Q`` with ``b`` an activation (not a constant):
        attention's ``Q @ K^T`` and ``P @ V``, batched as ONNX MatMul broadcasts.

        One ``braze.QActMatMul`` with both zero points, requantizing in its epilogue.  With nonzero
        zero points, ``(a - za) @ (b - zb) = a @ b - za * colsum(b) - zb * rowsum(a) + K*za*zb`` has
        terms that depend on the data; the kernel accumulates them on the array (see
        docs/attention.md for why not on the host).
        """
        graph = self.graph
        if node.op_type != "MatMul" or node.domain or node.device != "accel":
            return False
        a_parts, b_parts = _dq_parts(graph, node.inputs[0]), _dq_parts(graph, node.inputs[1])
        if a_parts is None or b_parts is None or graph.constant(b_parts[0]) is not None:
            return False
        a_params = _scalar_params(graph, a_parts[1], a_parts[2])
        b_params = _scalar_params(graph, b_parts[1], b_parts[2])
        shapes = [graph.tensor(t).shape for t in (a_parts[0], b_parts[0])]
        if a_params is None or b_params is None or any(shape is None or len(shape) < 2 for shape in shapes):
            return False
        activation = _fused_activation(graph, node.outputs[0])
        quantize = _only_quantize_reader(graph, (activation or node).outputs[0])
        if quantize is None:
            return False
        y_params = _scalar_params(graph, quantize.inputs[1], quantize.inputs[2] if len(quantize.inputs) > 2
                                  else None)
        if y_params is None or y_params[2] not in ("int8", "uint8"):
            return False
        a, b = self.as_int8(a_parts[0], *a_params), self.as_int8(b_parts[0], *b_params)
        y_scale, y_zero, y_dtype = y_params
        out = _QTensor(self.output_name(quantize.outputs[0], y_dtype), y_scale,
                       y_zero - 128 if y_dtype == "uint8" else y_zero)
        try:
            mult, shift = quantize_multiplier(np.float32(a.scale) * np.float32(b.scale) / np.float64(y_scale))
        except ValueError as error:
            raise QuantizationError(f"node {node.name!r}: {error}") from None
        attrs: dict = {"mult": (mult,), "shift": (shift,), "out_zp": out.zero_point, "out": "spad",
                       "act": "none"}
        if activation is not None:
            act, clip = self._activation(graph, activation, out)
            attrs.update(act=act, clip_lo=int(clip[0]), clip_hi=int(clip[1]))
        shape = graph.tensor(quantize.outputs[0]).shape
        self.build.op("QActMatMul", (a.name, b.name), (out.name,), domain=BRAZE_DOMAIN, stem=f"{node.name}_q",
                      a_zero_point=a.zero_point, b_zero_point=b.zero_point, **attrs)
        self.publish(quantize.outputs[0], out, y_dtype, shape)
        self.build.remove.update(n.name for n in (node, activation, quantize) if n is not None)
        return True

    def _residual(self, node: Node) -> tuple[Node | None, tuple[str, float, int, str] | None, Node | None]:
        """``(add, (int8 source, scale, zero point, dtype), activation)`` for
        ``node -> Add(., DQ(r)) [-> Relu/Clip]`` where the Add is the only reader and ``r`` has the shape
        of the output; ``(None, None, None)`` otherwise."""
        graph = self.graph
        tensor = node.outputs[0]
        readers = graph.consumers(tensor)
        if len(readers) != 1 or tensor in graph.outputs:
            return None, None, None
        add = readers[0]
        if add.op_type != "Add" or add.domain or add.device != "accel" or list(add.inputs).count(tensor) != 1:
            return None, None, None
        other = add.inputs[1] if add.inputs[0] == tensor else add.inputs[0]
        parts = _dq_parts(graph, other)
        params = None if parts is None else _scalar_params(graph, parts[1], parts[2])
        shapes = [graph.tensor(t).shape for t in (tensor, other, add.outputs[0])]
        if params is None or any(shape is None or tuple(shape) != tuple(shapes[0]) for shape in shapes):
            return None, None, None
        return add, (parts[0], *params), _fused_activation(graph, add.outputs[0])

    def _bias(self, node: Node, tensor: str, acc_scales: np.ndarray, channels: int) -> np.ndarray | None:
        graph = self.graph
        value = graph.constant(tensor)
        if value is not None and value.dtype.kind == "f":
            return quantize_bias(value.reshape(-1), acc_scales) if value.size == channels else None
        parts = _dq_parts(graph, tensor)
        if parts is None:
            return None
        raw = graph.constant(parts[0])
        params = _channel_params(graph, parts[1], parts[2])
        if raw is None or params is None or raw.size != channels or np.any(params[1] != 0):
            return None
        scales = np.broadcast_to(params[0], (channels,))
        raw = raw.reshape(-1).astype(np.int64)
        if np.allclose(scales, acc_scales, rtol=1e-6, atol=0):
            return np.clip(raw, INT32_MIN, INT32_MAX).astype(np.int32)
        return quantize_bias(raw * scales, acc_scales)

    @staticmethod
    def _activation(graph: Graph, activation: Node, out: _QTensor) -> tuple[str, tuple[int, int]]:
        """Relu/Clip after requantization: clip to the quantized bounds (ReLU is ``q >= out_zp``)."""
        lo, hi = 0.0, math.inf
        if activation.op_type == "Clip":
            bounds = [graph.constant(t) if t else None for t in activation.inputs[1:3]]
            lo = -math.inf if not bounds or bounds[0] is None else float(bounds[0])
            hi = math.inf if len(bounds) < 2 or bounds[1] is None else float(bounds[1])

        def level(value: float) -> int:
            if math.isinf(value):
                return INT8_MIN if value < 0 else INT8_MAX
            return int(np.clip(round(value / out.scale) + out.zero_point, INT8_MIN, INT8_MAX))

        return "clip", (level(lo), level(hi))

    def lower_qadd(self, node: Node) -> bool:
        """``Add(DQ(a), DQ(b)) -> Q`` of per-tensor int8/uint8 tensors of one shape (a residual connection
        as onnxruntime's quantizer writes it): one ``braze.QAdd``, the vector unit's ``add`` kernel.

        At one scale (all three equal) it is the plain int8 addition the fusion pass folds into a
        producer's epilogue; at two scales each operand's ratio to the output scale becomes an int16
        multiplier over a common power of two (``x_mult``, ``y_mult``, ``shift``, the largest shift
        that keeps both multipliers in int16), and the exact int32 sum is rounded once.
        """
        graph = self.graph
        if node.op_type != "Add" or node.domain or node.device != "accel" or len(node.inputs) != 2:
            return False
        parts = [_dq_parts(graph, tensor) for tensor in node.inputs]
        quantize = _only_quantize_reader(graph, node.outputs[0])
        if any(p is None for p in parts) or quantize is None:
            return False
        params = [_scalar_params(graph, p[1], p[2]) for p in parts]
        y_params = _scalar_params(graph, quantize.inputs[1], quantize.inputs[2] if len(quantize.inputs) > 2
                                  else None)
        if y_params is None or any(p is None for p in params) \
                or any(p[2] not in ("int8", "uint8") for p in (*params, y_params)):
            return False
        shapes = [graph.tensor(t).shape for t in (parts[0][0], parts[1][0], quantize.outputs[0])]
        if not _one_shape(shapes):
            return False              # broadcasting: the kernel adds tensors of one shape
        ratios = [np.float64(np.float32(p[0])) / np.float64(np.float32(y_params[0])) for p in params]
        attrs: dict = {}
        if any(ratio != 1.0 for ratio in ratios):
            if max(ratios) > MAX_QADD_MULT or min(ratios) <= 0:
                return False
            shift = max(s for s in range(32) if round(max(ratios) * 2 ** s) <= MAX_QADD_MULT)
            x_mult, y_mult = (int(round(ratio * 2 ** shift)) for ratio in ratios)
            attrs = {"x_mult": x_mult, "y_mult": y_mult, "shift": shift}
        x, y = (self.as_int8(p[0], *q) for p, q in zip(parts, params, strict=True))
        y_scale, y_zero, y_dtype = y_params
        out = _QTensor(self.output_name(quantize.outputs[0], y_dtype), y_scale,
                       y_zero - 128 if y_dtype == "uint8" else y_zero)
        self.build.op("QAdd", (x.name, y.name), (out.name,), domain=BRAZE_DOMAIN, stem=f"{node.name}_q",
                      x_zp=x.zero_point, y_zp=y.zero_point, out_zp=out.zero_point, **attrs)
        for operand in (x, y):
            if operand.name not in self.build.infos and operand.name in graph.tensors:
                self.build.infos[operand.name] = dataclasses.replace(
                    graph.tensor(operand.name), dtype="int8",
                    quant=QuantParams((operand.scale,), (operand.zero_point,)))
        self.publish(quantize.outputs[0], out, y_dtype, shapes[2])
        self.build.remove.update((node.name, quantize.name))
        return True

    def lower_passthrough(self, node: Node) -> bool:
        """``DQ(a) -> MaxPool/Reshape/... -> Q`` with equal parameters: the op on int8 ``a``."""
        graph = self.graph
        if node.op_type not in SCALE_PRESERVING or node.domain or node.device != "accel":
            return False
        parts = _dq_parts(graph, node.inputs[0])
        quantize = _only_quantize_reader(graph, node.outputs[0])
        if parts is None or quantize is None:
            return False
        before = _scalar_params(graph, parts[1], parts[2])
        after = _scalar_params(graph, quantize.inputs[1],
                               quantize.inputs[2] if len(quantize.inputs) > 2 else None)
        if before is None or after is None or np.float32(before[0]) != np.float32(after[0]) \
                or before[1:] != after[1:]:
            return False
        source = self.as_int8(parts[0], *before)
        out = _QTensor(self.output_name(quantize.outputs[0], after[2]), source.scale, source.zero_point)
        self.build.add.append(node.replace(name=self.build.name(f"{node.name}_q"),
                                           inputs=(source.name, *node.inputs[1:]), outputs=(out.name,)))
        self.publish(quantize.outputs[0], out, after[2], graph.tensor(quantize.outputs[0]).shape)
        self.build.remove.update((node.name, quantize.name))
        return True

    def lower_qlinear(self, node: Node) -> bool:
        """QLinearMatMul, QLinearConv, MatMulInteger, ConvInteger with constant weights."""
        graph = self.graph
        if node.domain or node.device != "accel" or node.op_type not in (
                "QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger"):
            return False
        qlinear = node.op_type.startswith("QLinear")
        names = list(node.inputs) + [""] * 9
        if qlinear:
            x_name, x_scale, x_zero, w_name, w_scale, w_zero, y_scale, y_zero = names[:8]
            bias_name = names[8] if node.op_type == "QLinearConv" else ""
        else:
            x_name, w_name, x_zero, w_zero = names[:4]
            x_scale = y_scale = y_zero = w_scale = bias_name = ""
        weights = graph.constant(w_name)
        conv = "Conv" in node.op_type
        if weights is None or weights.ndim != (4 if conv else 2):
            return False
        x_info = graph.tensor(x_name)
        if x_info.dtype not in ("int8", "uint8"):
            return False
        if qlinear:
            x_params = _scalar_params(graph, x_scale, x_zero)
            y_params = _scalar_params(graph, y_scale, y_zero)
            w_params = _channel_params(graph, w_scale, w_zero)
            if x_params is None or y_params is None or w_params is None:
                return False
        else:
            x_zero_value = graph.constant(x_zero) if x_zero else np.zeros((), x_info.dtype)
            w_zero_value = graph.constant(w_zero) if w_zero else np.zeros(1, np.int64)
            if x_zero_value is None or x_zero_value.size != 1 or w_zero_value is None:
                return False
            x_params = (1.0, int(x_zero_value.reshape(-1)[0]), x_info.dtype)
            w_params = (np.ones(1), np.asarray(w_zero_value, np.int64).reshape(-1))
        channel_axis = 0 if conv else 1
        channels = weights.shape[channel_axis]
        w8 = _int8_weights(node, weights, w_params[1], channel_axis)
        w_scales = np.broadcast_to(w_params[0], (channels,))
        acc_scales = np.float32(x_params[0]) * w_scales.astype(np.float32)
        bias = None
        if bias_name:
            raw = graph.constant(bias_name)
            if raw is None:
                return False
            bias = raw.reshape(-1).astype(np.int32)
        x = self.as_int8(x_name, *x_params)
        shape = graph.tensor(node.outputs[0]).shape
        if qlinear:
            out = _QTensor(self.output_name(node.outputs[0], y_params[2]), y_params[0],
                           y_params[1] - 128 if y_params[2] == "uint8" else y_params[1])
            real = acc_scales.astype(np.float64) / y_params[0]
            self.emit(node, x, w8, bias, real, out, shape)
            self.publish(node.outputs[0], out, y_params[2], shape)
        else:
            self.emit(node, x, w8, None, None, None, shape)
        self.build.remove.add(node.name)
        return True

    def redirect_dequantize(self, node: Node) -> None:
        """A DequantizeLinear of a uint8 tensor that has an int8 form reads that form instead."""
        if node.op_type != "DequantizeLinear" or node.domain or node.inputs[0] not in self.int8:
            return
        source = self.graph.tensor(node.inputs[0])
        result = self.int8[node.inputs[0]]
        if source.dtype != "uint8" or result.name == node.inputs[0]:
            return
        params = _scalar_params(self.graph, node.inputs[1], node.inputs[2] if len(node.inputs) > 2 else None)
        if params is None or params[1] - 128 != result.zero_point:
            return
        zero = self.build.constant(f"{result.name}_zero_point", np.int8(result.zero_point))
        self.build.substitute[node.name] = node.replace(inputs=(result.name, node.inputs[1], zero))


def _swaps_heads(node: Node | None) -> bool:
    """Whether ``node`` is a Transpose that swaps axes -3 and -2 only (attention's head split/merge,
    ``perm=[0, 2, 1, 3]``)."""
    if node is None or node.op_type != "Transpose" or node.domain or node.kind is not NodeKind.OPERATOR:
        return False
    perm = list(node.attrs.get("perm", ()))
    rank = len(perm)
    return rank >= 3 and perm == [*range(rank - 3), rank - 2, rank - 3, rank - 1]


def fold_head_transposes(graph: Graph) -> Graph:
    """Fold attention's head split and merge into ``braze.QActMatMul``: a Transpose swapping axes -3 and
    -2 (``[B, T, H, d] <-> [B, H, T, d]``) that only feeds operand A or B of the product becomes its
    ``a_heads``/``b_heads`` attribute, and one that is the product's only reader its ``out_heads``: the
    kernel reads and writes the heads-interleaved tensors directly
    (:func:`~braze.sw.compiler.kernels.batched_gemm` ``heads``), so no transpose (and no transfer
    through the host) happens.  K's transpose for ``Q @ K^T`` (``perm=[0, 2, 3, 1]``) is not one of
    these: B's rows must be K's columns, which a LOAD cannot gather."""
    if not any(node.qualified_op == f"{BRAZE_DOMAIN}.QActMatMul" for node in graph.operators()):
        return graph
    graph = simplify(graph)              # dead Q/DQ nodes left by the lowering are readers no more
    substitute: dict[str, Node] = {}
    remove: set[str] = set()
    for node in graph.operators():
        if node.qualified_op != f"{BRAZE_DOMAIN}.QActMatMul":
            continue
        inputs, attrs, outputs = list(node.inputs), {}, node.outputs
        for index, key in ((0, "a_heads"), (1, "b_heads")):
            producer = graph.producer(inputs[index])
            if _swaps_heads(producer) and len(graph.consumers(inputs[index])) == 1 \
                    and inputs[index] not in graph.outputs and producer.name not in remove:
                remove.add(producer.name)
                inputs[index] = producer.inputs[0]
                attrs[key] = 1
        readers = graph.consumers(node.outputs[0])
        if len(readers) == 1 and _swaps_heads(readers[0]) and node.outputs[0] not in graph.outputs:
            remove.add(readers[0].name)
            outputs = readers[0].outputs
            attrs["out_heads"] = 1
        if attrs:
            substitute[node.name] = node.replace(inputs=tuple(inputs), outputs=outputs).with_attrs(**attrs)
    if not substitute:
        return graph
    return graph.edit(remove=remove, substitute=substitute)


def lower_qdq(graph: Graph, *, tables: bool = True) -> Graph:
    """Turn quantized ONNX patterns into Braze's int8 ops, honouring the model's scales.

    * ``DQ -> MatMul/Gemm/Conv [-> Relu/Clip] -> Q`` groups (onnxruntime's
      QDQ format) become ``braze.QMatMul``/``braze.QConv`` with the bias
      (int32 DQ or float constant) in units of ``x_scale * w_scale``.
    * ``DQ -> MatMul/Gemm/Conv -> Add(., DQ(r)) [-> Relu/Clip] -> Q`` with
      ``r`` of the output's shape and exactly the output ``Q``'s scale becomes
      one Braze op with ``r`` as its residual input; at another scale the
      group stays as it is (the addition is not exact in the epilogue).
    * ``DQ(a) -> MatMul(., DQ(b)) [-> Relu/Clip] -> Q`` with ``b`` an activation becomes
      ``braze.QActMatMul`` (zero points kept), head split/merge transposes folded into it
      (:func:`fold_head_transposes`).
    * ``DQ -> MaxPool/Reshape/... -> Q`` with equal parameters runs on int8.
    * ``Add(DQ(a), DQ(b)) -> Q`` of one shape (a residual connection at any scales) becomes
      ``braze.QAdd`` (:meth:`_Lowering.lower_qadd`).
    * ``QLinearMatMul``/``QLinearConv`` become Braze ops; ``MatMulInteger``/
      ``ConvInteger`` become Braze ops with int32 output (``out="acc"``).

    * With ``tables`` (the default), ``DQ(int8) -> element-wise float ops -> Q(int8)``
      chains (Sigmoid, Tanh, GELU, HardSwish, SiLU ...) become ``braze.QTable``
      lookups (:func:`braze.sw.compiler.tables.lower_table_activations`).

    uint8 activations are shifted to int8 exactly (:func:`shift_uint8`);
    weights must be int8 after subtracting their zero points.  Groups that do
    not match (non-constant weights or scales, per-tensor patterns the array
    cannot run) stay as they are.
    """
    lowering = _Lowering(graph)
    for node in graph.operators():
        if not (lowering.lower_qdq_group(node) or lowering.lower_act_matmul(node)
                or lowering.lower_passthrough(node) or lowering.lower_qadd(node)):
            lowering.lower_qlinear(node)
    for node in graph.operators():
        if node.name not in lowering.build.remove:
            lowering.redirect_dequantize(node)
    lowered = graph if not lowering.build.add and not lowering.build.substitute \
        else fold_head_transposes(lowering.build.build())
    if tables:
        lowered = lower_table_activations(lowered)
    return lowered


__all__ = [
    "QuantizationError", "CalibrationError", "quantize_multiplier", "activation_params", "quantize_weights",
    "shift_uint8", "quantize_bias", "quantizable_operators", "calibrate", "fuse_bias_add", "insert_qdq",
    "quantize", "lower_qdq", "fold_head_transposes",
    "SCALE_PRESERVING", "WEIGHT_MAX",
]
