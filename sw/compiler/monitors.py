"""Monitoring points in the graph IR: the tensors and control nodes a running model is watched at.

A monitor is a :class:`~.ir.Node` of kind ``MONITOR`` (op ``Monitor``): it reads one tensor and
produces nothing, so evaluation and the compiled program are unchanged by it (dead-code removal keeps
what it watches).  Its ``stats`` attribute names what the runtime gathers there:

* tensor statistics (:data:`TENSOR_STATS`) -- sparsity, zero-block fraction, value range, int8
  saturation -- at any tensor, one inside an accelerator partition included;
* control statistics (:data:`CONTROL_STATS`) -- ``taken`` at an ``If``'s condition (the branch-taken
  rate) and ``routes`` at a ``TopK``'s indices (rows per expert).

:func:`insert_monitors` places them (chosen tensors, and every control node with ``control=True``), the
validator checks them (:func:`check_monitor`), and :func:`lower_monitors` decides against a compiled
model how each is measured, its ``via`` (:data:`VIAS`):

* ``"chip"`` -- counted by the chip as it runs: the zero-block fraction of a zero-block-skipping GEMM's
  input, from that kernel's ``macs`` counter (:mod:`braze.sw.runtime.dataflow_skip`), where that is all
  the monitor asks for;
* ``"host"`` -- on the host anyway: a graph input or output, a tensor a host step computes or one moved
  to the host, and control outcomes (control flow runs on the host); read on every run, no extra cost;
* ``"sample"`` -- inside a device program: the host evaluates the part of the quantized graph that
  computes it (the integers the chip computes), on the runs the analyzer samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from braze.isa.errors import BrazeError

from .ir import Graph, Node, NodeKind

__all__ = ["TENSOR_STATS", "CONTROL_STATS", "VIAS", "MonitorError", "insert_monitors", "monitors",
           "strip_monitors", "lower_monitors", "check_monitor"]

TENSOR_STATS = ("sparsity", "zero_blocks", "range", "saturation")
CONTROL_STATS = ("taken", "routes")
VIAS = ("chip", "host", "sample")
#: The kernel whose counters give its input's zero-block fraction
#: (:func:`~braze.sw.compiler.kernels.skipping_gemm`).
_COUNTING_KERNEL = "skipping_gemm"


class MonitorError(BrazeError):
    """A monitoring point asked for at a tensor the graph does not have."""


def _monitor(tensor: str, stats: Sequence[str], label: str) -> Node:
    return Node(f"monitor:{tensor}", NodeKind.MONITOR, "Monitor", inputs=(tensor,),
                attrs={"stats": tuple(stats), "label": label})


def insert_monitors(graph: Graph, tensors: Iterable[str] = (), *, control: bool = True,
                    stats: Sequence[str] = TENSOR_STATS) -> Graph:
    """``graph`` with a monitor at each of ``tensors`` and, with ``control``, at every ``If`` condition
    and ``TopK`` routing.

    A tensor of the float model that the quantized graph holds only as int8 (``<name>_q``) is monitored
    there; the monitor's ``label`` keeps the name asked for.  A tensor already monitored is left as is.
    """
    present = {node.inputs[0] for node in monitors(graph)}
    added = []
    for name in tensors:
        tensor = name if name in graph.tensors or graph.producer(name) else f"{name}_q"
        if graph.producer(tensor) is None:
            raise MonitorError(f"graph {graph.name!r}: no tensor {name!r} to monitor (nor its int8 form "
                               f"{name + '_q'!r})")
        if tensor not in present:
            present.add(tensor)
            added.append(_monitor(tensor, stats, name))
    if control:
        for node in graph.operators():
            if node.op_type == "If" and node.inputs[0] not in present:
                present.add(node.inputs[0])
                added.append(_monitor(node.inputs[0], ("taken",), node.inputs[0]))
            elif node.op_type == "TopK" and len(node.outputs) > 1 and node.outputs[1] not in present:
                present.add(node.outputs[1])
                added.append(_monitor(node.outputs[1], ("routes",), node.outputs[1]))
    return graph.replace(nodes=[*graph.nodes, *added]) if added else graph


def monitors(graph: Graph) -> tuple[Node, ...]:
    """The graph's monitoring points, in construction order."""
    return tuple(node for node in graph.nodes if node.kind is NodeKind.MONITOR)


def strip_monitors(graph: Graph) -> Graph:
    """``graph`` without its monitoring points."""
    found = [node.name for node in monitors(graph)]
    return graph.edit(remove=found) if found else graph


def lower_monitors(graph: Graph, compiled=None) -> Graph:
    """Give every monitor of ``graph`` its ``via`` (see the module documentation).

    ``compiled``: the :class:`~braze.sw.compiler.lower.CompiledModel` of ``graph`` (its monitors
    stripped), which says what the chip counts and what reaches the host; None: the graph runs on the
    host, so every monitor is read there.
    """
    on_host, counted = set(graph.inputs) | set(graph.outputs), set()
    if compiled is None:
        on_host |= set(graph.tensors) | {t for node in graph.nodes for t in node.outputs}
    else:
        from .lower import CpuStep, KernelStep, TransferStep

        for step in compiled.steps:
            if isinstance(step, TransferStep) and step.direction == "to_host":
                on_host.add(step.value.tensor)
            elif isinstance(step, CpuStep):
                on_host.update(step.node.outputs)
            elif isinstance(step, KernelStep) and step.kernel.name == _COUNTING_KERNEL:
                counted.add(compiled.source.node(step.ops[0]).inputs[0])
    lowered = []
    for node in graph.nodes:
        if node.kind is NodeKind.MONITOR:
            tensor, stats = node.inputs[0], tuple(node.attrs["stats"])
            if set(stats) <= set(CONTROL_STATS) or tensor in on_host:
                via = "host"
            elif tensor in counted and stats == ("zero_blocks",):
                via = "chip"
            else:
                via = "sample"
            node = node.with_attrs(via=via)
        lowered.append(node)
    return graph.replace(nodes=lowered)


def check_monitor(graph: Graph, node: Node) -> str | None:
    """What is wrong with a monitoring point (None: nothing); the validator raises it naming the node."""
    if len(node.inputs) != 1 or not node.inputs[0] or node.outputs:
        return (f"a monitor reads one tensor and produces nothing, got {list(node.inputs)} -> "
                f"{list(node.outputs)}")
    tensor = node.inputs[0]
    stats = node.attrs.get("stats")
    if not stats or not isinstance(stats, tuple | list):
        return "a monitor names the statistics it gathers (attribute 'stats')"
    unknown = [s for s in stats if s not in TENSOR_STATS + CONTROL_STATS]
    if unknown:
        return f"unknown statistic(s) {unknown}; a monitor gathers {TENSOR_STATS + CONTROL_STATS}"
    conditions = [c for c in graph.consumers(tensor) if c.op_type == "If" and c.inputs[0] == tensor]
    if "taken" in stats and not conditions:
        return f"'taken' is a branch rate: tensor {tensor!r} is not the condition of an If"
    producer = graph.producer(tensor)
    if "routes" in stats and not (producer is not None and producer.op_type == "TopK"
                                  and tensor in producer.outputs[1:2]):
        return f"'routes' counts rows per route: tensor {tensor!r} is not the indices of a TopK"
    via = node.attrs.get("via")
    if via is not None and via not in VIAS:
        return f"measured via {via!r}; a monitor is measured via one of {VIAS}"
    if via == "chip" and tuple(stats) != ("zero_blocks",):
        return f"the chip counts zero blocks only, this monitor asks for {list(stats)}"
    return None
