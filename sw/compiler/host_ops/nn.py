"""Neural-network operators: convolution, pooling, normalization, resize, attention, losses, einsum.

Convolution and pooling work in any number of spatial dimensions (1-D, 2-D, 3-D, ...), with
groups, dilations, strides, explicit or automatic padding and ``ceil_mode``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from onnx import helper

from ._registry import axis_shape, fail, register

# -- geometry ---------------------------------------------------------------------------------------


def pads_nd(spatial: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...],
            dilations: tuple[int, ...], attrs: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """Explicit ``(begins, ends)`` padding of a convolution or pooling, resolving ``auto_pad``."""
    rank = len(spatial)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begins.append(begin)
            ends.append(total - begin)
        return begins, ends
    if auto_pad == "VALID":
        return [0] * rank, [0] * rank
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    return pads[:rank], pads[rank:]


def conv_pads(input_hw: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int],
              dilations: tuple[int, int], attrs: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """Explicit ``(top, left, bottom, right)`` padding of a 2-D conv or pool, resolving ``auto_pad``."""
    begins, ends = pads_nd(tuple(input_hw), tuple(kernel), tuple(strides), tuple(dilations), attrs)
    return begins[0], begins[1], ends[0], ends[1]


def _geometry(x_shape, kernel, attrs, *, ceil_mode: bool = False):
    rank = len(kernel)
    strides = tuple(attrs.get("strides", (1,) * rank))
    dilations = tuple(attrs.get("dilations", (1,) * rank))
    spatial = tuple(x_shape[2:])
    begins, ends = pads_nd(spatial, kernel, strides, dilations, attrs)
    out = []
    for axis in range(rank):
        size = spatial[axis] + begins[axis] + ends[axis]
        span = (kernel[axis] - 1) * dilations[axis] + 1
        if ceil_mode:
            count = -(-(size - span) // strides[axis]) + 1
            if (count - 1) * strides[axis] >= spatial[axis] + begins[axis]:
                count -= 1           # the last window would start in the end padding only
        else:
            count = (size - span) // strides[axis] + 1
        out.append(max(count, 0))
    return strides, dilations, begins, ends, tuple(out)


def _windows(x: np.ndarray, kernel, strides, dilations, begins, ends, out, fill) -> np.ndarray:
    """``(N, C, *kernel, *out)`` patches of ``x`` padded with ``fill`` (extra end padding as needed)."""
    rank = len(kernel)
    width = [(0, 0), (0, 0)]
    for axis in range(rank):
        need = (out[axis] - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1
        extra = max(need - (x.shape[2 + axis] + begins[axis] + ends[axis]), 0)
        width.append((begins[axis], ends[axis] + extra))
    padded = np.pad(x, width, constant_values=fill)
    patches = np.empty((*x.shape[:2], *kernel, *out), dtype=x.dtype)
    for offsets in itertools.product(*(range(k) for k in kernel)):
        index = [slice(None), slice(None)]
        for axis, offset in enumerate(offsets):
            start = offset * dilations[axis]
            index.append(slice(start, start + strides[axis] * (out[axis] - 1) + 1, strides[axis]))
        patches[(slice(None), slice(None), *offsets)] = padded[tuple(index)]
    return patches


# -- convolution ------------------------------------------------------------------------------------

def conv2d(x: np.ndarray, w: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """Convolution (NC..., OI..., zero padding, groups, dilations) in any number of spatial dims.

    (Named for its first use; rank-3 and rank-5 inputs are 1-D and 3-D convolutions.)
    """
    if x.ndim != w.ndim or x.ndim < 3:
        raise ValueError(f"convolution needs input and weight of one rank >= 3, got {x.shape} and {w.shape}")
    group = int(attrs.get("group", 1))
    kernel = tuple(w.shape[2:])
    if attrs.get("kernel_shape") is not None and tuple(attrs["kernel_shape"]) != kernel:
        raise ValueError(f"kernel_shape {list(attrs['kernel_shape'])} differs from the weight's "
                         f"{list(kernel)}")
    strides, dilations, begins, ends, out = _geometry(x.shape, kernel, attrs)
    patches = _windows(x, kernel, strides, dilations, begins, ends, out, 0)
    n, c = x.shape[:2]
    points = int(np.prod(out))
    patches = patches.reshape(n, group, (c // group) * int(np.prod(kernel)), points)
    weights = w.reshape(group, w.shape[0] // group, -1)
    y = np.matmul(weights[None], patches)                      # (N, G, O/G, P)
    return y.reshape(n, w.shape[0], *out)


@register("Conv")
def _conv(node, x, w, b=None):
    y = conv2d(x, w, node.attrs)
    if b is not None:
        y = y + axis_shape(b, 1, y.ndim)
    return y.astype(x.dtype)


@register("ConvTranspose")
def _conv_transpose(node, x, w, b=None):
    attrs = node.attrs
    rank = x.ndim - 2
    group = int(attrs.get("group", 1))
    kernel = tuple(attrs.get("kernel_shape", w.shape[2:]))
    strides = tuple(attrs.get("strides", (1,) * rank))
    dilations = tuple(attrs.get("dilations", (1,) * rank))
    out_pad = tuple(attrs.get("output_padding", (0,) * rank))
    spatial = x.shape[2:]
    full = [strides[i] * (spatial[i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
            for i in range(rank)]
    if attrs.get("output_shape") is not None:
        target = list(attrs["output_shape"])[-rank:]
        total = [full[i] - target[i] for i in range(rank)]
        if attrs.get("auto_pad", "NOTSET") == "SAME_LOWER":
            begins = [max(t - t // 2, 0) for t in total]
        else:
            begins = [max(t // 2, 0) for t in total]      # a larger output extends at the end
        ends = [total[i] - begins[i] for i in range(rank)]
    elif attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        target = [spatial[i] * strides[i] for i in range(rank)]
        total = [max(full[i] - target[i], 0) for i in range(rank)]
        if attrs["auto_pad"] == "SAME_UPPER":
            begins = [t // 2 for t in total]
        else:
            begins = [t - t // 2 for t in total]
        ends = [total[i] - begins[i] for i in range(rank)]
    else:
        pads = list(attrs.get("pads", [0] * (2 * rank)))
        begins, ends = pads[:rank], pads[rank:]
    n, c = x.shape[:2]
    per_group_out = w.shape[1]
    y = np.zeros((n, group * per_group_out, *full), dtype=np.float64 if x.dtype.kind == "f" else np.int64)
    xs = x.reshape(n, group, c // group, *spatial)
    ws = w.reshape(group, c // group, per_group_out, *kernel)
    for offsets in itertools.product(*(range(k) for k in kernel)):
        tap = ws[(slice(None), slice(None), slice(None), *offsets)]
        contribution = np.einsum("ngc...,gco->ngo...", xs, tap)
        contribution = contribution.reshape(n, group * per_group_out, *spatial)
        index = [slice(None), slice(None)]
        for axis, offset in enumerate(offsets):
            start = offset * dilations[axis]
            index.append(slice(start, start + strides[axis] * (spatial[axis] - 1) + 1, strides[axis]))
        y[tuple(index)] += contribution
    y = np.pad(y, [(0, 0), (0, 0)] + [(max(-b, 0), max(-e, 0)) for b, e in zip(begins, ends, strict=True)])
    crop = [slice(None), slice(None)] + [slice(max(b, 0), y.shape[2 + i] - max(e, 0))
                                         for i, (b, e) in enumerate(zip(begins, ends, strict=True))]
    y = y[tuple(crop)]
    if b is not None:
        y = y + axis_shape(b, 1, y.ndim)
    return y.astype(x.dtype)


# -- pooling ----------------------------------------------------------------------------------------

def _pool_kernel(node, x) -> tuple[int, ...]:
    kernel = tuple(node.attrs["kernel_shape"])
    if x.ndim != len(kernel) + 2:
        raise fail(node, f"kernel_shape {list(kernel)} does not fit an input of rank {x.ndim}")
    return kernel


@register("MaxPool")
def _max_pool(node, x):
    kernel = _pool_kernel(node, x)
    ceil = bool(node.attrs.get("ceil_mode", 0))
    strides, dilations, begins, ends, out = _geometry(x.shape, kernel, node.attrs, ceil_mode=ceil)
    fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    patches = _windows(x, kernel, strides, dilations, begins, ends, out, fill)
    rank = len(kernel)
    window_axes = tuple(range(2, 2 + rank))
    values = patches.max(axis=window_axes)
    if len([t for t in node.outputs if t]) < 2:
        return values
    # Indices: positions in the flattened input (row-major, or column-major over the spatial dims
    # with storage_order=1); padding never wins because it is the lowest value.
    spatial = x.shape[2:]
    if node.attrs.get("storage_order", 0):
        strides_flat = [int(np.prod(spatial[:i])) for i in range(rank)]
    else:
        strides_flat = [int(np.prod(spatial[i + 1:])) for i in range(rank)]
    grid = np.zeros(spatial, dtype=np.int64)
    for axis in range(rank):
        shape = [1] * rank
        shape[axis] = spatial[axis]
        grid = grid + np.arange(spatial[axis]).reshape(shape) * strides_flat[axis]
    base = np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[0], x.shape[1], *([1] * rank))
    base = base * int(np.prod(spatial))
    positions = np.broadcast_to(grid + base, x.shape)
    index_patches = _windows(positions, kernel, strides, dilations, begins, ends, out, -1)
    flat = patches.reshape(*x.shape[:2], -1, *out)
    winner = np.argmax(flat, axis=2)[:, :, None]
    indices = np.take_along_axis(index_patches.reshape(*x.shape[:2], -1, *out), winner, axis=2)[:, :, 0]
    return values, indices.astype(np.int64)


@register("AveragePool")
def _average_pool(node, x):
    kernel = _pool_kernel(node, x)
    strides, dilations, begins, ends, out = _geometry(x.shape, kernel, node.attrs,
                                                      ceil_mode=bool(node.attrs.get("ceil_mode", 0)))
    rank = len(kernel)
    window_axes = tuple(range(2, 2 + rank))
    patches = _windows(x, kernel, strides, dilations, begins, ends, out, 0)
    sums = patches.sum(axis=window_axes, dtype=np.float64)
    ones = np.ones((1, 1) + x.shape[2:], dtype=np.float64)
    if node.attrs.get("count_include_pad", 0):
        # Explicit padding counts, the extension ceil_mode adds does not.
        ones = np.pad(ones, [(0, 0), (0, 0)] + list(zip(begins, ends, strict=True)), constant_values=1)
        begins, ends = [0] * rank, [0] * rank
    counts = _windows(ones, kernel, strides, dilations, begins, ends, out, 0).sum(axis=window_axes)
    return (sums / counts).astype(x.dtype)


@register("LpPool")
def _lp_pool(node, x):
    kernel = _pool_kernel(node, x)
    p = node.attrs.get("p", 2)
    strides, dilations, begins, ends, out = _geometry(x.shape, kernel, node.attrs,
                                                      ceil_mode=bool(node.attrs.get("ceil_mode", 0)))
    window_axes = tuple(range(2, 2 + len(kernel)))
    patches = _windows(x, kernel, strides, dilations, begins, ends, out, 0)
    return np.power(np.sum(np.power(np.abs(patches), p), axis=window_axes), 1.0 / p).astype(x.dtype)


def _spatial(x):
    return tuple(range(2, x.ndim))


register("GlobalAveragePool")(lambda node, x: x.mean(axis=_spatial(x), keepdims=True).astype(x.dtype))
register("GlobalMaxPool")(lambda node, x: x.max(axis=_spatial(x), keepdims=True))


@register("GlobalLpPool")
def _global_lp_pool(node, x):
    p = node.attrs.get("p", 2)
    return np.power(np.sum(np.power(np.abs(x), p), axis=_spatial(x), keepdims=True), 1.0 / p).astype(x.dtype)


@register("MaxUnpool")
def _max_unpool(node, x, indices, output_shape=None):
    kernel = tuple(node.attrs["kernel_shape"])
    rank = len(kernel)
    strides = tuple(node.attrs.get("strides", (1,) * rank))
    pads = list(node.attrs.get("pads", [0] * (2 * rank)))
    if output_shape is not None:
        shape = [int(d) for d in output_shape]
    else:
        shape = [*x.shape[:2], *[(x.shape[2 + i] - 1) * strides[i] - pads[i] - pads[i + rank] + kernel[i]
                                 for i in range(rank)]]
    y = np.zeros(int(np.prod(shape)), dtype=x.dtype)
    y[np.ravel(indices)] = np.ravel(x)
    return y.reshape(shape)


# -- matrix products --------------------------------------------------------------------------------

@register("MatMul")
def _matmul(node, a, b):
    # ml_dtypes' bfloat16 products come back as float32; ONNX keeps the operands' type.
    return np.matmul(a, b).astype(a.dtype) if a.dtype == b.dtype else np.matmul(a, b)
@register("Einsum")
def _einsum(node, *xs):
    # numpy's einsum has no kernels for ml_dtypes' types (bfloat16): compute those in float32.
    wide = [x.astype(np.float32) if x.dtype.kind == "V" else x for x in xs]
    return np.einsum(node.attrs["equation"], *wide).astype(xs[0].dtype)


@register("Gemm")
def _gemm(node, a, b, c=None):
    flatten = node.attrs.get("flatten_a")
    if flatten is not None:
        a = a.reshape(int(np.prod(a.shape[:flatten])), int(np.prod(a.shape[flatten:])))
    if node.attrs.get("transA", 0):
        a = a.T
    if node.attrs.get("transB", 0):
        b = b.T
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    y = alpha * (a @ b) if alpha != 1.0 else a @ b
    if c is not None:
        y = y + (beta * c if beta != 1.0 else c)
    return y.astype(a.dtype)


# -- normalization ----------------------------------------------------------------------------------

@register("BatchNormalization")
def _batch_norm(node, x, scale, bias, mean, var):
    epsilon = node.attrs.get("epsilon", 1e-5)
    rank = x.ndim

    def normalise(m, v):
        return ((x - axis_shape(m, 1, rank)) / np.sqrt(axis_shape(v, 1, rank) + epsilon)
                * axis_shape(scale, 1, rank) + axis_shape(bias, 1, rank)).astype(x.dtype)

    if not node.attrs.get("training_mode", 0):
        return normalise(mean, var)
    momentum = node.attrs.get("momentum", 0.9)
    axes = tuple(a for a in range(rank) if a != 1)
    batch_mean, batch_var = x.mean(axis=axes), x.var(axis=axes)
    running_mean = (mean * momentum + batch_mean * (1 - momentum)).astype(mean.dtype)
    running_var = (var * momentum + batch_var * (1 - momentum)).astype(var.dtype)
    return normalise(batch_mean, batch_var), running_mean, running_var


@register("LayerNormalization")
def _layer_norm(node, x, scale, bias=None):
    axis = node.attrs.get("axis", -1) % x.ndim
    epsilon = node.attrs.get("epsilon", 1e-5)
    axes = tuple(range(axis, x.ndim))
    stash = np.float32 if node.attrs.get("stash_type", 1) == 1 else x.dtype
    data = x.astype(stash)
    mean = data.mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(((data - mean) ** 2).mean(axis=axes, keepdims=True) + epsilon)
    y = (data - mean) * inv_std * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype), mean.astype(stash), inv_std.astype(stash)


@register("RMSNormalization")
def _rms_norm(node, x, scale):
    axis = node.attrs.get("axis", -1) % x.ndim
    epsilon = node.attrs.get("epsilon", 1e-5)
    axes = tuple(range(axis, x.ndim))
    data = x.astype(np.float32) if node.attrs.get("stash_type", 1) == 1 else x
    rms = np.sqrt(np.mean(data * data, axis=axes, keepdims=True) + epsilon)
    return (data / rms * scale).astype(x.dtype)


@register("InstanceNormalization")
def _instance_norm(node, x, scale, bias):
    epsilon = node.attrs.get("epsilon", 1e-5)
    axes = _spatial(x)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return ((x - mean) / np.sqrt(var + epsilon) * axis_shape(scale, 1, x.ndim)
            + axis_shape(bias, 1, x.ndim)).astype(x.dtype)


@register("GroupNormalization")
def _group_norm(node, x, scale, bias):
    groups = int(node.attrs["num_groups"])
    epsilon = node.attrs.get("epsilon", 1e-5)
    n, c = x.shape[:2]
    grouped = x.reshape(n, groups, -1).astype(np.float32 if node.attrs.get("stash_type", 1) == 1 else x.dtype)
    mean = grouped.mean(axis=2, keepdims=True)
    var = grouped.var(axis=2, keepdims=True)
    normal = ((grouped - mean) / np.sqrt(var + epsilon)).reshape(x.shape)
    if scale.size == groups and groups != c:          # opset 18: one scale and bias per group
        scale, bias = np.repeat(scale, c // groups), np.repeat(bias, c // groups)
    return (normal * axis_shape(scale, 1, x.ndim) + axis_shape(bias, 1, x.ndim)).astype(x.dtype)


@register("LpNormalization")
def _lp_norm(node, x):
    axis = node.attrs.get("axis", -1)
    p = node.attrs.get("p", 2)
    norm = np.sum(np.abs(x) ** p, axis=axis, keepdims=True) ** (1 / p)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm == 0, 0, x / norm).astype(x.dtype)


@register("MeanVarianceNormalization")
def _mean_variance_norm(node, x):
    axes = tuple(node.attrs.get("axes", (0, 2, 3)))
    mean = x.mean(axis=axes, keepdims=True)
    std = np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True))
    return ((x - mean) / (std + 1e-9)).astype(x.dtype)


@register("LRN")
def _lrn(node, x):
    size = node.attrs["size"]
    alpha, beta = node.attrs.get("alpha", 1e-4), node.attrs.get("beta", 0.75)
    bias = node.attrs.get("bias", 1.0)
    squares = np.square(x)
    total = np.zeros_like(x)
    before, after = (size - 1) // 2, -(-(size - 1) // 2)
    channels = x.shape[1]
    for c in range(channels):
        total[:, c] = squares[:, max(0, c - before): min(channels, c + after + 1)].sum(axis=1)
    return (x / (bias + alpha / size * total) ** beta).astype(x.dtype)


# -- resize -----------------------------------------------------------------------------------------

def _cubic(a: float):
    def coefficients(ratio, scale):
        r = ratio
        return np.array([((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
                         ((a + 2) * r - (a + 3)) * r * r + 1,
                         ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
                         ((a * ((1 - r) + 1) - 5 * a) * ((1 - r) + 1) + 8 * a) * ((1 - r) + 1) - 4 * a])
    return coefficients


def _cubic_kernel(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))


def _antialiased(kind: str, a: float):
    def coefficients(ratio, scale):
        scale = min(scale, 1.0)
        if kind == "linear":
            start = int(np.floor(-1 / scale) + 1)
            args = (np.arange(start, 2 - start) - ratio) * scale
            values = np.clip(1 - np.abs(args), 0, 1)
        else:
            start = int(np.floor(-2 / scale) + 1)
            values = _cubic_kernel(scale * (np.arange(start, 2 - start) - ratio), a)
        return values / values.sum()
    return coefficients


def _nearest(mode: str):
    def coefficients(ratio, scale):
        if float(ratio).is_integer():
            return np.array([0.0, 1.0])
        up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
              "floor": False, "ceil": True}[mode]
        return np.array([0.0, 1.0]) if up else np.array([1.0, 0.0])
    return coefficients


def _source_coordinates(mode: str, y: np.ndarray, scale: float, width_in: int, width_out: int, roi):
    """The input coordinate each output position samples, and which are outside (tf_crop_and_resize)."""
    width = scale * width_in
    outside = np.zeros(y.shape, dtype=bool)
    if mode == "align_corners":
        x = np.zeros_like(y) if width == 1 else y * (width_in - 1) / (width - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        if width == 1:
            x = np.full_like(y, (roi[1] - roi[0]) * (width_in - 1) / 2)
        else:
            x = y * (roi[1] - roi[0]) * (width_in - 1) / (width - 1)
        x = x + roi[0] * (width_in - 1)
        outside = (x < 0) | (x > width_in - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full_like(y, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        offset = width_in / 2 * (1 - width_out / width)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise ValueError(f"coordinate_transformation_mode {mode!r} is not defined")
    return x, outside


def _resize_axis(data, axis, scale, width_out, coefficients, roi, attrs):
    width_in = data.shape[axis]
    y = np.arange(width_out, dtype=np.float64)
    x, outside = _source_coordinates(attrs.get("coordinate_transformation_mode", "half_pixel"), y, scale,
                                     width_in, width_out, roi)
    matrix = np.zeros((width_out, width_in))
    for i in range(width_out):
        if outside[i]:
            continue
        base = math.floor(x[i])
        if x[i] == base:           # an exact sample point: ONNX takes it as ratio 1 from the left
            base -= 1
        weights = np.array(coefficients(x[i] - base, scale), dtype=np.float64)
        count = len(weights)
        indices = np.arange(base - count // 2 + 1, base + count // 2 + 1)
        if attrs.get("exclude_outside", 0):
            weights = np.where((indices < 0) | (indices >= width_in), 0.0, weights)
            weights = weights / weights.sum()
        for index, weight in zip(np.clip(indices, 0, width_in - 1), weights, strict=True):
            matrix[i, index] += weight
    moved = np.moveaxis(data, axis, -1) @ matrix.T
    if outside.any():
        moved[..., outside] = attrs.get("extrapolation_value", 0.0)
    return np.moveaxis(moved, -1, axis)


@register("Resize")
def _resize(node, x, roi=None, scales=None, sizes=None):
    attrs = node.attrs
    rank = x.ndim
    axes = [int(a) % rank for a in attrs.get("axes", range(rank))]
    mode = attrs.get("mode", "nearest")
    a = attrs.get("cubic_coeff_a", -0.75)
    if mode == "nearest":
        coefficients = _nearest(attrs.get("nearest_mode", "round_prefer_floor"))
    elif attrs.get("antialias", 0):
        coefficients = _antialiased(mode, a)
    elif mode == "linear":
        coefficients = lambda ratio, scale: np.array([1 - ratio, ratio])  # noqa: E731
    else:
        coefficients = _cubic(a)
    factors = [1.0] * rank
    out = list(x.shape)
    if sizes is not None and np.size(sizes):
        for axis, size in zip(axes, np.ravel(sizes), strict=True):
            factors[axis] = int(size) / x.shape[axis]
            out[axis] = int(size)
        policy = attrs.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            chosen = (min if policy == "not_larger" else max)(factors[axis] for axis in axes)
            for axis in axes:
                factors[axis] = chosen
                out[axis] = int(chosen * x.shape[axis] + 0.5)
    else:
        for axis, scale in zip(axes, np.ravel(scales), strict=True):
            factors[axis] = float(scale)
            out[axis] = int(float(scale) * x.shape[axis])
    full_roi = None
    if roi is not None and np.size(roi):
        roi = np.ravel(roi).astype(np.float64)
        full_roi = [[0.0, 1.0] for _ in range(rank)]
        for i, axis in enumerate(axes):
            full_roi[axis] = [roi[i], roi[i + len(axes)]]
    result = x.astype(np.float64)
    for axis in axes:
        axis_roi = full_roi[axis] if full_roi is not None else [0.0, 1.0]
        if factors[axis] == 1.0 and out[axis] == x.shape[axis] and axis_roi == [0.0, 1.0]:
            continue
        result = _resize_axis(result, axis, factors[axis], out[axis], coefficients, axis_roi, attrs)
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        return np.clip(np.round(result), info.min, info.max).astype(x.dtype)
    return result.astype(x.dtype)


# -- losses -----------------------------------------------------------------------------------------

def _negative_log_likelihood(node, log_prob, target, weight=None):
    ignore = node.attrs.get("ignore_index")
    reduction = node.attrs.get("reduction", "mean")
    target = np.asarray(target).astype(np.int64)
    valid = np.ones(target.shape, dtype=bool) if ignore is None else target != ignore
    safe = np.where(valid, target, 0)
    picked = np.take_along_axis(log_prob, safe[:, None], axis=1)[:, 0]
    weights = np.where(valid, 1.0 if weight is None else weight[safe], 0.0).astype(log_prob.dtype)
    loss = -picked * weights
    if reduction == "none":
        return loss.astype(log_prob.dtype)
    if reduction == "sum":
        return np.array(loss.sum(), dtype=log_prob.dtype)
    return np.array(loss.sum() / weights.sum(), dtype=log_prob.dtype)


@register("NegativeLogLikelihoodLoss")
def _nll_loss(node, log_prob, target, weight=None):
    return _negative_log_likelihood(node, log_prob, target, weight)


@register("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(node, scores, labels, weights=None):
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_prob = (shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))).astype(scores.dtype)
    loss = _negative_log_likelihood(node, log_prob, labels, weights)
    return (loss, log_prob) if len([t for t in node.outputs if t]) > 1 else loss


# -- attention --------------------------------------------------------------------------------------

def _masked_softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; a row masked entirely (all -inf) gives zeros, not NaN."""
    peak = np.max(x, axis=-1, keepdims=True)
    peak = np.where(np.isneginf(peak), 0, peak)
    e = np.exp(x - peak)
    total = np.sum(e, axis=-1, keepdims=True)
    return e / np.where(total == 0, 1, total)


