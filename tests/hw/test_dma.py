# amaranth: UnusedElaboratable=no
"""The DMA engines against numpy copies of the memories, over the real AXI masters and memory model.

Each bench wires an engine to :class:`AXI4ReadMaster`/:class:`AXI4WriteMaster`, the
scratchpad and accumulator :class:`BankedMemory`, and :class:`AXI4Memory` (random stalls,
read latency, DECERR beyond its size, SLVERR regions).  A background process makes the
compute ports of the memories take random banks, so the DMA ports are refused at random.
Expected results come from numpy (the memories) and :func:`braze.isa.timing.axi_beats`
(the beat counters).
"""

import random

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Elaboratable, Module, signed
from amaranth.lib import data, wiring
from amaranth.sim import Simulator

from braze.hw.axi import AXI4ReadMaster, AXI4WriteMaster
from braze.hw.counters import CounterBank
from braze.hw.dma import LoadEngine, StoreEngine, load_events_layout, store_events_layout
from braze.hw.memories import BankedMemory
from braze.isa import (
    COUNTERS,
    PRESETS,
    SNAPSHOT_BYTES,
    Config,
    ErrorCause,
    Instruction,
    Memory,
    Opcode,
    parse_snapshot,
)
from braze.isa.timing import axi_beats, element_bytes
from braze.sim.axi_memory import AXI4Memory

DRAM_BYTES = 1 << 16
TIMEOUT = 20_000       # cycles one instruction may take before the test calls it a hang
#: A whole accumulator row (8 bytes) is narrower than this configuration's 32-byte bus.
NARROW = Config(name="narrow", rows=2, cols=2, spad_bytes=1024, spad_banks=2, acc_bytes=2048, acc_banks=1,
                dma_bus_bits=256)


def _memories(config: Config, rng: np.random.Generator):
    spad_init = rng.integers(-128, 128, size=(config.spad_rows, config.cols))
    acc_init = rng.integers(-(1 << 31), 1 << 31, size=(config.acc_rows, config.cols))
    spad = BankedMemory(shape=data.ArrayLayout(signed(8), config.cols), depth=config.spad_rows,
                        banks=config.spad_banks, init=spad_init.tolist())
    acc = BankedMemory(shape=data.ArrayLayout(signed(32), config.cols), depth=config.acc_rows,
                       banks=config.acc_banks, init=acc_init.tolist())
    return spad, acc, {Memory.SPAD: spad_init, Memory.ACC: acc_init}


class LoadBench(Elaboratable):
    def __init__(self, config: Config, seed: int, *, max_outstanding: int = 16, rows_in_flight: int = 32):
        self.engine = LoadEngine(config, rows_in_flight=rows_in_flight)
        self.master = AXI4ReadMaster(data_width=config.dma_bus_bits, max_outstanding=max_outstanding)
        self.spad, self.acc, self.local = _memories(config, np.random.default_rng(seed))

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine, m.submodules.master = self.engine, self.master
        m.submodules.spad, m.submodules.acc = self.spad, self.acc
        wiring.connect(m, self.engine.read_req, self.master.req)
        wiring.connect(m, self.master.data, self.engine.read_data)
        wiring.connect(m, self.engine.spad_write, self.spad.dma_write)
        wiring.connect(m, self.engine.acc_write, self.acc.dma_write)
        return m


class StoreBench(Elaboratable):
    def __init__(self, config: Config, seed: int, *, max_outstanding: int = 16):
        self.engine = StoreEngine(config)
        self.master = AXI4WriteMaster(data_width=config.dma_bus_bits, max_outstanding=max_outstanding)
        self.spad, self.acc, self.local = _memories(config, np.random.default_rng(seed))

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine, m.submodules.master = self.engine, self.master
        m.submodules.spad, m.submodules.acc = self.spad, self.acc
        wiring.connect(m, self.engine.write_req, self.master.req)
        wiring.connect(m, self.engine.write_data, self.master.data)
        wiring.connect(m, self.master.resp, self.engine.write_resp)
        wiring.connect(m, self.engine.spad_read, self.spad.dma_read)
        wiring.connect(m, self.engine.acc_read, self.acc.dma_read)
        return m


