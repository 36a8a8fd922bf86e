"""Partitions of a data-dependent ONNX model: regions, their compiled forms, plans and the partition manager.

A model with control flow -- a top-level ``If`` (:class:`BranchModel`) or ``TopK`` routing into
gated experts (:class:`MixtureModel`) -- is split into *regions*: straight-line ONNX models
between the control nodes.  Control flow runs on the host.  A region compiled for the
accelerator is an :class:`AcceleratorPartition` (an :class:`~braze.sw.runtime.session.InferenceSession`
of its own, on its own device, so that every partition's kernels and weights stay resident); a
region of host operators is a :class:`CpuPartition`.  Tensors crossing between partitions are
explicit :class:`Transfer` rows with their bytes.

Identical answers
-----------------
Every region is quantized from the same calibration inputs (the float model's values of its input
tensors, computed with onnxruntime on the whole model), so a tensor has the same int8 parameters
in every region that holds it: a boundary's dequantize-then-quantize round trip is exact, and a
region that merges two others (a branch fused into its predecessor) computes the same integers.
Plans differ in which regions run, never in arithmetic.

Plans
-----
A :class:`Plan` is immutable and versioned.  :class:`PartitionManager` owns the current one and
swaps it atomically (one reference assignment under a lock); a run takes the reference once at its
start and uses only that plan, so no run mixes two plans while the analyzer re-plans.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime
from onnx import helper

from braze.isa import Config
from braze.isa.errors import BrazeError

from ..compiler.cache import KernelCache
from ..compiler.cost import CostModel
from ..compiler.frontend import evaluate, load_onnx
from ..compiler.lower import TransferStep
from .session import InferenceSession

__all__ = ["PartitionError", "Region", "BranchModel", "MixtureModel", "StraightModel", "split_model",
           "partition_model", "HostLink",
           "AcceleratorPartition", "CpuPartition", "Transfer", "DeviceTransfer", "Plan", "PartitionManager"]

#: Operators that make a region worth compiling for the accelerator.
ACCELERATOR_OPS = frozenset({"Conv", "Gemm", "MatMul"})


class PartitionError(BrazeError):
    """The model's control flow has a shape the partitioner does not split; names the node."""


@dataclasses.dataclass(frozen=True)
class HostLink:
    """What a host <-> device transfer and a device run cost, in accelerator cycles.

    The accelerator's counters cover kernels only; moving a tensor between partitions and starting
    a device run go through the host's driver.  These are assumptions, stated: a transfer costs a
    fixed ``latency_cycles`` (a DMA descriptor round trip, about 5 us at 200 MHz) plus its bytes at
    ``bytes_per_cycle``; a device run costs ``launch_cycles`` (about 10 us).  Plans are compared,
    and speedups reported, as kernel cycles plus these.
    """

    latency_cycles: int = 1000
    bytes_per_cycle: float = 8.0
    launch_cycles: int = 2000
    #: Converts host seconds (a region run on the CPU) into accelerator cycles: a 200 MHz clock.
    host_clock_hz: float = 200e6

    def transfer_cycles(self, transfers: int, nbytes: int) -> float:
        return transfers * self.latency_cycles + nbytes / self.bytes_per_cycle

    def describe(self) -> str:
        return (f"host link: {self.latency_cycles} cycles per transfer + {self.bytes_per_cycle:g} B/cycle, "
                f"{self.launch_cycles} cycles per device run")


# ---------------------------------------------------------------------------------------------------
# Regions: the model split at its control nodes
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Region:
    """A straight-line piece of the model as its own float ONNX model."""

    name: str
    proto: onnx.ModelProto = dataclasses.field(repr=False)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    op_types: tuple[str, ...]

    @property
    def wants_accelerator(self) -> bool:
        return bool(ACCELERATOR_OPS & set(self.op_types))


@dataclasses.dataclass(frozen=True)
class BranchModel:
    """A model ending in an ``If``: ``pre`` computes the condition and the branches' inputs."""

    cond: str
    output: str                       # the If's output
    pre: Region
    then: Region
    orelse: Region
    fused_else: Region                # pre and the else branch in one region
    name: str
    #: pre and the then branch in one region (its outputs: the condition and the then branch's): a then
    #: branch of element-wise ops pulled onto the chip.
    fused_then: Region | None = None

    def regions(self) -> list[Region]:
        pulled = [self.fused_then] if self.fused_then is not None else []
        return [self.pre, self.then, self.orelse, self.fused_else, *pulled]


