"""cocotb benches of the bare accelerator top at its AXI boundary.

Run by ``tests/sim/test_cocotb_accelerator.py`` (cocotb_tools.runner, Verilator).  The external
memory is cocotbext-axi's ``AxiRam`` -- with random backpressure from its pause generators
where a test asks for it -- and the registers are driven by its ``AxiLiteMaster``.
:class:`AcceleratorTB` wires the driver, the memory, the reference model (the golden device)
and the checker together.  The configuration comes from ``$BRAZE_CONFIG`` (JSON).
"""

from __future__ import annotations

import json
import os
import random
import warnings

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer

from braze.hw.csr import COUNTER_BASE, MAGIC, REGISTER_BY_NAME, constant_value
from braze.isa import COUNTERS, Config, ErrorCause, encode_program
from braze.isa.asm import assemble
from braze.sim.device import GoldenDevice

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

REG = {name: reg.offset for name, reg in REGISTER_BY_NAME.items()}
START, IRQ_DONE, IRQ_ERROR, SOFT_RESET = 1, 2, 4, 8
BUSY, DONE, ERROR = 1, 2, 4
OKAY, SLVERR = 0, 2
MEM_BYTES = 1 << 20


def _pauses(seed: int, probability: float):
    """An endless pseudo-random pause pattern for a cocotbext-axi channel."""
    rng = random.Random(seed)
    while True:
        yield rng.random() < probability


