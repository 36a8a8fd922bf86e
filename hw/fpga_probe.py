"""Place and route of one block of the accelerator: an Fmax measurement in minutes, not an hour.

A full preset takes ``braze fpga`` 12 minutes (tiny) to over an hour (default) on ECP5; a block
alone -- the control core with its fetch unit, the matmul unit, the DMA engines ... -- takes one
or two.  :func:`probe` makes the block a top-level design (every port of it a top-level port, so
that :func:`braze.hw.fpga.implement`'s IO wrapper drives its inputs from flip-flops and folds its
outputs) and runs the same flow, then reads nextpnr's critical path of the clock from its log.

The block's Fmax is an upper bound of the whole design's: paths into and out of the block start
and end at the wrapper's flip-flops here, where in the accelerator they may run through other
logic first.  ``braze fpga --block NAME`` is the command-line entry.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, flipped

from braze.isa import BrazeError, Config, ErrorCause

from .fpga import FpgaResult, component_sources, implement, stderr_progress

__all__ = ["BLOCKS", "ControlProbe", "block_component", "critical_path", "path_table", "probe"]

#: The blocks :func:`probe` can place and route alone, with what each one is.
BLOCKS: dict[str, str] = {
    "control": "control core (decoders, dispatcher, unit sequencers) with its fetch unit",
    "matmul": "matmul unit (PE array and its scratchpad/accumulator sequencing)",
    "pe_array": "the bare PE array",
    "epilogue": "epilogue unit (bias, requantization, activation)",
    "vector": "vector unit",
    "predicate": "predicate unit",
    "load": "DMA load engine",
    "store": "DMA store engine",
}

#: The fetch unit's ports the probe connects inside (to the control core or its run control).
_FETCH_INTERNAL = ("fetch", "redirect", "redirect_pc", "hold", "prog_base", "start", "restart", "stop")
#: The control core's ports connected to the fetch unit.
_CONTROL_INTERNAL = ("fetch", "redirect", "redirect_pc")
#: The compute client's report as the probe has it: no error.  The accelerator ties the compute client's
#: ``error`` to 0 (no compute instruction fails once dispatched; :class:`~braze.hw.top.Accelerator`), so
#: that the paths from it into the control core's error latch do not exist there; driven by the IO
#: wrapper, they were the control probe's critical path.
_COMPUTE_REPORT = ("insn", "done")


class ControlProbe(wiring.Component):
    """The control core and its fetch unit, connected as in :class:`~braze.hw.top.Accelerator`.

    Every other port of the two is a port of the probe: the control core's under its own name,
    the fetch unit's bus ports as ``fetch_req``/``fetch_data``, and ``fetch_restart`` (the soft
    reset of the fetch unit) -- but for the compute client's ``error`` and ``cause``, which are tied
    off as in the accelerator.

    Parameters
    ----------
    config : Config
        The configuration of both.
    """

    def __init__(self, config: Config):
        from .control import Control
        from .fetch import Fetch
        from .top import BEATS_WIDTH

        if not isinstance(config, Config):
            raise TypeError(f"ControlProbe needs a braze.isa.Config, not {config!r}")
        self.config = config
        self._control = Control(config)
        self._fetch = Fetch(config, beats_width=BEATS_WIDTH)
        members = {f"fetch_{name}": member for name, member in self._fetch.signature.members.items()
                   if name not in _FETCH_INTERNAL}
        members["fetch_restart"] = In(1)
        members.update((name, member) for name, member in self._control.signature.members.items()
                       if name not in _CONTROL_INTERNAL)
        compute = self._control.signature.members["compute"].signature.members
        members["compute"] = Out(wiring.Signature({name: compute[name] for name in _COMPUTE_REPORT}))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.control = control = self._control
        m.submodules.fetch = fetch = self._fetch
        wiring.connect(m, fetch.fetch, control.fetch)
        m.d.comb += [
            fetch.redirect.eq(control.redirect),
            fetch.redirect_pc.eq(control.redirect_pc),
            fetch.start.eq(self.start & ~control.running),
            fetch.restart.eq(self.fetch_restart),
            fetch.stop.eq(control.done | control.error | ~control.running),
            fetch.prog_base.eq(self.prog_base),
        ]
        if self.config.redirect_stage:
            m.d.comb += fetch.hold.eq(control.branch_executes)
        for name in ("req", "data"):
            wiring.connect(m, flipped(getattr(self, f"fetch_{name}")), getattr(fetch, name))
        wiring.connect(m, flipped(self.compute.insn), control.compute.insn)
        m.d.comb += [control.compute.done.eq(self.compute.done), control.compute.error.eq(0),
                     control.compute.cause.eq(ErrorCause.NONE)]
        for name, member in control.signature.members.items():
            if name in _CONTROL_INTERNAL or name == "compute":
                continue
            ours, theirs = getattr(self, name), getattr(control, name)
            if not member.is_port:
                wiring.connect(m, flipped(ours), theirs)
            elif member.flow == In:
                m.d.comb += theirs.eq(ours)
            else:
                m.d.comb += ours.eq(theirs)
        return m


def block_component(name: str, config: Config) -> wiring.Component:
    """A fresh component of block ``name`` (a key of :data:`BLOCKS`) for ``config``."""
    from .dma import LoadEngine, StoreEngine
    from .epilogue import EpilogueUnit
    from .matmul import MatmulUnit
    from .pe_array import PEArray
    from .predicate import PredicateUnit
    from .top import BEATS_WIDTH
    from .vector import VectorUnit

    makers: dict[str, Callable[[], wiring.Component]] = {
        "control": lambda: ControlProbe(config),
        "matmul": lambda: MatmulUnit(config),
        "pe_array": lambda: PEArray(config.rows, config.cols),
        "epilogue": lambda: EpilogueUnit(config),
        "vector": lambda: VectorUnit(config),
        "predicate": lambda: PredicateUnit(config),
        "load": lambda: LoadEngine(config, beats_width=BEATS_WIDTH),
        "store": lambda: StoreEngine(config, beats_width=BEATS_WIDTH),
    }
    if name not in makers:
        raise BrazeError(f"no block named {name!r} to probe; blocks are {', '.join(BLOCKS)}")
    if name == "vector" and not config.vector_unit:
        raise BrazeError(f"config {config.name!r} has no vector block to probe (vector_unit=0)")
    return makers[name]()


_PATH_STEP = re.compile(r"Info:\s+(clk-to-q|logic|routing|setup)\s+([\d.]+)\s+([\d.]+)\s+Source (\S+)")


def critical_path(log: str, *, min_delay: float = 0.1) -> list[dict[str, Any]]:
    """The steps of the clock's critical path in a nextpnr log (its last report, the routed one).

    Each step is ``{"kind", "delay", "total", "cell"}`` (ns; ``kind`` is clk-to-q, logic, routing
    or setup, ``cell`` the source cell's name).  Logic steps shorter than ``min_delay`` ns -- the
    carry chains' cell-to-cell hops -- are left out.  An empty list when the log has no report.
    """
    lines = log.splitlines()
    starts = [index for index, line in enumerate(lines) if "Critical path report for clock" in line]
    if not starts:
        return []
    steps = []
    for line in lines[starts[-1] + 1:]:
        if "Critical path report" in line:
            break
        found = _PATH_STEP.match(line)
        if found is None:
            continue
        kind, delay, total, cell = found.groups()
        if kind == "logic" and float(delay) < min_delay:
            continue
        steps.append({"kind": kind, "delay": float(delay), "total": float(total), "cell": cell})
    return steps


def probe(name: str, config: Config, target_name: str, out_dir: Path, *, freq_mhz: float | None = None,
          progress: Callable[[str], None] | None = stderr_progress
          ) -> tuple[FpgaResult, list[dict[str, Any]]]:
    """Synthesize, place and route block ``name`` of ``config`` alone: the flow's result (cached as
    :func:`braze.hw.fpga.implement` caches) and the critical path of its clock."""
    component = block_component(name, config)
    top = f"probe_{name}_{config.name}"
    with tempfile.TemporaryDirectory(prefix="braze-fpga-probe-") as scratch:
        verilog_path, manifest_path, _ = component_sources(component, top, Path(scratch))
        result = implement(verilog_path, manifest_path, target_name, out_dir, freq_mhz=freq_mhz,
                           progress=progress)
    log = result.files.get("nextpnr.log")
    return result, critical_path(log.read_text()) if log is not None else []


def path_table(steps: list[dict[str, Any]], *, width: int = 100) -> str:
    """A critical path as text: one line per step, cumulative ns first."""
    return "\n".join(f"  {step['total']:6.2f} ns  {step['kind']:<8} +{step['delay']:.2f}  "
                     f"{step['cell'][:width]}" for step in steps)
