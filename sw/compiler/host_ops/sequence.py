"""Sequences and optionals: ``Sequence*``, ``ConcatFromSequence``, ``SplitToSequence``, ``SequenceMap``,
``Optional*``.

A sequence value is a Python ``list`` of arrays; an empty optional is ``None`` (an optional that holds
a value is the value itself).  An operator whose one output is a sequence returns it in a 1-tuple, so
that the evaluator does not read the list as several outputs.
"""

from __future__ import annotations

import numpy as np

from ._registry import fail, register


def _sequence(node, value, what: str = "input") -> list:
    if not isinstance(value, list):
        raise fail(node, f"the {what} must be a sequence, got {type(value).__name__}")
    return value


def _position(node, sequence: list, position, *, insert: bool = False) -> int:
    index = int(np.ravel(position)[0])
    length = len(sequence) + int(insert)
    if not -length <= index < length:
        raise fail(node, f"position {index} is outside a sequence of {len(sequence)} tensors")
    return index % length if length else 0


@register("SequenceEmpty")
def sequence_empty(node):
    return ([],)


@register("SequenceConstruct")
def sequence_construct(node, *tensors):
    return (list(tensors),)


@register("SequenceInsert")
def sequence_insert(node, sequence, tensor, position=None):
    sequence = list(_sequence(node, sequence))
    index = len(sequence) if position is None else _position(node, sequence, position, insert=True)
    sequence.insert(index, tensor)
    return (sequence,)


@register("SequenceAt")
def sequence_at(node, sequence, position):
    sequence = _sequence(node, sequence)
    return sequence[_position(node, sequence, position)]


@register("SequenceErase")
def sequence_erase(node, sequence, position=None):
    sequence = list(_sequence(node, sequence))
    if not sequence:
        raise fail(node, "cannot erase from an empty sequence")
    del sequence[-1 if position is None else _position(node, sequence, position)]
    return (sequence,)


@register("SequenceLength")
def sequence_length(node, sequence):
    return np.array(len(_sequence(node, sequence)), np.int64)


@register("ConcatFromSequence")
def concat_from_sequence(node, sequence):
    sequence = _sequence(node, sequence)
    if not sequence:
        raise fail(node, "cannot concatenate an empty sequence")
    axis = int(node.attrs["axis"])
    if node.attrs.get("new_axis", 0):
        return np.stack(sequence, axis=axis % (np.ndim(sequence[0]) + 1))
    return np.concatenate(sequence, axis=axis % np.ndim(sequence[0]))


@register("SplitToSequence")
def split_to_sequence(node, x, split=None):
    axis = int(node.attrs.get("axis", 0)) % x.ndim
    if split is None:
        parts = np.split(x, x.shape[axis], axis=axis)
        if not node.attrs.get("keepdims", 1):
            parts = [np.squeeze(part, axis=axis) for part in parts]
        return (parts,)
    split = np.asarray(split, np.int64)
    if split.ndim == 0:
        size = int(split)
        bounds = list(range(size, x.shape[axis], size))
    else:
        if split.sum() != x.shape[axis]:
            raise fail(node, f"split {split.tolist()} does not add up to dimension {x.shape[axis]}")
        bounds = np.cumsum(split)[:-1].tolist()
    return (np.split(x, bounds, axis=axis),)


@register("SequenceMap")
def sequence_map(node, sequence, *args):
    """The body once per element: sequence inputs give their element, tensor inputs themselves."""
    from .control import _body, _captured, _formal_inputs, _onnx_inputs, _run

    own = _onnx_inputs(node, (sequence, *args))
    body = _body(node)
    names = _formal_inputs(node, body)
    captured = _captured(node, (sequence, *args))
    length = len(_sequence(node, own[0]))
    for value in own[1:]:
        if isinstance(value, list) and len(value) != length:
            raise fail(node, f"sequence inputs of lengths {length} and {len(value)}")
    outputs: list[list] = [[] for _ in body.outputs]
    for index in range(length):
        values = [value[index] if isinstance(value, list) else value for value in own]
        feeds = {**captured, **dict(zip(names, values, strict=True))}
        for collected, value in zip(outputs, _run(node, body, feeds), strict=True):
            collected.append(value)
    return tuple(outputs)


@register("Optional")
def optional(node, value=None):
    return (value,)


@register("OptionalHasElement")
def optional_has_element(node, value=None):
    return np.array(value is not None)


@register("OptionalGetElement")
def optional_get_element(node, value=None):
    if value is None:
        raise fail(node, "the optional is empty")
    return (value,)


__all__ = ["sequence_empty", "sequence_construct", "sequence_insert", "sequence_at", "sequence_erase",
           "sequence_length", "concat_from_sequence", "split_to_sequence", "sequence_map", "optional",
           "optional_has_element", "optional_get_element"]
