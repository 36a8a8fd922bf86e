"""Shape arithmetic and data movement: reshape, slice, gather, scatter, pad, tile, ..."""

from __future__ import annotations

import numpy as np
from onnx import helper

from ._registry import axes_of, fail, register


def _ints(values) -> list[int]:
    return [int(v) for v in np.ravel(values)]


register("Identity")(lambda node, x: (x,))     # a 1-tuple: x may be a sequence (a list)
register("Size")(lambda node, x: np.array(x.size, dtype=np.int64))
register("Transpose")(lambda node, x: np.transpose(x, node.attrs.get("perm")))
register("Concat")(lambda node, *xs: np.concatenate(xs, axis=node.attrs["axis"]))
register("NonZero")(lambda node, x: np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1))


@register("Reshape")
def _reshape(node, x, shape):
    shape = _ints(shape)
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


@register("Flatten")
def _flatten(node, x):
    axis = node.attrs.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


@register("Squeeze")
def _squeeze(node, x, axes=None):
    axes = axes_of(node, x.ndim, axes)
    return np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(axes))


@register("Unsqueeze")
def _unsqueeze(node, x, axes=None):
    axes = _ints(axes if axes is not None else node.attrs["axes"])
    rank = x.ndim + len(axes)
    result = x
    for axis in sorted(a % rank for a in axes):
        result = np.expand_dims(result, axis)
    return result


@register("Shape")
def _shape(node, x):
    shape = np.array(x.shape, dtype=np.int64)
    return shape[node.attrs.get("start", 0): node.attrs.get("end", None)]


@register("ConstantOfShape")
def _constant_of_shape(node, shape):
    value = node.attrs.get("value", np.zeros(1, np.float32))
    return np.full(_ints(shape), np.ravel(value)[0], dtype=value.dtype)


@register("Expand")
def _expand(node, x, shape):
    return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(shape)))).copy()


@register("Range")
def _range(node, start, limit, delta):
    start, limit, delta = (np.ravel(v)[0] for v in (start, limit, delta))
    count = max(int(np.ceil((limit - start) / delta)), 0)
    return (start + np.arange(count) * delta).astype(np.asarray(start).dtype)


@register("Dropout")
def _dropout(node, x, ratio=None, training_mode=None):
    if training_mode is not None and bool(np.ravel(training_mode)[0]):
        if ratio is None or float(np.ravel(ratio)[0]) != 0.0:
            raise fail(node, "Dropout in training mode is random; export for inference")
    return x, np.ones(x.shape, dtype=bool)


@register("Slice")
def _slice(node, x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else [a % x.ndim for a in _ints(axes)]
    steps = [1] * len(starts) if steps is None else _ints(steps)
    index = [slice(None)] * x.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


@register("Split")
def _split(node, x, split=None):
    axis = node.attrs.get("axis", 0) % x.ndim
    sizes = _ints(split) if split is not None else node.attrs.get("split")
    count = len(node.outputs)
    if sizes is None:
        parts = int(node.attrs.get("num_outputs", count))
        chunk = -(-x.shape[axis] // parts)            # the last part may be smaller
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(parts)]
    bounds = np.cumsum([0, *sizes])
    return tuple(np.take(x, np.arange(bounds[i], bounds[i + 1]), axis=axis) for i in range(len(sizes)))


@register("Tile")
def _tile(node, x, repeats):
    return np.tile(x, _ints(repeats))


def _normalised(indices: np.ndarray, size: int) -> np.ndarray:
    return np.where(indices < 0, indices + size, indices)


@register("Gather")
def _gather(node, x, indices):
    axis = node.attrs.get("axis", 0) % x.ndim
    return np.take(x, _normalised(np.asarray(indices), x.shape[axis]), axis=axis)


@register("GatherElements")
def _gather_elements(node, x, indices):
    axis = node.attrs.get("axis", 0) % x.ndim
    return np.take_along_axis(x, _normalised(np.asarray(indices), x.shape[axis]).astype(np.int64), axis=axis)


@register("GatherND")
def _gather_nd(node, x, indices):
    batch = node.attrs.get("batch_dims", 0)
    depth = indices.shape[-1]
    lead = x.shape[:batch]
    flat_x = x.reshape((-1, *x.shape[batch:]))
    flat_i = indices.reshape((-1, *indices.shape[batch:]))
    out = []
    for b in range(flat_x.shape[0]):
        idx = flat_i[b].reshape(-1, depth)
        idx = np.where(idx < 0, idx + np.array(flat_x.shape[1:1 + depth]), idx)
        out.append(flat_x[b][tuple(idx.T)])
    result = np.stack(out) if out else np.empty((0,), x.dtype)
    return result.reshape((*lead, *indices.shape[batch:-1], *x.shape[batch + depth:]))


_REDUCTIONS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


@register("ScatterND")
def _scatter_nd(node, x, indices, updates):
    result = x.copy()
    depth = indices.shape[-1]
    idx = indices.reshape(-1, depth)
    upd = updates.reshape((idx.shape[0], *x.shape[depth:]))
    reduction = node.attrs.get("reduction", "none")
    for i in range(idx.shape[0]):
        _scatter_one(result, tuple(int(v) for v in idx[i]), upd[i], reduction)
    return result


def _scatter_one(result: np.ndarray, target: tuple, value, reduction: str) -> None:
    """Write (or, with a reduction, combine) one update into ``result`` in place, in update order."""
    result[target] = value if reduction == "none" else _REDUCTIONS[reduction](result[target], value)


@register("ScatterElements")
def _scatter_elements(node, x, indices, updates):
    axis = node.attrs.get("axis", 0) % x.ndim
    indices = _normalised(np.asarray(indices), x.shape[axis])
    result = x.copy()
    reduction = node.attrs.get("reduction", "none")
    for position in np.ndindex(*indices.shape):
        target = list(position)
        target[axis] = int(indices[position])
        _scatter_one(result, tuple(target), updates[position], reduction)
    return result


@register("Pad")
def _pad(node, x, pads=None, value=None, axes=None):
    pads = _ints(pads if pads is not None else node.attrs.get("pads", ()))
    axes = list(range(x.ndim)) if axes is None else [a % x.ndim for a in _ints(axes)]
    width = [(0, 0)] * x.ndim
    for i, axis in enumerate(axes):
        width[axis] = (pads[i], pads[i + len(axes)])
    mode = node.attrs.get("mode", "constant")
    # Negative pads crop: pad with the positive parts, then slice the negative ones off.
    grow = [(max(a, 0), max(b, 0)) for a, b in width]
    if mode == "constant":
        fill = np.ravel(value)[0] if value is not None and np.size(value) else node.attrs.get("value", 0)
        result = np.pad(x, grow, mode="constant", constant_values=np.asarray(fill).astype(x.dtype))
    else:
        result = np.pad(x, grow, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])
    crop = tuple(slice(-min(a, 0), result.shape[i] + min(b, 0)) for i, (a, b) in enumerate(width))
    return result[crop]