def _simulate(bench, memory: AXI4Memory, testbench, *, conflict: float, seed: int,
              events_layout: data.StructLayout) -> dict[str, int]:
    """Run ``testbench`` on ``bench``; returns the live per-counter event totals it sees."""
    totals = dict.fromkeys(events_layout.members, 0)

    async def monitor(ctx):
        names = list(events_layout.members)
        fields = [getattr(bench.engine.events, name) for name in names]
        async for _, _, *values in ctx.tick().sample(*fields):
            for name, value in zip(names, values, strict=True):
                totals[name] += value

    async def compute_traffic(ctx):
        # The compute ports take random banks; mask 0 so that they never change a row.
        rng = random.Random(seed)
        for memory_ in (bench.spad, bench.acc):
            ctx.set(memory_.compute_write.mask, 0)
        while True:
            for memory_ in (bench.spad, bench.acc):
                for port in (memory_.compute_write, memory_.compute_read):
                    ctx.set(port.en, rng.random() < conflict)
                    ctx.set(port.addr, rng.randrange(memory_.depth))
            await ctx.tick()

    sim = Simulator(bench)
    sim.add_clock(1e-8)
    memory.add_to(sim)
    sim.add_process(monitor)
    if conflict:
        sim.add_process(compute_traffic)
    async def run_testbench(ctx):
        await testbench(ctx, totals)

    sim.add_testbench(run_testbench)
    sim.run()
    return totals


async def _execute(ctx, stream, insn: Instruction, engine) -> tuple[int, int, int]:
    """Offer one instruction; returns (error, cause, cycles from acceptance to done)."""
    ctx.set(stream.payload.as_value(), insn.encode())
    ctx.set(stream.valid, 1)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)
    for cycles in range(1, TIMEOUT):
        _, _, done, error, cause = await ctx.tick().sample(engine.done, engine.error, engine.cause)
        if done:
            await ctx.tick()    # let the event monitor see the done cycle
            return error, cause, cycles
    raise AssertionError(f"{insn} did not finish in {TIMEOUT} cycles")


def _read_local(ctx, memory: BankedMemory) -> np.ndarray:
    return np.array([list(ctx.get(memory.storage_row(row))) for row in range(memory.depth)], dtype=np.int64)


def _row_to_bytes(values: np.ndarray, mem: Memory) -> bytes:
    return values.astype(np.int8 if mem is Memory.SPAD else "<i4").tobytes()


def _row_from_bytes(blob: bytes, mem: Memory, cols: int) -> np.ndarray:
    values = np.frombuffer(blob, dtype=np.int8 if mem is Memory.SPAD else "<i4").astype(np.int64)
    return np.concatenate([values, np.zeros(cols - len(values), dtype=np.int64)])


def _random_copy(rng: random.Random, config: Config, opcode: str, max_rows: int, *, dram_bytes=DRAM_BYTES,
                 zero_chance=0.0) -> Instruction:
    """A random legal LOAD/STORE: any length, alignment and stride, rows inside both memories."""
    mem = rng.choice([Memory.SPAD, Memory.ACC])
    length = rng.choice([1, config.cols, rng.randint(1, config.cols)])
    row_bytes = length * element_bytes(mem)
    rows = rng.randint(1, max_rows)
    stride = rng.choice([row_bytes, row_bytes + rng.randint(1, 40), rng.randint(0, 3 * row_bytes),
                         config.dma_bus_bytes * rng.randint(1, 4)])
    span = (rows - 1) * stride + row_bytes
    dram = rng.randrange(dram_bytes - span + 1)
    if rng.random() < 0.3:
        dram -= dram % config.dma_bus_bytes
    local_rows = config.spad_rows if mem is Memory.SPAD else config.acc_rows
    fields = dict(mem=mem, addr=rng.randrange(local_rows - rows + 1), rows=rows, len=length, dram=dram,
                  stride=stride)
    if opcode == "load":
        fields["zero"] = rng.random() < zero_chance
    return Instruction.make(opcode, **fields)


def _edge_copies(config: Config, opcode: str) -> list[Instruction]:
    """Shapes random addresses rarely hit."""
    bus, cols = config.dma_bus_bytes, config.cols
    return [
        # Full accumulator rows across 4 KiB boundaries, starting late in a bus word.
        Instruction.make(opcode, mem="acc", addr=1, rows=3, len=cols, dram=0x2000 - 2 * cols - 1,
                         stride=0x1000),
        # Stride 0: every row is the same external bytes.
        Instruction.make(opcode, mem="spad", addr=5, rows=4, len=max(1, cols - 1), dram=0x3001, stride=0),
        # One byte in the last lane of consecutive bus words.
        Instruction.make(opcode, mem="spad", addr=9, rows=5, len=1, dram=0x4000 + bus - 1, stride=bus),
        # Rows packed back to back, unaligned: neighbouring rows share bus words.
        Instruction.make(opcode, mem="spad", addr=20, rows=2 * bus, len=cols, dram=0x5003, stride=cols),
    ]


