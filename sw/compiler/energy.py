"""Energy of a kernel run, from its counters and a stated per-event energy table.

The events the table prices (MACs, scratchpad and accumulator row accesses, external bus beats)
are exact counters: the program alone decides them, so :func:`kernel_energy_estimate` knows a
kernel's energy before it runs (from the reference model's event counts,
:attr:`~braze.sw.compiler.kernels.Kernel.events`), and cost models price candidates in energy as well as
cycles.  After a run, :func:`kernel_energy_pj` of its counter snapshot gives the same number.

The table is for a 45 nm process, from M. Horowitz, "Computing's energy problem (and what we can
do about it)", ISSCC 2014, Figure 1.1.9 (the per-operation energies Eyeriss and Accelergy-style
estimators start from):

=====================================  ==========================  ==========================
event                                  Horowitz 2014 (45 nm)       per Braze event
=====================================  ==========================  ==========================
8-bit multiply + 32-bit add (a MAC)    0.2 pJ + 0.1 pJ             0.3 pJ per MAC
SRAM read/write, 8 KiB array, 64 bit   10 pJ                       1.25 pJ per byte of a row
DRAM access, 64 bit                    1.3-2.6 nJ (1.95 midpoint)  244 pJ per byte on the bus
=====================================  ==========================  ==========================

A scratchpad row is ``cols`` bytes, an accumulator row ``4 * cols``; external memory is charged
for every byte of every AXI beat (whole bus words, as the counters count them).  This is dynamic
energy only: clock tree and leakage are not in the table and not estimated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from braze.isa import Config

from .kernels import Kernel

__all__ = ["EnergyTable", "HOROWITZ_45NM", "kernel_energy_pj", "kernel_energy_estimate"]


@dataclasses.dataclass(frozen=True)
class EnergyTable:
    """Energy per event, in picojoules."""

    name: str
    mac_pj: float
    sram_byte_pj: float
    dram_byte_pj: float


#: The table of the module documentation.
HOROWITZ_45NM = EnergyTable("horowitz-isscc2014-45nm", mac_pj=0.3, sram_byte_pj=10.0 / 8,
                            dram_byte_pj=1950.0 / 8)


def kernel_energy_pj(counters: Mapping[str, float], config: Config,
                     table: EnergyTable = HOROWITZ_45NM) -> dict[str, float]:
    """Energy of a run by component (``mac``, ``scratchpad``, ``accumulator``, ``external``) and ``total``."""
    spad = (counters.get("spad_reads", 0) + counters.get("spad_writes", 0)) * config.cols
    acc = (counters.get("acc_reads", 0) + counters.get("acc_writes", 0)) * 4 * config.cols
    external = (counters.get("axi_read_beats", 0) + counters.get("axi_write_beats", 0)) * config.dma_bus_bytes
    parts = {"mac": counters.get("macs", 0) * table.mac_pj, "scratchpad": spad * table.sram_byte_pj,
             "accumulator": acc * table.sram_byte_pj, "external": external * table.dram_byte_pj}
    parts["total"] = sum(parts.values())
    return parts


def kernel_energy_estimate(kernel: Kernel, table: EnergyTable = HOROWITZ_45NM) -> float:
    """The energy (pJ) a run of ``kernel`` will take: its program's events priced by ``table``.

    Counted as the kernel's counter snapshot counts them: up to its closing COUNTERS instruction.
    """
    return kernel_energy_pj(kernel.events, kernel.config, table)["total"]
