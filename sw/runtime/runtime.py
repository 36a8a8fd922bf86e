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

from braze.isa import SNAPSHOT_BYTES, parse_snapshot

from ..compiler.frontend import evaluate_node
from ..compiler.lower import CompiledModel, CpuStep, KernelStep, PadStep, TransferStep

__all__ = ["Runtime", "KernelReport", "RunReport"]


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


def _stalls(counters: Mapping[str, int]) -> int:
    return sum(counters[name] for name in ("stall_dep", "stall_axi_read", "stall_axi_write", "stall_fetch"))


class Runtime:
    """Runs a compiled model on a device (which it loads on first use)."""

    def __init__(self, model: CompiledModel, device):
        if device.config != model.config:
            raise ValueError(f"device config {device.config.name!r} differs from the model's "
                             f"{model.config.name!r}")
        self.model = model
        self.device = device
        self.last_report: RunReport | None = None

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
        while index < len(steps):
            step = steps[index]
            if isinstance(step, KernelStep):
                segment = model.segments[step.segment]
                t0 = time.perf_counter()
                status = device.run(None, base=segment.program.addr)
                device_seconds += time.perf_counter() - t0
                device_cycles += status.cycles
                runs += 1
                for kstep in segment.steps:
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
        return {name: host[name] for name in model.source.outputs}
