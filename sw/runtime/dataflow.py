"""``DataflowSession``: a data-dependent model run as partitions, re-planned from what flows through it.

::

    sess = DataflowSession(model_bytes, device="golden", calibration=feeds)
    (y,) = sess.run(None, {"x": x})
    print(sess.report())

The model is split at its control node (:func:`~braze.sw.runtime.partitions.split_model`: an
``If``, or ``TopK`` routing to experts); control flow runs on the host, regions on the
accelerator or the CPU.  Every run hands an observation to the :class:`~.analyzer.DataflowAnalyzer`
(background thread), which every few runs asks the session to reconsider its plan.

Dynamic decisions
-----------------
Each candidate plan is priced per run by the session's cost model (the learned performance model
where one is trained for the device and configuration, else the ISA timing model) over the
kernels of its partitions, plus the :class:`~.partitions.HostLink` cost of their transfers and
device runs, weighted by the analyzer's decayed rates:

* ``fuse-branch`` -- a hot else branch is fused into its predecessor's accelerator partition
  (one region compiled from both).  Guard: the host reads the condition the fused partition
  computes; when the branch is not taken the general path (the then branch) gives the answer and
  the branch's speculative result is dropped.
* ``if-on-chip`` -- the If itself runs on the accelerator: its predecessor and else branch as one
  program whose guard kernel tests the condition (an int8 maximum against an integer threshold,
  proved equal to the model's condition: :mod:`~braze.sw.runtime.onchip_if`) and branches over the
  else kernels when it holds -- no host round trip between them, the tail's kernels skipped on an
  early exit.  Offered only where the condition has an exact on-chip form (else the If stays on the
  host; the report says why).
* ``branch-on-cpu`` -- a rarely taken else branch runs on the host (its quantized graph, the same
  integers), priced with the host time measured for it.
* ``pull-elementwise`` -- the then branch's ops are pulled onto the chip: the If's predecessor and its
  then branch run as one accelerator partition (``pre+then``), and an else branch, when taken, runs
  with its predecessor (``pre+else``, from the model's inputs).  Offered where the then branch -- which
  the static plan keeps on the host, having no GEMM or convolution -- holds only ops that select or move
  int8 values (``MaxPool``, ``Reshape``, ... : :data:`~braze.sw.compiler.quantize.SCALE_PRESERVING`),
  at least one of which computes: the chip gives the same values with the input's own parameters,
  so the answer is the static plan's.  What it saves on a run that exits: the boundary tensor's bytes
  beyond the branch's (smaller) output and the branch's host run (priced at its measured host time);
  what it costs: the ops' kernels, and the predecessor computed again on a run that takes the else
  branch.  Taken while the then branch is hot, reversed when it goes cold.  Such a session prices the
  host time of its host partitions in every candidate plan and in the measured cost per run.
* ``dispatch-experts`` -- the gate runs first; an expert whose mask holds no row this run is
  skipped, each other expert runs in its own accelerator partition (its output is multiplied by
  an all-zero mask otherwise: skipping it changes no value).  With ``hot-expert:<name>`` the
  most active expert runs in the gate's partition, on every run (no second transfer of the input).

* ``skip-zero-blocks`` -- a model without control flow (:class:`~.partitions.StraightModel`, one
  region) with ``skip_zero_blocks=True``: the region runs compiled with the fusion engine's ``skip``
  candidate taken for every GEMM after an activation (:func:`~braze.sw.compiler.kernels.skipping_gemm`,
  which branches over all-zero K-blocks of its input on chip) instead of the plain kernels.  Priced at
  the analyzer's fraction of zero blocks (:mod:`~braze.sw.runtime.dataflow_skip`: counted by the chip
  while the skipping kernel runs, sampled on the host while the plain one does); taken when the
  inputs are sparse enough, reversed when they go dense.  Both forms quantize activations
  symmetrically (zero point 0), so they compute the same integers.

Re-specialisation: when the inputs of a model without control flow change shape (a new batch size),
the session compiles its partitions for the new shapes before the run -- through the kernel cache,
reusing the first shape's fusion and tiling decisions (:meth:`InferenceSession.compile_for`) --
re-prices its candidate plans at them and deploys a new plan version (recorded as a decision; its
kernels differ).  A value leaving a monitored tensor's calibrated range is a
:class:`~.analyzer.ValueRangeWarning` naming the tensor (never silent saturation).

Monitoring points
-----------------
What the analyzer watches is declared in the graph IR (:mod:`~braze.sw.compiler.monitors`): the
control nodes' monitors in the whole model's IR (the If's condition: branch-taken rate; the TopK's
indices: rows per expert), and per partition its boundary tensors plus the tensors asked for with
``monitor=`` -- lowered against the partition's compiled form: a boundary tensor is read on the host on
every run, a skipping GEMM's input is counted by the chip, and a tensor inside a device program is a
host evaluation of the quantized graph (the chip's integers) on the analyzer's sampled runs.

The static plan (no analyzer) is what the partitioner gives without statistics: the If's
predecessor and else branch as two accelerator partitions, the then branch on the host; the gate
and all experts as one accelerator partition.  A decision is taken when its predicted gain over
the static plan exceeds ``threshold`` (a fraction of the static cost), kept until it predicts a
loss of more than half the threshold (so that rates wobbling near break-even do not thrash the
plan), and reversed then.  Every plan computes the same integers (see
:mod:`~braze.sw.runtime.partitions`), so outputs never depend on the plan.
"""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from braze.isa import Config
from braze.isa.errors import BrazeError

from ..compiler.cache import KernelCache, default_cache
from ..compiler.cost import CostModel
from ..compiler.frontend import evaluate, load_onnx
from ..compiler.monitors import CONTROL_STATS, insert_monitors, lower_monitors, monitors
from ..compiler.quantize import SCALE_PRESERVING
from ..compiler.validate import validate
from .analyzer import DataflowAnalyzer, Observation, ValueRangeWarning
from .dataflow_shadow import FloatShadow
from .dataflow_skip import SkipPoint, forced_profiles, prefix_graph, skip_points, skipping_cycles_at
from .devices import DevicePlacer, DeviceSpec, LazyDevice, parse_devices, placed, split_placement
from .partitions import (
    AcceleratorPartition,
    BranchModel,
    CpuPartition,
    HostLink,
    MixtureModel,
    PartitionManager,
    Plan,
    StraightModel,
    calibration_inputs,
    link_cycles,
    partition_model,
)
from .session import choose_cost_model

