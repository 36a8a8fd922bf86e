"""The control/status register file over AXI4-Lite, checked against its own register table."""

import json
import random

from amaranth.sim import Simulator

from braze.hw.csr import (
    COUNTER_BASE,
    MAGIC,
    REGISTER_BY_NAME,
    REGISTERS,
    CSRFile,
    constant_value,
    counter_offsets,
    register_map,
)
from braze.isa import COUNTERS, Config, Counter, ErrorCause
from braze.sim.axi_memory import OKAY, SLVERR, AXI4LiteDriver

CONFIG = Config.preset("tiny")


def offset(name: str) -> int:
    return REGISTER_BY_NAME[name].offset


def field_bit(register: str, field: str) -> int:
    return 1 << REGISTER_BY_NAME[register].field(field).lsb


def run(testbench, *extra):
    dut = CSRFile(CONFIG)
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def main(ctx):
        await testbench(ctx, dut)
    sim.add_testbench(main)
    for process in extra:
        async def background(ctx, process=process):
            await process(ctx, dut)
        sim.add_testbench(background, background=True)
    sim.run()


def test_register_table_is_consistent():
    offsets = [reg.offset for reg in REGISTERS]
    assert len(set(offsets)) == len(offsets)
    assert all(o % 4 == 0 for o in offsets)
    for counter in Counter:
        lo, hi = counter_offsets(counter)
        name = f"COUNTER_{COUNTERS[counter].name.upper()}"
        assert (offset(f"{name}_LO"), offset(f"{name}_HI")) == (lo, hi) == (COUNTER_BASE + 8 * counter,
                                                                         COUNTER_BASE + 8 * counter + 4)
    manifest = json.loads(json.dumps(register_map(CONFIG)))
    by_name = {entry["name"]: entry for entry in manifest["registers"]}
    assert by_name["ID"]["value"] == MAGIC == int.from_bytes(b"BRZE", "big")
    version = by_name["VERSION"]["value"]
    assert (version >> 8 & 0xFF, version >> 16 & 0xFF, version >> 24) == (
        CONFIG.rows, CONFIG.cols, CONFIG.dma_bus_bits // 8)
    geometry = by_name["GEOMETRY"]["value"]
    assert (1 << (geometry & 0xFF), 1 << (geometry >> 8 & 0xFF)) == (CONFIG.spad_rows, CONFIG.acc_rows)
    assert by_name["STATUS"]["fields"][1] == {
        "name": "done", "lsb": 1, "width": 1, "access": "w1c",
        "doc": REGISTER_BY_NAME["STATUS"].field("done").doc}


def test_constants_and_read_write_registers():
    async def testbench(ctx, dut):
        regs = AXI4LiteDriver(ctx, dut.s_axil, stall=0.3, seed=1)
        for reg in REGISTERS:
            value = constant_value(reg, CONFIG)
            if value is not None:
                assert await regs.read(reg.offset) == value, reg.name
        # Writes to read-only registers are refused and change nothing.
        await regs.write(offset("ID"), 0, expect=SLVERR)
        assert await regs.read(offset("ID")) == MAGIC
        await regs.write(offset("ERROR_PC"), 0x1234, expect=SLVERR)
        assert await regs.read(offset("ERROR_PC")) == 0

        rng = random.Random(2)
        base = 0
        for _ in range(6):
            lo, hi = rng.getrandbits(32), rng.getrandbits(32)
            strb = rng.choice([0xF, 0x3, 0x8, 0x5])
            await regs.write(offset("PROG_BASE_HI"), hi)
            await regs.write(offset("PROG_BASE_LO"), lo, strb=strb)
            mask = sum(0xFF << 8 * lane for lane in range(4) if strb >> lane & 1)
            base = hi << 32 | (base & 0xFFFFFFFF & ~mask) | (lo & mask)
            assert await regs.read(offset("PROG_BASE_LO")) == base & 0xFFFFFFFF
            assert await regs.read(offset("PROG_BASE_HI")) == base >> 32
            assert ctx.get(dut.prog_base) == base

        irq_bits = field_bit("CTRL", "irq_en_done") | field_bit("CTRL", "irq_en_error")
        await regs.write(offset("CTRL"), 0xFFFFFFFF & ~field_bit("CTRL", "start")
                         & ~field_bit("CTRL", "soft_reset"))
        assert await regs.read(offset("CTRL")) == irq_bits   # pulse fields read 0
        await regs.write(offset("CTRL"), 0)
        assert await regs.read(offset("CTRL")) == 0

    run(testbench)


def test_cycle_limit_reads_back_and_run_cycles_is_read_only():
    async def testbench(ctx, dut):
        regs = AXI4LiteDriver(ctx, dut.s_axil, stall=0.2, seed=4)
        assert await regs.read(offset("CYCLE_LIMIT")) == 0       # no limit after reset
        await regs.write(offset("CYCLE_LIMIT"), 0x1234_5678)
        assert await regs.read(offset("CYCLE_LIMIT")) == 0x1234_5678 == ctx.get(dut.cycle_limit)
        ctx.set(dut.run_cycles, 0xDEAD_BEEF)
        assert await regs.read(offset("RUN_CYCLES")) == 0xDEAD_BEEF
        await regs.write(offset("RUN_CYCLES"), 0, expect=SLVERR)
        assert await regs.read(offset("RUN_CYCLES")) == 0xDEAD_BEEF

    run(testbench)


def test_unmapped_addresses_get_slverr():
    async def testbench(ctx, dut):
        regs = AXI4LiteDriver(ctx, dut.s_axil, stall=0.3, seed=3)
        mapped = {reg.offset for reg in REGISTERS}
        unmapped = [o for o in (0x00C, 0x04C, 0x0FC, max(mapped) + 4, 0x800, 0xFFC) if o not in mapped]
        assert len(unmapped) == 6
        for addr in unmapped:
            await regs.read(addr, expect=SLVERR)
            await regs.write(addr, 0xFFFFFFFF, expect=SLVERR)
        # Unmapped writes have no side effects.
        assert await regs.read(offset("CTRL")) == 0
        assert await regs.read(offset("PROG_BASE_LO")) == 0

    run(testbench)


def test_start_pulse_done_error_and_irq():
    pulses = {"start": [], "soft_reset": []}

    async def watch_pulses(ctx, dut):
        cycle = 0
        async for _, _, start, soft_reset in ctx.tick().sample(dut.start, dut.soft_reset):
            cycle += 1
            if start:
                pulses["start"].append(cycle)
            if soft_reset:
                pulses["soft_reset"].append(cycle)

    async def testbench(ctx, dut):
        regs = AXI4LiteDriver(ctx, dut.s_axil, stall=0.3, seed=4)
        done, error = field_bit("STATUS", "done"), field_bit("STATUS", "error")
        busy = field_bit("STATUS", "busy")
        start = field_bit("CTRL", "start")

        await regs.write(offset("CTRL"), 0)
        assert pulses["start"] == []
        await regs.write(offset("CTRL"), start)
        await ctx.tick()
        assert len(pulses["start"]) == 1
        await regs.write(offset("CTRL"), field_bit("CTRL", "soft_reset"))
        await ctx.tick()
        assert len(pulses["start"]) == 1 and len(pulses["soft_reset"]) == 1

        ctx.set(dut.busy, 1)
        assert await regs.read(offset("STATUS")) == busy
        ctx.set(dut.busy, 0)

        # done: sticky, irq only when enabled, write-1-to-clear.
        ctx.set(dut.done_event, 1)
        await ctx.tick()
        ctx.set(dut.done_event, 0)
        assert await regs.read(offset("STATUS")) == done
        assert not ctx.get(dut.irq)
        await regs.write(offset("CTRL"), field_bit("CTRL", "irq_en_done"))
        assert ctx.get(dut.irq)
        await regs.write(offset("STATUS"), error)      # writing 1 to other bits leaves done alone
        assert await regs.read(offset("STATUS")) == done
        await regs.write(offset("STATUS"), done)
        assert await regs.read(offset("STATUS")) == 0
        assert not ctx.get(dut.irq)

        # error: latches cause and pc; irq only when enabled.
        ctx.set(dut.error_cause, ErrorCause.ACC_RANGE)
        ctx.set(dut.error_pc, 0x1230)
        ctx.set(dut.error_event, 1)
        await ctx.tick()
        ctx.set(dut.error_event, 0)
        ctx.set(dut.error_cause, ErrorCause.NONE)
        ctx.set(dut.error_pc, 0)
        assert await regs.read(offset("STATUS")) == error
        assert await regs.read(offset("ERROR_CAUSE")) == ErrorCause.ACC_RANGE.value
        assert await regs.read(offset("ERROR_PC")) == 0x1230
        assert not ctx.get(dut.irq)
        await regs.write(offset("CTRL"), field_bit("CTRL", "irq_en_error"))
        assert ctx.get(dut.irq)

        # A new start clears done, error, the cause and the pc, and keeps the irq enables.
        ctx.set(dut.done_event, 1)
        await ctx.tick()
        ctx.set(dut.done_event, 0)
        await regs.write(offset("CTRL"), start | field_bit("CTRL", "irq_en_error"))
        assert await regs.read(offset("STATUS")) == 0
        assert await regs.read(offset("ERROR_CAUSE")) == 0
        assert await regs.read(offset("ERROR_PC")) == 0
        assert await regs.read(offset("CTRL")) == field_bit("CTRL", "irq_en_error")
        assert not ctx.get(dut.irq)
        await ctx.tick()
        assert len(pulses["start"]) == 2
        # Every pulse lasted one cycle.
        assert all(b - a > 1 for a, b in zip(pulses["start"], pulses["start"][1:], strict=False))

    run(testbench, watch_pulses)


def test_counters_read_atomically():
    rng = random.Random(6)
    values = [rng.getrandbits(64) for _ in COUNTERS]

    async def testbench(ctx, dut):
        regs = AXI4LiteDriver(ctx, dut.s_axil, stall=0.3, seed=7)
        for index, value in enumerate(values):
            ctx.set(dut.counters[index], value)
        for index in rng.sample(range(len(COUNTERS)), len(COUNTERS)):
            lo, hi = counter_offsets(index)
            got_lo = await regs.read(lo)
            ctx.set(dut.counters[index], values[index] + (1 << 32))   # HI changes between the reads
            got_hi = await regs.read(hi)
            assert got_hi << 32 | got_lo == values[index], COUNTERS[index].name
            values[index] += 1 << 32
        # Without a preceding LO read, HI shows the live value of its own counter.
        lo0, hi0 = counter_offsets(0)
        await regs.read(lo0)
        _, hi1 = counter_offsets(1)
        assert await regs.read(hi1) == values[1] >> 32
        await regs.write(lo0, 0, expect=SLVERR)
        assert await regs.read(lo0, expect=OKAY) == values[0] & 0xFFFFFFFF

    run(testbench)



def test_scalar_registers_are_passed_to_the_core_and_read_from_it():
    """A SCALAR_R<i> write is a one-cycle write request to the control core (bytes merged with the
    core's value); a read shows the core's register."""
    requests = []

    async def core(ctx, dut):
        async for _, _, en, index, value in ctx.tick().sample(dut.scalar_write.en, dut.scalar_write.index,
                                                               dut.scalar_write.value):
            if en:
                requests.append((index, value))

    async def testbench(ctx, dut):
        regs = AXI4LiteDriver(ctx, dut.s_axil, stall=0.3, seed=5)
        ctx.set(dut.scalar_regs[3], -2)
        ctx.set(dut.scalar_regs[7], 0x1234_5678)
        assert await regs.read(offset("SCALAR_R3")) == 0xFFFF_FFFE
        assert await regs.read(offset("SCALAR_R7")) == 0x1234_5678
        await regs.write(offset("SCALAR_R7"), 0xFFFF_FF80)
        await regs.write(offset("SCALAR_R3"), 0x0000_00AB, strb=0b0001)
        await ctx.tick().repeat(3)

    run(testbench, core)
    assert requests == [(7, -128), (3, -256 + 0xAB)]
