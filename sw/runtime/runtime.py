"""The runtime: executes a :class:`~braze.sw.compiler.lower.CompiledModel` on any Braze device.

Execution
---------
Steps run in plan order.  Consecutive kernel steps form a *segment*, linked
into one program (:func:`braze.sw.compiler.kernels.link`) and run with one
``device.run``: fewer round trips between host and device, and every kernel
still writes its own COUNTERS snapshot, so the report is per kernel.  CPU
steps run :func:`braze.sw.compiler.frontend.evaluate_node` on host arrays; transfer
steps write host tensors to, or read them from, the device's external memory
(converting NCHW <-> NHWC for 4-D tensors the kernels keep NHWC).  Weights,
parameters and programs are written once per device (:meth:`Runtime.load`).

Watchdog
--------
Every device run gets a cycle limit (the accelerator's ``CYCLE_LIMIT``) from the timing model's
prediction of its kernels, with a margin (:func:`watchdog_cycle_limit`), so that a program that
does not finish stops with cause ``WATCHDOG`` in bounded time on every back end.  That stop is a
:class:`KernelTimeout` naming the kernel the machine was in.

Report
------
After each :meth:`Runtime.run`, :attr:`Runtime.last_report` holds one row per
kernel from its counter snapshot (cycles, MACs, PE utilisation, DMA bytes,
stalls), the device's total cycles, and the host-side time spent outside the
device (CPU ops, transfers, layout changes).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import numpy as np

from braze.isa import INSN_BYTES, SNAPSHOT_BYTES, BrazeError, ErrorCause, parse_snapshot
from braze.isa.counters import MAX_CYCLE_LIMIT
from braze.sim.device import DeviceError

from ..compiler.frontend import evaluate_node
from ..compiler.lower import CompiledModel, CpuStep, KernelStep, PadStep, Segment, TransferStep

__all__ = ["Runtime", "KernelReport", "RunReport", "KernelTimeout", "watchdog_cycle_limit",
           "WATCHDOG_FACTOR", "WATCHDOG_CYCLES"]

#: The watchdog's margin over the predicted cycles of a run: ``WATCHDOG_FACTOR / (1 - stall)`` times
#: the prediction, plus ``WATCHDOG_CYCLES``.  The timing model is optimistic (free instruction fetch,
#: no memory stalls): on random programs of the tiny preset the RTL takes 1.3x to 1.63x the
#: prediction without backpressure, and 1.45x to 2.15x with stall 0.3 (``braze verify``'s timing
#: table over 10,000 programs); memory stalls with probability ``stall`` slow the memory-bound
#: part by up to ``1 / (1 - stall)``.  A factor of 4 keeps a correct kernel about twice away from
#: the limit; the constant covers the fixed start-up cost (first fetch, a few hundred cycles) that
#: dominates tiny kernels.
WATCHDOG_FACTOR = 4
WATCHDOG_CYCLES = 10_000


def watchdog_cycle_limit(predicted_cycles: int, stall: float = 0.0) -> int:
    """The cycle limit of a run the timing model predicts to take ``predicted_cycles``, on a device
    whose memory stalls each handshake with probability ``stall`` (see :data:`WATCHDOG_FACTOR`)."""
    if not 0.0 <= stall < 1.0:
        raise ValueError(f"stall={stall!r} must be a probability in [0, 1)")
    limit = int(WATCHDOG_FACTOR * predicted_cycles / (1.0 - stall)) + WATCHDOG_CYCLES
    return min(limit, MAX_CYCLE_LIMIT)


class KernelTimeout(BrazeError):
    """A device run did not finish within its cycle limit; ``kernel`` is the kernel it was in."""

    def __init__(self, kernel: str, ops: tuple[str, ...], device: str, cycle_limit: int, predicted: int,
                 pc: int | None, detail: str):
        self.kernel = kernel
        self.cycle_limit = cycle_limit
        self.pc = pc
        where = f" at pc 0x{pc:x}" if pc is not None else ""
        super().__init__(f"kernel {kernel!r} ({'+'.join(ops)}) did not finish on the {device} device within "
                         f"its cycle limit of {cycle_limit} cycles ({WATCHDOG_FACTOR}x the predicted "
                         f"{predicted} of its run, plus {WATCHDOG_CYCLES}): stopped{where}"
                         + (f"; {detail}" if detail else ""))


@dataclasses.dataclass(frozen=True)
class KernelReport:
    """One kernel's row of the report, from its COUNTERS snapshot."""

    kernel: str
    ops: tuple[str, ...]
    cycles: int
    predicted_cycles: int
    macs: int
    utilisation: float
    dma_read_bytes: int
    dma_write_bytes: int
    stalls: int
    counters: Mapping[str, int]


