"""``Config.store_ahead``: a STORE's write requests run ahead of its data, and the timing model prices
the STORE exactly (``STORE_AHEAD_LATENCY + beats``) on the accelerator with the co-simulation RAM
(:class:`braze.sim.axi_ram.AXIRam`, the Verilator harness's memory), simulated by Amaranth."""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from braze.hw.csr import CTRL_START_RUN, REGISTER_BY_NAME
from braze.hw.top import Accelerator
from braze.isa import PRESETS, SNAPSHOT_BYTES, Config, Instruction, Memory, Opcode
from braze.isa.counters import parse_snapshot
from braze.isa.encoding import encode_program
from braze.isa.timing import axi_beats, element_bytes, instruction_cycles
from braze.sim.axi_memory import AXI4LiteDriver
from braze.sim.axi_ram import AXIRam

_MEM_BYTES = 1 << 16
_BASE, _DATA, _OUT, _SNAP = 0x1000, 0x2000, 0x4000, 0x8000


def _stores(config: Config) -> list[Instruction]:
    """STOREs of one-beat and multi-beat rows, aligned and not, from both memories."""
    cols = config.cols
    shapes = ((1, cols, _OUT, 64), (5, cols, _OUT + 3, 40), (48, cols, _OUT, cols),
              (33, cols // 2, _OUT + 17, 100), (20, 3, _OUT + 1, 7))
    return [Instruction.make(Opcode.STORE, mem=mem, addr=2, rows=rows, len=length, dram=dram, stride=stride)
            for mem in (Memory.SPAD, Memory.ACC) for rows, length, dram, stride in shapes]


def _run(config: Config, stores: list[Instruction]) -> tuple[list[dict], bytes, bytes]:
    """Each STORE between resetting COUNTERS snapshots: (their snapshots, the output area, the bytes LOADed
    into the scratchpad's first 64 rows and, 0x400 on, the accumulator's)."""
    rng = np.random.default_rng(5)
    source = rng.integers(0, 256, 0x1000, dtype=np.uint8).tobytes()
    program = [Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=0, rows=64, len=config.cols, dram=_DATA,
                                stride=config.cols),
               Instruction.make(Opcode.LOAD, mem=Memory.ACC, addr=0, rows=64, len=config.cols,
                                dram=_DATA + 0x400, stride=4 * config.cols),
               Instruction.make(Opcode.COUNTERS, dram=_SNAP, reset=True)]
    for index, store in enumerate(stores):
        program += [store, Instruction.make(Opcode.COUNTERS, dram=_SNAP + (index + 1) * SNAPSHOT_BYTES,
                                            reset=True)]
    program.append(Instruction.make(Opcode.HALT))
    memory = bytearray(_MEM_BYTES)
    blob = encode_program(program)
    memory[_BASE:_BASE + len(blob)] = blob
    memory[_DATA:_DATA + len(source)] = source
    bus = config.dma_bus_bytes
    ram = AXIRam(size=_MEM_BYTES, data_width=config.dma_bus_bits, read_latency=config.mem_latency,
                 max_outstanding=32)
    ram.memory.init = [int.from_bytes(memory[i:i + bus], "little") for i in range(0, _MEM_BYTES, bus)]
    accelerator = Accelerator(config)
    top = Module()
    top.submodules.accelerator = accelerator
    top.submodules.ram = ram
    wiring.connect(top, accelerator.m_axi, ram.s_axi)
    sim = Simulator(top)
    sim.add_clock(1e-8)
    final = {}

    async def testbench(ctx):
        regs = AXI4LiteDriver(ctx, accelerator.s_axil)
        await regs.write(REGISTER_BY_NAME["PROG_BASE_LO"].offset, _BASE)
        await regs.write(REGISTER_BY_NAME["CTRL"].offset, CTRL_START_RUN)
        for _ in range(20_000):
            if ctx.get(accelerator.irq):
                break
            await ctx.tick()
        assert ctx.get(accelerator.irq), "no interrupt"
        final["memory"] = b"".join(ctx.get(ram.memory.data[word]).to_bytes(bus, "little")
                                   for word in range(_MEM_BYTES // bus))

    sim.add_testbench(testbench)
    sim.run()
    image = final["memory"]
    snapshots = [parse_snapshot(image[_SNAP + (i + 1) * SNAPSHOT_BYTES:_SNAP + (i + 2) * SNAPSHOT_BYTES])
                 for i in range(len(stores))]
    return snapshots, image[_OUT:_OUT + 0x1000], source


def _expected(config: Config, stores: list[Instruction], source: bytes) -> bytes:
    """The output area after the STOREs, from the rows the program LOADed (raw bytes both ways)."""
    image = bytearray(0x1000)
    for store in stores:
        args = store.args
        row_bytes = args["len"] * element_bytes(args["mem"])
        local = 0 if args["mem"] is Memory.SPAD else 0x400
        pitch = config.cols * element_bytes(args["mem"])
        for r in range(args["rows"]):
            start = local + (args["addr"] + r) * pitch
            out = args["dram"] - _OUT + r * args["stride"]
            image[out:out + row_bytes] = source[start:start + row_bytes]
    return bytes(image)


def test_store_ahead_is_priced_exactly_and_streams():
    """Every STORE takes STORE_AHEAD_LATENCY + beats cycles and stores its rows; a long STORE of one-beat
    rows moves one beat a cycle (without store_ahead: about three beats every seven cycles)."""
    tiny = PRESETS["tiny"]
    config = tiny.replace(name="tiny_store_ahead", store_ahead=1)
    stores = _stores(config)
    snapshots, stored, source = _run(config, stores)
    assert stored == _expected(config, stores, source)
    for store, snapshot in zip(stores, snapshots, strict=True):
        print(f"{store}: store_busy {snapshot['store_busy']}, model {instruction_cycles(store, config)}")
        assert snapshot["store_busy"] == instruction_cycles(store, config), store
        assert snapshot["insn_store"] == 1
    long_store = stores[2]
    beats = axi_beats(long_store, tiny)
    assert long_store.args["rows"] == beats == 48
    plain = _run(tiny, [long_store])[0][0]["store_busy"]
    print(f"48 one-beat rows: {plain} cycles without store_ahead, {snapshots[2]['store_busy']} with")
    assert plain > 1.8 * beats
