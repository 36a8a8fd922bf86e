# amaranth: UnusedElaboratable=no
"""AXI4 read/write masters and the read arbiter against the AXI4 memory model, with random stalls.

(Line 1 silences Amaranth's warning about the components the bad-parameter tests fail to build.)
"""

import random

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from braze.hw.axi import (
    BOUNDARY_BYTES,
    MAX_BURST_BEATS,
    AXI4ReadMaster,
    AXI4Signature,
    AXI4WriteMaster,
    ReadArbiter,
)
from braze.sim.axi_memory import AXI4Memory, AXIProtocolError

MEM_BYTES = 64 * 1024
ERROR_REGION = (0x6000, 0x7000)   # SLVERR; page-aligned so every burst is wholly in or out
CYCLE_LIMIT = 60_000


def expected_bursts(addr: int, beats: int, bus_bytes: int, longest: int = MAX_BURST_BEATS):
    """The AXI spec's rule: INCR bursts of at most 256 (or ``longest``) beats that never cross 4 KiB."""
    bursts = []
    while beats:
        n = min(beats, longest, (BOUNDARY_BYTES - addr % BOUNDARY_BYTES) // bus_bytes)
        bursts.append((addr, n))
        addr += n * bus_bytes
        beats -= n
    return bursts


def beat_fails(addr: int, bus_bytes: int) -> bool:
    return addr + bus_bytes > MEM_BYTES or ERROR_REGION[0] <= addr < ERROR_REGION[1]


def random_requests(rng: random.Random, bus_bytes: int, count: int) -> list[tuple[int, int]]:
    """Short and long requests, 4 KiB crossings, >256-beat requests and some that fail."""
    words = MEM_BYTES // bus_bytes
    page_words = BOUNDARY_BYTES // bus_bytes
    requests = [
        (0x1000, 600),                                    # 256 + 256 + 88 beats from a page start
        (0x2000 - 3 * bus_bytes, 5),                      # crosses a 4 KiB boundary after 3 beats
        (ERROR_REGION[0] - 2 * bus_bytes, 4),             # runs into the SLVERR region
        (MEM_BYTES - 2 * bus_bytes, 3),                   # runs past the end: DECERR
    ]
    while len(requests) < count:
        kind = rng.random()
        if kind < 0.6:
            beats = rng.randint(1, 12)
            addr = rng.randrange(words - beats) * bus_bytes
        elif kind < 0.85:
            beats = rng.randint(2, 40)
            page = rng.randrange(1, MEM_BYTES // BOUNDARY_BYTES - 1)
            addr = (page * page_words - rng.randint(1, beats - 1)) * bus_bytes
        else:
            beats = rng.randint(257, 700)
            addr = rng.randrange(words - beats) * bus_bytes
        requests.append((addr, beats))
    rng.shuffle(requests)
    return requests


def make_sim(dut, memory):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    memory.add_to(sim)
    return sim


def monitor_ar(sim, bus, log):
    async def process(ctx):
        async for _, _, valid, ready, addr, length in ctx.tick().sample(
                bus.arvalid, bus.arready, bus.araddr, bus.arlen):
            if valid and ready:
                log.append((addr, length + 1))
    sim.add_process(process)


@pytest.mark.parametrize("data_width, max_outstanding, stall, latency, seed, longest", [
    (64, 4, 0.35, 6, 1, MAX_BURST_BEATS),
    (128, 2, 0.5, 1, 2, MAX_BURST_BEATS),
    (64, 8, 0.0, 12, 3, MAX_BURST_BEATS),
    (256, 3, 0.2, 4, 4, 16),
])
def test_read_master(data_width, max_outstanding, stall, latency, seed, longest):
    rng = random.Random(seed)
    bus_bytes = data_width // 8
    requests = random_requests(rng, bus_bytes, 24)
    dut = AXI4ReadMaster(data_width=data_width, max_outstanding=max_outstanding, max_burst_beats=longest)
    memory = AXI4Memory(dut.m_axi, MEM_BYTES, stall=stall, read_latency=latency, seed=seed,
                        error_regions=[ERROR_REGION], max_outstanding=8)
    contents = np.random.default_rng(seed).integers(0, 256, MEM_BYTES, dtype=np.uint8)
    memory.mem[:] = contents
    sim = make_sim(dut, memory)
    ar_log = []
    monitor_ar(sim, dut.m_axi, ar_log)
    received = []
    total_beats = sum(beats for _, beats in requests)

    async def producer(ctx):
        for addr, beats in requests:
            for _ in range(rng.randint(0, 3) if rng.random() < stall else 0):
                await ctx.tick()
            ctx.set(dut.req.payload.addr, addr)
            ctx.set(dut.req.payload.beats, beats)
            ctx.set(dut.req.valid, 1)
            await ctx.tick().until(dut.req.ready)
            ctx.set(dut.req.valid, 0)

    async def consumer(ctx):
        ready_rng = random.Random(seed + 100)
        for _ in range(CYCLE_LIMIT):
            ctx.set(dut.data.ready, ready_rng.random() >= stall)
            sampled = ctx.tick().sample(dut.data.valid, dut.data.ready, dut.data.payload)
            _, _, valid, ready, beat = await sampled
            if valid and ready:
                received.append((int(beat.data), int(beat.last), int(beat.error)))
                if len(received) == total_beats:
                    break
        for _ in range(20):   # nothing more may arrive
            _, _, valid = await ctx.tick().sample(dut.data.valid)
            assert not valid
        assert not ctx.get(dut.busy)

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()

    assert len(received) == total_beats
    expected_beats, expected_ar = [], []
    for addr, beats in requests:
        expected_ar += expected_bursts(addr, beats, bus_bytes, longest)
        for i in range(beats):
            a = addr + i * bus_bytes
            fails = beat_fails(a, bus_bytes)
            word = 0 if fails else int.from_bytes(contents[a:a + bus_bytes].tobytes(), "little")
            expected_beats.append((word, int(i == beats - 1), int(fails)))
    assert received == expected_beats
    assert ar_log == expected_ar
    assert memory.stats.max_read_len == min(longest, BOUNDARY_BYTES // bus_bytes)
    assert 2 <= memory.stats.max_reads_in_flight <= max_outstanding


@pytest.mark.parametrize("data_width, max_outstanding, stall, seed", [
    (64, 4, 0.35, 11),
    (256, 2, 0.5, 12),
])
def test_write_master(data_width, max_outstanding, stall, seed):
    rng = random.Random(seed)
    bus_bytes = data_width // 8
    requests = random_requests(rng, bus_bytes, 20)
    dut = AXI4WriteMaster(data_width=data_width, max_outstanding=max_outstanding)
    memory = AXI4Memory(dut.m_axi, MEM_BYTES, stall=stall, write_latency=3, seed=seed,
                        error_regions=[ERROR_REGION])
    initial = np.random.default_rng(seed).integers(0, 256, MEM_BYTES, dtype=np.uint8)
    memory.mem[:] = initial
    sim = make_sim(dut, memory)

    full = (1 << bus_bytes) - 1
    beats = []   # (data, strb) per beat, in request order
    for _, n in requests:
        for _ in range(n):
            strb = full if rng.random() < 0.7 else rng.randrange(full + 1)
            beats.append((rng.getrandbits(data_width), strb))
    completions = []

    async def requester(ctx):
        for addr, n in requests:
            for _ in range(rng.randint(0, 3) if rng.random() < stall else 0):
                await ctx.tick()
            ctx.set(dut.req.payload.addr, addr)
            ctx.set(dut.req.payload.beats, n)
            ctx.set(dut.req.valid, 1)
            await ctx.tick().until(dut.req.ready)
            ctx.set(dut.req.valid, 0)

    async def data_source(ctx):
        valid_rng = random.Random(seed + 200)
        for value, strb in beats:
            while valid_rng.random() < stall:
                await ctx.tick()
            ctx.set(dut.data.payload.data, value)
            ctx.set(dut.data.payload.strb, strb)
            ctx.set(dut.data.valid, 1)
            await ctx.tick().until(dut.data.ready)
            ctx.set(dut.data.valid, 0)

    async def response_sink(ctx):
        ready_rng = random.Random(seed + 300)
        for _ in range(CYCLE_LIMIT):
            ctx.set(dut.resp.ready, ready_rng.random() >= stall)
            _, _, valid, ready, error = await ctx.tick().sample(dut.resp.valid, dut.resp.ready,
                                                               dut.resp.payload.error)
            if valid and ready:
                completions.append(int(error))
                if len(completions) == len(requests):
                    break
        for _ in range(20):
            _, _, valid = await ctx.tick().sample(dut.resp.valid)
            assert not valid
        assert not ctx.get(dut.busy)

    sim.add_testbench(requester)
    sim.add_testbench(data_source)
    sim.add_testbench(response_sink)
    sim.run()

    expected = initial.copy()
    expected_errors = []
    beat_iter = iter(beats)
    for addr, n in requests:
        failed = False
        for i in range(n):
            a = addr + i * bus_bytes
            value, strb = next(beat_iter)
            if beat_fails(a, bus_bytes):
                failed = True   # whole bursts fail: the failing region is page-aligned
                continue
            raw = value.to_bytes(bus_bytes, "little")
            for lane in range(bus_bytes):
                if strb >> lane & 1:
                    expected[a + lane] = raw[lane]
        expected_errors.append(int(failed))
    assert completions == expected_errors
    assert np.array_equal(memory.mem, expected)
    assert memory.stats.max_write_len == min(MAX_BURST_BEATS, BOUNDARY_BYTES // bus_bytes)
    assert memory.stats.max_writes_in_flight >= 2


def test_read_arbiter_two_clients():
    seed, data_width, stall = 21, 64, 0.3
    bus_bytes = data_width // 8
    rng = random.Random(seed)
    master = AXI4ReadMaster(data_width=data_width, max_outstanding=4)
    arbiter = ReadArbiter(n_clients=2, data_width=data_width, depth=4)

    top = Module()
    top.submodules.master = master
    top.submodules.arbiter = arbiter
    wiring.connect(top, arbiter.m_req, master.req)
    wiring.connect(top, master.data, arbiter.m_data)

    memory = AXI4Memory(master.m_axi, MEM_BYTES, stall=stall, read_latency=4, seed=seed)
    contents = np.random.default_rng(seed).integers(0, 256, MEM_BYTES, dtype=np.uint8)
    memory.mem[:] = contents
    sim = Simulator(top)
    sim.add_clock(1e-6)
    memory.add_to(sim)

    per_client = [[(rng.randrange(MEM_BYTES // bus_bytes - 40) * bus_bytes, rng.randint(1, 40))
                   for _ in range(15)] for _ in range(2)]
    per_client[0].insert(3, (0, 0))   # a zero-beat request is dropped, not routed
    received = [[], []]

    def client(index):
        async def requester(ctx):
            for addr, beats in per_client[index]:
                while rng.random() < stall:
                    await ctx.tick()
                ctx.set(arbiter.req[index].payload.addr, addr)
                ctx.set(arbiter.req[index].payload.beats, beats)
                ctx.set(arbiter.req[index].valid, 1)
                await ctx.tick().until(arbiter.req[index].ready)
                ctx.set(arbiter.req[index].valid, 0)

        async def consumer(ctx):
            ready_rng = random.Random(seed + index)
            total = sum(beats for _, beats in per_client[index])
            for _ in range(CYCLE_LIMIT):
                ctx.set(arbiter.data[index].ready, ready_rng.random() >= stall)
                _, _, valid, ready, beat = await ctx.tick().sample(
                    arbiter.data[index].valid, arbiter.data[index].ready, arbiter.data[index].payload)
                if valid and ready:
                    received[index].append((int(beat.data), int(beat.last)))
                    if len(received[index]) == total:
                        return
        return requester, consumer

    for index in range(2):
        for testbench in client(index):
            sim.add_testbench(testbench)
    sim.run()

    for index in range(2):
        expected = []
        for addr, beats in per_client[index]:
            for i in range(beats):
                a = addr + i * bus_bytes
                expected.append((int.from_bytes(contents[a:a + bus_bytes].tobytes(), "little"),
                                 int(i == beats - 1)))
        assert received[index] == expected


def test_memory_model_rejects_4k_crossing():
    """The memory model's protocol checks catch a master that breaks the 4 KiB rule."""
    bus = AXI4Signature(data_width=64).create()
    top = Module()
    top.domains.sync = ClockDomain()
    memory = AXI4Memory(bus, MEM_BYTES)
    sim = Simulator(top)
    sim.add_clock(1e-6)
    memory.add_to(sim)

    async def testbench(ctx):
        # A 4-beat burst crossing 0x1000.
        ctx.set(bus.araddr, 0x1000 - 16)
        ctx.set(bus.arlen, 3)
        ctx.set(bus.arsize, 3)
        ctx.set(bus.arburst, 1)
        ctx.set(bus.arvalid, 1)
        for _ in range(5):
            await ctx.tick()

    sim.add_testbench(testbench)
    with pytest.raises(AXIProtocolError, match="4 KiB"):
        sim.run()


@pytest.mark.parametrize("cls, kwargs, message", [
    (AXI4ReadMaster, {"data_width": 48}, "data_width=48"),
    (AXI4ReadMaster, {"data_width": 64, "max_outstanding": 0}, "max_outstanding=0"),
    (AXI4WriteMaster, {"data_width": 64, "max_burst_beats": 100}, "max_burst_beats=100"),
    (ReadArbiter, {"data_width": 64, "n_clients": 1}, "n_clients=1"),
])
def test_bad_parameters_name_the_value(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)