@dataclasses.dataclass(frozen=True)
class MixtureModel:
    """A model whose ``TopK`` routes rows to experts: ``out = sum_e mask_e * expert_e(x)``."""

    gate: Region                      # x -> gate logits
    router: Region                    # gate logits -> one mask per expert (host)
    experts: tuple[Region, ...]
    combine: Region                   # masks and expert outputs -> output (host)
    gate_and_experts: Region          # the static accelerator partition: gate and every expert
    gate_with: tuple[Region, ...]     # per expert: the gate and that expert (a hot expert fused)
    masks: tuple[str, ...]
    expert_outputs: tuple[str, ...]
    name: str

    def regions(self) -> list[Region]:
        return [self.gate, self.router, *self.experts, self.combine, self.gate_and_experts, *self.gate_with]


@dataclasses.dataclass(frozen=True)
class StraightModel:
    """A model without control flow: one region, whose plans differ in the kernels it is compiled to."""

    body: Region
    name: str

    def regions(self) -> list[Region]:
        return [self.body]


def _graphs(graph: onnx.GraphProto):
    """``graph`` and every subgraph in it (an If's branches), outermost first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)


def _value_infos(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    infos = {}
    for graph in _graphs(onnx.shape_inference.infer_shapes(proto).graph):
        for info in [*graph.input, *graph.output, *graph.value_info]:
            infos.setdefault(info.name, info)
    return infos


def _initializers(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for graph in _graphs(proto.graph) for init in graph.initializer}


def _region(proto: onnx.ModelProto, name: str, nodes: Sequence[onnx.NodeProto], outputs: Sequence[str],
            infos: Mapping[str, onnx.ValueInfoProto], inits: Mapping[str, onnx.TensorProto]) -> Region:
    """The nodes as a model: its inputs are what they read and do not compute (initializers aside)."""
    produced = {out for node in nodes for out in node.output}
    inputs = []
    for node in nodes:
        for tensor in node.input:
            if tensor and tensor not in produced and tensor not in inits and tensor not in inputs:
                inputs.append(tensor)
    used = [inits[t] for t in dict.fromkeys(t for node in nodes for t in node.input) if t in inits]
    missing = [t for t in [*inputs, *outputs] if t not in infos]
    if missing:
        raise PartitionError(f"region {name!r}: no type for tensor(s) {missing} (shape inference failed)")
    graph = helper.make_graph(list(nodes), name, [infos[t] for t in inputs], [infos[t] for t in outputs],
                              used)
    model = helper.make_model(graph, opset_imports=list(proto.opset_import),
                              producer_name="braze-partitioner")
    model.ir_version = proto.ir_version
    return Region(name, model, tuple(inputs), tuple(outputs), tuple(node.op_type for node in nodes))


def _free_inputs(graph: onnx.GraphProto) -> list[str]:
    produced = {out for node in graph.node for out in node.output} | {i.name for i in graph.initializer}
    return list(dict.fromkeys(t for node in graph.node for t in node.input if t and t not in produced))


def split_model(proto: onnx.ModelProto) -> BranchModel | MixtureModel:
    """Split a model at its control node: one top-level ``If``, or one ``TopK`` routing to experts."""
    graph = proto.graph
    ifs = [n for n in graph.node if n.op_type == "If"]
    topks = [n for n in graph.node if n.op_type == "TopK"]
    if len(ifs) + len(topks) != 1:
        raise PartitionError(f"model {graph.name!r}: the partitioner splits models with one top-level If or "
                             f"one TopK; this one has {len(ifs)} If and {len(topks)} TopK node(s)")
    infos, inits = _value_infos(proto), _initializers(proto)
    return _split_if(proto, ifs[0], infos, inits) if ifs else _split_topk(proto, topks[0], infos, inits)


def partition_model(proto: onnx.ModelProto) -> BranchModel | MixtureModel | StraightModel:
    """:func:`split_model` for a model with control flow; a model with none is one region, ``body``."""
    if not any(n.op_type in ("If", "TopK", "Loop", "Scan") for n in proto.graph.node):
        infos, inits = _value_infos(proto), _initializers(proto)
        body = _region(proto, "body", list(proto.graph.node), [o.name for o in proto.graph.output], infos,
                       inits)
        return StraightModel(body, proto.graph.name)
    return split_model(proto)


def _split_if(proto, node, infos, inits) -> BranchModel:
    graph = proto.graph
    outputs = {o.name for o in graph.output}
    if len(node.output) != 1 or node.output[0] not in outputs or any(
            node.output[0] in other.input for other in graph.node):
        raise PartitionError(f"If node {node.name!r}: the partitioner needs its one output to be a model "
                             f"output")
    branches = {a.name: a.g for a in node.attribute}
    then_g, else_g = branches["then_branch"], branches["else_branch"]
    pre_nodes = [n for n in graph.node if n is not node]
    inputs = {i.name for i in graph.input}
    carried = [t for t in dict.fromkeys(_free_inputs(then_g) + _free_inputs(else_g)) if t not in inputs]
    cond = node.input[0]
    then_inits = {**inits, **{i.name: i for i in then_g.initializer}}
    else_inits = {**inits, **{i.name: i for i in else_g.initializer}}
    pre = _region(proto, "pre", pre_nodes, [cond, *carried], infos, inits)
    then = _region(proto, "then", list(then_g.node), [o.name for o in then_g.output], infos, then_inits)
    orelse = _region(proto, "else", list(else_g.node), [o.name for o in else_g.output], infos, else_inits)
    then_carried = [t for t in _free_inputs(then_g) if t not in inputs]
    fused = _region(proto, "pre+else", pre_nodes + list(else_g.node),
                    [cond, *then_carried, *orelse.outputs], infos, else_inits)
    fused_then = _region(proto, "pre+then", pre_nodes + list(then_g.node), [cond, *then.outputs], infos,
                         then_inits)
    return BranchModel(cond, node.output[0], pre, then, orelse, fused, graph.name, fused_then)


def _split_topk(proto, topk, infos, inits) -> MixtureModel:
    graph = proto.graph
    producer = {out: n for n in graph.node for out in n.output}

    def ancestors(tensors: Sequence[str], stop: set[int] = frozenset()) -> list[onnx.NodeProto]:
        seen, stack = set(), list(tensors)
        while stack:
            node = producer.get(stack.pop())
            if node is None or id(node) in seen or id(node) in stop:
                continue
            seen.add(id(node))
            stack.extend(node.input)
        return [n for n in graph.node if id(n) in seen]           # in the model's (topological) order

    gate_nodes = ancestors([topk.input[0]])
    gate_ids = {id(n) for n in gate_nodes}
    routed, combined = set(topk.output), set()
    router_nodes, combine_nodes = [topk], []
    after = False
    for node in graph.node:
        if node is topk:
            after = True
            continue
        if not after or id(node) in gate_ids:
            continue
        if all(t in routed or t in inits for t in node.input if t):
            router_nodes.append(node)
            routed.update(node.output)
        elif any(t in routed or t in combined for t in node.input):
            combine_nodes.append(node)
            combined.update(node.output)
    masks, expert_outputs = [], []
    for node in combine_nodes:
        if node.op_type == "Mul":
            inside = [t for t in node.input if t in routed]
            outside = [t for t in node.input if t not in routed | combined and t not in inits]
            if len(inside) == 1 and len(outside) == 1:
                masks.append(inside[0])
                expert_outputs.append(outside[0])
    if len(expert_outputs) < 2:
        raise PartitionError(f"TopK node {topk.name!r}: no experts found (expected Mul(mask, expert output) "
                             f"nodes after the routing)")
    experts, gate_with, claimed = [], [], set(gate_ids)
    for index, tensor in enumerate(expert_outputs):
        nodes = ancestors([tensor], stop=gate_ids)
        if any(id(n) in claimed for n in nodes):
            raise PartitionError(f"expert output {tensor!r} shares operators with another expert or the gate")
        claimed.update(id(n) for n in nodes)
        experts.append(_region(proto, f"expert{index}", nodes, [tensor], infos, inits))
        with_gate = [n for n in graph.node if id(n) in gate_ids or id(n) in {id(m) for m in nodes}]
        gate_with.append(_region(proto, f"gate+expert{index}", with_gate, [topk.input[0], tensor], infos,
                                 inits))
    gate = _region(proto, "gate", gate_nodes, [topk.input[0]], infos, inits)
    router = _region(proto, "router", router_nodes, masks, infos, inits)
    combine = _region(proto, "combine", combine_nodes, [o.name for o in graph.output], infos, inits)
    all_nodes = [n for n in graph.node if id(n) in claimed]
    gate_and_experts = _region(proto, "gate+experts", all_nodes, [topk.input[0], *expert_outputs],
                               infos, inits)
    return MixtureModel(gate, router, tuple(experts), combine, gate_and_experts, tuple(gate_with),
                        tuple(masks), tuple(expert_outputs), graph.name)


def calibration_inputs(proto: onnx.ModelProto, regions: Sequence[Region],
                       feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per region, its inputs' float values on the calibration feeds -- the same values for every
    region, all computed by Braze's frontend evaluator.

    A region's quantizer calibrates the tensors inside it with that evaluator, so a tensor that one
    region computes and another reads (``logits1``: inside ``pre+else``, the input of ``else``) must
    come from it too: the two regions then see bit-identical values and give a shared tensor the same
    quantization parameters, whatever float library versions or CPU compute them.  (onnxruntime's
    float kernels, used here before, may round a MatMul differently in the last ulp, and an ulp of a
    range is an ulp of a scale.)  Each region runs once its inputs are known, in the order given;
    a tensor several regions compute keeps its first value.  A region the evaluator cannot run
    (an operator it lacks) and the tensors that only such regions give come from onnxruntime's run
    of the whole model.
    """
    graphs: dict[str, object] = {}
    for region in regions:
        try:
            graphs[region.name] = load_onnx(region.proto)
        except BrazeError:
            pass
    rows: list[dict[str, np.ndarray]] = []
    fallback: list[dict[str, np.ndarray]] | None = None
    for index, feed in enumerate(feeds):
        values = dict(feed)
        pending = [region for region in regions if region.name in graphs]
        while True:
            ready = [r for r in pending if all(t in values for t in r.inputs)]
            if not ready:
                break
            for region in ready:
                pending.remove(region)
                try:
                    out = evaluate(graphs[region.name], {t: values[t] for t in region.inputs}, keep=True)
                except BrazeError:
                    continue
                for tensor in region.outputs:
                    values.setdefault(tensor, out[tensor])
        if any(t not in values for region in regions for t in region.inputs):
            if fallback is None:
                fallback = _onnxruntime_values(proto, regions, feeds)
            for tensor, value in fallback[index].items():
                values.setdefault(tensor, value)
        rows.append(values)
    return {region.name: [{t: row[t] for t in region.inputs} for row in rows] for region in regions}


