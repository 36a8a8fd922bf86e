"""``braze.InferenceSession``: an ONNX model compiled for and run on a Braze device, in onnxruntime's manner.

::

    sess = braze.InferenceSession("model.onnx", device="golden", config="default",
                                  calibration=x_calib)
    (y,) = sess.run(None, {"x": x})
    print(sess.report())

What happens
------------
* The model is imported (:func:`~braze.sw.compiler.frontend.load_onnx`) and simplified.
* With ``calibration`` (an array for a one-input model, a dict, or a list of
  dicts), float MatMul/Gemm/Conv are quantized to int8
  (:func:`~braze.sw.quantize.quantize`).  Without it, quantized operators the
  model already has (QDQ groups, QLinear*, *Integer) become Braze ops
  (:func:`~braze.sw.compiler.quantize.lower_qdq`) and float operators run on the CPU.
  :attr:`graph_before` is this quantized graph.
* Fusion (:func:`~braze.sw.compiler.fusion.fuse`, or the per-operator baseline with
  ``fuse=False``) and the cost model's tiling choices (:func:`~braze.sw.compiler.tiling.choose_tilings`,
  :attr:`tiling_decisions`) give :attr:`graph_after`; lowering
  (:func:`~braze.sw.lower.lower`) gives the kernels (:attr:`kernels`) and the
  plan that :class:`~braze.sw.runtime.runtime.Runtime` runs.
* Inputs with symbolic dimensions (a batch axis, say) compile per concrete
  input shape, at the first run with that shape; looking at :attr:`kernels`
  or :attr:`graph_after` before any run compiles for size 1 in every
  symbolic dimension.

Outputs equal :func:`~braze.sw.compiler.frontend.evaluate` of :attr:`graph_before`
bit-exactly: the accelerator computes the IR's integer semantics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from braze.isa import Config
from braze.isa.errors import BrazeError

from ..compiler.cache import KernelCache, default_cache
from ..compiler.cost import CostModel, TimingCostModel, check_objective
from ..compiler.frontend import EvaluationError, evaluate, load_onnx
from ..compiler.fusion import (
    BYTES_TIE_BREAK,
    DEFAULT_THRESHOLD,
    OPPORTUNITY_KINDS,
    FusionDecision,
    fuse,
    split_activations,
)
from ..compiler.ir import Graph, TensorInfo
from ..compiler.layouts import LayoutDecision, choose_conv_layouts
from ..compiler.lower import CompiledModel, lower
from ..compiler.passes import simplify
from ..compiler.profile import TensorProfile, profile_graph
from ..compiler.quantize import lower_qdq, quantizable_operators, quantize
from ..compiler.tiling import TilingDecision, choose_tilings, specialise_tilings
from ..compiler.validate import validate
from .runtime import RunReport, Runtime

__all__ = ["InferenceSession", "NodeArg", "InputError", "UncalibratedModelWarning", "NONFINITE_POLICIES"]

#: What :meth:`InferenceSession.run` does with NaN and infinite input values (``nonfinite=``).
NONFINITE_POLICIES = ("error", "clamp", "pass")


class InputError(BrazeError, ValueError):
    """A run's inputs do not match the model: names the input, what was expected and what was given."""


class UncalibratedModelWarning(UserWarning):
    """A float model was compiled without calibration data, so its float operators run on the CPU."""


def _nonfinite_summary(value: np.ndarray) -> str | None:
    """``"2 NaN, 1 inf (first at index (0, 3))"`` for a float array with non-finite values, else None."""
    if value.dtype.kind not in "fc":
        return None
    bad = ~np.isfinite(value)
    if not bad.any():
        return None
    nans = int(np.count_nonzero(np.isnan(value)))
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"{nans} NaN, {int(np.count_nonzero(bad)) - nans} infinite (first at index {first})"


@dataclasses.dataclass(frozen=True)
class NodeArg:
    """An input or output of the model, as onnxruntime's ``NodeArg``: name, shape (ints or names), type."""

    name: str
    shape: list
    type: str


_ORT_TYPES = {"float32": "tensor(float)", "float64": "tensor(double)", "int8": "tensor(int8)",
              "uint8": "tensor(uint8)", "int32": "tensor(int32)", "int64": "tensor(int64)",
              "bool": "tensor(bool)", "float16": "tensor(float16)"}