def _check_counts(config: Config, insn: Instruction, before: dict, after: dict, cycles: int):
    delta = {name: after[name] - before[name] for name in after}
    loading = insn.opcode is Opcode.LOAD
    moved = 0 if loading and insn.zero else insn.rows * insn.len * element_bytes(insn.mem)
    local = "spad" if insn.mem is Memory.SPAD else "acc"
    other = "acc" if local == "spad" else "spad"
    if loading:
        assert delta["dma_read_bytes"] == moved
        assert delta["axi_read_beats"] == axi_beats(insn, config)
        assert (delta[f"{local}_writes"], delta[f"{other}_writes"]) == (insn.rows, 0)
        assert delta["load_busy"] == cycles
    else:
        assert delta["dma_write_bytes"] == moved
        assert delta["axi_write_beats"] == axi_beats(insn, config)
        assert (delta[f"{local}_reads"], delta[f"{other}_reads"]) == (insn.rows, 0)
        assert delta["store_busy"] == cycles


# --- LOAD -------------------------------------------------------------------------------------


def _load_random(config: Config, seed: int, count: int, max_rows: int, rows_in_flight: int):
    rng = random.Random(seed)
    bench = LoadBench(config, seed, rows_in_flight=rows_in_flight)
    dram = np.random.default_rng(seed).integers(0, 256, DRAM_BYTES, dtype=np.uint8)
    memory = AXI4Memory(bench.master.m_axi, DRAM_BYTES, read_latency=rng.randint(1, 6), stall=0.3,
                        seed=seed, data=dram.tobytes())
    program = _edge_copies(config, "load")
    program += [_random_copy(rng, config, "load", max_rows, zero_chance=0.15) for _ in range(count)]
    expected = {mem: rows.copy() for mem, rows in bench.local.items()}

    async def testbench(ctx, totals):
        for insn in program:
            before, served = dict(totals), memory.stats.read_beats
            error, cause, cycles = await _execute(ctx, bench.engine.insn, insn, bench.engine)
            assert (error, cause) == (0, ErrorCause.NONE), insn
            for r in range(insn.rows):
                row_bytes = insn.len * element_bytes(insn.mem)
                start = insn.dram + r * insn.stride
                blob = bytes(row_bytes) if insn.zero else dram[start:start + row_bytes].tobytes()
                expected[insn.mem][insn.addr + r] = _row_from_bytes(blob, insn.mem, config.cols)
            _check_counts(config, insn, before, totals, cycles)
            assert memory.stats.read_beats - served == axi_beats(insn, config), insn
        for mem, local in ((Memory.SPAD, bench.spad), (Memory.ACC, bench.acc)):
            np.testing.assert_array_equal(_read_local(ctx, local), expected[mem], err_msg=mem.name)

    _simulate(bench, memory, testbench, conflict=0.3, seed=seed, events_layout=load_events_layout(config))


@pytest.mark.parametrize(("config", "seed", "count", "max_rows", "rows_in_flight"), [
    (PRESETS["tiny"], 1, 40, 24, 4),      # few rows in flight: the request side waits for data
    (PRESETS["default"], 2, 30, 12, 32),
    (PRESETS["large"], 3, 12, 8, 32),
    (NARROW, 4, 20, 10, 4),
], ids=lambda value: value.name if isinstance(value, Config) else None)
def test_load_random_shapes(config, seed, count, max_rows, rows_in_flight):
    _load_random(config, seed, count, max_rows, rows_in_flight)


def _assert_loaded(ctx, bench: LoadBench, dram: np.ndarray, insn: Instruction):
    """The scratchpad rows ``insn`` wrote hold its external rows."""
    spad = _read_local(ctx, bench.spad)
    for r in range(insn.rows):
        start = insn.dram + r * insn.stride
        blob = dram[start:start + insn.len].tobytes()
        cols = bench.engine.config.cols
        np.testing.assert_array_equal(spad[insn.addr + r], _row_from_bytes(blob, Memory.SPAD, cols))