def _onnxruntime_values(proto: onnx.ModelProto, regions: Sequence[Region],
                        feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Every tensor a region reads, per feed: onnxruntime on the whole model with each intermediate
    added as an output."""
    wanted = list(dict.fromkeys(t for region in regions for t in region.inputs))
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    infos = _value_infos(proto)
    present = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    model.graph.output.extend(infos[t] for t in wanted if t not in present)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = []
    for feed in feeds:
        row = dict(zip(names, session.run(None, dict(feed)), strict=True))
        row.update(feed)
        values.append(row)
    return values


# ---------------------------------------------------------------------------------------------------
# Partitions: compiled regions
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Transfer:
    """A tensor crossing between a partition and the host; ``bytes`` as it moves (int8 on the device)."""

    partition: str
    tensor: str
    direction: str                    # "to_device" or "to_host"
    bytes: int


@dataclasses.dataclass(frozen=True)
class DeviceTransfer:
    """A tensor one device's partition computes and another device's partition reads: it moves through
    the host (the producer's link to the host, then the consumer's link to its device)."""

    tensor: str
    source: str                       # producing partition's role, and its device
    source_device: str
    target: str
    target_device: str
    bytes: int
    cycles: float                     # priced at both devices' links


class AcceleratorPartition:
    """A region compiled for the accelerator: its own session and device (kernels stay resident)."""

    kind = "accelerator"
    #: The session's device this partition is placed on (None: the session has one device).
    device: str | None = None

    def __init__(self, region: Region, *, config: Config, calibration, cache: KernelCache,
                 cost_model: CostModel, device, link: HostLink, name: str | None = None,
                 session_options: Mapping[str, object] | None = None,
                 shapes: Mapping[str, Sequence[int]] | None = None):
        self.region = region
        self.name = name or region.name
        self.config = config
        self.link = link
        self.session = InferenceSession(region.proto, device=device, config=config, calibration=calibration,
                                        cache=cache, cost_model=cost_model, record=False,
                                        **dict(session_options or {}))
        # First compiled at ``shapes`` (the calibration's batch, say), which later shapes specialise.
        self._set_prediction(self.session.compile_for(shapes) if shapes else self.session.compiled)
        self._lock = threading.Lock()     # one run at a time on this partition's device (and compile)
        #: The per-kernel rows (with counters) of the last run.
        self.last_kernels: list = []

    def _set_prediction(self, compiled) -> None:
        self.transfers = [Transfer(self.name, step.value.tensor, step.direction,
                                   int(np.prod(step.value.shape)) * step.value.dtype.itemsize)
                          for step in compiled.steps if isinstance(step, TransferStep)]
        self.device_runs = len(compiled.segments)
        kernels = list(compiled.kernels.values())
        self.predicted_kernel_cycles = int(self.session.cost_model.predict(kernels, self.config).cycles)
        self.transfer_bytes = sum(t.bytes for t in self.transfers)
        self.predicted_cycles = (self.predicted_kernel_cycles + self.link.launch_cycles * self.device_runs
                                 + self.link.transfer_cycles(len(self.transfers), self.transfer_bytes))
        self.compiled = compiled

    def specialise(self, shapes: Mapping[str, Sequence[int]]):
        """Compile for these input shapes (through the kernel cache, reusing the first shape's decisions:
        :meth:`InferenceSession.compile_for`) and predict at them; returns the compiled model."""
        with self._lock:
            compiled = self.session.compile_for(shapes)
            if compiled is not self.compiled:
                self._set_prediction(compiled)
        return compiled

    def run(self, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """The region's outputs and the kernel cycles the device's counters report."""
        with self._lock:
            values = self.session.run(None, {name: feeds[name] for name in self.region.inputs})
            report = self.session.report()
            self.last_kernels = report.kernels
            cycles = report.total_cycles
        return dict(zip(self.region.outputs, values, strict=True)), cycles

    def open_device(self) -> None:
        """Open the partition's device now, if it opens lazily (a plan that runs the partition was deployed:
        its first run should not wait for a simulator to start)."""
        opener = getattr(self.session.device, "open", None)       # a LazyDevice (devices.py)
        if opener is not None:
            opener()

    def host_graph(self):
        """The quantized graph, which the host evaluates to the same integers as the accelerator."""
        return self.session.graph_before

    def transfer_of(self, tensor: str) -> Transfer | None:
        """The transfer that moves the region's tensor ``tensor`` -- its int8 form, where the device holds it
        quantized (the host dequantizes it on the way out, quantizes it on the way in)."""
        graph = self.host_graph()
        names = {tensor}
        if tensor in graph.tensors:
            producer = graph.producer(tensor)
            if producer is not None and producer.op_type == "DequantizeLinear":
                names.add(producer.inputs[0])
            names.update(c.outputs[0] for c in graph.consumers(tensor) if c.op_type == "QuantizeLinear")
        return next((t for t in self.transfers if t.tensor in names), None)

    def close(self) -> None:
        self.session.close()


class CpuPartition:
    """A region the host evaluates (control flow, routing, a branch kept off the chip)."""

    kind = "cpu"
    transfers: list = []
    transfer_bytes = 0
    device_runs = 0
    predicted_kernel_cycles = 0
    predicted_cycles = 0

    def __init__(self, region: Region, graph=None):
        self.region = region
        self.name = region.name
        self.graph = graph if graph is not None else load_onnx(region.proto)

    def open_device(self) -> None:
        """Nothing to open: the host runs it."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        values = evaluate(self.graph, {name: feeds[name] for name in self.region.inputs})
        return {name: values[name] for name in self.region.outputs}, 0

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------
# Plans and the partition manager
# ---------------------------------------------------------------------------------------------------

