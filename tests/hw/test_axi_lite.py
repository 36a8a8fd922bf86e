"""AXI4-Lite slave bridge: random AW/W ordering, BREADY/RREADY stalls, SLVERR, concurrent read and write."""

import random

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In
from amaranth.sim import Simulator

from braze.hw.axi import AXI4LiteSlave, RegisterBusSignature
from braze.sim.axi_memory import OKAY, SLVERR, AXI4LiteDriver

ADDR_WIDTH = 8
N_REGS = 8
READ_COUNT_REG = N_REGS - 1   # read-only: counts read strobes; writes get SLVERR


class RegisterTarget(wiring.Component):
    """Seven byte-writable registers and a read-strobe counter; other addresses are errors."""

    bus: In(RegisterBusSignature(addr_width=ADDR_WIDTH - 2))

    def elaborate(self, platform):
        m = Module()
        regs = [Signal(32, name=f"reg{i}") for i in range(N_REGS - 1)]
        reads = Signal(32)
        with m.If(self.bus.r_stb):
            m.d.sync += reads.eq(reads + 1)
        byte_mask = Cat(bit.replicate(8) for bit in self.bus.w_strb)
        with m.Switch(self.bus.addr):
            for index, reg in enumerate(regs):
                with m.Case(index):
                    m.d.comb += self.bus.r_data.eq(reg)
                    with m.If(self.bus.w_stb):
                        m.d.sync += reg.eq(reg & ~byte_mask | self.bus.w_data & byte_mask)
            with m.Case(READ_COUNT_REG):
                m.d.comb += [self.bus.r_data.eq(reads), self.bus.error.eq(self.bus.w_stb)]
            with m.Default():
                m.d.comb += self.bus.error.eq(1)
        return m


def build():
    top = Module()
    top.submodules.bridge = bridge = AXI4LiteSlave(addr_width=ADDR_WIDTH)
    top.submodules.target = target = RegisterTarget()
    wiring.connect(top, bridge.bus, target.bus)
    sim = Simulator(top)
    sim.add_clock(1e-6)
    return sim, bridge.s_axil


def byte_merge(old: int, new: int, strb: int) -> int:
    for lane in range(4):
        if strb >> lane & 1:
            old = old & ~(0xFF << 8 * lane) | new & (0xFF << 8 * lane)
    return old


def test_random_accesses_with_stalls():
    sim, axil = build()
    rng = random.Random(5)
    model = [0] * (N_REGS - 1)
    checked = []

    async def testbench(ctx):
        driver = AXI4LiteDriver(ctx, axil, stall=0.4, seed=6)
        reads = 0
        for _ in range(250):
            kind = rng.random()
            index = rng.randrange(N_REGS) if rng.random() < 0.85 else rng.randrange(1 << (ADDR_WIDTH - 2))
            addr = index * 4
            if kind < 0.45:
                value = rng.getrandbits(32)
                strb = 0xF if rng.random() < 0.5 else rng.randrange(16)
                mapped = index < N_REGS - 1
                await driver.write(addr, value, strb=strb, expect=OKAY if mapped else SLVERR)
                if mapped:
                    model[index] = byte_merge(model[index], value, strb)
            else:
                if index < N_REGS - 1:
                    got = await driver.read(addr)
                    checked.append((got, model[index]))
                elif index == READ_COUNT_REG:
                    got = await driver.read(addr)
                    checked.append((got, reads))   # strobes of the earlier reads, one each
                else:
                    await driver.read(addr, expect=SLVERR)
                reads += 1

    sim.add_testbench(testbench)
    sim.run()
    assert len(checked) > 70
    assert all(got == want for got, want in checked), [c for c in checked if c[0] != c[1]][:5]


def test_concurrent_reader_and_writer_both_progress():
    """Reads and writes offered at the same time alternate; neither starves nor deadlocks."""
    sim, axil = build()
    written = {}
    readback_of_writes = []
    read_back = []

    async def writer(ctx):
        driver = AXI4LiteDriver(ctx, axil, stall=0.1, seed=7)
        for i in range(40):
            value = (i * 0x01010101) ^ 0xA5A5A5A5
            await driver.write(4 * (i % 4), value)
            written[i % 4] = value
        for i in range(4):
            readback_of_writes.append(await driver.read(4 * i))

    async def reader(ctx):
        driver = AXI4LiteDriver(ctx, axil, stall=0.1, seed=8)
        for _ in range(40):
            read_back.append(await driver.read(4 * READ_COUNT_REG))

    async def monitor(ctx):
        both_waiting = 0
        for _ in range(3000):
            _, _, arvalid, awvalid = await ctx.tick().sample(axil.arvalid, axil.awvalid)
            both_waiting += arvalid and awvalid
        assert both_waiting > 10   # the two really competed

    sim.add_testbench(writer)
    sim.add_testbench(reader)
    sim.add_testbench(monitor, background=True)
    sim.run()

    assert len(written) == 4
    assert readback_of_writes == [written[i] for i in range(4)]
    # Each read of the strobe counter sees exactly the strobes of the reads before it.
    assert read_back == list(range(40))