@register("Trilu")
def _trilu(node, x, k=None):
    k = int(np.ravel(k)[0]) if k is not None else 0
    return np.triu(x, k) if node.attrs.get("upper", 1) else np.tril(x, k)


@register("OneHot")
def _one_hot(node, indices, depth, values):
    depth = int(np.ravel(depth)[0])
    axis = node.attrs.get("axis", -1)
    indices = np.asarray(indices).astype(np.int64)
    indices = np.where(indices < 0, indices + depth, indices)
    hot = indices[..., None] == np.arange(depth)
    result = np.where(hot, values[1], values[0]).astype(values.dtype)
    return np.moveaxis(result, -1, axis % result.ndim)


@register("EyeLike")
def _eye_like(node, x):
    dtype = helper.tensor_dtype_to_np_dtype(node.attrs["dtype"]) if "dtype" in node.attrs else x.dtype
    return np.eye(x.shape[0], x.shape[1], k=node.attrs.get("k", 0), dtype=dtype)


@register("DepthToSpace")
def _depth_to_space(node, x):
    b = node.attrs["blocksize"]
    n, c, h, w = x.shape
    if node.attrs.get("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


@register("SpaceToDepth")
def _space_to_depth(node, x):
    b = node.attrs["blocksize"]
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b)
    crd = node.attrs.get("mode", "DCR") == "CRD"
    y = y.transpose(0, 1, 3, 5, 2, 4) if crd else y.transpose(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


@register("Compress")
def _compress(node, x, condition):
    axis = node.attrs.get("axis")
    return np.compress(np.ravel(condition).astype(bool), x, axis=axis)


@register("ReverseSequence")
def _reverse_sequence(node, x, lengths):
    batch_axis, time_axis = node.attrs.get("batch_axis", 1), node.attrs.get("time_axis", 0)
    result = x.copy()
    for b, length in enumerate(_ints(lengths)):
        index = [slice(None)] * x.ndim
        index[batch_axis] = b
        index[time_axis] = slice(0, length)
        result[tuple(index)] = np.flip(x[tuple(index)], axis=time_axis - (batch_axis < time_axis))
    return result


@register("Unique")
def _unique(node, x):
    axis = node.attrs.get("axis")
    values, first, inverse, counts = np.unique(x, return_index=True, return_inverse=True, return_counts=True,
                                               axis=axis)
    inverse = np.ravel(inverse)
    if not node.attrs.get("sorted", 1):
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        values = np.take(values, order, axis=axis if axis is not None else 0)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    return (values, first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64))


@register("CenterCropPad")
def _center_crop_pad(node, x, shape):
    shape = _ints(shape)
    axes = axes_of(node, x.ndim) or list(range(x.ndim))
    result = x
    for axis, size in zip(axes, shape, strict=True):
        current = result.shape[axis]
        if size < current:                                   # crop, the extra element from the end
            start = (current - size) // 2
            result = np.take(result, np.arange(start, start + size), axis=axis)
        elif size > current:                                 # pad, the extra element at the end
            before = (size - current) // 2
            width = [(0, 0)] * x.ndim
            width[axis] = (before, size - current - before)
            result = np.pad(result, width)
    return result