def test_load_errors_and_recovery():
    """DECERR beyond the memory, SLVERR inside it and rows past 2**32 give DRAM_RANGE; then a LOAD works."""
    config = PRESETS["tiny"]
    bench = LoadBench(config, 4)
    dram = np.random.default_rng(4).integers(0, 256, DRAM_BYTES, dtype=np.uint8)
    memory = AXI4Memory(bench.master.m_axi, DRAM_BYTES, read_latency=3, stall=0.2, seed=4,
                        error_regions=[(0x8000, 0x8010)], data=dram.tobytes())
    failing = [
        # The fourth row runs past the end of the memory model (DECERR).
        Instruction.make("load", mem="acc", addr=0, rows=6, len=4, dram=DRAM_BYTES - 3 * 100 - 5, stride=100),
        # Row 2 touches the SLVERR region.
        Instruction.make("load", mem="spad", addr=10, rows=8, len=3, dram=0x8000 - 2 * 7 - 1, stride=7),
        # Row 1 would pass the 32-bit address space: no request is made for it.
        Instruction.make("load", mem="spad", addr=0, rows=3, len=4, dram=0xffff_fff0, stride=0x10),
    ]
    good = Instruction.make("load", mem="spad", addr=100, rows=5, len=3, dram=0x123, stride=9)

    async def testbench(ctx, totals):
        for insn in failing:
            bursts = memory.stats.read_bursts
            error, cause, _ = await _execute(ctx, bench.engine.insn, insn, bench.engine)
            assert (error, cause) == (1, ErrorCause.DRAM_RANGE), insn
            assert not ctx.get(bench.master.busy), "the read master must be drained after an error"
        assert memory.stats.read_bursts - bursts == 1, "no request for rows past the address space"
        bursts = memory.stats.read_bursts
        error, cause, _ = await _execute(ctx, bench.engine.insn, good, bench.engine)
        assert (error, cause) == (0, ErrorCause.NONE)
        assert memory.stats.read_bursts - bursts == good.rows
        _assert_loaded(ctx, bench, dram, good)

    _simulate(bench, memory, testbench, conflict=0.0, seed=4, events_layout=load_events_layout(config))


async def _stream(ctx, engine, program: list[Instruction]) -> tuple[list[int], list[tuple[int, int]]]:
    """Offer ``program`` back to back; returns the acceptance cycles and the (cycle, error) of each done."""
    accepted, reports = [], []
    cycle = 0
    while len(reports) < len(program):
        if len(accepted) < len(program):
            ctx.set(engine.insn.payload.as_value(), program[len(accepted)].encode())
        ctx.set(engine.insn.valid, len(accepted) < len(program))
        _, _, valid, ready, done, error = await ctx.tick().sample(engine.insn.valid, engine.insn.ready,
                                                                  engine.done, engine.error)
        if valid and ready:
            accepted.append(cycle)
        if done:
            reports.append((cycle, error))
        cycle += 1
        assert cycle < TIMEOUT * len(program), "the engine hangs"
    await ctx.tick()    # let the event monitor see the last done cycle
    return accepted, reports


def _check_overlap(config: Config, accepted: list[int], reports: list[tuple[int, int]]):
    """At most load_overlap LOADs in flight; with more than 1, some start before the previous one ends."""
    dones = [cycle for cycle, _ in reports]
    for index, start in enumerate(accepted):
        in_flight = sum(1 for done in dones[:index] if done >= start) + 1
        assert in_flight <= config.load_overlap, (index, in_flight)
    overlapped = sum(1 for index in range(1, len(accepted)) if accepted[index] <= dones[index - 1])
    if config.load_overlap == 1:
        assert overlapped == 0
    else:
        assert overlapped >= len(accepted) // 4, f"only {overlapped} of {len(accepted)} LOADs overlapped"