def _calibration_sets(graph: Graph, calibration: Any) -> list[dict[str, np.ndarray]]:
    if isinstance(calibration, Mapping):
        return [dict(calibration)]
    if isinstance(calibration, np.ndarray):
        if len(graph.inputs) != 1:
            raise BrazeError(f"calibration as one array needs a one-input model; this one has inputs "
                             f"{list(graph.inputs)} (pass a dict)")
        return [{graph.inputs[0]: calibration}]
    if isinstance(calibration, Iterable) and not isinstance(calibration, str | bytes):
        sets = list(calibration)
        if not sets or not all(isinstance(s, Mapping) for s in sets):
            raise BrazeError("calibration must be an array, a dict of arrays or a list of dicts of arrays")
        return [dict(s) for s in sets]
    raise BrazeError(f"calibration must be an array, a dict or a list of dicts, "
                     f"not {type(calibration).__name__}")


def _warn_uncalibrated(graph: Graph) -> None:
    """Without calibration data, say which float operators the accelerator could run but will not."""
    names = [f"{node.name} ({node.op_type})" for node in quantizable_operators(graph)]
    if names:
        shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
        warnings.warn(f"model {graph.name!r} is a float model and no calibration data was given, so "
                      f"{len(names)} operator(s) the accelerator runs in int8 run on the CPU instead: "
                      f"{shown} (and the float operators between them); pass calibration inputs "
                      f"(InferenceSession(calibration=...), braze run --calibrate FILE) to quantize them",
                      UncalibratedModelWarning, stacklevel=3)


def _opaque(info: TensorInfo) -> bool:
    """A graph input of no tensor type: a sequence (list of arrays) or an optional (``None`` if empty)."""
    return info.dtype is None and info.shape is None


def _shape_key(value: Any) -> Any:
    """What compilation depends on of an input: its shape (a sequence's: its tensors' shapes)."""
    if isinstance(value, list):
        return ("sequence", *(tuple(np.shape(v)) for v in value))
    return ("none",) if value is None else tuple(value.shape)