class AcceleratorTB:
    """Driver (AXI4-Lite master), memory (AXI4 RAM), model (golden device) and checker."""

    def __init__(self, dut, *, backpressure: float = 0.0, seed: int = 1):
        self.dut = dut
        self.config = Config.from_dict(json.loads(os.environ["BRAZE_CONFIG"]))
        self.log = dut._log
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.regs = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
            self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=MEM_BYTES)
        if backpressure:
            channels = (self.ram.write_if.aw_channel, self.ram.write_if.w_channel,
                        self.ram.write_if.b_channel, self.ram.read_if.ar_channel, self.ram.read_if.r_channel)
            for index, channel in enumerate(channels):
                channel.set_pause_generator(_pauses(seed * 10 + index, backpressure))
        self.model = GoldenDevice(self.config.replace(dram_bytes=MEM_BYTES))

    async def start(self) -> None:
        Clock(self.dut.clk, 10, unit="ns").start()
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 5)
        self.dut.rst.value = 0
        await ClockCycles(self.dut.clk, 2)

    # --- Driver. -----------------------------------------------------------------------------------
    async def read_reg(self, name_or_offset) -> int:
        offset = REG[name_or_offset] if isinstance(name_or_offset, str) else name_or_offset
        response = await self.regs.read(offset, 4)
        assert response.resp == OKAY, f"read of 0x{offset:x} answered {response.resp}"
        return int.from_bytes(response.data, "little")

    async def write_reg(self, name: str, value: int) -> None:
        response = await self.regs.write(REG[name], value.to_bytes(4, "little"))
        assert response.resp == OKAY, f"write of {name} answered {response.resp}"

    def load(self, addr: int, data: bytes) -> None:
        """Put bytes in both the bus memory and the model's."""
        self.ram.write(addr, data)
        self.model.write(addr, data)

    async def run(self, base: int, *, irq_enables: int = IRQ_DONE | IRQ_ERROR, poll: bool = False,
                  budget: int = 200_000) -> int:
        """Start the program at ``base``, wait for the interrupt (or poll STATUS), return STATUS."""
        await self.write_reg("PROG_BASE_LO", base)
        await self.write_reg("PROG_BASE_HI", 0)
        await self.write_reg("CTRL", START | irq_enables)
        if irq_enables and not poll:
            fired = await First(RisingEdge(self.dut.irq), Timer(budget * 10, unit="ns"))
            assert fired is not None and self.dut.irq.value == 1, "no interrupt within the budget"
        else:
            for _ in range(budget // 16):
                if (await self.read_reg("STATUS")) & (DONE | ERROR):
                    break
                await ClockCycles(self.dut.clk, 16)
        return await self.read_reg("STATUS")

    async def counters(self) -> dict[str, int]:
        values = {}
        for index, spec in enumerate(COUNTERS):
            low = await self.read_reg(COUNTER_BASE + 8 * index)
            high = await self.read_reg(COUNTER_BASE + 8 * index + 4)
            values[spec.name] = high << 32 | low
        return values

    # --- Checker. ----------------------------------------------------------------------------------
    def check_memory(self, addr: int, nbytes: int) -> None:
        got, want = self.ram.read(addr, nbytes), self.model.read(addr, nbytes)
        if got != want:
            first = next(i for i in range(nbytes) if got[i] != want[i])
            raise AssertionError(f"memory differs from the model first at 0x{addr + first:x}: "
                                 f"{got[first]:#04x} != {want[first]:#04x}")

    def check_exact_counters(self, counters: dict[str, int], expected: dict[str, int]) -> None:
        for spec in COUNTERS:
            if spec.exact:
                assert counters[spec.name] == expected[spec.name], \
                    f"counter {spec.name}: {counters[spec.name]} != model {expected[spec.name]}"


@cocotb.test()
async def register_access(dut):
    """Constants, RW registers, W1C status bits, SLVERR on unmapped or read-only registers."""
    tb = AcceleratorTB(dut)
    await tb.start()
    assert await tb.read_reg("ID") == MAGIC
    for name in ("VERSION", "GEOMETRY"):
        assert await tb.read_reg(name) == constant_value(REGISTER_BY_NAME[name], tb.config), name
    for value in (0x1234_5670, 0xFFFF_FFF0, 0):
        await tb.write_reg("PROG_BASE_LO", value)
        assert await tb.read_reg("PROG_BASE_LO") == value
    await tb.write_reg("CTRL", IRQ_DONE | IRQ_ERROR)
    assert await tb.read_reg("CTRL") == IRQ_DONE | IRQ_ERROR       # start/soft_reset read 0
    assert (await tb.regs.write(REG["ID"], b"\0\0\0\0")).resp == SLVERR
    assert (await tb.regs.read(0xFF0, 4)).resp == SLVERR
    # STATUS.done is W1C: set it with a run, clear it by writing 1.
    tb.load(0x100, encode_program(assemble("halt")))
    status = await tb.run(0x100)
    assert status & DONE and not status & (BUSY | ERROR)
    await tb.write_reg("STATUS", 0)
    assert await tb.read_reg("STATUS") & DONE, "writing 0 must not clear done"
    await tb.write_reg("STATUS", DONE)
    assert not await tb.read_reg("STATUS") & DONE


@cocotb.parametrize(backpressure=[0.0, 0.5])
@cocotb.test()
async def dma_bursts(dut, backpressure):
    """LOAD/STORE programs moving random rows under random AXI backpressure, against the model."""
    tb = AcceleratorTB(dut, backpressure=backpressure, seed=3)
    await tb.start()
    config = tb.config
    rng = np.random.default_rng(int(backpressure * 10) + 1)
    tb.load(0x10000, rng.integers(0, 256, size=0x4000, dtype=np.uint8).tobytes())
    rows, length = 2 * config.cols + 3, config.cols
    source = f"""
        load  mem=spad addr=5 rows={rows} len={length} dram=0x10003 stride={length + 5} push_next
        vector op=mov src1_mem=spad src1=5 dst_mem=spad dst=200 rows={rows} pop_prev push_next
        store mem=spad addr=200 rows={rows} len={length} dram=0x20001 stride={length + 1} pop_prev
        load  mem=acc addr=3 rows=9 len={length - 1} dram=0x11000 stride={4 * length} push_next
        vector op=mov src1_mem=acc src1=3 dst_mem=acc dst=40 rows=9 pop_prev push_next
        store mem=acc addr=40 rows=9 len={length - 1} dram=0x22000 stride={4 * length + 8} pop_prev
        halt
    """
    program = encode_program(assemble(source))
    tb.load(0x100, program)
    status = await tb.run(0x100)
    expected = tb.model.run(None, base=0x100)
    assert status == DONE
    tb.check_memory(0x20000, 0x3000)
    counters = await tb.counters()
    tb.check_exact_counters(counters, expected.counters)
    assert counters["axi_read_beats"] > 0 and counters["axi_write_beats"] > 0


@cocotb.test()
async def interrupts(dut):
    """irq follows done and error only while enabled, and drops when the flag is cleared."""
    tb = AcceleratorTB(dut)
    await tb.start()
    tb.load(0x100, encode_program(assemble("halt")))
    tb.load(0x200, bytes(16))     # opcode 0: an error
    status = await tb.run(0x100, irq_enables=0)
    assert status & DONE and dut.irq.value == 0
    await tb.write_reg("CTRL", IRQ_DONE)
    await ClockCycles(dut.clk, 2)
    assert dut.irq.value == 1, "enabling irq_en_done with done set raises irq"
    await tb.write_reg("STATUS", DONE)
    await ClockCycles(dut.clk, 2)
    assert dut.irq.value == 0
    status = await tb.run(0x200, irq_enables=IRQ_ERROR)
    assert status & ERROR and dut.irq.value == 1
    await tb.write_reg("CTRL", 0)
    await ClockCycles(dut.clk, 2)
    assert dut.irq.value == 0
    status = await tb.run(0x100, irq_enables=IRQ_ERROR, poll=True)
    assert status & DONE and dut.irq.value == 0, "done must not raise irq without irq_en_done"


@cocotb.test()
async def error_causes(dut):
    """ERROR_CAUSE and ERROR_PC equal the model's for decode and range errors.

    (cocotbext-axi's AxiRam wraps addresses instead of answering DECERR, so DRAM_RANGE is
    covered by the Verilator device tests, whose RAM does.)
    """
    tb = AcceleratorTB(dut)
    await tb.start()
    config = tb.config
    cases = {
        0x1000: bytes(16),
        0x2000: f"fence\nfence\nload mem=spad addr={config.spad_rows - 1} rows=2 len=4 dram=0 stride=4\nhalt",
        0x3000: f"epilogue src={config.acc_rows - 1} m=2 n={config.cols} dst=0\nhalt",
        0x4000: f"matmul acc=0 a=0 b=0 a_stride=1 m=1 n={config.cols * 2} k=1\nhalt",
    }
    for base, program in cases.items():
        tb.load(base, program if isinstance(program, bytes) else encode_program(assemble(program)))
        expected = tb.model.run(None, base=base, check=False)
        status = await tb.run(base)
        assert status & ERROR
        cause = ErrorCause(await tb.read_reg("ERROR_CAUSE"))
        assert cause is expected.cause, f"program at 0x{base:x}: {cause} != {expected.cause}"
        assert await tb.read_reg("ERROR_PC") == expected.error_pc
        await tb.write_reg("STATUS", ERROR)


@cocotb.test()
async def counter_semantics(dut):
    """Exact counters equal the model's; LO latches HI; counters restart at CTRL.start."""
    tb = AcceleratorTB(dut, backpressure=0.3, seed=9)
    await tb.start()
    config = tb.config
    rng = np.random.default_rng(4)
    tb.load(0x8000, rng.integers(-128, 128, size=4 * config.rows * config.cols, dtype=np.int8).tobytes())
    r, c = config.rows, config.cols
    source = f"""
        load mem=spad addr=0 rows={2 * r} len={c} dram=0x8000 stride={c} push_next
        matmul acc=0 a=0 b={r} a_stride=1 m={r} n={c} k={r} pop_prev
        epilogue src=0 m={r} n={c} dst=64 push_next
        store mem=spad addr=64 rows={r} len={c} dram=0x9000 stride={c} pop_prev
        counters dram=0xA000
        halt
    """
    tb.load(0x100, encode_program(assemble(source)))
    expected = tb.model.run(None, base=0x100)
    await tb.run(0x100)
    first = await tb.counters()
    tb.check_exact_counters(first, expected.counters)
    tb.check_memory(0x9000, config.rows * config.cols)
    assert first["macs"] == config.rows ** 2 * config.cols
    # A second run starts from zero: the same exact counts again, not doubled.
    await tb.run(0x100)
    second = await tb.counters()
    tb.check_exact_counters(second, expected.counters)
    # Reading HI alone returns the HI latched by the last LO read of that counter.
    low_offset = COUNTER_BASE + 8 * [spec.name for spec in COUNTERS].index("cycles")
    low = await tb.read_reg(low_offset)
    high = await tb.read_reg(low_offset + 4)
    assert high << 32 | low == second["cycles"]