def link_cycles(part: AcceleratorPartition | CpuPartition) -> float:
    """The priced host-link cost of the last run of ``part`` at its device's link: its transfers and device
    runs (nothing for a partition on the host)."""
    if part.kind != "accelerator":
        return 0.0
    transfers = getattr(part, "last_transfers", part.transfers)   # an If on chip moves what ran
    return (part.link.transfer_cycles(len(transfers), sum(t.bytes for t in transfers))
            + part.link.launch_cycles * part.device_runs)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which partitions run, as decided: ``choices`` names the dynamic decisions in force; in a session
    with several devices, ``devices`` the device of each accelerator role and ``device_transfers`` the
    tensors moving between devices."""

    version: int
    choices: frozenset[str]
    partitions: Mapping[str, AcceleratorPartition | CpuPartition]
    created: float = dataclasses.field(default_factory=time.time)
    devices: Mapping[str, str] = dataclasses.field(default_factory=dict)
    device_transfers: tuple[DeviceTransfer, ...] = ()
    #: Per accelerator role, its predicted cycles per run on every device (what placed it).
    device_costs: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        choices = f" ({', '.join(sorted(self.choices))})" if self.choices else " (static)"
        used = sorted(set(self.devices.values()))
        return f"plan v{self.version}{choices}" + (f" on {', '.join(used)}" if used else "")


def device_transfers(partitions: Mapping[str, AcceleratorPartition | CpuPartition],
                     devices: Mapping[str, str], links: Mapping[str, HostLink]) -> tuple[DeviceTransfer, ...]:
    """The tensors an accelerator partition on one device computes and one on another device reads."""
    rows = []
    for source, producer in partitions.items():
        for target, consumer in partitions.items():
            if source not in devices or target not in devices or devices[source] == devices[target]:
                continue
            for tensor in producer.region.outputs:
                if tensor not in consumer.region.inputs:
                    continue
                moves = [part.transfer_of(tensor) for part in (producer, consumer)]
                nbytes = max((t.bytes for t in moves if t is not None), default=0)
                cycles = (links[devices[source]].transfer_cycles(1, nbytes)
                          + links[devices[target]].transfer_cycles(1, nbytes))
                rows.append(DeviceTransfer(tensor, source, devices[source], target, devices[target], nbytes,
                                           cycles))
    return tuple(rows)


class PartitionManager:
    """Owns the partitions (compiled on demand, through the kernel cache) and the current plan.

    ``layout(choices)`` names the regions a plan with those decisions runs and where; the manager
    compiles what is missing before it swaps, so a run never waits for a compilation and never sees a
    half-built plan.

    With a ``placer`` (:class:`~.devices.DevicePlacer`: a session with several devices) every
    accelerator placement is on a device -- ``where`` is ``"accelerator@large"``, say; the placer
    assigns each plan's accelerator roles to devices by price, and ``partition(region, "accelerator")``
    without a device is the region on the device where it is cheapest.
    """

    def __init__(self, factory: Callable[[str, str], AcceleratorPartition | CpuPartition],
                 layout: Callable[[frozenset[str]], dict[str, tuple[str, str]]], *, placer=None):
        self._factory = factory
        self._layout = layout
        self.placer = placer
        self._built: dict[tuple[str, str], AcceleratorPartition | CpuPartition] = {}
        self._build_lock = threading.RLock()     # a CPU partition is built from an accelerator one
        self._swap_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.history: list[Plan] = []
        self._plan = self._make(frozenset(), 0)
        self.history.append(self._plan)

    def partition(self, region: str, where: str) -> AcceleratorPartition | CpuPartition:
        with self._build_lock:
            if self.placer is not None and self.placer.needs_device(where):
                where = self.placer.preferred(region, where, self.partition)
            key = (region, where)
            if key not in self._built:
                self._built[key] = self._factory(region, where)
            return self._built[key]

    def built(self, region: str, where: str) -> bool:
        """Whether the partition of ``region`` placed ``where`` was compiled already (on any device, for a
        placement without one)."""
        return bool(self.variants(region, where))

    def built_partitions(self) -> list[AcceleratorPartition | CpuPartition]:
        """Every partition compiled so far, for any plan or device."""
        with self._build_lock:
            return list(self._built.values())

    def variants(self, region: str, where: str) -> list[AcceleratorPartition | CpuPartition]:
        """The compiled partitions of ``region`` placed ``where``: one per device it was compiled for."""
        return [part for (r, w), part in list(self._built.items())
                if r == region and (w == where or w.startswith(where + "@"))]

    def _make(self, choices: frozenset[str], version: int, keep: Mapping[str, str] | None = None) -> Plan:
        layout = self._layout(choices)
        devices, moves, costs = {}, (), {}
        if self.placer is not None:
            layout, devices, costs = self.placer.place(layout, self.partition, keep)
        parts = {role: self.partition(region, where) for role, (region, where) in layout.items()}
        for part in parts.values():     # the plan will run them (partitions built only to price stay shut)
            part.open_device()
        if self.placer is not None:
            moves = device_transfers(parts, devices, self.placer.links)
        return Plan(version, choices, parts, devices=devices, device_transfers=moves, device_costs=costs)

    def run_stage(self, plan: Plan, roles: Sequence[str], feeds: Mapping[str, np.ndarray]
                  ) -> tuple[list[tuple[str, dict[str, np.ndarray], int]], int]:
        """Run independent partitions of ``plan`` on ``feeds``: those on different devices at the same time
        when the placer runs stages concurrently (one thread per device, its partitions in order), else
        one after another.  Returns ``(role, outputs, cycles)`` in the order of ``roles``, and the stage's
        cost on its critical path (the busiest device's kernel cycles and :func:`link_cycles`)."""
        groups: dict[str | None, list[str]] = {}
        for role in roles:
            groups.setdefault(plan.devices.get(role), []).append(role)

        def run_group(group: list[str]) -> list[tuple[str, dict[str, np.ndarray], int]]:
            return [(role, *plan.partitions[role].run(feeds)) for role in group]

        concurrent = self.placer is not None and self.placer.concurrent and len(groups) > 1
        if concurrent:
            with self._build_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=len(self.placer.devices),
                                                    thread_name_prefix="braze-device")
            futures = [self._pool.submit(run_group, group) for group in groups.values()]
            results = [future.result() for future in futures]
        else:
            results = [run_group(group) for group in groups.values()]
        by_role = {row[0]: row for rows in results for row in rows}
        costs = [sum(cycles + link_cycles(plan.partitions[role]) for role, _, cycles in rows)
                 for rows in results]
        critical = max(costs) if concurrent else sum(costs)
        return [by_role[role] for role in roles], critical

    @property
    def current(self) -> Plan:
        """The plan in force (one atomic read: take it once per run)."""
        return self._plan

    def deploy(self, choices: frozenset[str], *, renew: bool = False) -> Plan:
        """Build the plan for ``choices`` (compiling its partitions first) and swap it in; ``renew``: a new
        version even for the same choices (its partitions were re-specialised for new input shapes)."""
        if choices == self._plan.choices and not renew:
            return self._plan
        with self._swap_lock:
            plan = self._make(choices, self._plan.version + 1)
            self._plan = plan
            self.history.append(plan)
            return plan

    def reassign(self) -> Plan | None:
        """Place the current plan's roles on devices again (the placer's prices or weights changed): a new
        plan version when an accelerator role moves to another device (by more than the placer's
        threshold of gain), else None."""
        if self.placer is None:
            return None
        with self._swap_lock:
            current = self._plan
            plan = self._make(current.choices, current.version + 1, keep=current.devices)
            if dict(plan.devices) == dict(current.devices):
                return None
            self._plan = plan
            self.history.append(plan)
            return plan

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        for part in self._built.values():
            part.close()
