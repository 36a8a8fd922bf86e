"""The AXI4 memory model itself: narrow, WRAP and FIXED bursts, W before AW, errors, protocol checks.

Expected beats are worked out by hand from the AMBA AXI rules in the comments, not from the model.
"""

import gc

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module
from amaranth.sim import Simulator

from braze.hw.axi import AXI4Signature
from braze.sim.axi_memory import DECERR, OKAY, SLVERR, AXI4Memory, AXIProtocolError

SIZE = 6 * 1024   # not a multiple of 4 KiB, so a burst can run off the end without crossing 4 KiB


def setup(**kwargs):
    bus = AXI4Signature(data_width=64).create()
    top = Module()
    top.domains.sync = ClockDomain()
    memory = AXI4Memory(bus, SIZE, seed=3, **kwargs)
    memory.mem[:] = np.arange(SIZE, dtype=np.uint32).astype(np.uint8) ^ 0x5A
    sim = Simulator(top)
    sim.add_clock(1e-6)
    memory.add_to(sim)
    return sim, bus, memory


async def read_burst(ctx, bus, addr, beats, size_log2=3, burst=1):
    ctx.set(bus.araddr, addr)
    ctx.set(bus.arlen, beats - 1)
    ctx.set(bus.arsize, size_log2)
    ctx.set(bus.arburst, burst)
    ctx.set(bus.arvalid, 1)
    await ctx.tick().until(bus.arready)
    ctx.set(bus.arvalid, 0)
    ctx.set(bus.rready, 1)
    got = []
    while True:
        _, _, valid, data, resp, last = await ctx.tick().sample(bus.rvalid, bus.rdata, bus.rresp, bus.rlast)
        if valid:
            got.append((data, resp))
            if last:
                break
    ctx.set(bus.rready, 0)
    assert len(got) == beats
    return got


def word(memory, addr, lanes):
    """Bytes at ``addr`` placed on byte lanes ``lanes`` of a 64-bit beat."""
    return sum(int(memory.mem[addr + i]) << 8 * lane for i, lane in enumerate(lanes))


def test_narrow_wrap_fixed_reads_and_errors():
    sim, bus, memory = setup(stall=0.3, read_latency=3, error_regions=[(0x800, 0x808)])
    results = {}

    async def testbench(ctx):
        # INCR, 2-byte beats from 0x103: beat 0 carries only byte 0x103 (lane 3), then 0x104..5
        # on lanes 4..5 and 0x106..7 on lanes 6..7.
        results["narrow"] = await read_burst(ctx, bus, 0x103, 3, size_log2=1)
        # WRAP of 4 x 8 bytes from 0x118 wraps inside [0x100, 0x120): 0x118, 0x100, 0x108, 0x110.
        results["wrap"] = await read_burst(ctx, bus, 0x118, 4, burst=2)
        # FIXED reads the same address each beat.
        results["fixed"] = await read_burst(ctx, bus, 0x40, 3, burst=0)
        # The last word of memory, then one beyond: DECERR with zero data.
        results["end"] = await read_burst(ctx, bus, SIZE - 8, 2)
        results["slverr"] = await read_burst(ctx, bus, 0x7F8, 3)

    sim.add_testbench(testbench)
    sim.run()
    assert results["narrow"] == [(word(memory, 0x103, [3]), OKAY), (word(memory, 0x104, [4, 5]), OKAY),
                                 (word(memory, 0x106, [6, 7]), OKAY)]
    full = list(range(8))
    assert results["wrap"] == [(word(memory, a, full), OKAY) for a in (0x118, 0x100, 0x108, 0x110)]
    assert results["fixed"] == [(word(memory, 0x40, full), OKAY)] * 3
    assert results["end"] == [(word(memory, SIZE - 8, full), OKAY), (0, DECERR)]
    assert results["slverr"] == [(word(memory, 0x7F8, full), OKAY), (0, SLVERR),
                                 (word(memory, 0x808, full), OKAY)]
    assert memory.stats.read_bursts == 5 and memory.stats.read_beats == 15


async def write_burst(ctx, bus, addr, beats, size_log2=3, data_first=False, awlen=None):
    """Write ``beats`` [(data, strb)]; with ``data_first`` all W beats go before AW."""
    async def send_aw():
        ctx.set(bus.awaddr, addr)
        ctx.set(bus.awlen, len(beats) - 1 if awlen is None else awlen)
        ctx.set(bus.awsize, size_log2)
        ctx.set(bus.awburst, 1)
        ctx.set(bus.awvalid, 1)
        await ctx.tick().until(bus.awready)
        ctx.set(bus.awvalid, 0)

    async def send_w():
        for i, (data, strb) in enumerate(beats):
            ctx.set(bus.wdata, data)
            ctx.set(bus.wstrb, strb)
            ctx.set(bus.wlast, i == len(beats) - 1)
            ctx.set(bus.wvalid, 1)
            await ctx.tick().until(bus.wready)
        ctx.set(bus.wvalid, 0)

    if data_first:
        await send_w()
        await send_aw()
    else:
        await send_aw()
        await send_w()
    ctx.set(bus.bready, 1)
    (resp,) = await ctx.tick().sample(bus.bresp).until(bus.bvalid)
    ctx.set(bus.bready, 0)
    return resp


def test_writes_with_strobes_narrow_beats_and_data_before_address():
    sim, bus, memory = setup(stall=0.3, write_latency=2)
    before = memory.mem.copy()
    responses = []

    async def testbench(ctx):
        # Full beats, the second with only lanes 0 and 7 enabled.
        responses.append(await write_burst(ctx, bus, 0x200, [(0x1111111111111111, 0xFF),
                                                              (0x2222222222222222, 0x81)]))
        # 4-byte beats from 0x20C, data before address: 0x20C..F on lanes 4..7, 0x210..3 on lanes 0..3.
        responses.append(await write_burst(ctx, bus, 0x20C, [(0xAAAAAAAA_00000000, 0xF0),
                                                              (0x00000000_BBBBBBBB, 0x0F)],
                                           size_log2=2, data_first=True))
        # Past the end: DECERR and nothing written.
        responses.append(await write_burst(ctx, bus, SIZE - 8, [(0, 0xFF), (0, 0xFF)]))

    sim.add_testbench(testbench)
    sim.run()
    expected = before.copy()
    expected[0x200:0x208] = 0x11
    expected[0x208] = 0x22
    expected[0x20F] = 0x22
    expected[0x20C:0x210] = 0xAA
    expected[0x210:0x214] = 0xBB
    assert responses == [OKAY, OKAY, DECERR]
    assert np.array_equal(memory.mem, expected)


# The aborted testbench is left suspended inside Amaranth's `until`, which complains when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_wlast_in_the_wrong_place_is_a_protocol_error():
    sim, bus, _ = setup()

    async def testbench(ctx):
        # AWLEN says 2 beats; WLAST comes on the third.
        await write_burst(ctx, bus, 0x100, [(1, 0xFF)] * 3, awlen=1)

    sim.add_testbench(testbench)
    with pytest.raises(AXIProtocolError, match="WLAST"):
        sim.run()
    del sim
    gc.collect()   # collect the suspended testbench here, under this test's warning filter


@pytest.mark.parametrize("kwargs, message", [
    ({"read_latency": 0}, "read_latency=0"),
    ({"stall": 1.0}, "must be in"),
    ({"stall": {"rready": 0.5}}, "rready"),
])
def test_bad_model_parameters(kwargs, message):
    bus = AXI4Signature(data_width=64).create()
    with pytest.raises(ValueError, match=message):
        AXI4Memory(bus, SIZE, **kwargs)