@pytest.mark.parametrize(("config", "seed", "count", "max_rows"), [
    (PRESETS["tiny"].replace(load_overlap=2), 5, 40, 6),
    (PRESETS["default"], 6, 30, 4),
    (NARROW.replace(load_overlap=8), 7, 30, 3),
    (PRESETS["tiny"], 8, 12, 6),
], ids=lambda value: f"{value.name}-overlap{value.load_overlap}" if isinstance(value, Config) else None)
def test_load_overlapped_stream(config, seed, count, max_rows):
    """LOADs offered back to back land and report done in program order, up to load_overlap at once."""
    rng = random.Random(seed)
    bench = LoadBench(config, seed, rows_in_flight=8)
    dram = np.random.default_rng(seed).integers(0, 256, DRAM_BYTES, dtype=np.uint8)
    memory = AXI4Memory(bench.master.m_axi, DRAM_BYTES, read_latency=rng.randint(4, 10), stall=0.3,
                        seed=seed, data=dram.tobytes())
    # Few local rows, so consecutive LOADs often write the same rows: the last writer must win.
    program = [_random_copy(rng, config, "load", max_rows, zero_chance=0.2) for _ in range(count)]
    program = [insn.replace(addr=insn.addr % 8) for insn in program]
    expected = {mem: rows.copy() for mem, rows in bench.local.items()}
    for insn in program:
        for r in range(insn.rows):
            row_bytes = insn.len * element_bytes(insn.mem)
            start = insn.dram + r * insn.stride
            blob = bytes(row_bytes) if insn.zero else dram[start:start + row_bytes].tobytes()
            expected[insn.mem][insn.addr + r] = _row_from_bytes(blob, insn.mem, config.cols)

    async def testbench(ctx, totals):
        accepted, reports = await _stream(ctx, bench.engine, program)
        assert [error for _, error in reports] == [0] * count
        _check_overlap(config, accepted, reports)
        assert memory.stats.read_beats == sum(axi_beats(insn, config) for insn in program)
        assert totals["dma_read_bytes"] == sum(insn.rows * insn.len * element_bytes(insn.mem)
                                               for insn in program if not insn.zero)
        for mem, local in ((Memory.SPAD, bench.spad), (Memory.ACC, bench.acc)):
            np.testing.assert_array_equal(_read_local(ctx, local), expected[mem], err_msg=mem.name)

    _simulate(bench, memory, testbench, conflict=0.3, seed=seed, events_layout=load_events_layout(config))


def test_load_overlapped_errors():
    """With overlap, the failing LOAD (not the one before it) reports DRAM_RANGE, and everything drains."""
    config = PRESETS["tiny"].replace(load_overlap=4)
    bench = LoadBench(config, 9)
    dram = np.random.default_rng(9).integers(0, 256, DRAM_BYTES, dtype=np.uint8)
    memory = AXI4Memory(bench.master.m_axi, DRAM_BYTES, read_latency=12, stall=0.2, seed=9,
                        error_regions=[(0x8000, 0x8010)], data=dram.tobytes())
    good = Instruction.make("load", mem="spad", addr=100, rows=5, len=3, dram=0x123, stride=9)
    zero = Instruction.make("load", mem="acc", addr=3, rows=4, len=4, dram=0, stride=0, zero=True)
    past_space = Instruction.make("load", mem="spad", addr=0, rows=3, len=4, dram=0xffff_fff0, stride=0x10)
    slverr = Instruction.make("load", mem="spad", addr=10, rows=8, len=3, dram=0x8000 - 2 * 7 - 1, stride=7)
    programs = [
        ([good, past_space, good, good], 1),      # found while issuing, as `good` still receives data
        ([good, zero, slverr, good], 2),          # an AXI error response
    ]

    async def testbench(ctx, totals):
        for program, failing in programs:
            _, reports = await _stream(ctx, bench.engine, program)
            errors = [error for _, error in reports]
            assert errors[:failing] == [0] * failing and errors[failing] == 1, errors
            assert not ctx.get(bench.master.busy), "the read master must be drained after an error"
            assert not ctx.get(bench.engine.busy)
        _, reports = await _stream(ctx, bench.engine, [good, good])
        assert [error for _, error in reports] == [0, 0], "the engine recovers after an error"
        _assert_loaded(ctx, bench, dram, good)

    _simulate(bench, memory, testbench, conflict=0.0, seed=9, events_layout=load_events_layout(config))


def test_load_throughput():
    """A long aligned LOAD keeps the bus busy: close to one bus word per cycle after the latency."""
    config = PRESETS["default"]
    bench = LoadBench(config, 5, max_outstanding=32)
    memory = AXI4Memory(bench.master.m_axi, DRAM_BYTES, read_latency=config.mem_latency, seed=5,
                        max_outstanding=32)
    insn = Instruction.make("load", mem="spad", addr=0, rows=256, len=8, dram=0x1000, stride=8)
    beats = axi_beats(insn, config)
    measured = {}

    async def testbench(ctx, totals):
        _, _, measured["cycles"] = await _execute(ctx, bench.engine.insn, insn, bench.engine)

    totals = _simulate(bench, memory, testbench, conflict=0.0, seed=5,
                       events_layout=load_events_layout(config))
    print(f"LOAD 256 rows x 8 bytes (default, latency {config.mem_latency}): {measured['cycles']} cycles "
          f"for {beats} beats; stall_axi_read {totals['stall_axi_read']}")
    assert beats == 256
    assert measured["cycles"] <= beats + config.mem_latency + 8