__all__ = ["DataflowSession", "DecisionEvent", "RunTrace", "DEFAULT_DYNAMIC_THRESHOLD", "FUSE_BRANCH",
           "BRANCH_ON_CPU", "PULL_ELEMENTWISE", "DISPATCH_EXPERTS", "HOT_EXPERT", "IF_ON_CHIP",
           "SKIP_ZERO_BLOCKS"]

FUSE_BRANCH = "fuse-branch"
IF_ON_CHIP = "if-on-chip"
#: The partition manager's placement of the If's predecessor and else branch as one guarded program.
ONCHIP_IF = "onchip-if"
BRANCH_ON_CPU = "branch-on-cpu"
PULL_ELEMENTWISE = "pull-elementwise"
#: Ops that only move int8 values, computing none (a then branch of these alone has nothing to pull).
MOVE_ONLY = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})
DISPATCH_EXPERTS = "dispatch-experts"
#: With ``dispatch-experts``: ``hot-expert:<name>`` runs that expert in the gate's partition.
HOT_EXPERT = "hot-expert"
SKIP_ZERO_BLOCKS = "skip-zero-blocks"
#: The partition manager's placement of a region compiled with zero-block-skipping GEMMs.
ACCELERATOR_SKIP = "accelerator+skip"
#: Minimum predicted gain (a fraction of the static plan's cost per run) for a dynamic decision.
DEFAULT_DYNAMIC_THRESHOLD = 0.05
#: Observations the analyzer needs before the session trusts its rates.
MIN_OBSERVATIONS = 8
#: Run traces a session keeps (the older half is dropped beyond this).
MAX_TRACES = 10_000


@dataclasses.dataclass(frozen=True)
class DecisionEvent:
    """A plan change: which decision, the statistics behind it, and its predicted cost per run."""

    run: int                          # runs the analyzer had observed (it lags the session a little)
    version_before: int
    version_after: int
    taken: frozenset[str]
    reversed: frozenset[str]
    reason: str
    predicted_static: float
    predicted_before: float
    predicted_after: float
    #: A new plan version for new input shapes (its kernels re-specialised), whatever the choices.
    respecialised: bool = False


@dataclasses.dataclass
class RunTrace:
    """What one run did: the plan version each partition step used, cycles, bytes, wall time."""

    run: int
    plan_versions: list[int]
    partitions: list[str]
    kernel_cycles: int = 0
    transfer_bytes: int = 0
    transfers: int = 0
    device_runs: int = 0
    seconds: float = 0.0
    #: The run's cost on its critical path: kernel cycles plus each partition's priced transfers and device
    #: runs at its device's link, partitions that ran concurrently on several devices counted as their
    #: busiest device's (one device: ``cost(link)``).
    critical_cost: float = 0.0
    #: The device each step's partition ran on (None: the host, or a session with one device).
    devices: list = dataclasses.field(default_factory=list)
    #: The host partitions' measured time, in accelerator cycles (the link's clock).
    host_cycles: float = 0.0
    bytes_by_partition: dict[str, int] = dataclasses.field(default_factory=dict)
    cycles_by_partition: dict[str, int] = dataclasses.field(default_factory=dict)
    #: The accelerator partitions that ran and their inputs (what a sampled range check evaluates).
    accelerator_feeds: list = dataclasses.field(default_factory=list, repr=False)
    #: Whether the run keeps its accelerator partitions' feeds (the analyzer samples it).
    keeps_feeds: bool = False

    def cost(self, link: HostLink) -> float:
        return (self.kernel_cycles + link.transfer_cycles(self.transfers, self.transfer_bytes)
                + link.launch_cycles * self.device_runs)


def _quant_of(graph, tensor: str) -> tuple[float, int] | None:
    """The per-tensor int8 parameters ``tensor`` has in a quantized graph (as input or output)."""
    producer = graph.producer(tensor) if tensor in graph.tensors else None
    candidates = []
    if producer is not None and producer.op_type == "DequantizeLinear":
        candidates.append(producer.inputs[0])
    if tensor in graph.tensors:
        candidates += [c.outputs[0] for c in graph.consumers(tensor) if c.op_type == "QuantizeLinear"]
    for name in candidates:
        quant = graph.tensor(name).quant
        if quant is not None and not quant.per_channel:
            return quant.scale[0], quant.zero_point[0]
    return None


