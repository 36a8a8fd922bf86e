"""The dataflow analyzer: statistics of the data flowing through a model, gathered beside inference.

A run hands the analyzer one :class:`Observation` (:meth:`DataflowAnalyzer.submit`: an append to a
deque, a few microseconds) holding references to the host-side tensors at the monitoring points (partition
boundaries: these are on the host anyway), the control outcomes (branch taken, tokens per
expert), the bytes each partition moved and the cycles the accelerator's counters report.  A
background thread folds observations into exponentially decayed statistics (half-life in runs)
and calls back, every few runs, so that the session can re-plan.

Per tensor: sparsity (fraction of exact zeros), zero-block fraction (blocks of
:data:`ZERO_BLOCK` consecutive elements that are all zero), value range (decayed per-run minimum
and maximum, and the extremes ever seen), and, for tensors with int8 parameters, the saturation
rate (fraction of elements at the int8 extremes, zero excluded).  A value outside a tensor's
calibrated range (checked on every run, sampled or not) becomes a :class:`ValueRangeWarning`
naming the tensor (int8 saturates: the answer is that of the clamped value, so it is never silent).

Skipping GEMMs' inputs (:mod:`~braze.sw.runtime.dataflow_skip`): the fraction of the kernel's
tested K-blocks that are all zero, folded per tensor from what the chip counts (an observation's
``block_zeros``: the skipping kernel's ``macs`` counter, every run it ran) or, where the plain kernel
ran, from a host sample (``sample_block_zeros``: the int8 input evaluated on the host, called on
the analyzer's thread for sampled runs only, inside the budget).

The cost of the analysis is accounted for: :attr:`DataflowAnalyzer.busy_seconds` (the thread's
CPU time folding) and :attr:`DataflowAnalyzer.submit_seconds` (the inference thread's wall time
handing over: a thread CPU clock is a system call of a microsecond or more, a wall clock tens of
nanoseconds; the handover holds the GIL, so a fold rarely lands inside it to be counted twice).

What a run hands over is references (the host tensors at the monitoring points, its control outcomes,
bytes and cycles: dicts the run builds anyway); every statistic is computed on the thread, the rates of
a batch of runs as columns (:func:`_columns`) rather than value by value.

The thread is not woken per run: it polls the deque every :data:`POLL_SECONDS`.  Waking it from the
inference thread (a queue put) cost that thread milliseconds per wake-up (the woken thread takes the
GIL and folds while the run waits for it: the fold counted twice, once as the thread's CPU time and
once as the handover's wall time); polled, a handover is an append, and the fold's time is its own.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np

__all__ = ["DataflowAnalyzer", "Observation", "TensorStats", "Decayed", "ValueRangeWarning", "ZERO_BLOCK"]

#: Elements per block of the zero-block fraction (the accelerator's int8 vector width of the default preset).
ZERO_BLOCK = 16
#: Elements numpy reduces without letting go of the GIL (NPY_BEGIN_THREADS_THRESHOLDED: more than 500).
GIL_HELD_ELEMENTS = 500
#: How often the analyzer's thread looks for new observations (it is never woken by a run).
POLL_SECONDS = 0.02


class ValueRangeWarning(UserWarning):
    """A tensor's values left the range its int8 parameters were calibrated for (they saturate)."""


class Decayed:
    """An exponentially decayed mean: each new sample weighs ``2 ** (1 / half_life)`` times the previous."""

    def __init__(self, half_life: float):
        self.keep = 0.5 ** (1.0 / half_life)
        self.total = 0.0
        self.weight = 0.0
        self.samples = 0

    def add(self, value: float, runs: int = 1) -> None:
        """Fold a sample in, ``runs`` runs after the previous one (older samples decay by that many)."""
        keep = self.keep ** runs
        self.total = self.total * keep + value
        self.weight = self.weight * keep + 1.0
        self.samples += 1

    def extend(self, values: list[float]) -> None:
        """Fold samples in, one run apart (what ``add`` does for each, in one call)."""
        keep, total, weight = self.keep, self.total, self.weight
        for value in values:
            total = total * keep + value
            weight = weight * keep + 1.0
        self.total, self.weight = total, weight
        self.samples += len(values)

    @property
    def value(self) -> float:
        return self.total / self.weight if self.weight else math.nan