def test_load_zero_rows_take_one_cycle_each():
    config = PRESETS["tiny"]
    bench = LoadBench(config, 6)
    memory = AXI4Memory(bench.master.m_axi, DRAM_BYTES, seed=6)
    insn = Instruction.make("load", mem="acc", zero=True, addr=7, rows=40, len=2)

    async def testbench(ctx, totals):
        _, _, cycles = await _execute(ctx, bench.engine.insn, insn, bench.engine)
        assert cycles <= insn.rows + 2
        acc = _read_local(ctx, bench.acc)
        assert not acc[7:47].any()
        np.testing.assert_array_equal(acc[47:], bench.local[Memory.ACC][47:])

    _simulate(bench, memory, testbench, conflict=0.0, seed=6, events_layout=load_events_layout(config))
    assert memory.stats.read_bursts == 0


# --- STORE ------------------------------------------------------------------------------------


def _store_random(config: Config, seed: int, count: int, max_rows: int):
    rng = random.Random(seed)
    bench = StoreBench(config, seed)
    background = np.random.default_rng(seed).integers(0, 256, DRAM_BYTES, dtype=np.uint8)
    memory = AXI4Memory(bench.master.m_axi, DRAM_BYTES, write_latency=rng.randint(1, 6), stall=0.3,
                        seed=seed, data=background.tobytes())
    program = _edge_copies(config, "store")
    program += [_random_copy(rng, config, "store", max_rows) for _ in range(count)]
    expected = background.copy()

    async def testbench(ctx, totals):
        for insn in program:
            before, served = dict(totals), memory.stats.write_beats
            error, cause, cycles = await _execute(ctx, bench.engine.insn, insn, bench.engine)
            assert (error, cause) == (0, ErrorCause.NONE), insn
            for r in range(insn.rows):
                blob = _row_to_bytes(bench.local[insn.mem][insn.addr + r][:insn.len], insn.mem)
                start = insn.dram + r * insn.stride
                expected[start:start + len(blob)] = np.frombuffer(blob, dtype=np.uint8)
            _check_counts(config, insn, before, totals, cycles)
            assert memory.stats.write_beats - served == axi_beats(insn, config), insn
            np.testing.assert_array_equal(memory.mem, expected, err_msg=str(insn))

    _simulate(bench, memory, testbench, conflict=0.3, seed=seed, events_layout=store_events_layout(config))


@pytest.mark.parametrize(("config", "seed", "count", "max_rows"), [
    (PRESETS["tiny"], 11, 40, 24),
    (PRESETS["default"], 12, 30, 12),
    (PRESETS["large"], 13, 12, 8),
    (NARROW, 14, 20, 10),
    (PRESETS["default"].replace(name="default_store_ahead", store_ahead=1), 16, 30, 24),
], ids=lambda value: value.name if isinstance(value, Config) else None)
def test_store_random_shapes(config, seed, count, max_rows):
    _store_random(config, seed, count, max_rows)


@pytest.mark.parametrize("store_ahead", [0, 1])
def test_store_errors_and_recovery(store_ahead):
    config = PRESETS["tiny"].replace(store_ahead=store_ahead)
    bench = StoreBench(config, 14)
    memory = AXI4Memory(bench.master.m_axi, DRAM_BYTES, stall=0.2, seed=14, error_regions=[(0x4000, 0x4004)])
    failing = [
        Instruction.make("store", mem="acc", addr=3, rows=5, len=3, dram=DRAM_BYTES - 2 * 50 - 7, stride=50),
        Instruction.make("store", mem="spad", addr=0, rows=9, len=4, dram=0x4000 - 5 * 4, stride=4),
        Instruction.make("store", mem="spad", addr=0, rows=2, len=4, dram=0xffff_fffc, stride=4),
    ]
    good = Instruction.make("store", mem="acc", addr=20, rows=3, len=4, dram=0x201, stride=21)

    async def testbench(ctx, totals):
        for insn in failing:
            bursts = memory.stats.write_bursts
            error, cause, _ = await _execute(ctx, bench.engine.insn, insn, bench.engine)
            assert (error, cause) == (1, ErrorCause.DRAM_RANGE), insn
            assert not ctx.get(bench.master.busy), "the write master must be drained after an error"
        assert memory.stats.write_bursts - bursts == 1, "no request for rows past the address space"
        error, cause, _ = await _execute(ctx, bench.engine.insn, good, bench.engine)
        assert (error, cause) == (0, ErrorCause.NONE)
        for r in range(good.rows):
            start = good.dram + r * good.stride
            row = bench.local[Memory.ACC][good.addr + r]
            assert memory.read_bytes(start, 16) == _row_to_bytes(row, Memory.ACC)

    _simulate(bench, memory, testbench, conflict=0.0, seed=14, events_layout=store_events_layout(config))


