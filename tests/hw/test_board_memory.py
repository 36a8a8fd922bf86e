"""The board memory's AXI4 slave: bursts with backpressure, byte strobes, DECERR/SLVERR, the host port."""

from amaranth.sim import Simulator

from braze.hw.axi import Burst, Resp
from braze.hw.board_memory import BoardMemory

SIZE, WIDTH = 1024, 64
WORD = WIDTH // 8
DEPTH = SIZE // WORD


def _simulate(bench):
    dut = BoardMemory(size=SIZE, data_width=WIDTH)
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def testbench(ctx):
        await bench(ctx, dut)

    sim.add_testbench(testbench)
    sim.run()


async def _write_burst(ctx, bus, addr, beats, strobes=None, burst=Burst.INCR, size=3):
    ctx.set(bus.awaddr, addr)
    ctx.set(bus.awlen, len(beats) - 1)
    ctx.set(bus.awsize, size)
    ctx.set(bus.awburst, burst)
    ctx.set(bus.awvalid, 1)
    await ctx.tick().until(bus.awready)
    ctx.set(bus.awvalid, 0)
    for index, beat in enumerate(beats):
        ctx.set(bus.wdata, beat)
        ctx.set(bus.wstrb, 0xFF if strobes is None else strobes[index])
        ctx.set(bus.wlast, index == len(beats) - 1)
        ctx.set(bus.wvalid, 1)
        await ctx.tick().until(bus.wready)
    ctx.set(bus.wvalid, 0)
    ctx.set(bus.bready, 1)
    resp, = await ctx.tick().sample(bus.bresp).until(bus.bvalid)
    ctx.set(bus.bready, 0)
    return Resp(resp)


async def _read_burst(ctx, bus, addr, count, burst=Burst.INCR, size=3, ready_pattern=(1,)):
    ctx.set(bus.araddr, addr)
    ctx.set(bus.arlen, count - 1)
    ctx.set(bus.arsize, size)
    ctx.set(bus.arburst, burst)
    ctx.set(bus.arvalid, 1)
    await ctx.tick().until(bus.arready)
    ctx.set(bus.arvalid, 0)
    beats, cycle = [], 0
    while True:
        ready = ready_pattern[cycle % len(ready_pattern)]
        ctx.set(bus.rready, ready)
        await ctx.delay(1e-9)
        valid, data, resp, last = (ctx.get(bus.rvalid), ctx.get(bus.rdata), ctx.get(bus.rresp),
                                   ctx.get(bus.rlast))
        await ctx.tick()
        cycle += 1
        if valid and ready:
            beats.append((data, Resp(resp)))
            if last:
                break
    ctx.set(bus.rready, 0)
    return beats


def test_bursts_with_backpressure_strobes_and_errors():
    async def bench(ctx, dut):
        bus = dut.s_axi
        words = [0x1111_1111_1111_1111 * (i + 1) for i in range(5)]
        assert await _write_burst(ctx, bus, 0x40, words) is Resp.OKAY
        # Byte strobes: only the low and the top byte of the second word change.
        assert await _write_burst(ctx, bus, 0x48, [0xAAAA_AAAA_AAAA_AAAA], strobes=[0x81]) is Resp.OKAY
        expected = list(words)
        expected[1] = (words[1] & 0x00FF_FFFF_FFFF_FF00) | 0xAA00_0000_0000_00AA
        # A read burst whose master stalls every other cycle gets every beat once, in order.
        beats = await _read_burst(ctx, bus, 0x40, 5, ready_pattern=(1, 0, 0, 1))
        assert beats == [(word, Resp.OKAY) for word in expected]
        # A burst running past the end: its beats inside are done, the others DECERR (reads: zeros).
        assert await _write_burst(ctx, bus, SIZE - WORD, [1, 2]) is Resp.DECERR
        beats = await _read_burst(ctx, bus, SIZE - WORD, 2)
        assert beats == [(1, Resp.OKAY), (0, Resp.DECERR)]
        # Bursts the memory does not implement (WRAP, narrow beats): SLVERR.
        assert await _write_burst(ctx, bus, 0, [5], burst=Burst.WRAP) is Resp.SLVERR
        assert [resp for _, resp in await _read_burst(ctx, bus, 0, 2, size=2)] == [Resp.SLVERR] * 2
        # The host port sees what AXI wrote, and AXI what the host wrote.
        host = dut.host
        ctx.set(host.addr, 0x40 // WORD + 1)
        ctx.set(host.valid, 1)
        await ctx.tick().until(host.ready)
        ctx.set(host.valid, 0)
        await ctx.delay(1e-9)
        assert ctx.get(host.rdata) == expected[1]
        ctx.set(host.addr, 3)
        ctx.set(host.wdata, 0x0123_4567_89AB_CDEF)
        ctx.set(host.write, 1)
        ctx.set(host.valid, 1)
        await ctx.tick().until(host.ready)
        ctx.set(host.valid, 0)
        assert await _read_burst(ctx, bus, 3 * WORD, 1) == [(0x0123_4567_89AB_CDEF, Resp.OKAY)]

    _simulate(bench)