@dataclasses.dataclass
class RunReport:
    """Per-kernel rows plus totals; ``str()`` prints it as a table.

    ``device_cycles`` sums what the device reported per run (``RunStatus.cycles``): the whole run
    for the golden device; back ends that report the cycle counter count only from the last
    COUNTERS reset.  Per-kernel cycles (and their total) come from the snapshots on every device.
    """

    kernels: list[KernelReport]
    device_runs: int
    device_cycles: int
    device_seconds: float
    host_seconds: float
    cpu_ops: list[str]

    @property
    def total_cycles(self) -> int:
        return sum(row.cycles for row in self.kernels)

    @property
    def total_macs(self) -> int:
        return sum(row.macs for row in self.kernels)

    @property
    def dma_bytes(self) -> int:
        return sum(row.dma_read_bytes + row.dma_write_bytes for row in self.kernels)

    def table(self) -> str:
        header = ("kernel", "fused ops", "cycles", "MACs", "PE util", "DMA rd B", "DMA wr B", "stalls")
        rows = [(r.kernel, "+".join(r.ops), str(r.cycles), str(r.macs), f"{100 * r.utilisation:.1f}%",
                 str(r.dma_read_bytes), str(r.dma_write_bytes), str(r.stalls)) for r in self.kernels]
        total_util = sum(r.utilisation * r.cycles for r in self.kernels) / max(1, self.total_cycles)
        rows.append(("total", f"{len(self.kernels)} kernels", str(self.total_cycles), str(self.total_macs),
                     f"{100 * total_util:.1f}%", str(sum(r.dma_read_bytes for r in self.kernels)),
                     str(sum(r.dma_write_bytes for r in self.kernels)),
                     str(sum(r.stalls for r in self.kernels))))
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

        def line(cells):
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                                   strict=True)))
        out = [line(header), line(["-" * w for w in widths])]
        out += [line(row) for row in rows[:-1]] + [line(["-" * w for w in widths]), line(rows[-1])]
        out.append(f"device: {self.device_runs} run(s), {self.device_seconds * 1e3:.1f} ms of simulation; "
                   f"host overhead {self.host_seconds * 1e3:.2f} ms"
                   + (f"; CPU ops: {', '.join(self.cpu_ops)}" if self.cpu_ops else ""))
        return "\n".join(out)

    __str__ = table

    def to_dict(self) -> dict:
        return {"kernels": [dict(dataclasses.asdict(r), counters=dict(r.counters)) for r in self.kernels],
                "total_cycles": self.total_cycles, "total_macs": self.total_macs, "dma_bytes": self.dma_bytes,
                "device_runs": self.device_runs, "device_cycles": self.device_cycles,
                "device_seconds": self.device_seconds, "host_seconds": self.host_seconds,
                "cpu_ops": list(self.cpu_ops)}


def _kernel_at(segment: Segment, pc: int | None) -> KernelStep:
    """The kernel step of a segment whose instructions hold ``pc`` (the last one for its HALT, or
    when the pc is unknown)."""
    if pc is not None:
        index = (pc - segment.program.addr) // INSN_BYTES
        for kstep in segment.steps:
            if 0 <= index < len(kstep.kernel.instructions):
                return kstep
            index -= len(kstep.kernel.instructions)
    return segment.steps[-1]


def _stalls(counters: Mapping[str, int]) -> int:
    return sum(counters[name] for name in ("stall_dep", "stall_axi_read", "stall_axi_write", "stall_fetch"))


def _check_guard(cond: str, host: Mapping[str, np.ndarray], holds: bool | None) -> None:
    """The chip's decision must be the host's evaluation of the If's condition (same integers, proved
    equal for every int8 maximum when the guard was built): a difference is a broken invariant."""
    if cond in host and holds is not None and bool(np.asarray(host[cond]).reshape(-1)[0]) != holds:
        raise BrazeError(f"If on chip: the guard decided {holds} but the host evaluates condition {cond!r} "
                         f"to {not holds}; the on-chip condition is not the model's")


