"""Block test of the co-simulation AXI4 RAM (:mod:`braze.sim.axi_ram`) in Amaranth's simulator.

A manager testbench issues random INCR, FIXED and WRAP write and read bursts, several reads
outstanding, with random VALID/READY delays on its side while the RAM stalls at random on its
side; every read beat and response is checked against a byte-array model of AXI semantics.
"""

from __future__ import annotations

import gc
import random

import pytest
from amaranth.sim import Simulator

from braze.hw.axi import Burst, Resp
from braze.sim.axi_ram import AXIRam

SIZE = 2048


def _beat_addresses(addr: int, beats: int, size: int, burst: Burst) -> list[int]:
    """AXI4 beat start addresses (A3.4.1) of a burst of ``beats`` beats of ``size`` bytes."""
    if burst is Burst.FIXED:
        return [addr] * beats
    if burst is Burst.WRAP:
        span = beats * size
        low = addr - addr % span
        return [low + (addr - low + i * size) % span for i in range(beats)]
    aligned = addr - addr % size
    return [addr] + [aligned + i * size for i in range(1, beats)]


def _random_burst(rng: random.Random, bus_bytes: int) -> tuple[int, int, int, Burst]:
    kind = rng.choice([Burst.INCR, Burst.INCR, Burst.FIXED, Burst.WRAP])
    size = rng.choice([bus_bytes, bus_bytes, bus_bytes // 2, 1])
    if kind is Burst.WRAP:
        beats = rng.choice([2, 4, 8, 16])
        addr = rng.randrange(0, SIZE // size) * size
    else:
        beats = rng.randint(1, 12)
        addr = rng.randrange(0, SIZE + 64)       # some bursts run past the end: DECERR
        if rng.random() < 0.5:
            addr -= addr % size
    return addr, beats, size, kind


@pytest.mark.parametrize("stall, latency", [(0.0, 1), (0.4, 5)])
def test_axi_ram_random_bursts_match_the_model(stall, latency):
    bus_bytes = 8
    dut = AXIRam(size=SIZE, data_width=8 * bus_bytes, read_latency=latency, stall=stall, seed=0x1234,
                 max_outstanding=4)
    rng = random.Random(7 + latency)
    model = bytearray(SIZE)
    bus = dut.s_axi
    log2 = {1: 0, 2: 1, 4: 2, 8: 3}
    checked = {"beats": 0, "decerr": 0}

    async def write_burst(ctx, addr, beats, size, kind):
        ctx.set(bus.awaddr, addr)
        ctx.set(bus.awlen, beats - 1)
        ctx.set(bus.awsize, log2[size])
        ctx.set(bus.awburst, kind)
        ctx.set(bus.awvalid, 1)
        await ctx.tick().until(bus.awready)
        ctx.set(bus.awvalid, 0)
        failed = False
        for index, beat_addr in enumerate(_beat_addresses(addr, beats, size, kind)):
            lane0 = beat_addr % bus_bytes
            lanes = [lane for lane in range(lane0 - lane0 % size, lane0 - lane0 % size + size)
                     if lane >= lane0 and rng.random() < 0.8]
            word = rng.getrandbits(8 * bus_bytes)
            strobe = sum(1 << lane for lane in lanes)
            word_base = beat_addr - lane0
            if word_base + bus_bytes > SIZE:
                failed = True
            else:
                for lane in lanes:
                    model[word_base + lane] = word >> (8 * lane) & 0xFF
            while rng.random() < 0.3:
                await ctx.tick()
            ctx.set(bus.wdata, word)
            ctx.set(bus.wstrb, strobe)
            ctx.set(bus.wlast, index == beats - 1)
            ctx.set(bus.wvalid, 1)
            await ctx.tick().until(bus.wready)
            ctx.set(bus.wvalid, 0)
        ctx.set(bus.bready, 1)
        *_, resp = await ctx.tick().sample(bus.bresp).until(bus.bvalid)
        ctx.set(bus.bready, 0)
        assert resp == (Resp.DECERR.value if failed else Resp.OKAY.value)

    expected_reads = []

    async def manager(ctx):
        for _ in range(40):
            await write_burst(ctx, *_random_burst(rng, bus_bytes))
        # Then reads, issued back to back while the reader process drains R.
        for _ in range(40):
            addr, beats, size, kind = _random_burst(rng, bus_bytes)
            for beat_addr in _beat_addresses(addr, beats, size, kind):
                base = beat_addr - beat_addr % bus_bytes
                in_range = base + bus_bytes <= SIZE
                expected_reads.append((bytes(model[base:base + bus_bytes]) if in_range else bytes(bus_bytes),
                                       Resp.OKAY.value if in_range else Resp.DECERR.value))
            expected_reads[-1] += ("last",)
            ctx.set(bus.araddr, addr)
            ctx.set(bus.arlen, beats - 1)
            ctx.set(bus.arsize, log2[size])
            ctx.set(bus.arburst, kind)
            ctx.set(bus.arvalid, 1)
            await ctx.tick().until(bus.arready)
            ctx.set(bus.arvalid, 0)

    async def reader(ctx):
        received = 0
        while True:
            ctx.set(bus.rready, int(rng.random() < 0.7))
            _, _, valid, ready, data, resp, last = await ctx.tick().sample(
                bus.rvalid, bus.rready, bus.rdata, bus.rresp, bus.rlast)
            if valid and ready:
                want = expected_reads[received]
                assert data.to_bytes(bus_bytes, "little") == want[0], f"beat {received}"
                assert resp == want[1], f"beat {received}"
                assert bool(last) == (len(want) == 3), f"beat {received}"
                checked["beats"] += 1
                checked["decerr"] += resp == Resp.DECERR.value
                received += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(manager)
    sim.add_process(reader)
    sim.run_until(2e-3)
    assert checked["beats"] == len(expected_reads) > 100
    assert checked["decerr"] > 0


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_axi_ram_rejects_bad_parameters():
    with pytest.raises(ValueError, match="size=1000"):
        AXIRam(size=1000, data_width=64)
    with pytest.raises(ValueError, match="stall=1.5"):
        AXIRam(size=4096, data_width=64, stall=1.5)
    with pytest.raises(ValueError, match="storage='rom'"):
        AXIRam(size=4096, data_width=64, storage="rom")
    gc.collect()    # the half-made components warn when collected; let that happen under the filter
