"""Element-wise operators: arithmetic, comparison, logic, bitwise, math functions, activations, casts.

Results keep the type ONNX gives them: the first operand's for arithmetic, ``bool`` for
comparisons and logic.  Broadcasting is numpy's, which is ONNX's multidirectional broadcasting.
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from scipy import special

from ._registry import int64, register


def _unary(*names, fn):
    register(*names)(lambda node, x: np.asarray(fn(x)).astype(x.dtype))


def _same_type(*names, fn):
    register(*names)(lambda node, a, b: np.asarray(fn(a, b)).astype(a.dtype))


# -- arithmetic -------------------------------------------------------------------------------------

_same_type("Add", fn=np.add)
_same_type("Sub", fn=np.subtract)
_same_type("Mul", fn=np.multiply)


@register("Div")
def _div(node, a, b):
    if a.dtype.kind in "iu":
        with np.errstate(divide="ignore"):
            quotient = np.abs(int64(a)) // np.abs(int64(b))
        return (np.sign(int64(a)) * np.sign(int64(b)) * quotient).astype(a.dtype)   # truncates, as C
    return (a / b).astype(a.dtype)


@register("Mod")
def _mod(node, a, b):
    if node.attrs.get("fmod", 0):
        return np.fmod(a, b).astype(a.dtype)              # the sign of the dividend, as C's fmod
    with np.errstate(divide="ignore"):
        return np.mod(a, b).astype(a.dtype)               # the sign of the divisor, as Python's %


@register("Pow")
def _pow(node, a, b):
    if a.dtype.kind in "iu":
        return np.power(int64(a), b.astype(np.float64) if b.dtype.kind == "f" else int64(b)).astype(a.dtype)
    return np.power(a, b.astype(a.dtype) if b.dtype.kind == "f" else b).astype(a.dtype)


def _variadic(fn):
    def apply(node, *xs):
        result = xs[0]
        for x in xs[1:]:
            result = fn(result, x)
        return np.asarray(result).astype(xs[0].dtype)
    return apply


register("Sum")(_variadic(np.add))
register("Max")(_variadic(np.maximum))
register("Min")(_variadic(np.minimum))


@register("Mean")
def _mean(node, *xs):
    return (_variadic(np.add)(node, *xs) / len(xs)).astype(xs[0].dtype)


@register("Clip")
def _clip(node, x, lo=None, hi=None):
    if lo is not None:
        x = np.maximum(x, lo.astype(x.dtype))
    if hi is not None:
        x = np.minimum(x, hi.astype(x.dtype))
    return x


@register("BitShift")
def _bit_shift(node, a, b):
    if node.attrs.get("direction") == "LEFT":
        return np.left_shift(a, b.astype(a.dtype)).astype(a.dtype)
    return np.right_shift(a, b.astype(a.dtype)).astype(a.dtype)


_same_type("BitwiseAnd", fn=np.bitwise_and)
_same_type("BitwiseOr", fn=np.bitwise_or)
_same_type("BitwiseXor", fn=np.bitwise_xor)
_unary("BitwiseNot", fn=np.invert)


# -- comparison and logic --------------------------------------------------------------------------

for _name, _fn in (("Equal", np.equal), ("Less", np.less), ("LessOrEqual", np.less_equal),
                   ("Greater", np.greater), ("GreaterOrEqual", np.greater_equal),
                   ("And", np.logical_and), ("Or", np.logical_or), ("Xor", np.logical_xor)):
    register(_name)(lambda node, a, b, fn=_fn: fn(a, b))
register("Not")(lambda node, x: np.logical_not(x))
register("Where")(lambda node, c, a, b: np.where(c, a, b))
register("IsNaN")(lambda node, x: np.isnan(x))


@register("IsInf")
def _is_inf(node, x):
    positive = node.attrs.get("detect_positive", 1)
    negative = node.attrs.get("detect_negative", 1)
    return (np.isposinf(x) & bool(positive)) | (np.isneginf(x) & bool(negative))


# -- math functions ---------------------------------------------------------------------------------

for _names, _fn in ((("Abs",), np.abs), (("Neg",), np.negative), (("Exp",), np.exp), (("Log",), np.log),
                    (("Sqrt",), np.sqrt), (("Floor",), np.floor), (("Ceil",), np.ceil),
                    (("Round",), np.round), (("Sign",), np.sign), (("Sin",), np.sin), (("Cos",), np.cos),
                    (("Tan",), np.tan), (("Asin",), np.arcsin), (("Acos",), np.arccos),
                    (("Atan",), np.arctan),
                    (("Sinh",), np.sinh), (("Cosh",), np.cosh), (("Asinh",), np.arcsinh),
                    (("Acosh",), np.arccosh), (("Atanh",), np.arctanh), (("Tanh",), np.tanh),
                    (("Erf",), special.erf)):
    _unary(*_names, fn=_fn)
_unary("Reciprocal", fn=lambda x: np.reciprocal(x.astype(np.float64)) if x.dtype.kind != "f" else 1 / x)


# -- activations ------------------------------------------------------------------------------------

def _sigmoid(x):
    return special.expit(x)


_unary("Sigmoid", fn=_sigmoid)
register("Relu")(lambda node, x: np.maximum(x, np.zeros((), x.dtype)))
_unary("Softsign", fn=lambda x: x / (1 + np.abs(x)))
_unary("Softplus", fn=lambda x: np.log1p(np.exp(x)))
_unary("Mish", fn=lambda x: x * np.tanh(np.log1p(np.exp(x))))


@register("LeakyRelu")
def _leaky_relu(node, x):
    return np.where(x < 0, x * node.attrs.get("alpha", 0.01), x).astype(x.dtype)


@register("PRelu")
def _prelu(node, x, slope):
    return np.where(x < 0, x * slope, x).astype(x.dtype)


@register("Elu")
def _elu(node, x):
    return np.where(x < 0, node.attrs.get("alpha", 1.0) * np.expm1(x), x).astype(x.dtype)


@register("Selu")
def _selu(node, x):
    alpha = node.attrs.get("alpha", 1.67326319217681884765625)
    gamma = node.attrs.get("gamma", 1.05070102214813232421875)
    return (gamma * np.where(x <= 0, alpha * np.expm1(x), x)).astype(x.dtype)


@register("Celu")
def _celu(node, x):
    alpha = node.attrs.get("alpha", 1.0)
    return (np.maximum(0, x) + np.minimum(0, alpha * np.expm1(x / alpha))).astype(x.dtype)


@register("ThresholdedRelu")
def _thresholded_relu(node, x):
    return np.where(x > node.attrs.get("alpha", 1.0), x, 0).astype(x.dtype)


@register("HardSigmoid")
def _hard_sigmoid(node, x):
    alpha, beta = node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5)
    return np.clip(alpha * x + beta, 0, 1).astype(x.dtype)


@register("HardSwish")
def _hard_swish(node, x):
    return (x * np.clip(x / 6 + 0.5, 0, 1)).astype(x.dtype)


@register("Shrink")
def _shrink(node, x):
    bias, lambd = node.attrs.get("bias", 0.0), node.attrs.get("lambd", 0.5)
    return np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0)).astype(x.dtype)


@register("Gelu")
def _gelu(node, x):
    if node.attrs.get("approximate", "none") == "tanh":
        inner = np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)
        return (0.5 * x * (1 + np.tanh(inner))).astype(x.dtype)
    return (0.5 * x * (1 + special.erf(x / np.sqrt(2)))).astype(x.dtype)


@register("Swish")
def _swish(node, x):
    return (x * _sigmoid(node.attrs.get("alpha", 1.0) * x)).astype(x.dtype)


# -- types -----------------------------------------------------------------------------------------

def _cast_to(node, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if "float8" in dtype.name:
        return to_float8(x, dtype, bool(node.attrs.get("saturate", 1)))
    if dtype.kind in "iu" and x.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            return np.trunc(x).astype(dtype)
    if dtype.kind in "OUS" or x.dtype.kind in "OUS":
        if dtype.kind in "OUS":
            return np.array([_format_number(v) for v in x.ravel()], dtype=object).reshape(x.shape)
        return np.array([float(v) for v in x.ravel()]).astype(dtype).reshape(x.shape)
    return x.astype(dtype)


def to_float8(x: np.ndarray, dtype: np.dtype, saturate: bool) -> np.ndarray:
    """ONNX's float8 casts: round to nearest even; with ``saturate``, out-of-range values and the
    infinities become the largest finite value of their sign."""
    import ml_dtypes

    value = x.astype(np.float32)
    if saturate:
        largest = float(ml_dtypes.finfo(dtype).max)
        clipped = np.clip(value, -largest, largest)
        value = np.where(np.isnan(value), value, clipped)
    return value.astype(dtype)


def _format_number(value) -> str:
    if isinstance(value, float | np.floating):
        return str(np.float32(value)) if np.isfinite(value) else {"nan": "NaN", "inf": "INF",
                                                                   "-inf": "-INF"}[str(float(value))]
    return str(value)


#: Element types numpy (with ml_dtypes) has no arithmetic for: 4-bit and 2-bit integers and floats.
_PACKED_TYPES = ("int4", "uint4", "int2", "uint2", "float4", "e8m0")


def _cast_check(node, infos):
    to = node.attrs.get("to")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    except Exception:
        return f"unknown target type {to}"
    if any(name in dtype.name for name in _PACKED_TYPES):
        return f"casts to {dtype.name} are not supported (packed 2- and 4-bit types, the exponent-only e8m0)"
    return None


@register("Cast", check=_cast_check)
def _cast(node, x):
    return _cast_to(node, x, helper.tensor_dtype_to_np_dtype(node.attrs["to"]))


@register("CastLike")
def _cast_like(node, x, like):
    return _cast_to(node, x, like.dtype)
