"""Quantized operators: ONNX's (QuantizeLinear, QLinear*, *Integer, ...) and Braze's own.

Braze's quantized ops (``domain="braze"``, see :mod:`braze.sw.compiler.quantize`) are evaluated
bit-exactly as the accelerator's ``EPILOGUE`` (:mod:`braze.isa.arith`).
"""

from __future__ import annotations

import types

import numpy as np
from onnx import helper

from braze.isa import arith
from braze.isa.encoding import Activation, Memory

from ._registry import axis_shape as _axis_shape
from ._registry import int64 as _int64
from ._registry import register
from ._registry import saturate_to as _saturate_to
from .elementwise import to_float8
from .nn import conv2d

BRAZE_DOMAIN = "braze"


def _block_check(node, infos):
    if node.attrs.get("block_size", 0):
        return "blocked quantization (block_size) is not supported"
    return None


def _quantize_linear(node, x, scale, zero_point=None):
    axis = node.attrs.get("axis", 1)
    if zero_point is not None:
        dtype = zero_point.dtype
    elif node.attrs.get("output_dtype"):
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(node.attrs["output_dtype"]))
    else:
        dtype = np.dtype(np.uint8)
    scale = _axis_shape(scale, axis, x.ndim)
    zp = _axis_shape(zero_point if zero_point is not None else np.zeros((), dtype), axis, x.ndim)
    if _is_float8(dtype):                   # float8 quantization rounds in the cast, not before it
        value = x.astype(np.float32) / scale.astype(np.float32) + zp.astype(np.float32)
        return to_float8(value, dtype, bool(node.attrs.get("saturate", 1)))
    with np.errstate(over="ignore"):        # a value beyond the float range saturates like any other
        scaled = np.rint(x.astype(np.float32) / scale.astype(np.float32))
    return _saturate_to(scaled.astype(np.float64) + zp.astype(np.float64), dtype)


def _is_float8(dtype: np.dtype) -> bool:
    return "float8" in np.dtype(dtype).name


def _dequantize_linear(node, x, scale, zero_point=None):
    axis = node.attrs.get("axis", 1)
    scale = _axis_shape(scale, axis, x.ndim)
    zp = _axis_shape(zero_point if zero_point is not None else np.zeros((), np.int64), axis, x.ndim)
    if _is_float8(x.dtype):
        return ((x.astype(np.float32) - zp.astype(np.float32)) * scale).astype(scale.dtype)
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


# -- Braze's quantized ops ------------------------------------------------------------------------

#: Values of the ``act`` attribute of Braze's quantized ops.
ACTIVATIONS = {"none": Activation.NONE, "relu": Activation.RELU, "clip": Activation.CLIP,
               "table": Activation.TABLE}


def braze_epilogue(node, acc: np.ndarray, bias: np.ndarray | None,
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
        out_zp=out_zp, clip_lo=int(attrs.get("clip_lo", 0)), clip_hi=int(attrs.get("clip_hi", 0)),
        table=None if attrs.get("table") is None else np.asarray(attrs["table"], np.int8))


def _braze_qmatmul(node, x, w, bias=None, residual=None):
    flatten = node.attrs.get("flatten_a")
    if flatten is not None:
        x = x.reshape(int(np.prod(x.shape[:flatten])), int(np.prod(x.shape[flatten:])))
    lead = x.shape[:-1]
    acc = (_int64(x).reshape(-1, x.shape[-1]) - int(node.attrs.get("x_zero_point", 0))) @ _int64(w)
    tile = None if residual is None else residual.reshape(-1, w.shape[-1])
    return braze_epilogue(node, acc, bias, tile).reshape(*lead, w.shape[-1])


def _braze_qconv(node, x, w, bias=None, residual=None):
    acc = conv2d(_int64(x) - int(node.attrs.get("x_zero_point", 0)), _int64(w), node.attrs)
    n, o, h, wd = acc.shape
    tile = acc.transpose(0, 2, 3, 1).reshape(-1, o)
    res_tile = None if residual is None else residual.transpose(0, 2, 3, 1).reshape(-1, o)
    y = braze_epilogue(node, tile, bias, res_tile).reshape(n, h, wd, o).transpose(0, 3, 1, 2)
    pool = int(node.attrs.get("pool", 1))
    if pool > 1:            # fused max pooling, window = stride = pool, no padding, floor mode
        hp, wp = h // pool, wd // pool
        y = y[:, :, :hp * pool, :wp * pool].reshape(n, o, hp, pool, wp, pool).max(axis=(3, 5))
    return y