@dataclasses.dataclass(slots=True)
class Observation:
    """What one run reports: host tensors at monitoring points and what the control flow did."""

    run: int
    plan_version: int
    tensors: Mapping[str, np.ndarray]
    branches: Mapping[str, bool] = dataclasses.field(default_factory=dict)     # branch -> taken
    tokens: Mapping[str, int] = dataclasses.field(default_factory=dict)        # expert -> rows routed
    rows: int = 0
    transfer_bytes: Mapping[str, int] = dataclasses.field(default_factory=dict)
    cycles: Mapping[str, int] = dataclasses.field(default_factory=dict)
    cost_cycles: float = 0.0                          # kernel cycles plus the host link's cost
    seconds: float = 0.0                              # the run's wall time (the analyzer's budget base)
    sampled: bool = True                              # full tensor statistics (else ranges only)
    #: Skipping GEMMs' inputs: fraction of tested K-blocks all zero, from the chip's counters.
    block_zeros: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: The same measured on the host (an evaluation of the int8 graph): called on sampled runs only.
    sample_block_zeros: Callable[[], Mapping[str, float]] | None = None
    #: Float values of tensors inside accelerator partitions and their int8 parameters (a host
    #: evaluation of the float regions, :class:`~.dataflow_shadow.FloatShadow`): sampled runs only.
    sample_ranges: Callable[[], Mapping[str, tuple[np.ndarray, tuple[float, int]]]] | None = None
    #: Monitoring points inside device programs (graph IR): their values from a host evaluation of the
    #: quantized graph (the chip's integers, dequantized) and int8 parameters; sampled runs only.
    sample_monitors: Callable[[], Mapping[str, tuple[np.ndarray, tuple[float, int] | None]]] | None = None


class TensorStats:
    """Decayed statistics of one tensor; ``quant`` = (scale, zero point) where it has int8 parameters."""

    def __init__(self, name: str, half_life: float, quant: tuple[float, int] | None, *,
                 dequantized: bool = False):
        self.name = name
        self.quant = quant
        # Dequantized from int8 with these very parameters: its values cannot leave the calibrated range.
        self.dequantized = dequantized
        self.sparsity = Decayed(half_life)
        self.zero_blocks = Decayed(half_life)
        self.low = Decayed(half_life)
        self.high = Decayed(half_life)
        self.saturation = Decayed(half_life)
        self.seen_low = math.inf
        self.seen_high = -math.inf

    @property
    def calibrated_range(self) -> tuple[float, float] | None:
        if self.quant is None:
            return None
        scale, zero = self.quant
        return (-128 - zero) * scale, (127 - zero) * scale

    def add(self, value: np.ndarray, *, sampled: bool = True) -> str | None:
        """Fold one value in; returns a warning's text when it leaves the calibrated range.

        Not ``sampled``: only the range (two reductions) of a tensor with int8 parameters, which is
        checked on every run; a tensor without them (a float or bool tensor the host computes), or
        one an accelerator partition dequantized from int8 (in range by construction), has nothing to
        check, and its statistics are those of the sampled runs."""
        if not sampled and (self.quant is None or self.dequantized):
            return None
        flat = np.asarray(value, np.float32).ravel()
        low, high = float(flat.min()), float(flat.max())
        self.seen_low, self.seen_high = min(self.seen_low, low), max(self.seen_high, high)
        # Counts (np.count_nonzero) rather than means of booleans: a sampled run folds dozens of small
        # tensors, and np.mean's Python-level dispatch cost more than the reductions themselves.
        if sampled:
            zeros = flat == 0
            count = np.count_nonzero(zeros)
            self.sparsity.add(count / flat.size)
            blocks = flat.size // ZERO_BLOCK
            if blocks:                              # fewer zeros than a block: no block is all zero
                all_zero = (np.count_nonzero(zeros[:blocks * ZERO_BLOCK].reshape(blocks, ZERO_BLOCK).all(1))
                            if count >= ZERO_BLOCK else 0)
                self.zero_blocks.add(all_zero / blocks)
            self.low.add(low)
            self.high.add(high)
        if self.quant is None:
            return None
        scale, zero = self.quant
        if sampled:
            if low / scale + zero > -127 and high / scale + zero < 126:
                saturated = 0                       # no value rounds to an int8 extreme
            else:
                codes = np.rint(flat / scale) + zero
                # At an int8 extreme, and not merely zero (a ReLU output's zero is its range's low end).
                saturated = np.count_nonzero(((codes <= -128) | (codes >= 127)) & (codes != zero))
            self.saturation.add(saturated / flat.size)
        return self._range_warning(low, high)

    def add_ranges(self, values: list[np.ndarray]) -> str | None:
        """The range check of runs not sampled, for several runs' values at once; a warning's text as ``add``
        gives it.

        One reduction per value, not one over the values stacked: numpy lets go of the GIL in a reduction
        of more than a few hundred elements, and every time the analyzer's thread lets go of it the
        inference thread takes it, then has to hand it back (a forced switch, two context switches) --
        measured, a fold of unsampled runs took 4x its CPU time in wall time that way, and the runs paid
        for the switches.  Values larger than that release the GIL one by one too: those are stacked,
        two releases per batch rather than two per run."""
        if self.quant is None or self.dequantized:
            return None
        if all(value.size <= GIL_HELD_ELEMENTS for value in values):
            low = min(float(value.min()) for value in values)
            high = max(float(value.max()) for value in values)
        elif all(value.shape == values[0].shape for value in values):
            stacked = np.stack(values)
            low, high = float(stacked.min()), float(stacked.max())
        else:                                        # shapes changed within the batch (re-specialised)
            low, high = min(float(np.min(v)) for v in values), max(float(np.max(v)) for v in values)
        self.seen_low, self.seen_high = min(self.seen_low, low), max(self.seen_high, high)
        return self._range_warning(low, high)

    def _range_warning(self, low: float, high: float) -> str | None:
        scale, _ = self.quant
        lo, hi = self.calibrated_range
        # Half a step of tolerance: values the quantizer rounds into range are in range.
        if low < lo - scale / 2 or high > hi + scale / 2:
            return (f"tensor {self.name!r}: values reached [{low:.4g}, {high:.4g}], outside its calibrated "
                    f"int8 range [{lo:.4g}, {hi:.4g}]; they saturate to the range's ends (recalibrate the "
                    f"session with inputs like these)")
        return None

    def row(self) -> dict:
        return {"tensor": self.name, "sparsity": self.sparsity.value, "zero_blocks": self.zero_blocks.value,
                "low": self.low.value, "high": self.high.value, "seen_low": self.seen_low,
                "seen_high": self.seen_high,
                "saturation": self.saturation.value if self.quant is not None else math.nan}