class DataflowSession:
    """A data-dependent ONNX model on a Braze device, partitioned and re-planned at run time.

    Parameters
    ----------
    model : bytes or onnx.ModelProto
    calibration : list of dicts
        Inputs to quantize every region with (required: the accelerator computes int8).
    device : str
        Device back end; every accelerator partition opens its own (kernels stay resident).
    config : str or Config
    cost_model : CostModel, "analytic", "learned" or None
        As for :class:`~braze.sw.runtime.session.InferenceSession` (None: learned where trained).
    link : HostLink
        The priced cost of transfers and device runs.
    analyzer : bool
        Observe runs (False: no instrumentation at all, the baseline of the overhead measurement).
    dynamic : bool
        Let the analyzer's statistics change the plan (False: the static plan, always).
    threshold : float
        :data:`DEFAULT_DYNAMIC_THRESHOLD`.
    half_life : float
        The analyzer's decay, in runs.
    background : bool
        Analyze in a background thread (False: on the calling thread, deterministic).
    onchip_if : bool
        Offer ``if-on-chip`` (False: the If always runs on the host, as before it existed).
    skip_zero_blocks : bool
        Offer ``skip-zero-blocks`` (a model without control flow only): activations are then quantized
        symmetrically in every plan.
    analyzer_budget : float
        The share of inference wall time the analyzer's tensor samples may cost (``budget`` of
        :class:`~.analyzer.DataflowAnalyzer`).
    devices : list of str, Config or DeviceSpec, optional
        Several accelerators (``["tiny", "default"]``, ``["verilator:default", "golden:large"]``: see
        :mod:`~braze.sw.runtime.devices`; ``device`` is the back end of a bare config name).  Each
        plan's accelerator partitions are assigned to them by price; the report says where and why.
        None: one device, ``device`` of ``config``.
    concurrent : bool
        With ``devices``: run independent partitions (a mixture's experts) on different devices at the
        same time, and price them so (False: one after another).
    monitor : sequence of str
        Tensors of the model to watch beside the partition boundaries, inside an accelerator partition
        too: monitoring points in each partition's graph IR (:mod:`~braze.sw.compiler.monitors`); one
        inside a device program is a host sample of the quantized graph on the analyzer's sampled runs.
    """

    def __init__(self, model: bytes | onnx.ModelProto, *, calibration: Sequence[Mapping[str, np.ndarray]],
                 device: str = "golden", config: str | Config = "default",
                 cost_model: CostModel | str | None = None, cache: KernelCache | None = None,
                 link: HostLink | None = None, analyzer: bool = True, dynamic: bool = True,
                 threshold: float = DEFAULT_DYNAMIC_THRESHOLD, half_life: float = 16.0,
                 background: bool = True, every: int = 4, onchip_if: bool = True,
                 skip_zero_blocks: bool = False, analyzer_budget: float = 0.02,
                 devices: Sequence[str | Config | DeviceSpec] | None = None, concurrent: bool = True,
                 monitor: Sequence[str] = ()):
        if not isinstance(device, str):
            raise BrazeError("DataflowSession opens one device per accelerator partition: pass the device's "
                             "kind (e.g. 'golden'), not an open device")
        self.proto = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model)
        if not calibration:
            raise BrazeError("DataflowSession needs calibration inputs (a non-empty list of feed dicts)")
        self.config = config if isinstance(config, Config) else Config.parse(config)
        self.device_kind = device
        self.cache = cache if cache is not None else default_cache()
        self.link = link or HostLink()
        self.threshold = threshold
        self.dynamic = dynamic
        self.structure = partition_model(self.proto)
        self.skip_zero_blocks = skip_zero_blocks
        if skip_zero_blocks and not isinstance(self.structure, StraightModel):
            raise BrazeError(f"model {self.proto.graph.name!r}: skip_zero_blocks=True re-plans models "
                             f"without control flow; this one has an If or TopK")
        #: The input shapes the partitions are specialised for (a model without control flow).
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._skip_cycles: dict[tuple[str, float], int] = {}
        self._shadows: dict[str, Any] = {}                   # partition name -> FloatShadow
        self._sample_key: tuple | None = None                # what _sample_prefix was cut from
        self._sample_prefix = None
        self._regions = {region.name: region for region in self.structure.regions()}
        self._calibration = calibration_inputs(self.proto, list(self._regions.values()), calibration)
        if isinstance(self.structure, StraightModel):
            first = self._calibration[self.structure.body.name][0]
            self._shapes = {t: tuple(np.shape(v)) for t, v in first.items()}
        #: The session's devices (several: ``devices``), each with its cost model.
        self.devices = parse_devices(devices if devices is not None else [config], kind=device,
                                     link=self.link)
        self._device_of = {}
        for spec in self.devices:        # the cost model needs the device's kind, not an open device
            probe = LazyDevice(spec.kind, spec.config)
            self._device_of[spec.name] = (spec, *choose_cost_model(cost_model, probe, spec.config))
        first, self.cost_model, self.cost_model_reason = self._device_of[self.devices[0].name]
        if devices is not None:
            self.config, self.device_kind = first.config, first.kind
        # A partition's device is opened when a plan that runs it is deployed (see LazyDevice).
        self._open_device = lambda: LazyDevice(device, self.config)
        self._cpu_cycles: dict[str, float] = {}
        #: Why the If cannot run on chip (None: it can, or it was not tried yet; "" for a mixture).
        self.onchip_if_unavailable: str | None = None if isinstance(self.structure, BranchModel) else ""
        if not onchip_if and self.onchip_if_unavailable is None:
            self.onchip_if_unavailable = "turned off (onchip_if=False)"
        #: Why the then branch's ops are not pulled onto the chip (None: they may be; "" for no If).
        self.pull_unavailable = self._pull_unavailable() if isinstance(self.structure, BranchModel) else ""
        self._observe = analyzer
        placer = None
        if devices is not None:
            mixture = isinstance(self.structure, MixtureModel)
            experts = frozenset(r.name for r in self.structure.experts) if mixture else frozenset()
            placer = DevicePlacer(self.devices, concurrent_roles=experts, concurrent=concurrent,
                                  weights=self._expert_rates, threshold=threshold)
        self._monitor_names = tuple(monitor)
        #: Per partition name: its quantized graph with monitoring points, lowered (see _monitor_graph).
        self._monitor_graphs: dict[str, Any] = {}
        self._monitor_samples: dict[str, tuple] = {}   # partition -> (prefix graph, [(label, tensor, quant)])
        # The control nodes' monitors, in the whole model's IR: what the runs record of the control flow.
        self.control_monitors = monitors(lower_monitors(validate(insert_monitors(
            load_onnx(self.proto, allow_fallback=True), control=True)))) if analyzer else ()
        self._control_stats = {stat for node in self.control_monitors for stat in node.attrs["stats"]}
        self.manager = PartitionManager(self._build, self._layout, placer=placer)
        if skip_zero_blocks and analyzer:   # compiled up front: its kernels say where and how to measure
            self.manager.partition(self.structure.body.name, ACCELERATOR_SKIP)
        self.events: list[DecisionEvent] = []
        self.traces: list[RunTrace] = []
        self._runs = 0
        self._runs_lock = threading.Lock()
        self._reconsider_lock = threading.Lock()
        self.last_prices: dict[str, float] = {}
        self._monitored_of: dict[int, list[str]] = {}
        self._checked_of: dict[int, list[str]] = {}
        self.analyzer = None
        if analyzer:
            quant, dequantized = {}, set()
            for part in self.manager.current.partitions.values():
                if isinstance(part, AcceleratorPartition):
                    graph = part.host_graph()
                    for tensor in [*part.region.inputs, *part.region.outputs]:
                        found = _quant_of(graph, tensor)
                        if found is not None:
                            quant.setdefault(tensor, found)
                    for tensor in part.region.outputs:       # int8 on the device, dequantized on the way out
                        producer = graph.producer(tensor) if tensor in graph.tensors else None
                        if producer is not None and producer.op_type == "DequantizeLinear":
                            dequantized.add(tensor)
            # Every region holds a tensor with the same int8 parameters (partitions.py), so a dequantized
            # output is in its calibrated range wherever it is monitored.
            self.analyzer = DataflowAnalyzer(half_life=half_life, quant=quant, every=every,
                                             dequantized=frozenset(dequantized),
                                             on_update=self._reconsider if dynamic else None,
                                             background=background, budget=analyzer_budget)
        self._outputs = [o.name for o in self.proto.graph.output]
        self._expert_shapes = {}
        if isinstance(self.structure, MixtureModel):
            for region in self.structure.experts:
                dims = region.proto.graph.output[0].type.tensor_type.shape.dim
                self._expert_shapes[region.outputs[0]] = tuple(d.dim_value for d in dims)

    # -- partitions and plans ---------------------------------------------------------------------------
    def _build(self, region: str, where: str) -> AcceleratorPartition | CpuPartition:
        part = self._build_partition(region, where)
        if self._observe:
            self._monitor_graph(part)
        if self._observe and part.kind == "accelerator":
            # Set up with the partition (as its compilation is), not on the analyzer's budget.
            shadow = self._shadows[part.name] = FloatShadow(part.region, part.host_graph())
            shadow(self._calibration[region][0])          # onnxruntime's first run is slow: not a sample's
        return part

    def _monitor_graph(self, part: AcceleratorPartition | CpuPartition):
        """The partition's graph with its monitoring points -- its boundary tensors and the asked-for tensors
        it holds -- lowered against its compiled form (host copy, chip counter or host sample), validated."""
        graph = part.host_graph() if part.kind == "accelerator" else part.graph
        wanted = [*part.region.inputs, *part.region.outputs]
        wanted += [t for t in self._monitor_names
                   if t not in wanted and (t in graph.tensors or f"{t}_q" in graph.tensors)]
        lowered = validate(lower_monitors(insert_monitors(graph, wanted, control=False),
                                          getattr(part, "compiled", None)))
        self._monitor_graphs[part.name] = lowered
        sampled = []
        for node in monitors(lowered):
            if node.attrs["via"] == "sample":
                quant = lowered.tensor(node.inputs[0]).quant
                sampled.append((node.attrs["label"], node.inputs[0],
                                None if quant is None else (float(quant.scale[0]), int(quant.zero_point[0]))))
        if sampled:
            self._monitor_samples[part.name] = (prefix_graph(graph, [t for _, t, _ in sampled]), sampled)
        return lowered

    def _build_partition(self, region: str, where: str) -> AcceleratorPartition | CpuPartition:
        part = self._build_on_device(region, *split_placement(where))
        part.device = split_placement(where)[1]
        return part

    def _build_on_device(self, region: str, where: str,
                         device: str | None) -> AcceleratorPartition | CpuPartition:
        spec = self._regions[region]
        config, cost_model, link, open_device = self.config, self.cost_model, self.link, self._open_device
        if device is not None:            # one of several devices: its configuration, cost model and link
            target, cost_model, _ = self._device_of[device]
            config, link = target.config, target.link
            open_device = lambda: LazyDevice(target.kind, target.config)  # noqa: E731
        if where == ONCHIP_IF:
            from .onchip_if import OnChipIfPartition

            return OnChipIfPartition(spec, cond=self.structure.cond, then_inputs=self.structure.then.inputs,
                                     config=config, calibration=self._calibration[region],
                                     cache=self.cache, cost_model=cost_model, device=open_device(),
                                     link=link)
        if where in ("accelerator", ACCELERATOR_SKIP):
            options, name, shapes = {}, None, None
            if isinstance(self.structure, StraightModel):     # compiled first at the calibration's shapes
                shapes = self._shapes
            if self.skip_zero_blocks:      # symmetric activations in both forms: the same integers
                profiles = {}
                if where == ACCELERATOR_SKIP:
                    plain = "accelerator" if device is None else placed("accelerator", device)
                    profiles = forced_profiles(self.manager.partition(region, plain).host_graph())
                    name = f"{region}+skip"
                options = {"skip_zero_blocks": True, "zero_block_profiles": profiles}
            return AcceleratorPartition(spec, config=config, calibration=self._calibration[region],
                                        cache=self.cache, cost_model=cost_model,
                                        device=open_device(), link=link, name=name,
                                        session_options=options, shapes=shapes)
        if spec.wants_accelerator:        # a compute region kept on the host: its quantized graph
            return CpuPartition(spec, self.manager.partition(region, "accelerator").host_graph())
        return CpuPartition(spec)

    def _layout(self, choices: frozenset[str]) -> dict[str, tuple[str, str]]:
        s = self.structure
        if isinstance(s, StraightModel):
            return {"body": (s.body.name, ACCELERATOR_SKIP if SKIP_ZERO_BLOCKS in choices else "accelerator")}
        if isinstance(s, BranchModel):
            if PULL_ELEMENTWISE in choices:
                return {"pre": (s.fused_then.name, "accelerator"), "else": (s.fused_else.name, "accelerator")}
            if IF_ON_CHIP in choices:
                return {"pre": (s.fused_else.name, ONCHIP_IF), "then": (s.then.name, "cpu")}
            if FUSE_BRANCH in choices:
                return {"pre": (s.fused_else.name, "accelerator"), "then": (s.then.name, "cpu")}
            orelse = "cpu" if BRANCH_ON_CPU in choices else "accelerator"
            return {"pre": (s.pre.name, "accelerator"), "then": (s.then.name, "cpu"),
                    "else": (s.orelse.name, orelse)}
        layout = {"router": (s.router.name, "cpu"), "combine": (s.combine.name, "cpu")}
        if DISPATCH_EXPERTS in choices:
            hot = {c.split(":", 1)[1] for c in choices if c.startswith(HOT_EXPERT + ":")}
            layout["gate"] = (s.gate.name, "accelerator")
            for region, fused in zip(s.experts, s.gate_with, strict=True):
                if region.name in hot:
                    layout["gate"] = (fused.name, "accelerator")
                else:
                    layout[region.name] = (region.name, "accelerator")
        else:
            layout["gate"] = (s.gate_and_experts.name, "accelerator")
        return layout

    @property
    def plan(self) -> Plan:
        return self.manager.current

    # -- running ----------------------------------------------------------------------------------------
    def get_inputs(self) -> list[str]:
        return [i.name for i in self.proto.graph.input]

    def run(self, output_names: Sequence[str] | None,
            input_feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model on the plan in force at the start of the run; returns the requested outputs."""
        self._emit_warnings()
        started = time.perf_counter()
        if isinstance(self.structure, StraightModel):
            body = self.structure.body
            shapes = {t: tuple(np.shape(input_feed[t])) for t in body.inputs if t in input_feed}
            if shapes != self._shapes and len(shapes) == len(self.structure.body.inputs):
                self._respecialise(shapes)
        plan = self.manager.current                 # the one read of the plan: the whole run uses it
        with self._runs_lock:
            self._runs += 1
            run = self._runs
        trace = RunTrace(run, [], [])
        # Asked before the run: a run the analyzer's budget does not sample hands over only the tensors whose
        # ranges are checked on every run, and keeps no feeds for samplers (the run's time is counted after).
        sampled = self.analyzer is not None and self.analyzer.admit(0.0)
        trace.keeps_feeds = sampled
        host: dict[str, np.ndarray] = dict(input_feed)
        missing = [i for i in self.get_inputs() if i not in host]
        if missing:
            raise BrazeError(f"missing input(s) {missing} of model {self.proto.graph.name!r}")
        block_zeros, sample = {}, None
        if isinstance(self.structure, StraightModel):
            block_zeros, sample = self._run_straight(plan, host, trace)
            branches, tokens, rows = {}, {}, 0
        elif isinstance(self.structure, BranchModel):
            branches, tokens, rows = self._run_branch(plan, host, trace), {}, 0
        else:
            tokens, rows = self._run_mixture(plan, host, trace)
            branches = {}
        trace.seconds = time.perf_counter() - started
        if "taken" not in self._control_stats:      # the control outcomes the IR's monitors ask for
            branches = {}
        if "routes" not in self._control_stats:
            tokens = {}
        self.traces.append(trace)
        if len(self.traces) > MAX_TRACES:
            del self.traces[:MAX_TRACES // 2]
        if self.analyzer is not None:
            # Wall time of the handover (what the run pays: a clock read of a few tens of nanoseconds, where
            # a thread CPU clock is a system call of a microsecond or more, twice per run).
            handover = time.perf_counter()
            self.analyzer.count(trace.seconds)
            names = self._monitored(plan) if sampled else self._checked(plan)
            observation = Observation(run, plan.version, {t: host[t] for t in names if t in host}, branches,
                                      tokens, rows, trace.bytes_by_partition, trace.cycles_by_partition,
                                      self._measured_cost(trace), trace.seconds, sampled, block_zeros)
            if sampled:
                observation.sample_block_zeros = sample
                observation.sample_ranges = self._range_sampler(trace.accelerator_feeds)
                observation.sample_monitors = self._monitor_sampler(trace.accelerator_feeds)
            self.analyzer.submit(observation, admitted=True)
            if self.analyzer._thread is not None:     # synchronous folding is counted as it folds
                self.analyzer.submit_seconds += time.perf_counter() - handover
            else:
                self._emit_warnings()
        names = list(output_names) if output_names else self._outputs
        return [host[name] for name in names]

    def _emit_warnings(self) -> None:
        if self.analyzer is not None:
            for text in self.analyzer.take_warnings():
                warnings.warn(text, ValueRangeWarning, stacklevel=3)

    def _monitored(self, plan: Plan) -> list[str]:
        """The monitoring points read on every run: the plan's partitions' monitors measured on the host
        (their boundary tensors, on the host anyway); per plan."""
        cached = self._monitored_of.get(plan.version)
        if cached is not None:
            return cached
        points = self._monitored_of[plan.version] = []
        for part in plan.partitions.values():
            for node in monitors(self._monitor_graphs[part.name]):
                if node.attrs["via"] == "host" and node.attrs["label"] not in points:
                    points.append(node.attrs["label"])
        return points

    def _checked(self, plan: Plan) -> list[str]:
        """The monitoring points whose ranges the analyzer checks on runs it does not sample; per plan."""
        cached = self._checked_of.get(plan.version)
        if cached is None:
            cached = self._checked_of[plan.version] = [t for t in self._monitored(plan)
                                                       if self.analyzer.checked_every_run(t)]
        return cached

    def _monitor_sampler(self, ran: list) -> Any:
        """A host evaluation of the quantized graphs of the partitions that ran, at their monitors inside
        device programs (called by the analyzer on the runs it samples): dequantized int8 values."""
        todo = [(self._monitor_samples[part.name], feeds) for part, feeds in ran
                if part.name in self._monitor_samples]
        if not todo:
            return None

        def sample() -> dict[str, tuple[np.ndarray, tuple[float, int] | None]]:
            values = {}
            for (graph, points), feeds in todo:
                computed = evaluate(graph, {t: feeds[t] for t in graph.inputs}, keep=True)
                for label, tensor, quant in points:
                    value = computed[tensor]
                    if quant is not None:
                        value = (value.astype(np.float32) - quant[1]) * np.float32(quant[0])
                    values[label] = (value, quant)
            return values
        return sample

    def _step(self, plan: Plan, role: str, host: dict[str, np.ndarray], trace: RunTrace) -> None:
        part = plan.partitions[role]
        if part.kind == "accelerator":
            self._record(plan, role, *part.run(host), host, trace)
            return
        started = time.perf_counter()
        outputs, cycles = part.run(host)
        trace.host_cycles += (time.perf_counter() - started) * self.link.host_clock_hz
        self._record(plan, role, outputs, cycles, host, trace)

    def _measured_cost(self, trace: RunTrace) -> float:
        """A run's cost as this session prices plans: kernel cycles and the priced link, plus the host
        partitions' measured time where a decision trades host work for chip work (``pull-elementwise``)."""
        cost = trace.cost(self.link)
        return cost + trace.host_cycles if self.pull_unavailable is None else cost

    def _record(self, plan: Plan, role: str, outputs: dict[str, np.ndarray], cycles: int,
                host: dict[str, np.ndarray], trace: RunTrace) -> None:
        """The partition of ``role`` ran: its outputs to the host, its cycles and transfers to the trace."""
        part = plan.partitions[role]
        host.update(outputs)
        trace.plan_versions.append(plan.version)
        trace.partitions.append(part.name)
        trace.devices.append(getattr(part, "device", None))
        trace.kernel_cycles += cycles
        trace.critical_cost += cycles + link_cycles(part)
        # An If on chip moves the else branch's results only when it ran: the transfers of this run.
        transfers = getattr(part, "last_transfers", part.transfers)
        nbytes = sum(t.bytes for t in transfers)
        trace.transfer_bytes += nbytes
        trace.bytes_by_partition[part.name] = trace.bytes_by_partition.get(part.name, 0) + nbytes
        if part.kind == "accelerator" and trace.keeps_feeds:
            trace.accelerator_feeds.append((part, {t: host[t] for t in part.region.inputs}))
        if part.kind == "accelerator":          # the accelerator's own counters
            trace.cycles_by_partition[part.name] = trace.cycles_by_partition.get(part.name, 0) + cycles
        trace.transfers += len(transfers)
        trace.device_runs += part.device_runs

    def _run_straight(self, plan: Plan, host: dict[str, np.ndarray], trace: RunTrace):
        """Run the one region; returns what the chip counted of the skipping GEMMs' inputs (when they
        ran) or else a host sampler of the same (the analyzer calls it on the runs it samples)."""
        self._step(plan, "body", host, trace)
        part = plan.partitions["body"]
        points = self._skip_points()
        if not points or self.analyzer is None:
            return {}, None
        if part.name.endswith("+skip"):
            rows = {row.kernel: row for row in part.last_kernels}
            return {p.tensor: p.fraction_from_counters(rows[p.step].counters) for p in points
                    if p.step in rows}, None
        graph = self._sample_graph(part.host_graph(), points)
        feeds = {t: host[t] for t in graph.inputs}

        def sample() -> dict[str, float]:
            values = evaluate(graph, feeds, keep=True)
            return {p.tensor: p.fraction_of(values[p.tensor]) for p in points if p.tensor in values}
        return {}, sample

    def _range_sampler(self, ran: list) -> Any:
        """A host evaluation of the float regions that ran, at the tensors the chip holds in int8 (called
        by the analyzer on the runs it samples)."""
        if not ran:
            return None

        def sample() -> dict[str, tuple[np.ndarray, tuple[float, int]]]:
            values = {}
            for part, feeds in ran:
                shadow = self._shadows[part.name]
                for tensor, value in shadow(feeds).items():
                    values[tensor] = (value, shadow.quant[tensor])
            return values
        return sample

    def _sample_graph(self, graph, points: Sequence[SkipPoint]):
        """What a host sample evaluates: the part of the quantized graph that computes the points."""
        key = (id(graph), tuple(p.tensor for p in points))
        if self._sample_key != key:
            self._sample_key, self._sample_prefix = key, prefix_graph(graph, [p.tensor for p in points])
        return self._sample_prefix

    def _skip_points(self) -> list[SkipPoint]:
        """The skipping GEMMs of the region as compiled for the current shapes (none without the option)."""
        if not self.skip_zero_blocks:
            return []
        skip = self.manager.partition(self.structure.body.name, ACCELERATOR_SKIP)
        return skip_points(skip.compiled, skip.compiled.source)

    def _respecialise(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """New input shapes: compile every partition of the region for them (through the kernel cache),
        re-price and deploy a new plan version before the run (see the module documentation)."""
        with self._reconsider_lock:
            old, started = self._shapes, time.perf_counter()
            region = self.structure.body.name
            for where in ("accelerator", ACCELERATOR_SKIP):
                for part in self.manager.variants(region, where):     # on every device it is compiled for
                    part.specialise(shapes)
            self._shapes = shapes
            seconds = time.perf_counter() - started
            current = self.manager.current
            target = current.choices
            prices = {frozenset(): self.manager.partition(region, "accelerator").predicted_cycles}
            if self.analyzer is not None and self.dynamic:
                prices = self.price()
                if self.analyzer.observations >= MIN_OBSERVATIONS:
                    target = self._choose(prices, current.choices)
            self.last_prices = {", ".join(sorted(k)) or "static": v for k, v in prices.items()}
            plan = self.manager.deploy(target, renew=True)
            shape_text = ", ".join(f"{t} {list(old[t]) if old else '?'} -> {list(shapes[t])}" for t in shapes)
            reason = (f"input shape {shape_text}: kernels re-specialised through the kernel cache in "
                      f"{1e3 * seconds:.0f} ms")
            if self.analyzer is not None and self.dynamic and self._skip_points():
                reason += f"; {self._rates_text()}"
            static = prices[frozenset()]
            self.events.append(DecisionEvent(self.analyzer.observations if self.analyzer else self._runs,
                                             current.version, plan.version, target - current.choices,
                                             current.choices - target, reason, static,
                                             prices.get(current.choices, static), prices.get(target, static),
                                             respecialised=True))

    def _run_branch(self, plan: Plan, host: dict[str, np.ndarray], trace: RunTrace) -> dict[str, bool]:
        s: BranchModel = self.structure
        self._step(plan, "pre", host, trace)
        cond = np.asarray(host[s.cond])
        if cond.size != 1:
            raise BrazeError(f"If condition {s.cond!r} has {cond.size} elements; it must be one (batch 1)")
        taken_else = not bool(cond.reshape(()))
        if taken_else:
            if "else" in plan.partitions:
                self._step(plan, "else", host, trace)
            # Fused plan: the guard passed, the branch's result (computed with its predecessor) is used.
            host[s.output] = host[s.orelse.outputs[0]]
        else:
            # The general path (a fused branch's result is dropped); pulled onto the chip, it ran with pre.
            if "then" in plan.partitions:
                self._step(plan, "then", host, trace)
            host[s.output] = host[s.then.outputs[0]]
        return {"else": taken_else}

    def _run_mixture(self, plan: Plan, host: dict[str, np.ndarray],
                     trace: RunTrace) -> tuple[dict[str, int], int]:
        s: MixtureModel = self.structure
        self._step(plan, "gate", host, trace)
        self._step(plan, "router", host, trace)
        tokens, stage = {}, []
        for region, mask, output in zip(s.experts, s.masks, s.expert_outputs, strict=True):
            count = int(np.count_nonzero(host[mask]))
            tokens[region.name] = count
            if region.name in plan.partitions:
                if count:
                    stage.append(region.name)
                else:                 # multiplied by an all-zero mask: zeros give the same sum
                    host[output] = np.zeros(self._expert_shapes[output], np.float32)
        # Independent of each other: on several devices, the experts of different devices run together.
        ran, critical = self.manager.run_stage(plan, stage, host)
        for role, outputs, cycles in ran:
            self._record(plan, role, outputs, cycles, host, trace)
        trace.critical_cost += critical - sum(cycles + link_cycles(plan.partitions[role])
                                              for role, _, cycles in ran)
        self._step(plan, "combine", host, trace)
        rows = int(np.asarray(host[s.masks[0]]).shape[0])
        return tokens, rows

    # -- decisions ----------------------------------------------------------------------------------------
    def _host_cycles(self, region: str) -> float:
        """Host time of ``region`` on the CPU (median of 5), in accelerator cycles (the link's clock)."""
        if region not in self._cpu_cycles:
            part = self.manager.partition(region, "cpu")
            feeds = self._calibration[region][0]
            times = []
            for _ in range(5):
                started = time.perf_counter()
                evaluate(part.graph, feeds)
                times.append(time.perf_counter() - started)
            self._cpu_cycles[region] = statistics.median(times) * self.link.host_clock_hz
        return self._cpu_cycles[region]

    def price(self) -> dict[frozenset[str], float]:
        """Predicted cost per run (cycles) of each candidate plan, under the analyzer's current rates."""
        a = self.analyzer
        s = self.structure
        part = self.manager.partition
        if isinstance(s, StraightModel):
            prices = {frozenset(): part(s.body.name, "accelerator").predicted_cycles}
            points = self._skip_points()
            if points and all(p.tensor in a.block_zeros for p in points):
                skip = part(s.body.name, ACCELERATOR_SKIP)
                steps = {step.name: step.kernel for step in skip.compiled.steps if hasattr(step, "kernel")}
                # Compiled at all-zero profiles: the timing model's difference to the observed fractions.
                adjust = sum(self._cycles_at(steps[p.step], p.step, a.block_zeros[p.tensor].value)
                             - self._cycles_at(steps[p.step], p.step, 1.0) for p in points)
                prices[frozenset({SKIP_ZERO_BLOCKS})] = skip.predicted_cycles + adjust
            return prices
        if isinstance(s, BranchModel):
            p = a.branches["else"].value
            pre = part(s.pre.name, "accelerator").predicted_cycles
            orelse = part(s.orelse.name, "accelerator").predicted_cycles
            prices = {frozenset(): pre + p * orelse,
                      frozenset({FUSE_BRANCH}): part(s.fused_else.name, "accelerator").predicted_cycles,
                      frozenset({BRANCH_ON_CPU}): pre + p * self._host_cycles(s.orelse.name)}
            onchip = self._onchip_if()
            if onchip is not None:
                prices[frozenset({IF_ON_CHIP})] = onchip.predicted_at(p)
            if self.pull_unavailable is None:
                # The then branch on the host in every other plan: its measured host time on exits.
                then_host = (1 - p) * self._host_cycles(s.then.name)
                prices = {choice: cost + then_host for choice, cost in prices.items()}
                prices[frozenset({PULL_ELEMENTWISE})] = (
                    part(s.fused_then.name, "accelerator").predicted_cycles
                    + p * part(s.fused_else.name, "accelerator").predicted_cycles)
            return prices
        static = part(s.gate_and_experts.name, "accelerator").predicted_cycles
        expected = {r.name: a.active[r.name].value * part(r.name, "accelerator").predicted_cycles
                    for r in s.experts}
        dispatch = part(s.gate.name, "accelerator").predicted_cycles + self._experts_cost(expected)
        prices = {frozenset(): static, frozenset({DISPATCH_EXPERTS}): dispatch}
        for hot, fused in zip(s.experts, s.gate_with, strict=True):
            # A hot expert runs (on every row, its result dropped where it has none) with the gate.
            prices[frozenset({DISPATCH_EXPERTS, f"{HOT_EXPERT}:{hot.name}"})] = (
                part(fused.name, "accelerator").predicted_cycles
                + self._experts_cost({name: cost for name, cost in expected.items() if name != hot.name}))
        return prices

    def _expert_rates(self) -> dict[str, float]:
        """Each expert's expected runs per model run (the analyzer's rate; 1 without statistics)."""
        a = getattr(self, "analyzer", None)             # the first plan is placed before the analyzer exists
        if a is None or a.observations < MIN_OBSERVATIONS or not isinstance(self.structure, MixtureModel):
            return {}
        return {r.name: a.active[r.name].value for r in self.structure.experts}

    def _experts_cost(self, expected: Mapping[str, float]) -> float:
        """The experts' stage at their expected costs: their sum on one device; on several, the busiest
        device's share of the best assignment (experts run concurrently) or each expert's cheapest
        device (they do not)."""
        placer = self.manager.placer
        if placer is None:
            return sum(expected.values())
        rates = {name: self.analyzer.active[name].value for name in expected}     # as ``expected`` has them
        costs = {name: {d: rates[name] * cost
                        for d, cost in placer.costs(name, "accelerator", self.manager.partition).items()}
                 for name in expected}
        return placer.stage_cost(costs)

    def _cycles_at(self, kernel, step: str, fraction: float) -> int:
        """A skipping kernel's timing-model cycles at a zero-block fraction (to 1%: cached)."""
        key = (f"{step}@{kernel.operands['A'].shape}", round(fraction, 2))
        if key not in self._skip_cycles:
            self._skip_cycles[key] = skipping_cycles_at(kernel, key[1])
        return self._skip_cycles[key]

    def _onchip_if(self):
        """The If-on-chip partition, built on first use; None (and the reason kept) where it cannot be."""
        if self.onchip_if_unavailable is not None:
            return None
        from .onchip_if import OnChipIfError

        try:
            return self.manager.partition(self.structure.fused_else.name, ONCHIP_IF)
        except OnChipIfError as error:
            self.onchip_if_unavailable = str(error)
            return None

    def _pull_unavailable(self) -> str | None:
        """Why the then branch's ops cannot be pulled onto the chip (None: they can; see the module
        documentation)."""
        ops = set(self.structure.then.op_types)
        inexact = sorted(ops - SCALE_PRESERVING)
        if inexact:
            return (f"the then branch holds {', '.join(inexact)}, which the chip does not compute with its "
                    f"input's int8 parameters (the answer could differ from the host's)")
        if ops <= MOVE_ONLY:
            return f"the then branch computes nothing to pull ({', '.join(sorted(ops))})"
        return None

    def _reconsider(self, analyzer: DataflowAnalyzer | None = None) -> Plan:
        """Re-plan from the statistics (the analyzer's thread calls this every few runs)."""
        with self._reconsider_lock:
            current = self.manager.current
            if self.analyzer is None or self.analyzer.observations < MIN_OBSERVATIONS:
                return current
            prices = self.price()
            self.last_prices = {", ".join(sorted(k)) or "static": v for k, v in prices.items()}
            static = prices[frozenset()]
            held = current.choices
            target = self._choose(prices, held)
            if target == held:
                return self._reassign(current, static, prices[held])
            plan = self.manager.deploy(target)
            rates = self._rates_text()
            self.events.append(DecisionEvent(self.analyzer.observations, current.version, plan.version,
                                             target - held,
                                             held - target, rates, static, prices[held], prices[target]))
            return plan

    def _reassign(self, current: Plan, static: float, price: float) -> Plan:
        """The same choices, their accelerator roles placed on the devices again (the experts' rates moved
        the balance of a concurrent stage): a new plan version when a role moves, recorded as a decision."""
        plan = self.manager.reassign()
        if plan is None:
            return current
        held, best = self.manager.placer.last_move or (0.0, 0.0)     # the stage's cost before and after
        moved = ", ".join(f"{role} {current.devices.get(role)} -> {device}"
                          for role, device in plan.devices.items() if current.devices.get(role) != device)
        reason = f"re-assigned {moved}; {self._rates_text()}"
        self.events.append(DecisionEvent(self.analyzer.observations, current.version, plan.version,
                                         frozenset(), frozenset(), reason, static, price + held - best,
                                         price))
        return plan

    def _choose(self, prices: Mapping[frozenset[str], float], held: frozenset[str]) -> frozenset[str]:
        """The choices to deploy: the best above the threshold; a held decision kept (hysteresis) until it
        predicts a clear loss or another beats it by the threshold."""
        static = prices[frozenset()]
        gains = {choice: (static - cost) / static for choice, cost in prices.items()}
        best = max(gains, key=gains.get)
        if held in gains and held and gains[held] > -self.threshold / 2 \
                and gains[best] - gains[held] <= self.threshold:
            return held
        return best if gains[best] > self.threshold else frozenset()

    def reconsider(self) -> Plan:
        """Re-plan now (after :meth:`DataflowAnalyzer.flush`); the analyzer does this by itself."""
        if self.analyzer is not None:
            self.analyzer.flush()
        return self._reconsider()

    def _rates_text(self) -> str:
        a = self.analyzer
        if isinstance(self.structure, StraightModel):
            return "zero K-blocks of " + ", ".join(f"{p.tensor} {100 * a.block_zeros[p.tensor].value:.0f}%"
                                                   for p in self._skip_points() if p.tensor in a.block_zeros)
        if isinstance(self.structure, BranchModel):
            return f"else branch taken in {100 * a.branches['else'].value:.0f}% of runs"
        return "experts with rows in " + ", ".join(f"{name} {100 * rate.value:.0f}%"
                                                   for name, rate in a.active.items())

    # -- report -------------------------------------------------------------------------------------------
    def report(self) -> str:
        """Partitions, transfers, the analyzer's statistics and every decision, predicted and measured."""
        if self.analyzer is not None:
            self.analyzer.flush()
        plan = self.manager.current
        lines = [f"DataflowSession {self.proto.graph.name!r}: {plan.describe()}; cost model "
                 f"{getattr(self.cost_model, 'name', 'isa-timing')} ({self.cost_model_reason}); "
                 f"{self.link.describe()}",
                 "partitions:"]
        lines.append(f"  {'role':<14} {'region':<14} {'where':<12} {'ops':>4} {'pred. cycles/run':>16} "
                     f"{'transfers':>9} {'bytes':>6}")
        for role, part in plan.partitions.items():
            lines.append(f"  {role:<14} {part.name:<14} {part.kind:<12} {len(part.region.op_types):>4} "
                         f"{part.predicted_cycles:>16.0f} {len(part.transfers):>9} {part.transfer_bytes:>6}")
        if self.manager.placer is not None:
            lines += self.manager.placer.report(plan)
        lines.append(self._devices_text())
        lines.append("transfers (host <-> device, per run of the partition):")
        for part in plan.partitions.values():
            for transfer in part.transfers:
                lines.append(f"  {transfer.partition:<14} {transfer.direction:<10} {transfer.tensor:<40} "
                             f"{transfer.bytes:>6} B")
        if self.traces:
            last = self.traces[-1]
            lines.append(f"last run: partitions {' -> '.join(last.partitions)}; {last.kernel_cycles} kernel "
                         f"cycles, {last.transfer_bytes} B in {last.transfers} transfers, {last.device_runs} "
                         f"device runs, "
                         f"{1e3 * last.seconds:.2f} ms")
        if self.analyzer is not None:
            lines.append(self.analyzer.table())
            lines.append(self._monitors_text(plan))
        if self.pull_unavailable:
            lines.append(f"pull-elementwise: not offered ({self.pull_unavailable})")
        if self.onchip_if_unavailable:
            lines.append(f"if-on-chip: not available, the If stays on the host "
                         f"({self.onchip_if_unavailable})")
        if self.last_prices:
            lines.append("predicted cost per run of each candidate plan: " + ", ".join(
                f"{name} {cost:.0f}" for name, cost in self.last_prices.items()))
        lines.append("decisions:" if self.events else "decisions: none (the static plan)")
        for event in self.events:
            what = ", ".join([f"take {c}" for c in sorted(event.taken)]
                             + [f"reverse {c}" for c in sorted(event.reversed)])
            if event.respecialised:
                what = "re-specialise" + (f" and {what}" if what else "")
            elif not what:
                what = "re-assign devices"
            before = self.analyzer.measured_cost(event.version_before) if self.analyzer else None
            after = self.analyzer.measured_cost(event.version_after) if self.analyzer else None
            measured = ("measured " + (f"{before:.0f}" if before is not None else "-") + " -> "
                        + (f"{after:.0f}" if after is not None else "-") + " cycles/run")
            lines.append(f"  after {event.run} observed runs: {what} (plan v{event.version_before} -> "
                         f"v{event.version_after}); {event.reason}; predicted "
                         f"{event.predicted_before:.0f} -> "
                         f"{event.predicted_after:.0f} "
                         f"cycles/run (static {event.predicted_static:.0f}); {measured}")
        return "\n".join(lines)

    def opened_devices(self) -> tuple[list[str], list[str]]:
        """The compiled accelerator partitions whose devices are open (a plan deployed ran them), and those
        whose are not (compiled only to be priced): ``name@device`` each."""
        opened, closed = [], []
        for part in self.manager.built_partitions():
            if part.kind != "accelerator":
                continue
            label = part.name + (f"@{part.device}" if getattr(part, "device", None) else "")
            (opened if part.session.device.opened else closed).append(label)
        return opened, closed

    def _devices_text(self) -> str:
        opened, closed = self.opened_devices()
        return (f"devices (opened when a plan that runs their partition is deployed): {len(opened)} open"
                + (f" ({', '.join(opened)})" if opened else "")
                + f", {len(closed)} never opened" + (f" ({', '.join(closed)})" if closed else ""))

    def _monitors_text(self, plan: Plan) -> str:
        """The plan's monitoring points (graph IR) and how each is measured."""
        via_text = {"host": "on the host every run", "chip": "chip counters", "sample": "host sample"}
        rows = [f"{node.attrs['label']} ({'/'.join(node.attrs['stats'])}, control node): {via_text['host']}"
                for node in self.control_monitors if set(node.attrs["stats"]) <= set(CONTROL_STATS)]
        for part in plan.partitions.values():
            inside = [f"{node.attrs['label']} in {part.name}: {via_text[node.attrs['via']]}"
                      for node in monitors(self._monitor_graphs[part.name])
                      if node.attrs["label"] in self._monitor_names]
            rows += inside
        boundary = len(self._monitored(plan))
        return (f"monitoring points (graph IR): {boundary} boundary tensor(s) on the host every run"
                + "".join(f"; {row}" for row in rows))

    def close(self) -> None:
        if self.analyzer is not None:
            self.analyzer.close()
        self.manager.close()

    def __enter__(self) -> DataflowSession:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