def test_store_throughput():
    config = PRESETS["default"]
    bench = StoreBench(config, 15, max_outstanding=32)
    memory = AXI4Memory(bench.master.m_axi, DRAM_BYTES, write_latency=config.mem_latency, seed=15,
                        max_outstanding=32)
    insn = Instruction.make("store", mem="acc", addr=0, rows=256, len=4, dram=0x2000, stride=16)
    beats = axi_beats(insn, config)
    measured = {}

    async def testbench(ctx, totals):
        _, _, measured["cycles"] = await _execute(ctx, bench.engine.insn, insn, bench.engine)

    _simulate(bench, memory, testbench, conflict=0.0, seed=15, events_layout=store_events_layout(config))
    print(f"STORE 256 rows x 16 bytes (default, write latency {config.mem_latency}): "
          f"{measured['cycles']} cycles for {beats} beats")
    assert measured["cycles"] <= beats + config.mem_latency + 8


# --- COUNTERS write-out ------------------------------------------------------------------------


@pytest.mark.parametrize(("preset", "seed"), [("tiny", 21), ("default", 22), ("large", 23)])
def test_counters_writeout(preset, seed):
    """Snapshots at every alignment land byte-exact; bytes around them are untouched; errors end cleanly."""
    config = PRESETS[preset]
    rng = random.Random(seed)
    bench = StoreBench(config, seed)
    background = np.random.default_rng(seed).integers(0, 256, DRAM_BYTES, dtype=np.uint8)
    memory = AXI4Memory(bench.master.m_axi, DRAM_BYTES, stall=0.3, seed=seed, data=background.tobytes())
    bus = config.dma_bus_bytes
    # Every offset within a bus word, one snapshot crossing 4 KiB, and one run past the memory (DECERR).
    starts = [rng.randrange(0, DRAM_BYTES // 2, bus) + offset for offset in range(bus)] + [0x3000 - 100]
    failing = DRAM_BYTES - 100
    expected = background.copy()
    engine = bench.engine

    async def feed(ctx, words):
        for index, word in enumerate(words):
            ctx.set(engine.snapshot.payload.value, word)
            ctx.set(engine.snapshot.payload.last, index == len(words) - 1)
            while rng.random() < 0.3:
                ctx.set(engine.snapshot.valid, 0)
                await ctx.tick()
            ctx.set(engine.snapshot.valid, 1)
            await ctx.tick().until(engine.snapshot.ready)
        ctx.set(engine.snapshot.valid, 0)

    async def testbench(ctx, totals):
        for dram in [*starts, failing]:
            words = [rng.getrandbits(64) for _ in COUNTERS]
            before, served = dict(totals), memory.stats.write_beats
            insn = Instruction.make("counters", dram=dram)
            ctx.set(engine.counters.payload.as_value(), insn.encode())
            ctx.set(engine.counters.valid, 1)
            await ctx.tick().until(engine.counters.ready)
            ctx.set(engine.counters.valid, 0)
            await feed(ctx, words)
            for _ in range(TIMEOUT):
                _, _, done, error, cause = await ctx.tick().sample(engine.done, engine.error, engine.cause)
                if done:
                    break
            else:
                raise AssertionError(f"COUNTERS at {dram:#x} did not finish")
            await ctx.tick()
            if dram == failing:
                assert (error, cause) == (1, ErrorCause.DRAM_RANGE)
                continue
            assert (error, cause) == (0, ErrorCause.NONE), hex(dram)
            blob = b"".join(word.to_bytes(8, "little") for word in words)
            expected[dram:dram + SNAPSHOT_BYTES] = np.frombuffer(blob, dtype=np.uint8)
            np.testing.assert_array_equal(memory.mem, expected, err_msg=hex(dram))
            assert totals["dma_write_bytes"] - before["dma_write_bytes"] == SNAPSHOT_BYTES
            beats = axi_beats(Instruction.make("counters", dram=dram), config)
            assert totals["axi_write_beats"] - before["axi_write_beats"] == beats
            assert memory.stats.write_beats - served == beats
            assert totals["store_busy"] == before["store_busy"]

    _simulate(bench, memory, testbench, conflict=0.0, seed=seed, events_layout=store_events_layout(config))


def test_counters_past_address_space_consumes_the_snapshot():
    config = PRESETS["tiny"]
    bench = StoreBench(config, 24)
    memory = AXI4Memory(bench.master.m_axi, DRAM_BYTES, seed=24)
    engine = bench.engine

    async def testbench(ctx, totals):
        ctx.set(engine.counters.payload.as_value(), Instruction.make("counters", dram=0xffff_ff80).encode())
        ctx.set(engine.counters.valid, 1)
        await ctx.tick().until(engine.counters.ready)
        ctx.set(engine.counters.valid, 0)
        ctx.set(engine.snapshot.valid, 1)
        for index in range(len(COUNTERS)):
            ctx.set(engine.snapshot.payload.last, index == len(COUNTERS) - 1)
            await ctx.tick().until(engine.snapshot.ready)
        ctx.set(engine.snapshot.valid, 0)
        error, cause = await ctx.tick().sample(engine.error, engine.cause).until(engine.done)
        assert (error, cause) == (1, ErrorCause.DRAM_RANGE)

    totals = _simulate(bench, memory, testbench, conflict=0.0, seed=24,
                       events_layout=store_events_layout(config))
    assert memory.stats.write_bursts == 0
    assert totals["dma_write_bytes"] == totals["axi_write_beats"] == 0


def test_counters_from_the_counter_bank():
    """The engine takes the CounterBank's ``words`` stream as it is: every counter counts every cycle."""
    config = PRESETS["default"]
    bench = StoreBench(config, 25)
    bank = CounterBank(inc_width=8)
    memory = AXI4Memory(bench.master.m_axi, DRAM_BYTES, stall=0.2, seed=25)
    top = Module()
    top.submodules.bench, top.submodules.bank = bench, bank
    wiring.connect(top, bank.words, bench.engine.snapshot)
    engine = bench.engine
    dram = 0x777

    async def testbench(ctx):
        for index in range(len(COUNTERS)):
            ctx.set(bank.inc[index], index + 1)
        await ctx.tick().repeat(50)
        ctx.set(bank.snapshot.valid, 1)
        await ctx.tick().until(bank.snapshot.ready)
        ctx.set(bank.snapshot.valid, 0)
        ctx.set(engine.counters.payload.as_value(), Instruction.make("counters", dram=dram).encode())
        ctx.set(engine.counters.valid, 1)
        await ctx.tick().until(engine.counters.ready)
        ctx.set(engine.counters.valid, 0)
        error, = await ctx.tick().sample(engine.error).until(engine.done)
        assert not error

    sim = Simulator(top)
    sim.add_clock(1e-8)
    memory.add_to(sim)
    sim.add_testbench(testbench)
    sim.run()
    values = list(parse_snapshot(memory.read_bytes(dram, SNAPSHOT_BYTES)).values())
    cycles = values[0]
    assert cycles >= 50
    assert values == [(index + 1) * cycles for index in range(len(COUNTERS))]


# --- construction and Verilog ------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "default", "large"])
def test_verilog_conversion(preset):
    config = PRESETS[preset]
    for engine, port in ((LoadEngine(config), "read_req__valid"), (StoreEngine(config), "write_req__valid")):
        text = verilog.convert(engine, name=f"{type(engine).__name__}_{preset}")
        assert f"module {type(engine).__name__}_{preset}" in text
        assert port in text


def test_bad_parameters_name_the_value():
    with pytest.raises(TypeError, match="'tiny'"):
        LoadEngine("tiny")
    with pytest.raises(ValueError, match="rows_in_flight=3"):
        LoadEngine(PRESETS["tiny"], rows_in_flight=3)
    with pytest.raises(ValueError, match="beats_width=4"):
        StoreEngine(PRESETS["tiny"], beats_width=4)
