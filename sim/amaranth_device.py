"""The accelerator in Amaranth's simulator, as a :class:`~braze.sim.device.Device`.

One :class:`amaranth.sim.Simulator` lives as long as the device, so on-chip
state persists across runs as it does on the chip.  External memory is the
Python AXI4 model of :mod:`braze.sim.axi_memory`; the host side is an
AXI4-Lite driver.  The simulator is stepped only while a run is pending.
Amaranth's simulator runs a few thousand cycles per second: this back end is
for small configurations and for debugging with full visibility; use the
Verilator device for anything long.
"""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from braze.hw.csr import (
    CTRL_SOFT_RESET,
    CTRL_START_RUN,
    REGISTER_BY_NAME,
    STATUS_DONE,
    STATUS_ERROR,
    counter_offsets,
)
from braze.hw.top import Accelerator
from braze.isa import COUNTERS, Config, ErrorCause
from braze.isa.encoding import SCALAR_REGS

from .axi_memory import AXI4LiteDriver, AXI4Memory
from .device import Device, RunStatus, ScalarShadow

#: Cycle budget of a run when the caller gives none (beyond its cycle limit, if it has one: the
#: instructions in flight when the watchdog stops a run complete first); a program that does not
#: halt is stopped.
DEFAULT_MAX_CYCLES = 2_000_000


class AmaranthDevice(Device):
    """The generated accelerator simulated by Amaranth.

    Parameters
    ----------
    config : Config
        The accelerator build to simulate.
    stall : float
        Probability that the external-memory model stalls a ready/valid
        handshake in a cycle (exercises back-pressure; 0 for speed).
    seed : int
        Seed of the memory model's stalls.
    """

    kind = "amaranth"

    def __init__(self, config: Config, *, stall: float = 0.0, seed: int = 0):
        super().__init__(config)
        #: The memory's backpressure, as :attr:`VerilatorDevice.stall`.
        self.stall = stall
        self._dut = Accelerator(config)
        self._sim = Simulator(self._dut)
        self._sim.add_clock(1e-8)
        self._memory = AXI4Memory(self._dut.m_axi, size=config.dram_bytes, read_latency=config.mem_latency,
                                  stall=stall, seed=seed, max_outstanding=32)
        self._memory.add_to(self._sim)
        self._request: tuple[int, int] | None = None
        # Written over AXI4-Lite before the next run; read back after each run.
        self._scalars = ScalarShadow(SCALAR_REGS)
        self._status: RunStatus | None = None
        self._sim.add_testbench(self._serve)

    # External memory lives in the Python model: reads and writes need no simulated time.
    def write(self, addr: int, data: bytes | np.ndarray) -> None:
        payload = np.frombuffer(data.astype(data.dtype.newbyteorder("<")).tobytes()
                                if isinstance(data, np.ndarray) else bytes(data), dtype=np.uint8)
        self._check_span(addr, len(payload))
        self._memory.mem[addr:addr + len(payload)] = payload

    def read(self, addr: int, nbytes: int) -> bytes:
        self._check_span(addr, nbytes)
        return self._memory.mem[addr:addr + nbytes].tobytes()

    def _write_scalar(self, register: int, bits: int) -> None:
        self._scalars.write(register, bits)

    def read_scalar(self, register: int) -> int:
        return self._scalars.read(register)

    def _execute(self, base: int, max_cycles: int | None, cycle_limit: int) -> RunStatus:
        budget = cycle_limit + DEFAULT_MAX_CYCLES if max_cycles is None else max_cycles
        self._request = (base, budget, cycle_limit)
        self._status = None
        while self._status is None:
            self._sim.advance()
        return self._status

    async def _serve(self, ctx) -> None:
        regs = AXI4LiteDriver(ctx, self._dut.s_axil)
        while True:
            if self._request is None:
                await ctx.tick()
                continue
            base, budget, cycle_limit = self._request
            self._request = None
            for register, bits in self._scalars.take_writes():
                await regs.write(REGISTER_BY_NAME[f"SCALAR_R{register}"].offset, bits)
            await regs.write(REGISTER_BY_NAME["PROG_BASE_LO"].offset, base & 0xFFFF_FFFF)
            await regs.write(REGISTER_BY_NAME["PROG_BASE_HI"].offset, base >> 32)
            await regs.write(REGISTER_BY_NAME["CYCLE_LIMIT"].offset, cycle_limit)
            await regs.write(REGISTER_BY_NAME["CTRL"].offset, CTRL_START_RUN)
            cycles = 0
            while not ctx.get(self._dut.irq) and cycles < budget:
                await ctx.tick()
                cycles += 1
            timed_out = not ctx.get(self._dut.irq)
            if timed_out:
                # Leave the machine usable for the next run.
                await regs.write(REGISTER_BY_NAME["CTRL"].offset, CTRL_SOFT_RESET)
            cause = ErrorCause(await regs.read(REGISTER_BY_NAME["ERROR_CAUSE"].offset))
            error_pc = await regs.read(REGISTER_BY_NAME["ERROR_PC"].offset)
            if cause is ErrorCause.WATCHDOG:
                # The run's length is what the watchdog counted, not the cycles its in-flight
                # instructions took to complete afterwards.
                cycles = await regs.read(REGISTER_BY_NAME["RUN_CYCLES"].offset)
            counters = {}
            for index, spec in enumerate(COUNTERS):
                low_offset, high_offset = counter_offsets(index)
                low = await regs.read(low_offset)
                counters[spec.name] = low | await regs.read(high_offset) << 32
            for register in range(1, SCALAR_REGS):
                bits = await regs.read(REGISTER_BY_NAME[f"SCALAR_R{register}"].offset)
                self._scalars.read_back(register, bits)
            await regs.write(REGISTER_BY_NAME["STATUS"].offset, STATUS_DONE | STATUS_ERROR)
            failed = cause is not ErrorCause.NONE
            # Whole-run cycles: the `cycles` counter restarts at every COUNTERS with reset.
            self._status = RunStatus(cause, error_pc if failed else None, cycles, counters,
                                     timed_out=timed_out,
                                     detail=f"no interrupt within {budget} cycles" if timed_out else "")
