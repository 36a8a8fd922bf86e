"""Control flow: ``If``, ``Loop`` and ``Scan``, their subgraphs run by Braze's own evaluator.

The frontend imports a control-flow node with its subgraphs (attributes holding the serialized
``GraphProto``) and appends the outer-scope tensors they read to the node's inputs (attribute
``captures`` names them as the subgraphs do, in the same order).  Each implementation here runs a
subgraph with :func:`braze.sw.compiler.frontend.evaluate` -- recursion through the same
interpreter, nested control flow included -- never with onnx's ``ReferenceEvaluator``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._registry import EvaluationError, fail, register


def _check_control(node, infos: Mapping[str, Any]) -> str | None:
    """Refused at load time: what no input can make right."""
    if node.op_type == "If":
        from ..frontend import subgraph

        then_count = len(subgraph(node, "then_branch").outputs)
        else_count = len(subgraph(node, "else_branch").outputs)
        if then_count != else_count or then_count != len(node.outputs):
            return (f"then_branch has {then_count} outputs and else_branch {else_count}, but the node "
                    f"has {len(node.outputs)}")
    if node.op_type == "Loop":
        trip, cond = _onnx_inputs(node, node.inputs)[:2]
        if not trip and not cond:
            return "a Loop with neither a trip count nor a condition never ends"
        body = _body(node)
        carried = len(_onnx_inputs(node, node.inputs)) - 2
        if len(body.inputs) - len(_captures_of(node, body)) != carried + 2 or len(body.outputs) < carried + 1:
            return (f"the body takes {len(body.inputs)} inputs and gives {len(body.outputs)} outputs, which "
                    f"do not fit {carried} loop-carried values (inputs: iteration, condition, values; "
                    f"outputs: condition, values, scan outputs)")
    if node.op_type == "Scan":
        body = _body(node)
        states = len(_onnx_inputs(node, node.inputs)) - int(node.attrs.get("num_scan_inputs", 0))
        if "num_scan_inputs" not in node.attrs or states < 0:
            return "num_scan_inputs is missing or more than the inputs"
        if len(body.inputs) - len(_captures_of(node, body)) != len(_onnx_inputs(node, node.inputs)):
            return f"the body takes {len(body.inputs)} inputs for {len(_onnx_inputs(node, node.inputs))}"
    return None


# -- helpers ----------------------------------------------------------------------------------------

def _onnx_inputs(node, args):
    """The node's own ONNX inputs (without the captured outer-scope values after them)."""
    return list(args[:len(args) - len(node.attrs["captures"])])


def _captured(node, args) -> dict[str, Any]:
    """Captured outer-scope values by the name the subgraphs use (bound by position: passes may have
    renamed the outer tensor)."""
    values = args[len(args) - len(node.attrs["captures"]):] if node.attrs["captures"] else []
    return dict(zip(node.attrs["captures"], values, strict=True))


def _captures_of(node, body) -> list[str]:
    return [name for name in body.inputs if name in node.attrs["captures"]]


def _body(node, attr: str = "body"):
    from ..frontend import subgraph

    return subgraph(node, attr)


def _formal_inputs(node, body) -> list[str]:
    captured = set(node.attrs["captures"])
    return [name for name in body.inputs if name not in captured]


def _run(node, graph, feeds: Mapping[str, Any]) -> list[Any]:
    from ..frontend import evaluate

    values = evaluate(graph, feeds, keep=True)
    return [values[name] for name in graph.outputs]


def _stack(node, slices: list[np.ndarray], info, axis: int = 0, reverse: bool = False) -> np.ndarray:
    """Per-iteration scan outputs stacked along a new ``axis`` (zero iterations: an empty tensor of the
    declared element shape and type)."""
    if not slices:
        shape = info.shape if info.shape is not None and all(isinstance(d, int) for d in info.shape) else ()
        return np.zeros((0, *shape), dtype=info.dtype or np.float32)
    shapes = {np.shape(s) for s in slices}
    if len(shapes) != 1:
        raise fail(node, f"a scan output changes shape between iterations: {sorted(shapes)}")
    if reverse:
        slices = slices[::-1]
    rank = np.ndim(slices[0]) + 1
    return np.stack([np.asarray(s) for s in slices], axis=axis % rank if rank else 0)