def _with_shapes(graph: Graph, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str],
                 opaque: Mapping[str, Any] | None = None, feeds: Mapping[str, Any] | None = None) -> Graph:
    """``graph`` with every tensor's shape made concrete for these input shapes (evaluated on zeros;
    sequence and optional inputs on the values in ``opaque``).  When zeros are no valid input (split
    sizes, indices read from an input), on the run's own ``feeds``."""
    if not opaque and all(info.static for info in graph.tensors.values()) and all(
            tuple(graph.tensor(name).shape) == tuple(shape) for name, shape in shapes.items()):
        return graph
    zeros = {name: (opaque[name] if opaque and name in opaque else np.zeros(shape, dtypes[name]))
             for name, shape in shapes.items()}
    try:
        values = evaluate(graph, zeros, keep=True)
    except EvaluationError:
        if feeds is None:
            raise
        values = evaluate(graph, feeds, keep=True)
    infos = dict(graph.tensors)
    for name, value in values.items():
        if isinstance(value, list) or value is None:
            continue                     # a sequence or an empty optional: no tensor shape
        value = np.asarray(value)
        old = graph.tensor(name)
        infos[name] = TensorInfo(name, tuple(int(d) for d in value.shape), old.dtype or value.dtype.name,
                                 old.quant)
    return validate(graph.replace(tensors=infos))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off meanwhile (on again after, if it was on before, the objects
    left collected once).

    Compiling allocates about a million long-lived objects (candidate kernels' instructions, their
    argument mappings, the kernel cache's entries) and almost no reference cycles, so every
    collection the allocations trigger rescans objects that are not garbage.  Measured on the
    digits CNN (batch 64, default preset, analytic cost model, ``braze bench compile``'s
    measurement): with the collector on 2.07 s cold, 0.19 s for a second batch size, 0.60 s from a
    warm cache; off, 1.33 s, 0.072 s and 0.25 s -- and the whole process collected 6,400 objects.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            # The survivors go to the oldest generation now, in one pass of the two younger ones: left
            # to the collector, they take a pass of the youngest at the next allocation and one of the
            # middle generation some allocations later -- inside the next compile's time (digits CNN,
            # learned cost model: 0.08 s of a second batch size's 0.13 s) and dearer in all.
            gc.collect(1)
            gc.enable()


def choose_cost_model(requested: CostModel | str | None, device, config: Config) -> tuple[CostModel, str]:
    """The cost model a session plans with, and why (see ``cost_model`` of :class:`InferenceSession`)."""
    if isinstance(requested, CostModel):
        return requested, "given"
    if requested is None and os.environ.get("BRAZE_COST_MODEL"):
        requested = os.environ["BRAZE_COST_MODEL"]
    if requested not in (None, "analytic", "learned"):
        raise BrazeError(f"cost_model {requested!r}: give a CostModel, 'analytic', 'learned' or None")
    if requested == "analytic":
        return TimingCostModel(), "asked for"
    from ..hpm import LearnedCostModel, MemorySystem, load_model

    model = load_model(device.kind)
    if model is None or not model.covers(config, device.kind):
        if requested == "learned":
            raise BrazeError(f"no learned performance model covers config {config.name!r} on the "
                             f"{device.kind} device: run `braze hpm calibrate` and `braze hpm train`")
        return TimingCostModel(), (f"no learned model for {config.name} on {device.kind}; "
                                   f"`braze hpm calibrate` and `braze hpm train` make one")
    memory = MemorySystem(config.mem_latency, float(getattr(device, "stall", 0.0)))
    return LearnedCostModel(model, device=device.kind, memory=memory), "auto"


def _with_layouts(tilings: list[TilingDecision], layouts: list[LayoutDecision]) -> list[TilingDecision]:
    """The tiling decisions with the layout pass's resident-input choices recorded, so that
    :func:`specialise_tilings` keeps (or drops) that layout at another input shape as the cost model
    chose it at this one."""
    chosen = {d.node: d.chosen.startswith("resident") for d in layouts if d.changed}
    return [dataclasses.replace(d, layout="resident" if chosen[d.node] else None) if d.node in chosen else d
            for d in tilings]


class InferenceSession:
    """A model compiled for a Braze device.

    Parameters
    ----------
    model : path, bytes or onnx.ModelProto
    device : str or Device
        ``"golden"`` (reference model), ``"amaranth"`` or ``"verilator"``, or an open device.
    config : str or Config
        A preset name, a :meth:`Config.parse` spec, or a Config.
    fuse : bool
        Fuse operators where the cost model predicts a gain (``False``: one kernel per operator).
    calibration : array, dict or list of dicts, optional
        Inputs to calibrate float models with (see the module documentation).
    allow_fallback : bool
        Run operators the compiler does not support on the CPU instead of refusing the model.
    threshold : float
        Minimum predicted gain for a fusion (:data:`~braze.sw.compiler.fusion.DEFAULT_THRESHOLD`).
    bytes_tie_break : float or None
        Under the ``cycles`` objective, take a fused candidate predicted no slower that moves at least
        this fraction fewer external bytes even under the threshold
        (:data:`~braze.sw.compiler.fusion.BYTES_TIE_BREAK`; None: never).
    cost_model : CostModel, "analytic", "learned" or None
        What prices fusion and tiling candidates.  None (the default): the learned hardware
        performance model (:mod:`braze.sw.hpm`) where one is trained for this device kind and
        configuration, else the ISA timing model (the environment's ``BRAZE_COST_MODEL``, if set,
        replaces None); :meth:`cost_model_description` says which, and why predictions fell back.
    record : bool or None
        Record every run's kernels and counters in the performance history, and let the monitor
        retrain the learned model when its error drifts (devices with real timing only: not
        ``golden``, whose counters are the timing model's).  The session re-plans, between runs,
        when the model it plans with was retrained.  None (the default): on, unless the environment
        sets ``BRAZE_HPM_RECORD=0``.
    cache : KernelCache, optional
        The kernel cache (default: the process-wide memory + disk cache).
    profile : bool
        Profile every host-side tensor of each run (:attr:`profiles`).
    objective : "cycles", "energy" or "edp"
        What fusion and tiling decisions minimise (:data:`~braze.sw.compiler.cost.OBJECTIVES`):
        predicted cycles (the default), predicted energy, or their product.
    nonfinite : "error", "clamp" or "pass"
        What :meth:`run` does with NaN or infinite values in float inputs: ``"error"`` (the
        default) raises :class:`InputError` naming the input and the first such element;
        ``"clamp"`` replaces NaN by 0 and +-inf by the largest finite values of the dtype, which
        quantization saturates to the int8 extremes; ``"pass"`` gives them to the model as they are,
        which is right for float operators on the host (IEEE semantics, as onnxruntime) and
        undefined for what quantization makes of them.  (Quantized arithmetic has no NaN: without a
        policy they became arbitrary, finite-looking outputs.)
    specialise : bool
        Compile every input shape after the first by reusing the first one's decisions: the same
        fusions, and per GEMM/convolution the library tiling most like the one chosen there
        (:func:`~braze.sw.compiler.tiling.specialise_tilings`), one kernel generated per node instead
        of pricing every candidate again (a second batch size compiles in a fraction of the time;
        its tilings may be a few percent slower than a fresh search finds).  ``False``: search afresh
        for every shape.
    skip_zero_blocks : bool
        Let the fusion engine offer GEMM kernels that skip all-zero K-blocks of their input on chip
        (its ``skip`` opportunities, :func:`~braze.sw.compiler.fusion.fuse`), priced at the
        zero-block fractions of the quantized graph profiled on the calibration data (needed).
        Activations are then quantized symmetrically (zero point 0: a ReLU's zeros are int8 zeros,
        which the kernels test for; the output of a ReLU keeps 7 bits instead of 8).
    resident_weights : bool
        Keep the weights on chip between runs of one compiled shape when every kernel fits the
        scratchpad side by side (:class:`~braze.sw.runtime.resident.ResidentRuntime`): from the
        second run on a run loads only its activations.  A re-plan, another shape's run or any other
        run on the device makes the next run load them again.  ``"pipelined"``: besides, the kernels
        of a warm run overlap (no COUNTERS barrier between them); its report then has one row per
        device run instead of one per kernel.
    zero_block_profiles : mapping of tensor name to TensorProfile, optional
        With ``skip_zero_blocks``: the profiles (of :attr:`graph_before`'s tensors) to price the
        ``skip`` candidates at instead of the calibration data's -- e.g. what a dataflow analyzer
        observed at run time.  An empty mapping offers no skipping kernel (activations are quantized
        symmetrically all the same: the integers of the session with skipping kernels).
    loops : bool
        Emit each kernel's repeated runs as counted loops where the timing model predicts them no
        slower and they shorten the program (the default; :func:`~braze.sw.compiler.lower.lower`):
        the units execute the same instructions, the programs' bytes and instruction fetches fall.
        ``False``: every kernel straight-line, as the library generates it.
    force_fusion : sequence of str
        Fusion opportunity kinds (:data:`~braze.sw.compiler.fusion.OPPORTUNITY_KINDS`, e.g.
        ``("conv_chain",)``) taken wherever a fused kernel can be generated, whatever the cost model
        predicts (``fuse(force=...)``): to measure a fusion the cost model does not choose.

    Warns
    -----
    UncalibratedModelWarning
        When the model has float operators and no ``calibration`` was given: they run on the CPU
        (the accelerator computes int8); the warning names them.
    """

    def __init__(self, model: str | os.PathLike | bytes | onnx.ModelProto, *, device: Any = "golden",
                 config: str | Config = "default", fuse: bool = True, calibration: Any = None,
                 allow_fallback: bool = False, threshold: float = DEFAULT_THRESHOLD,
                 bytes_tie_break: float | None = BYTES_TIE_BREAK,
                 cost_model: CostModel | str | None = None, cache: KernelCache | None = None,
                 profile: bool = False, record: bool | None = None, objective: str = "cycles",
                 nonfinite: str = "error", specialise: bool = True, skip_zero_blocks: bool = False,
                 resident_weights: bool | str = False,
                 zero_block_profiles: Mapping[str, TensorProfile] | None = None,
                 force_fusion: Sequence[str] = (), loops: bool = True):
        started = time.perf_counter()
        self.loops = loops
        self.objective = check_objective(objective)
        if nonfinite not in NONFINITE_POLICIES:
            raise BrazeError(f"nonfinite={nonfinite!r}: must be one of {', '.join(NONFINITE_POLICIES)}")
        self.nonfinite = nonfinite
        self.config = config if isinstance(config, Config) else Config.parse(config)
        self.fuse = fuse
        self.threshold = threshold
        self.bytes_tie_break = bytes_tie_break
        self.force_fusion = tuple(force_fusion)
        forceable = [kind for kind in OPPORTUNITY_KINDS if kind != "skip"]
        unknown = sorted(set(self.force_fusion) - set(forceable))
        if unknown:
            raise BrazeError(f"force_fusion={list(self.force_fusion)}: {', '.join(unknown)} cannot be forced "
                             f"(the kinds that can: {', '.join(forceable)})")
        self.cache = cache if cache is not None else default_cache()
        self.profile = profile
        self.profiles: dict[str, TensorProfile] = {}
        graph = simplify(load_onnx(model, allow_fallback=allow_fallback))
        self.graph_float = graph
        self._zero_block_profiles: dict[str, TensorProfile] = {}
        if calibration is not None:
            sets = _calibration_sets(graph, calibration)
            # A skipped block must be zero in int8: activations are quantized with zero point 0.
            graph = quantize(graph, sets, symmetric_activations=skip_zero_blocks)
            if skip_zero_blocks:
                self._zero_block_profiles = (dict(zero_block_profiles) if zero_block_profiles is not None
                                             else profile_graph(graph, sets))
        elif skip_zero_blocks:
            raise BrazeError("skip_zero_blocks=True needs calibration data: the zero-block fractions "
                             "the skipping kernels are priced at are profiled on it")
        else:
            _warn_uncalibrated(graph)
            graph = validate(simplify(lower_qdq(graph)))
        self.graph_before: Graph = graph
        self._inputs = [NodeArg(name, list(graph.tensor(name).shape or []), _ORT_TYPES.get(
            graph.tensor(name).dtype, f"tensor({graph.tensor(name).dtype})")) for name in graph.inputs]
        self._outputs = [NodeArg(name, list(graph.tensor(name).shape or []), _ORT_TYPES.get(
            graph.tensor(name).dtype, f"tensor({graph.tensor(name).dtype})")) for name in graph.outputs]
        if isinstance(device, str):
            from braze.sim.device import open_device
            device = open_device(device, self.config)
        elif device.config != self.config:
            raise BrazeError(f"device has config {device.config.name!r}, the session {self.config.name!r}")
        self.device = device
        self.cost_model, self.cost_model_reason = choose_cost_model(cost_model, device, self.config)
        self._auto_cost_model = cost_model is None
        self.monitor = None
        if record is None:
            record = os.environ.get("BRAZE_HPM_RECORD", "1") != "0"
        if record and device.kind != "golden":
            from ..hpm import HistoryStore
            from ..hpm.model import default_model_dir
            from ..hpm.monitor import Monitor

            learned = getattr(self.cost_model, "model", None)
            self.monitor = Monitor(HistoryStore(), device=device.kind, model=learned,
                                   save_to=default_model_dir(device.kind))
        self._plan_version = 0
        self.specialise = specialise
        if resident_weights not in (False, True, "pipelined"):
            raise BrazeError(f"resident_weights={resident_weights!r}: must be False, True or 'pipelined'")
        self.resident_weights = resident_weights
        # The fusion and tiling decisions of the first shape compiled, which later shapes specialise.
        self._plan: tuple[list[FusionDecision], dict[str, TilingDecision]] | None = None
        self._compiled: dict[tuple, tuple[Graph, list[FusionDecision], CompiledModel, Runtime,
                                          list[TilingDecision]]] = {}
        self._last: tuple | None = None
        self._default_shapes = {arg.name: tuple(d if isinstance(d, int) else 1 for d in arg.shape)
                                for arg in self._inputs}
        self._opaque_values: dict[str, Any] = {}
        self._feeds: dict[str, Any] | None = None        # the inputs of the run being compiled for
        if not any(not isinstance(d, int) for arg in self._inputs for d in arg.shape) \
                and not any(_opaque(graph.tensor(arg.name)) for arg in self._inputs):
            try:
                self._compile(self._default_shapes)
            except EvaluationError:
                pass                     # zeros are no valid input (split sizes, ...): the first run compiles
        # With symbolic dimensions, compilation waits for the first run's shapes (or for the first look at
        # kernels / graph_after, which compiles for size 1 in every symbolic dimension).
        self.compile_seconds = time.perf_counter() - started

    # -- compilation ----------------------------------------------------------------------------------
    def _compile(self, shapes: Mapping[str, tuple[int, ...]]) -> tuple:
        with _collector_paused():
            return self._compile_unpaused(shapes)

    def _compile_unpaused(self, shapes: Mapping[str, tuple[int, ...]]) -> tuple:
        key = tuple(sorted((name, tuple(shape)) for name, shape in shapes.items()))
        if key not in self._compiled:
            dtypes = {name: self.graph_before.tensor(name).dtype for name in shapes}
            static = _with_shapes(self.graph_before, shapes, dtypes, self._opaque_values, self._feeds)
            plan = self._plan if self.specialise else None
            if self.fuse:
                fused, decisions = fuse(static, self.config, cost_model=self.cost_model,
                                        threshold=self.threshold, bytes_tie_break=self.bytes_tie_break,
                                        cache=self.cache, objective=self.objective,
                                        replay=plan[0] if plan else (), profiles=self._zero_block_profiles,
                                        force=self.force_fusion)
            else:
                fused, decisions = split_activations(static), []
            if plan:
                fused, tilings = specialise_tilings(fused, self.config, plan[1], cost_model=self.cost_model,
                                                    cache=self.cache, objective=self.objective)
            else:
                fused, tilings = choose_tilings(fused, self.config, cost_model=self.cost_model,
                                                cache=self.cache, objective=self.objective)
                # Convolution layouts by the cost model in use (a no-op under the timing model).
                fused, layouts = choose_conv_layouts(fused, self.config, cost_model=self.cost_model,
                                                     cache=self.cache, objective=self.objective)
                tilings = _with_layouts(tilings, layouts)
                self._plan = (decisions, {d.node: d for d in tilings})
            compiled = lower(fused, self.config, cache=self.cache, loops=self.loops)
            self._compiled[key] = (fused, decisions, compiled, self._runtime_for(compiled), tilings)
        self._last = key
        return self._compiled[key]

    def _runtime_for(self, compiled: CompiledModel) -> Runtime:
        """The runtime of a compiled model: one keeping its weights on chip between runs when the
        session was asked to (:mod:`.resident`)."""
        if self.resident_weights:
            from .resident import ResidentRuntime

            return ResidentRuntime(compiled, self.device, pipelined=self.resident_weights == "pipelined")
        return Runtime(compiled, self.device)

    def compile_for(self, input_shapes: Mapping[str, Sequence[int]]) -> CompiledModel:
        """Compile (or fetch the compiled model) for concrete input shapes; ``run`` does this itself."""
        return self._compile({name: tuple(int(d) for d in shape) for name, shape in input_shapes.items()})[2]

    @property
    def _current(self) -> tuple:
        if self._last is None:
            self._compile(self._default_shapes)
        return self._compiled[self._last]

    @property
    def graph_after(self) -> Graph:
        """The graph after fusion (per-operator form with ``fuse=False``), for the last compiled shapes."""
        return self._current[0]

    @property
    def fusion_decisions(self) -> list[FusionDecision]:
        return self._current[1]

    @property
    def tiling_decisions(self) -> list[TilingDecision]:
        """The cost model's tiling choice for each GEMM/convolution (last compiled shapes)."""
        return self._current[4]

    @property
    def compiled(self) -> CompiledModel:
        return self._current[2]

    @property
    def graph_lowered(self) -> Graph:
        """The lowered graph: kernels, CPU ops and explicit TRANSFER nodes."""
        return self._current[2].graph

    @property
    def kernels(self) -> dict:
        """Every kernel (name -> :class:`~braze.sw.compiler.Kernel`, with ``.asm``), as placed in memory."""
        return self._current[2].kernels

    # -- onnxruntime's API ----------------------------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    def _check(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, Mapping):
            raise InputError(f"inputs must be a dict of input name to array, not {type(feeds).__name__}")
        expected = {arg.name: arg for arg in self._inputs}
        unknown = sorted(set(feeds) - set(expected))
        if unknown:
            raise InputError(f"unknown input(s) {unknown}; the model's inputs are {list(expected)}")
        checked = {}
        for name, arg in expected.items():
            if name not in feeds:
                raise InputError(f"missing input {name!r} (expected {arg.type} of shape {arg.shape})")
            value = feeds[name]
            opaque = _opaque(self.graph_before.tensor(name))
            if opaque and (isinstance(value, list | np.ndarray) or value is None):
                checked[name] = value       # a sequence or optional input: its operators check it
                continue
            if not isinstance(value, np.ndarray):
                raise InputError(f"input {name!r}: expected a numpy array ({arg.type}), "
                                 f"got {type(value).__name__}")
            want = self.graph_before.tensor(name).dtype
            if value.dtype.name != want:
                raise InputError(f"input {name!r}: expected dtype {want}, got {value.dtype.name}")
            shape = arg.shape
            if value.ndim != len(shape) or any(isinstance(d, int) and d != s
                                               for d, s in zip(shape, value.shape, strict=True)):
                raise InputError(f"input {name!r}: expected shape {shape}, got {list(value.shape)}")
            nonfinite = _nonfinite_summary(value)
            if nonfinite is not None:
                if self.nonfinite == "pass":
                    checked[name] = value
                    continue
                if self.nonfinite == "error":
                    raise InputError(f"input {name!r} has non-finite values: {nonfinite}; pass "
                                     f"nonfinite='clamp' to InferenceSession to replace them")
                value = np.nan_to_num(value)     # NaN -> 0, +-inf -> the dtype's finite extremes
            checked[name] = value
        return checked

    def run(self, output_names: Sequence[str] | None,
            input_feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model; returns the requested outputs (all with ``None``) in order."""
        feeds = self._check(input_feed)
        names = list(output_names) if output_names else [arg.name for arg in self._outputs]
        missing = [n for n in names if n not in {arg.name for arg in self._outputs}]
        if missing:
            raise InputError(f"unknown output(s) {missing}; the model's outputs are "
                             f"{[arg.name for arg in self._outputs]}")
        self._replan_if_retrained()
        self._opaque_values = {name: value for name, value in feeds.items()
                               if _opaque(self.graph_before.tensor(name))}
        self._feeds = feeds
        shapes = {name: _shape_key(value) for name, value in feeds.items()}
        try:
            _, _, compiled, runtime, _ = self._compile(shapes)
        finally:
            self._feeds = None
        observe = None
        if self.profile:
            rng = np.random.default_rng(0)

            def observe(tensor: str, value: np.ndarray) -> None:
                value = np.asarray(value)
                if tensor not in self.profiles:
                    self.profiles[tensor] = TensorProfile(tensor, value.shape, value.dtype.name)
                self.profiles[tensor].add(value, rng)
            for name, value in feeds.items():
                observe(name, value)
        outputs = runtime.run(feeds, observe=observe)
        # A warm run (weights resident, :mod:`.resident`) is not the kernels as compiled: no sample of them.
        if self.monitor is not None and runtime.last_report is not None \
                and not getattr(runtime, "last_run_warm", False):
            from ..hpm import MemorySystem

            rows = runtime.last_report.kernels
            memory = MemorySystem(self.config.mem_latency, float(getattr(self.device, "stall", 0.0)))
            self.monitor.observe([compiled.kernels[row.kernel] for row in rows],
                                 [row.counters for row in rows], memory)
        return [outputs[name] for name in names]

    def _replan_if_retrained(self) -> None:
        """Between runs: plan with the monitor's retrained model, compiling afresh (never mid-run)."""
        monitor = self.monitor
        if monitor is None or monitor.version == self._plan_version or monitor.model is None:
            return
        self._plan_version = monitor.version
        if not self._auto_cost_model and getattr(self.cost_model, "name", "") != "hpm-learned":
            return                      # the caller chose another cost model
        from ..hpm import LearnedCostModel, MemorySystem

        memory = MemorySystem(self.config.mem_latency, float(getattr(self.device, "stall", 0.0)))
        self.cost_model = LearnedCostModel(monitor.model, device=self.device.kind, memory=memory)
        self.cost_model_reason = f"monitor retrained the model (version {monitor.version})"
        self._compiled.clear()
        self._plan = None
        self._last = None

    def cost_model_description(self) -> str:
        """Which cost model plans this session's kernels, and why."""
        describe = getattr(self.cost_model, "describe", None)
        text = describe() if describe else f"{getattr(self.cost_model, 'name', 'isa-timing')}"
        return f"{text} ({self.cost_model_reason})"

    def report(self) -> RunReport:
        """The per-kernel counter report of the last run (printable as a table)."""
        report = self._current[3].last_report
        if report is None:
            raise BrazeError("no run yet: call run() before report()")
        return report

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
        self.device.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