def _columns(dicts: list[Mapping[str, float]]) -> dict[str, tuple[list[float], list[int]]]:
    """The values of one statistic over a batch of runs, per name: (values in run order, their runs'
    indices in the batch).  Runs that report the same names in the same order (the usual case: the same
    plan, the same path) are transposed at once by ``zip``; others value by value."""
    first = tuple(dicts[0]) if dicts else ()
    if all(tuple(d) == first for d in dicts):
        every = list(range(len(dicts)))
        return {name: (list(values), every)
                for name, values in zip(first, zip(*(d.values() for d in dicts), strict=True), strict=True)}
    columns: dict[str, tuple[list[float], list[int]]] = {}
    for index, d in enumerate(dicts):
        for name, value in d.items():
            column = columns.get(name)
            if column is None:
                column = columns[name] = ([], [])
            column[0].append(value)
            column[1].append(index)
    return columns


class DataflowAnalyzer:
    """Aggregates :class:`Observation` s in a background thread (see the module documentation).

    Parameters
    ----------
    half_life : float
        Runs after which an observation weighs half as much as a new one.
    quant : mapping of tensor name to (scale, zero point)
        The int8 parameters of monitored tensors (saturation rate and calibrated range).
    on_update : callable(analyzer), optional
        Called from the analyzer's thread every ``every`` observations (the session re-plans there).
    background : bool
        False: fold on :meth:`submit`'s caller (tests; deterministic).
    budget : float
        The share of inference wall time the analysis may cost: a run's tensors are sampled only when the
        analysis so far and the samples still in flight (at the mean cost of a sampled fold) fit in
        ``budget`` times the runs' wall time so far; otherwise only their ranges are checked
        (control outcomes, bytes and cycles are always folded).  ``math.inf``: every run is sampled.
    """

    def __init__(self, *, half_life: float = 16.0, quant: Mapping[str, tuple[float, int]] | None = None,
                 dequantized: frozenset[str] = frozenset(),
                 on_update: Callable[[DataflowAnalyzer], None] | None = None, every: int = 4,
                 background: bool = True, budget: float = 0.02):
        self.half_life = half_life
        self.budget = budget
        self.inference_seconds = 0.0
        self.sampled = 0
        self._sampled_submitted = 0
        self._sampled_seconds = 0.0                          # folding time of the sampled observations
        self.quant = dict(quant or {})
        self.dequantized = frozenset(dequantized)
        self.on_update = on_update
        self.every = every
        self.tensors: dict[str, TensorStats] = {}
        self.branches: dict[str, Decayed] = {}
        self.token_share: dict[str, Decayed] = {}
        self.active: dict[str, Decayed] = {}                 # expert -> rate of runs where it had tokens
        self.transfer_bytes: dict[str, Decayed] = {}
        self.cycles: dict[str, Decayed] = {}
        self.block_zeros: dict[str, Decayed] = {}           # tensor -> fraction of tested K-blocks all zero
        self.block_zero_sources: dict[str, dict[str, int]] = {}   # tensor -> {"chip": n, "host": n}
        self._block_zero_run: dict[str, int] = {}            # tensor -> the run of its last sample
        self.inside: dict[str, TensorStats] = {}             # tensors inside accelerator partitions
        self.cost_by_plan: dict[int, list[float]] = {}       # plan version -> [runs, total cost]
        self.observations = 0
        self.busy_seconds = 0.0
        self.submit_seconds = 0.0
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._pending: collections.deque[Observation] = collections.deque()   # appended by runs only
        self._submitted = 0
        self._folded = 0                                    # observations folded (or failed) so far
        self._wake = threading.Event()                      # set by flush() and close(), never by a run
        self._drained = threading.Condition()               # notified by the thread after each batch it folds
        self._closing = False
        self._thread = None
        self.error: BaseException | None = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="braze-dataflow-analyzer", daemon=True)
            self._thread.start()

    def admit(self, seconds: float) -> bool:
        """Count a run of ``seconds`` of inference and decide whether its tensors are sampled (the budget).

        A session asks before it builds the run's observation, so that a run not sampled hands over only
        the tensors checked on every run (:meth:`checked_every_run`) and no samplers."""
        self.inference_seconds += seconds
        sampled = self.budget == math.inf or self._fits_a_sample()
        self._sampled_submitted += sampled
        return sampled

    def count(self, seconds: float) -> None:
        """Count ``seconds`` of inference of a run admitted before it ran (``admit(0.0)``)."""
        self.inference_seconds += seconds

    def checked_every_run(self, tensor: str) -> bool:
        """Whether ``tensor``'s range is checked on runs that are not sampled (int8 parameters, and not
        dequantized from them on the way out of a partition)."""
        return tensor in self.quant and tensor not in self.dequantized

    def submit(self, observation: Observation, *, admitted: bool = False) -> None:
        """Hand over one run's observation (folded in the background); ``admitted``: the caller asked
        :meth:`admit` for this run already (its ``sampled`` is the answer)."""
        if not admitted:
            sampled = self.admit(observation.seconds)
            if sampled and not observation.sampled:          # the caller did not want it sampled
                self._sampled_submitted -= 1
            observation.sampled = sampled and observation.sampled
        self._submitted += 1
        if self._thread is None:
            self._fold(observation)
            self._folded += 1
            return
        self._pending.append(observation)           # the thread polls for it (see the module documentation)

    def _fits_a_sample(self) -> bool:
        """Whether the analysis so far and the samples in flight fit in the budget.

        The thread folds later: the sampled observations still in flight count at the mean cost of those
        folded (one in flight before any is folded), so that a busy machine cannot overrun the budget.
        The sample asked about is not counted: a statistic needs samples to move at all (the drift
        scenario's zero-block fractions come from host samples while the plain kernels run), and counting
        it too made them so rare that the sparse phase passed before the decision (measured)."""
        in_flight = self._sampled_submitted - self.sampled
        expected = (in_flight * self._sampled_seconds / self.sampled if self.sampled
                    else (math.inf if in_flight else 0.0))
        return self.cost_seconds + expected <= self.budget * self.inference_seconds

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every submitted observation is folded in (and its callbacks ran)."""
        if self._thread is not None:
            self._wake.set()
            # Woken by the thread when it has folded what it found (a sleep-and-poll loop here cost a
            # millisecond per flush, which a benchmark flushing after each block charged the analyzer).
            with self._drained:
                self._drained.wait_for(lambda: self._folded >= self._submitted, timeout)
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self._thread is not None:
            self._closing = True
            self._wake.set()
            self._thread.join(timeout=30)
            self._thread = None

    def take_warnings(self) -> list[str]:
        if not self.warnings:        # every run asks: no lock (the thread holds it while it folds a batch)
            return []
        with self._lock:
            pending, self.warnings = self.warnings, []
        return pending

    def _loop(self) -> None:
        while True:
            closing = self._closing
            batch = []
            while self._pending:
                batch.append(self._pending.popleft())
            if batch:
                try:
                    if self.error is None:
                        self._fold_many(batch)
                except BaseException as err:    # surfaced by flush(); the analyzer must not kill inference
                    self.error = err
                finally:
                    self._folded += len(batch)
            with self._drained:
                self._drained.notify_all()
            if closing:
                return
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _fold(self, obs: Observation) -> None:
        self._fold_many([obs])

    def _fold_many(self, batch: list[Observation]) -> None:
        """Fold the observations the thread found waiting: each one's tensors, then the rates of all of them
        at once (one decayed update per statistic and batch: per run, the Python calls cost more than the
        arithmetic, a few percent of a small model's run)."""
        started = time.thread_time()
        with self._lock:
            unsampled: dict[str, list[np.ndarray]] = {}        # tensor -> values of the runs not sampled
            for obs in batch:
                if obs.sampled:
                    self._fold_tensors(obs)
                else:
                    for name, value in obs.tensors.items():
                        unsampled.setdefault(name, []).append(value)
                    if obs.block_zeros:
                        self._fold_block_zeros(obs)
            for name, arrays in unsampled.items():
                self._warn(name, self._stats(name).add_ranges(arrays))
            # The rates, a column per name and statistic (transposed in C, not by a Python call per value).
            tokens = _columns([obs.tokens for obs in batch])
            if tokens:
                rows = [max(1, obs.rows) for obs in batch]
                for name, (counts, which) in tokens.items():
                    self._decayed(self.token_share, name).extend(
                        [count / rows[i] for count, i in zip(counts, which, strict=True)])
                    self._decayed(self.active, name).extend([float(count > 0) for count in counts])
            for table, field in ((self.branches, "branches"), (self.transfer_bytes, "transfer_bytes"),
                                 (self.cycles, "cycles")):
                for name, (values, _) in _columns([getattr(obs, field) for obs in batch]).items():
                    self._decayed(table, name).extend(values)
            for obs in batch:
                runs_cost = self.cost_by_plan.get(obs.plan_version)
                if runs_cost is None:
                    runs_cost = self.cost_by_plan[obs.plan_version] = [0, 0.0]
                runs_cost[0] += 1
                runs_cost[1] += obs.cost_cycles
            before = self.observations
            self.observations += len(batch)
        self.busy_seconds += time.thread_time() - started
        if self.on_update is not None and self.observations // self.every > before // self.every:
            self.on_update(self)

    def _fold_tensors(self, obs: Observation) -> None:
        """One observation's tensors: ranges on every run, statistics and host samples on sampled runs."""
        started = time.thread_time() if obs.sampled else 0.0
        if obs.sampled:
            self.sampled += 1
        for name, value in obs.tensors.items():
            self._warn(name, self._stats(name).add(value, sampled=obs.sampled))
        if obs.sampled and obs.sample_monitors is not None:
            for name, (value, quant) in obs.sample_monitors().items():
                stats = self.tensors.get(name)
                if stats is None:
                    stats = self.tensors[name] = TensorStats(name, self.half_life, quant)
                stats.add(value)
        if obs.sampled and obs.sample_ranges is not None:
            for name, (value, quant) in obs.sample_ranges().items():
                stats = self.inside.get(name)
                if stats is None:
                    stats = self.inside[name] = TensorStats(name, self.half_life, quant)
                warning = stats.add(value)
                if warning is not None and f"inside:{name}" not in self._warned:
                    self._warned.add(f"inside:{name}")
                    self.warnings.append(f"{warning} [inside an accelerator partition: seen on a sampled "
                                         f"run, its float model evaluated on the host]")
        self._fold_block_zeros(obs)
        if obs.sampled:         # the budget's estimate of a sampled fold (a clock read: microseconds)
            self._sampled_seconds += time.thread_time() - started

    def _stats(self, name: str) -> TensorStats:
        stats = self.tensors.get(name)
        if stats is None:
            stats = self.tensors[name] = TensorStats(name, self.half_life, self.quant.get(name),
                                                     dequantized=name in self.dequantized)
        return stats

    def _warn(self, name: str, warning: str | None) -> None:
        if warning is not None and name not in self._warned:
            self._warned.add(name)
            self.warnings.append(warning)

    def _fold_block_zeros(self, obs: Observation) -> None:
        """A skipping GEMM's zero-block fractions: counted by the chip, or sampled on the host."""
        measured = [("chip", obs.block_zeros)] if obs.block_zeros else []
        if obs.sampled and obs.sample_block_zeros is not None:
            measured.append(("host", obs.sample_block_zeros()))
        for source, fractions in measured:
            for name, fraction in fractions.items():
                # Decayed by the runs since the last sample (host samples are sparse): half-life in runs.
                elapsed = max(1, obs.run - self._block_zero_run.get(name, obs.run - 1))
                self._block_zero_run[name] = obs.run
                self._decayed(self.block_zeros, name).add(fraction, elapsed)
                counts = self.block_zero_sources.setdefault(name, {"chip": 0, "host": 0})
                counts[source] += 1

    def _decayed(self, table: dict[str, Decayed], name: str) -> Decayed:
        if name not in table:
            table[name] = Decayed(self.half_life)
        return table[name]

    @property
    def cost_seconds(self) -> float:
        """CPU time the analysis cost: folding (thread time) plus handing over (inference thread)."""
        return self.busy_seconds + self.submit_seconds

    @property
    def overhead(self) -> float:
        """:attr:`cost_seconds` as a share of the observed runs' wall time."""
        return self.cost_seconds / self.inference_seconds if self.inference_seconds else 0.0

    def measured_cost(self, plan_version: int) -> float | None:
        """Mean cost per run (kernel cycles plus host link) of the runs under one plan version."""
        runs, total = self.cost_by_plan.get(plan_version, (0, 0.0))
        return total / runs if runs else None

    def table(self) -> str:
        """The statistics as text (part of the session's report)."""
        lines = [f"analyzer: {self.observations} run(s) observed ({self.sampled} with tensor samples, budget "
                 f"{100 * self.budget:g}% of inference time), half-life {self.half_life:g} runs; cost "
                 f"{1e3 * self.cost_seconds:.1f} ms = {100 * self.overhead:.2f}% of "
                 f"{1e3 * self.inference_seconds:.0f} ms of inference"]
        header = f"  {'tensor':<16} {'sparsity':>8} {'0-blocks':>8} {'range (decayed)':>22} {'int8 sat':>8}"
        lines.append(header)
        for stats in self.tensors.values():
            row = stats.row()
            sat = "-" if math.isnan(row["saturation"]) else f"{100 * row['saturation']:.1f}%"
            blocks = "-" if math.isnan(row["zero_blocks"]) else f"{100 * row['zero_blocks']:.1f}%"
            span = f"[{row['low']:.3g}, {row['high']:.3g}]"
            sparsity = f"{100 * row['sparsity']:.1f}%"
            lines.append(f"  {row['tensor']:<16} {sparsity:>8} {blocks:>8} {span:>22} {sat:>8}")
        if self.inside:
            lines.append(f"  range checks inside accelerator partitions (sampled runs): "
                         f"{', '.join(sorted(self.inside))}")
        for name, fraction in self.block_zeros.items():
            sources = self.block_zero_sources[name]
            lines.append(f"  {name} (a skipping GEMM's input): {100 * fraction.value:.1f}% of tested "
                         f"K-blocks all zero (decayed; {sources['chip']} run(s) counted on chip, "
                         f"{sources['host']} sampled on the host)")
        for name, rate in self.branches.items():
            lines.append(f"  branch {name}: taken {100 * rate.value:.1f}% of runs (decayed)")
        for name, share in self.token_share.items():
            lines.append(f"  {name}: {100 * share.value:.1f}% of rows, has rows in "
                         f"{100 * self.active[name].value:.1f}% of runs (decayed)")
        for name, count in self.transfer_bytes.items():
            cycles = self.cycles.get(name)
            counted = f", {cycles.value:.0f} kernel cycles (counters)" if cycles is not None else ""
            lines.append(f"  partition {name}: {count.value:.0f} B host<->device{counted} per run (decayed)")
        return "\n".join(lines)