# -- operators --------------------------------------------------------------------------------------

@register("If", check=_check_control)
def if_(node, cond, *args):
    if cond is None or np.size(cond) != 1:
        raise fail(node, f"the condition must be one boolean, got shape {np.shape(cond)}")
    branch = _body(node, "then_branch" if bool(np.ravel(cond)[0]) else "else_branch")
    return tuple(_run(node, branch, _captured(node, (cond, *args))))


@register("Loop", check=_check_control)
def loop(node, *args):
    own = _onnx_inputs(node, args)
    trip, cond, carried = own[0], own[1], own[2:]
    body = _body(node)
    names = _formal_inputs(node, body)
    captured = _captured(node, args)
    n_carried = len(carried)
    if trip is None and cond is None:
        raise fail(node, "a Loop with neither a trip count nor a condition never ends")
    limit = None if trip is None else int(np.ravel(trip)[0])
    going = True if cond is None else bool(np.ravel(cond)[0])
    scans: list[list[np.ndarray]] = [[] for _ in range(len(body.outputs) - 1 - n_carried)]
    iteration = 0
    while going and (limit is None or iteration < limit):
        feeds = {**captured, names[0]: np.array(iteration, np.int64), names[1]: np.array(going),
                 **dict(zip(names[2:], carried, strict=True))}
        results = _run(node, body, feeds)
        going = bool(np.ravel(results[0])[0])
        carried = results[1:1 + n_carried]
        for values, value in zip(scans, results[1 + n_carried:], strict=True):
            values.append(value)
        iteration += 1
    stacked = [_stack(node, values, body.tensor(body.outputs[1 + n_carried + k]))
               for k, values in enumerate(scans)]
    return (*carried, *stacked)


@register("Scan", check=_check_control)
def scan(node, *args):
    own = _onnx_inputs(node, args)
    n_scan = int(node.attrs["num_scan_inputs"])
    states, sequences = list(own[:len(own) - n_scan]), own[len(own) - n_scan:]
    body = _body(node)
    names = _formal_inputs(node, body)
    captured = _captured(node, args)
    n_outputs = len(body.outputs) - len(states)
    in_dirs = list(node.attrs.get("scan_input_directions", [0] * n_scan))
    in_axes = [int(a) % max(np.ndim(x), 1) for a, x in zip(
        node.attrs.get("scan_input_axes", [0] * n_scan), sequences, strict=True)]
    out_dirs = list(node.attrs.get("scan_output_directions", [0] * n_outputs))
    out_axes = list(node.attrs.get("scan_output_axes", [0] * n_outputs))
    lengths = {np.shape(x)[axis] for x, axis in zip(sequences, in_axes, strict=True)}
    if len(lengths) != 1:
        raise fail(node, f"the scan inputs have different lengths along their scan axes: {sorted(lengths)}")
    (length,) = lengths
    outputs: list[list[np.ndarray]] = [[] for _ in range(n_outputs)]
    for step in range(length):
        elements = [np.take(x, length - 1 - step if reverse else step, axis=axis)
                    for x, axis, reverse in zip(sequences, in_axes, in_dirs, strict=True)]
        feeds = {**captured, **dict(zip(names, [*states, *elements], strict=True))}
        results = _run(node, body, feeds)
        states = results[:len(states)]
        for values, value in zip(outputs, results[len(states):], strict=True):
            values.append(value)
    stacked = [_stack(node, values, body.tensor(body.outputs[len(states) + k]), out_axes[k],
                      bool(out_dirs[k])) for k, values in enumerate(outputs)]
    return (*states, *stacked)


__all__ = ["if_", "loop", "scan", "EvaluationError"]