def _braze_qconvchain(node, x, *weights_and_biases):
    """``braze.QConvChain``: its layers' ``QConv``s one after the other (each layer's attributes are a
    tuple of ``(name, value)`` pairs in ``node.attrs["layers"]``; see :mod:`braze.sw.compiler.chain`),
    then, with ``fc``, its closing ``QMatMul``."""
    for index, layer in enumerate(node.attrs["layers"]):
        w, bias = weights_and_biases[2 * index: 2 * index + 2]
        x = _braze_qconv(types.SimpleNamespace(attrs=dict(layer)), x, w, bias)
    if node.attrs.get("fc") is not None:        # the closing FC layer: a QMatMul of the flattened output
        w, bias = weights_and_biases[-2:]
        x = _braze_qmatmul(types.SimpleNamespace(attrs=dict(node.attrs["fc"])), x, w, bias)
    return x


def _braze_qactmatmul(node, a, b):
    """``epilogue((a - a_zero_point) @ (b - b_zero_point))``, broadcasting as ONNX MatMul: a product
    of two activations (both int8), e.g. attention's ``Q @ K^T``; the epilogue per column.

    With ``a_heads``/``b_heads`` set, that operand is given heads-interleaved (``[..., rows, H, cols]``,
    axes -3 and -2 swapped: the head split's Transpose folded in); with ``out_heads`` the result is
    returned that way (the head merge's Transpose folded in)."""
    if node.attrs.get("a_heads"):
        a = np.swapaxes(a, -3, -2)
    if node.attrs.get("b_heads"):
        b = np.swapaxes(b, -3, -2)
    acc = np.matmul(_int64(a) - int(node.attrs.get("a_zero_point", 0)),
                    _int64(b) - int(node.attrs.get("b_zero_point", 0)))
    n = acc.shape[-1]
    y = braze_epilogue(node, acc.reshape(-1, n), None).reshape(acc.shape)
    return np.ascontiguousarray(np.swapaxes(y, -3, -2)) if node.attrs.get("out_heads") else y


def _braze_qadd(node, x, y):
    """``sat8((x - x_zp) + (y - y_zp) + out_zp)``: int8 addition at equal scales (the unfused residual).

    With ``x_mult``, ``y_mult`` and ``shift`` (operands at two scales, each ratio to the output's scale
    ``mult / 2**shift``): ``sat8(round_half_even(((x - x_zp) * x_mult + (y - y_zp) * y_mult) / 2**shift)
    + out_zp)`` -- one rounding of the exact int32 sum, as the ``add`` kernel computes it on the vector
    unit (:func:`braze.sw.compiler.kernels.add` with ``out_shift``).
    """
    attrs = node.attrs
    x_c, y_c = _int64(x) - int(attrs.get("x_zp", 0)), _int64(y) - int(attrs.get("y_zp", 0))
    if "shift" in attrs:
        exact = x_c * int(attrs["x_mult"]) + y_c * int(attrs["y_mult"])
        total = arith.round_shift(exact, int(attrs["shift"])) + int(attrs.get("out_zp", 0))
    else:
        total = x_c + y_c + int(attrs.get("out_zp", 0))
    return np.clip(total, -128, 127).astype(np.int8)


def _braze_qtable(node, x):
    """``table[x mod 256]``: an element-wise function of int8 ``x`` as its 256 int8 results
    (:mod:`braze.sw.compiler.tables`)."""
    return np.asarray(node.attrs["table"], np.int8)[_int64(x) & 0xFF]




def _dynamic_quantize_linear(node, x):
    """uint8 quantization with the range of ``x`` (widened to include 0), as ONNX defines it."""
    low, high = min(float(x.min()), 0.0) if x.size else 0.0, max(float(x.max()), 0.0) if x.size else 0.0
    scale = np.float32((high - low) / 255) if high != low else np.float32(1.0)
    zero_point = np.uint8(np.clip(np.rint(0 - low / scale), 0, 255))
    y = _saturate_to(np.rint(x / scale) + zero_point, np.uint8)
    return y, np.array(scale, np.float32), np.array(zero_point, np.uint8)


register("QuantizeLinear", check=_block_check)(_quantize_linear)
register("DequantizeLinear", check=_block_check)(_dequantize_linear)
register("QLinearMatMul")(_qlinear_matmul)
register("QLinearConv")(_qlinear_conv)
register("MatMulInteger")(lambda node, a, b, a_zp=None, b_zp=None: _matmul_integer(a, b, a_zp, b_zp)
                          .astype(np.int32))
register("ConvInteger")(lambda node, x, w, x_zp=None, w_zp=None: _conv_integer(node, x, w, x_zp, w_zp)
                        .astype(np.int32))
register("DynamicQuantizeLinear")(_dynamic_quantize_linear)
register(f"{BRAZE_DOMAIN}.QMatMul")(_braze_qmatmul)
register(f"{BRAZE_DOMAIN}.QConv")(_braze_qconv)
register(f"{BRAZE_DOMAIN}.QConvChain")(_braze_qconvchain)
register(f"{BRAZE_DOMAIN}.QAdd")(_braze_qadd)
register(f"{BRAZE_DOMAIN}.QActMatMul")(_braze_qactmatmul)
register(f"{BRAZE_DOMAIN}.QTable")(_braze_qtable)