class Runtime:
    """Runs a compiled model on a device (which it loads on first use)."""

    def __init__(self, model: CompiledModel, device):
        if device.config != model.config:
            raise ValueError(f"device config {device.config.name!r} differs from the model's "
                             f"{model.config.name!r}")
        self.model = model
        self.device = device
        self.last_report: RunReport | None = None
        #: A guarded model (an If on chip): whether the last run's condition held (else branch skipped).
        self.last_guard_holds: bool | None = None

    @property
    def loaded(self) -> bool:
        """Whether the device's memory holds this model's weights and programs (and no other model's).

        A device that lost its memory since (a simulator replaced after it died) holds nothing.
        """
        held = getattr(self.device, "_braze_loaded_model", None)
        return held is not None and held[0] is self.model and held[1] == self.device.memory_generation

    def load(self) -> None:
        self.model.load(self.device)
        # Several compiled models (a session's input shapes, or sessions sharing a device) use the same
        # addresses: the device remembers which one its memory holds, and since when.
        self.device._braze_loaded_model = (self.model, self.device.memory_generation)

    def segment_program_addr(self, segment) -> int:
        """Where the program of a segment (:class:`~braze.sw.compiler.lower.Segment`) is in device memory
        (a subclass may run another program of the same kernels, :mod:`.resident`)."""
        return segment.program.addr

    def kernel_at(self, segment, pc: int | None) -> KernelStep:
        """The kernel step of the segment's program that holds ``pc`` (for a watchdog's report)."""
        return _kernel_at(segment, pc)

    def run(self, feeds: Mapping[str, np.ndarray], *, observe=None) -> dict[str, np.ndarray]:
        """Execute the plan on host-side ``feeds`` (already checked); returns every graph output."""
        if not self.loaded:
            self.load()               # weights and programs: once, not part of a run's host overhead
        model, device = self.model, self.device
        host: dict[str, np.ndarray] = dict(feeds)
        for node in model.graph.nodes:
            if node.value is not None:
                host[node.outputs[0]] = node.value
        for node in model.source.nodes:
            if node.value is not None:
                host[node.outputs[0]] = node.value
        rows: list[KernelReport] = []
        device_seconds = 0.0
        device_cycles = 0
        runs = 0
        cpu_ops: list[str] = []
        started = time.perf_counter()
        steps = model.steps
        index = 0
        skipped: frozenset[str] = frozenset()
        skipped_steps: frozenset[int] = frozenset()
        while index < len(steps):
            step = steps[index]
            if index in skipped_steps:            # a host step of the else branch the guard skipped
                index += 1
                continue
            if isinstance(step, KernelStep):
                segment = model.segments[step.segment]
                predicted = sum(kstep.kernel.predicted_cycles for kstep in segment.steps)
                limit = watchdog_cycle_limit(predicted, float(getattr(device, "stall", 0.0)))
                t0 = time.perf_counter()
                status = device.run(None, base=self.segment_program_addr(segment), cycle_limit=limit,
                                    check=False)
                device_seconds += time.perf_counter() - t0
                if status.cause is ErrorCause.WATCHDOG or status.timed_out:
                    kstep = self.kernel_at(segment, status.error_pc)
                    raise KernelTimeout(kstep.name, kstep.ops, device.kind, limit, predicted, status.error_pc,
                                        status.detail)
                if not status.ok:
                    raise DeviceError(device.kind, status)

                device_cycles += status.cycles
                runs += 1
                if model.guard is not None:       # an If on chip: did the guard branch over the else kernels?
                    holds = model.guard.holds(device.read_scalar(model.guard.max_register))
                    self.last_guard_holds = holds
                    skipped = model.guard.else_kernels if holds else frozenset()
                    skipped_steps = model.guard.else_steps if holds else frozenset()
                for kstep in segment.steps:
                    if kstep.name in skipped:
                        continue                  # an else kernel the guard branched over: no snapshot
                    counters = parse_snapshot(device.read(kstep.counters.addr, SNAPSHOT_BYTES))
                    config = model.config
                    rows.append(KernelReport(
                        kstep.name, kstep.ops, counters["cycles"], kstep.kernel.predicted_cycles,
                        counters["macs"],
                        counters["macs"] / (max(1, counters["cycles"]) * config.rows * config.cols),
                        counters["dma_read_bytes"], counters["dma_write_bytes"], _stalls(counters), counters))
                index += len(segment.steps)
                continue
            if isinstance(step, CpuStep):
                node = step.node
                args = [host[t] if t else None for t in node.inputs]
                results = evaluate_node(node, *args)
                for tensor, value in zip(node.outputs, results, strict=False):
                    if tensor:
                        host[tensor] = value
                        if observe is not None:
                            observe(tensor, value)
                cpu_ops.append(node.name)
            elif isinstance(step, PadStep):
                top, left, bottom, right = step.pads
                host[step.target] = np.pad(host[step.source], ((0, 0), (0, 0), (top, bottom), (left, right)),
                                           constant_values=step.value)
            elif isinstance(step, TransferStep):
                value = step.value
                if step.direction == "to_device":
                    array = np.asarray(host[value.tensor], value.dtype)
                    if value.layout == "NHWC":
                        array = array.transpose(0, 2, 3, 1)
                    device.write(value.buffer.addr, np.ascontiguousarray(array))
                else:
                    array = device.read_array(value.buffer.addr, value.device_shape, value.dtype)
                    if value.layout == "NHWC":
                        array = np.ascontiguousarray(array.transpose(0, 3, 1, 2))
                    host[value.tensor] = array.astype(value.dtype.newbyteorder("="))
                    if observe is not None:
                        observe(value.tensor, host[value.tensor])
            index += 1
        total = time.perf_counter() - started
        self.last_report = RunReport(rows, runs, device_cycles, device_seconds, total - device_seconds,
                                     cpu_ops)
        if model.guard is not None:
            _check_guard(model.guard.guard.cond, host, self.last_guard_holds)
            # The else branch's outputs do not exist when the guard skipped it.
            return {name: host[name] for name in model.source.outputs if name in host}
        return {name: host[name] for name in model.source.outputs}
