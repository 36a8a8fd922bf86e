"""Reductions, arg-max/min, cumulative sums and products, top-k, softmax and its relatives."""

from __future__ import annotations

import numpy as np

from ._registry import axes_of, register


def _reduction(identity_name: str, fn, post=None, pre=None):
    """A Reduce* operator: ``fn(x, axis, keepdims)``; ``pre``/``post`` transform before and after."""
    def apply(node, x, axes=None):
        axes = axes_of(node, x.ndim, axes)
        axes = sorted(set(axes)) if axes else axes
        keepdims = bool(node.attrs.get("keepdims", 1))
        if not axes:
            if node.attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.ndim))
        value = pre(x) if pre is not None else x
        if value.size == 0 or any(x.shape[a] == 0 for a in axes):
            shape = [1 if i in axes else d for i, d in enumerate(x.shape)]
            result = np.full(shape, _empty_value(identity_name, x.dtype), dtype=x.dtype)
            return result if keepdims else result.reshape([d for i, d in enumerate(shape) if i not in axes])
        result = fn(value, axis=tuple(axes), keepdims=keepdims)
        if post is not None:
            result = post(result)
        return np.asarray(result).astype(x.dtype)
    return apply


def _empty_value(kind: str, dtype: np.dtype):
    """The value of a reduction over nothing (ONNX's identities: 0, 1, -inf, +inf)."""
    if kind in ("max", "log"):
        return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min
    if kind == "min":
        return np.inf if dtype.kind == "f" else np.iinfo(dtype).max
    return 1 if kind == "prod" else 0


def _log_sum_exp(x, axis, keepdims):
    peak = np.max(x, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0)
    total = np.log(np.sum(np.exp(x - peak), axis=axis, keepdims=True)) + peak
    return total if keepdims else np.squeeze(total, axis=axis)


register("ReduceSum")(_reduction("sum", np.sum))
register("ReduceMean")(_reduction("sum", np.mean))
register("ReduceMax")(_reduction("max", np.max))
register("ReduceMin")(_reduction("min", np.min))
register("ReduceProd")(_reduction("prod", np.prod))
register("ReduceL1")(_reduction("sum", np.sum, pre=np.abs))
register("ReduceL2")(_reduction("sum", np.sum, pre=lambda x: np.square(x.astype(np.float64)), post=np.sqrt))
register("ReduceSumSquare")(_reduction("sum", np.sum, pre=np.square))
register("ReduceLogSum")(_reduction("log", np.sum, post=np.log))
register("ReduceLogSumExp")(_reduction("log", _log_sum_exp, pre=lambda x: x.astype(np.float64)))


def _arg(node, x, pick):
    axis = node.attrs.get("axis", 0) % x.ndim
    if node.attrs.get("select_last_index", 0):
        result = x.shape[axis] - 1 - pick(np.flip(x, axis), axis=axis)
    else:
        result = pick(x, axis=axis)
    result = np.asarray(result).astype(np.int64)
    return np.expand_dims(result, axis) if node.attrs.get("keepdims", 1) else result


register("ArgMax")(lambda node, x: _arg(node, x, np.argmax))
register("ArgMin")(lambda node, x: _arg(node, x, np.argmin))


def _cumulative(fn):
    def apply(node, x, axis):
        axis = int(np.ravel(axis)[0]) % x.ndim
        exclusive, reverse = node.attrs.get("exclusive", 0), node.attrs.get("reverse", 0)
        data = np.flip(x, axis) if reverse else x
        result = fn(data, axis=axis, dtype=x.dtype)
        if exclusive:
            identity = np.ones_like if fn is np.cumprod else np.zeros_like
            head = identity(np.take(result, [0], axis=axis))
            rest = np.take(result, np.arange(x.shape[axis] - 1), axis=axis)
            result = np.concatenate([head, rest], axis=axis)
        return np.flip(result, axis) if reverse else result
    return apply


register("CumSum")(_cumulative(np.cumsum))
register("CumProd")(_cumulative(np.cumprod))


@register("TopK")
def _top_k(node, x, k):
    axis = node.attrs.get("axis", -1) % x.ndim
    k = int(np.ravel(k)[0])
    largest = node.attrs.get("largest", 1)
    keys = x.astype(np.float64) if x.dtype.kind in "iub" else x
    # Stable sorts keep equal values in index order, as ONNX requires (the lower index first).
    order = np.argsort(-keys if largest else keys, axis=axis, kind="stable")
    indices = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, indices, axis=axis), indices.astype(np.int64)


def _softmax_axis(node, x):
    return node.attrs.get("axis", -1) % x.ndim if x.ndim else 0


@register("Softmax")
def _softmax(node, x):
    axis = _softmax_axis(node, x)
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)


@register("LogSoftmax")
def _log_softmax(node, x):
    axis = _softmax_axis(node, x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))).astype(x.dtype)


@register("Hardmax")
def _hardmax(node, x):
    axis = _softmax_axis(node, x)
    winner = np.expand_dims(np.argmax(x, axis=axis), axis)
    result = np.zeros_like(x)
    np.put_along_axis(result, winner, 1, axis=axis)
    return result