def _position_bias(base: np.ndarray, offset, allowed_fn) -> np.ndarray:
    """``base`` plus 0 where ``allowed_fn(query position + offset - key position)``, else -inf.

    ``offset`` is a scalar (no cache: 0; a past cache: its length) or one per batch entry.
    """
    q_len, kv_len = base.shape[-2:]
    diff = np.arange(q_len)[:, None] - np.arange(kv_len)[None, :]
    if np.ndim(offset):
        diff = diff[None] + np.reshape(offset, (-1, 1, 1))
        bias = np.where(allowed_fn(diff), 0, -np.inf).astype(base.dtype)
        return base + bias.reshape(bias.shape[0], 1, q_len, kv_len)
    return base + np.where(allowed_fn(diff + int(offset)), 0, -np.inf).astype(base.dtype)


@register("Attention")
def _attention(node, q, k, v, mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None):
    """ONNX Attention (opset 23/24): scaled dot-product attention with masks, caches, GQA, softcap."""
    attrs = node.attrs
    three_d = q.ndim == 3
    if three_d:
        q_heads, kv_heads = attrs["q_num_heads"], attrs["kv_num_heads"]
        q = q.reshape(q.shape[0], q.shape[1], q_heads, -1).transpose(0, 2, 1, 3)
        k = k.reshape(k.shape[0], k.shape[1], kv_heads, -1).transpose(0, 2, 1, 3)
        v = v.reshape(v.shape[0], v.shape[1], kv_heads, -1).transpose(0, 2, 1, 3)
    scale = q.dtype.type(np.sqrt(attrs.get("scale", 1 / np.sqrt(q.shape[3]))))
    if past_key is not None:
        k = np.concatenate([past_key, k], axis=2)
    if past_value is not None:
        v = np.concatenate([past_value, v], axis=2)
    present_key, present_value = k, v
    q_len, kv_len = q.shape[2], k.shape[2]
    bias = np.zeros((q_len, kv_len), dtype=q.dtype)
    if mask is not None and kv_len > mask.shape[-1]:
        mask = np.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, kv_len - mask.shape[-1])],
                      constant_values=False if mask.dtype == np.bool_ else -np.inf)
    if mask is not None and mask.dtype == np.bool_:
        mask = np.where(mask, q.dtype.type(0), q.dtype.type(-np.inf))
    # The causal frontier and the window are aligned to the end of the cache.
    if past_key is None and nonpad_kv_seqlen is not None:
        offset = np.ravel(nonpad_kv_seqlen) - q_len
    else:
        offset = past_key.shape[2] if past_key is not None else 0
    if attrs.get("is_causal", 0):
        base = bias if mask is None else np.zeros((q_len, kv_len), q.dtype) + mask
        bias = _position_bias(base, offset, lambda d: d >= 0)
    elif mask is not None:
        bias = bias + mask
    left, right = attrs.get("left_window_size", -1), attrs.get("right_window_size", -1)
    if left >= 0 or right >= 0:
        def inside(d):
            return ((d <= left) if left >= 0 else True) & ((-d <= right) if right >= 0 else True)
        bias = _position_bias(np.zeros((q_len, kv_len), q.dtype) + bias, offset, inside)
    if nonpad_kv_seqlen is not None:
        valid = np.arange(kv_len) < np.ravel(nonpad_kv_seqlen)[:, None]
        bias = bias + np.where(valid, 0, -np.inf).astype(bias.dtype).reshape(-1, 1, 1, kv_len)
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads != kv_heads:                          # grouped-query attention: share each kv head
        k = np.repeat(k, heads // kv_heads, axis=1)
        v = np.repeat(v, heads // kv_heads, axis=1)
    scores = np.matmul(q * scale, np.swapaxes(k, -1, -2) * scale)
    softcap = attrs.get("softcap", 0.0)
    if softcap and softcap > 0:
        scores = np.tanh(scores / softcap) * softcap
    qk_output = scores
    with_bias = scores + bias
    mode = attrs.get("qk_matmul_output_mode", 0)
    if mode == 2:
        qk_output = with_bias.copy()
    if attrs.get("softmax_precision") is not None:
        with_bias = with_bias.astype(helper.tensor_dtype_to_np_dtype(attrs["softmax_precision"]))
    probabilities = _masked_softmax(with_bias)
    probabilities = np.where(np.isneginf(np.max(bias, axis=-1, keepdims=True)), 0, probabilities)
    if mode == 3:
        qk_output = probabilities
    probabilities = probabilities.astype(q.dtype)
    y = np.matmul(probabilities, v)
    if three_d:
        y = y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1)
    outputs = (y.astype(q.dtype), present_key, present_value, qk_output.astype(q.dtype))
    return outputs[:max(len(node.outputs), 1)]


# -- position encodings -----------------------------------------------------------------------------

@register("RotaryEmbedding")
def _rotary_embedding(node, x, cos_cache, sin_cache, position_ids=None):
    """Rotary position embedding (opset 23): rotate pairs of features by position-dependent angles."""
    original = x.shape
    data = np.transpose(x, (0, 2, 1, 3)) if x.ndim == 4 else x        # (batch, sequence, heads?, head)
    if data.ndim == 3:
        heads = node.attrs["num_heads"]
        data = data.reshape(data.shape[0], data.shape[1], heads, data.shape[2] // heads)
    dim = node.attrs.get("rotary_embedding_dim", 0) or data.shape[3]
    rotate, keep = data[..., :dim], data[..., dim:]
    if position_ids is not None:
        cos_cache, sin_cache = cos_cache[position_ids], sin_cache[position_ids]
    cos, sin = np.expand_dims(cos_cache, 2), np.expand_dims(sin_cache, 2)
    interleaved = node.attrs.get("interleaved", 0)
    x1, x2 = (rotate[..., 0::2], rotate[..., 1::2]) if interleaved else np.split(rotate, 2, axis=-1)
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    if interleaved:
        rotated = np.stack([real, imag], axis=-1).reshape(rotate.shape)
    else:
        rotated = np.concatenate([real, imag], axis=-1)
    result = np.concatenate([rotated, keep], axis=-1)
    result = result.reshape(original) if len(original) == 3 else np.transpose(result, (0, 2, 1, 3))
    return result.astype(x.dtype)
