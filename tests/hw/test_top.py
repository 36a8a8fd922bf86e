"""The whole accelerator in Amaranth's simulator against the reference model.

Each test runs a program on :class:`braze.hw.top.Accelerator` (``tiny`` preset) with an
:class:`~braze.sim.axi_memory.AXI4Memory` holding program and data (random stalls) and an
:class:`~braze.sim.axi_memory.AXI4LiteDriver` as the host, and the same program on
:class:`braze.isa.model.Machine` with the same external memory image.  External memory must be
bit-identical (except the timing counters inside COUNTERS snapshots), and every exact counter,
read over AXI4-Lite and from the snapshots, must equal the model's.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from amaranth.sim import Simulator

from braze.hw.csr import REGISTER_BY_NAME, counter_offsets
from braze.hw.top import Accelerator
from braze.isa import (
    COUNTERS,
    INSN_BYTES,
    SNAPSHOT_BYTES,
    Config,
    ConfigReg,
    ErrorCause,
    ExecutionError,
    IllegalInstruction,
    Instruction,
    Opcode,
    encode_program,
    parse_snapshot,
)
from braze.isa.counters import COUNTER_BYTES
from braze.isa.model import Machine
from braze.isa.timing import instruction_cycles
from braze.sim.axi_memory import AXI4LiteDriver, AXI4Memory

TINY = Config.preset("tiny")
EXACT = [spec.name for spec in COUNTERS if spec.exact]
CTRL = REGISTER_BY_NAME["CTRL"]
STATUS = REGISTER_BY_NAME["STATUS"]


def _bit(register, field: str) -> int:
    return 1 << register.field(field).lsb


START = _bit(CTRL, "start") | _bit(CTRL, "irq_en_done") | _bit(CTRL, "irq_en_error")
DONE, ERROR, BUSY = _bit(STATUS, "done"), _bit(STATUS, "error"), _bit(STATUS, "busy")


def make(mnemonic: str, /, **fields) -> Instruction:
    return Instruction.make(mnemonic, **fields)


@dataclasses.dataclass
class HardwareRun:
    """What the host saw of one run."""

    status: int
    cause: ErrorCause
    error_pc: int
    counters: dict[str, int]
    cycles: int           # clock cycles from the CTRL.start write to the interrupt


@dataclasses.dataclass
class Simulation:
    runs: list[HardwareRun]
    memory: np.ndarray    # external memory after the last run
    cycles: int           # simulated cycles in total
    seconds: float        # wall-clock time of the simulation (reported, never asserted)


def simulate(config: Config, image: np.ndarray, bases: list[int], *, seed: int = 0, stall: float = 0.25,
             error_regions=(), max_cycles: int = 20_000, read_counters: bool = True) -> Simulation:
    """Run the programs at ``bases`` one after the other on one accelerator; host waits for irq."""
    dut = Accelerator(config)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    memory = AXI4Memory(dut.m_axi, size=config.dram_bytes, read_latency=config.mem_latency, stall=stall,
                        seed=seed, max_outstanding=16, error_regions=error_regions, data=image.tobytes())
    memory.add_to(sim)
    runs: list[HardwareRun] = []

    async def testbench(ctx):
        regs = AXI4LiteDriver(ctx, dut.s_axil, stall=0.2, seed=seed + 1)
        for base in bases:
            await regs.write(REGISTER_BY_NAME["PROG_BASE_LO"].offset, base)
            await regs.write(CTRL.offset, START)
            cycles = 0
            while not ctx.get(dut.irq):
                await ctx.tick()
                cycles += 1
                assert cycles < max_cycles, f"no interrupt within {max_cycles} cycles (program at {base:#x})"
            status = await regs.read(STATUS.offset)
            cause = ErrorCause(await regs.read(REGISTER_BY_NAME["ERROR_CAUSE"].offset))
            error_pc = await regs.read(REGISTER_BY_NAME["ERROR_PC"].offset)
            counters = {}
            if read_counters:
                for index, spec in enumerate(COUNTERS):
                    if spec.exact:
                        lo, hi = counter_offsets(index)
                        low = await regs.read(lo)
                        counters[spec.name] = low | await regs.read(hi) << 32
            # Acknowledge: the interrupt must drop.
            await regs.write(STATUS.offset, DONE | ERROR)
            await ctx.tick()
            assert not ctx.get(dut.irq)
            runs.append(HardwareRun(status, cause, error_pc, counters, cycles))

    clock = {"cycles": 0}

    async def count_cycles(ctx):
        async for _ in ctx.tick():
            clock["cycles"] += 1

    sim.add_testbench(testbench)
    sim.add_process(count_cycles)
    began = time.perf_counter()
    sim.run()
    return Simulation(runs, memory.mem.copy(), clock["cycles"], time.perf_counter() - began)


@dataclasses.dataclass
class ModelRun:
    cause: ErrorCause
    error_pc: int | None
    counters: dict[str, int]
    cycles: int | None


def run_model(config: Config, image: np.ndarray, bases: list[int]) -> tuple[list[ModelRun], np.ndarray]:
    machine = Machine(config)
    machine.write_dram(0, image)
    runs = []
    for base in bases:
        try:
            result = machine.run(base)
        except (ExecutionError, IllegalInstruction) as error:
            runs.append(ModelRun(error.cause, error.pc, _model_counters(machine), None))
        else:
            runs.append(ModelRun(ErrorCause.NONE, None, result.counters, result.cycles))
    return runs, machine.dram.copy()


def _model_counters(machine: Machine) -> dict[str, int]:
    return {spec.name: int(value) for spec, value in zip(COUNTERS, machine.counters, strict=True)}


def timing_bytes_mask(size: int, snapshots: list[int]) -> np.ndarray:
    """True for the bytes of external memory that hold timing (inexact) counters of a snapshot."""
    mask = np.zeros(size, dtype=bool)
    for addr in snapshots:
        for index, spec in enumerate(COUNTERS):
            if not spec.exact:
                mask[addr + index * COUNTER_BYTES:addr + (index + 1) * COUNTER_BYTES] = True
    return mask


def image_with(config: Config, program: list[Instruction], base: int, blobs: dict[int, bytes]) -> np.ndarray:
    image = np.zeros(config.dram_bytes, dtype=np.uint8)
    code = np.frombuffer(encode_program(program), dtype=np.uint8)
    image[base:base + len(code)] = code
    for addr, blob in blobs.items():
        raw = np.frombuffer(bytes(blob), dtype=np.uint8)
        image[addr:addr + len(raw)] = raw
    return image


def check_against_model(config, image, bases, *, snapshots=(), seed=0, stall=0.25, error_regions=()):
    """Run on both; assert identical memory, status and exact counters; return both runs."""
    model_runs, model_memory = run_model(config, image, bases)
    hw = simulate(config, image, bases, seed=seed, stall=stall, error_regions=error_regions)
    mask = timing_bytes_mask(config.dram_bytes, list(snapshots))
    differ = np.flatnonzero((hw.memory != model_memory) & ~mask)
    assert differ.size == 0, (f"external memory differs at {differ.size} bytes, first at {differ[0]:#x}: "
                              f"hardware {hw.memory[differ[0]]:#x}, model {model_memory[differ[0]]:#x}")
    for hw_run, model_run in zip(hw.runs, model_runs, strict=True):
        assert hw_run.cause == model_run.cause
        if model_run.cause == ErrorCause.NONE:
            assert hw_run.status & (DONE | ERROR | BUSY) == DONE
        else:
            assert hw_run.status & (DONE | ERROR | BUSY) == ERROR
            assert hw_run.error_pc == model_run.error_pc
        if model_run.cause == ErrorCause.DRAM_RANGE:
            # The model gives a failing instruction no effect; the hardware has moved (and
            # counted) the rows before the failing beat.  The exact counters then differ.
            continue
        for name in EXACT:
            assert hw_run.counters[name] == model_run.counters[name], name
    for addr in snapshots:
        hw_snap = parse_snapshot(hw.memory[addr:addr + SNAPSHOT_BYTES].tobytes())
        model_snap = parse_snapshot(model_memory[addr:addr + SNAPSHOT_BYTES].tobytes())
        assert {n: hw_snap[n] for n in EXACT} == {n: model_snap[n] for n in EXACT}
    return hw, model_runs


def test_load_store_halt():
    rng = np.random.default_rng(1)
    base, src, dst = 0x1000, 0x2000, 0x3000
    program = [
        make("load", mem="spad", addr=3, rows=5, len=4, dram=src + 1, stride=7, push_next=True),
        make("vector", op="mov", dst_mem="spad", src1_mem="spad", dst=3, src1=3, rows=5,
             pop_prev=True, push_next=True),
        make("store", mem="spad", addr=3, rows=5, len=3, dram=dst + 5, stride=9, pop_prev=True),
        make("halt"),
    ]
    image = image_with(TINY, program, base, {src: rng.integers(0, 256, 64, dtype=np.uint8).tobytes()})
    hw, model = check_against_model(TINY, image, [base])
    print(f"cycles {hw.cycles} in {hw.seconds:.1f}s = {hw.cycles / hw.seconds:.0f} cycles/s; "
          f"run {hw.runs[0].cycles} vs model {model[0].cycles}")


def _int8(rng, *shape) -> np.ndarray:
    return rng.integers(-128, 128, shape, dtype=np.int8)


def gemm_program(config: Config, rng, *, base: int):
    """Two MATMULs (one accumulating, partial K chunk), a fused EPILOGUE, VECTOR ops, STOREs, COUNTERS.

    Returns (program, blobs, snapshot addresses, matmul instructions).
    """
    m, k, n = 6, 2 * config.rows, config.cols
    k2 = config.rows - 1
    a_addr, b_addr, a2_addr, b2_addr = 0x4000, 0x4100, 0x4200, 0x4300
    bias_addr, quant_addr, res_addr = 0x4400, 0x4440, 0x4480
    out_epi, out_vec, out_mul = 0x5003, 0x5101, 0x5207
    snap1, snap2 = 0x6000, 0x6100
    mult = rng.integers(1 << 8, 1 << 12, config.cols).astype(np.int32)
    shift = rng.integers(12, 18, config.cols).astype(np.int32)
    blobs = {
        a_addr: _int8(rng, m, k).tobytes(),
        b_addr: _int8(rng, k, config.cols).tobytes(),
        a2_addr: _int8(rng, m, k2).tobytes(),
        b2_addr: _int8(rng, k2, config.cols).tobytes(),
        bias_addr: rng.integers(-5000, 5000, config.cols).astype("<i4").tobytes(),
        quant_addr: np.concatenate([mult, shift]).astype("<i4").tobytes(),
        res_addr: _int8(rng, m, config.cols).tobytes(),
    }
    rows = config.rows
    matmuls = [
        make("matmul", acc=0, a=0, b=16, a_stride=m, m=m, n=n, k=k, pop_prev=True),
        make("matmul", acc=0, a=40, b=48, a_stride=m, m=m, n=n - 1, k=k2, accumulate=True),
    ]
    program = [
        # A in K-chunks of `rows` bytes per scratchpad row; B one row per k.
        make("load", mem="spad", addr=0, rows=m, len=rows, dram=a_addr, stride=k),
        make("load", mem="spad", addr=m, rows=m, len=rows, dram=a_addr + rows, stride=k),
        make("load", mem="spad", addr=16, rows=k, len=n, dram=b_addr, stride=config.cols),
        make("load", mem="spad", addr=40, rows=m, len=k2, dram=a2_addr, stride=k2),
        make("load", mem="spad", addr=48, rows=k2, len=n, dram=b2_addr, stride=config.cols),
        make("load", mem="acc", addr=100, rows=1, len=config.cols, dram=bias_addr, stride=0),
        make("load", mem="acc", addr=101, rows=2, len=config.cols, dram=quant_addr, stride=4 * config.cols),
        make("load", mem="spad", addr=32, rows=m, len=config.cols, dram=res_addr, stride=config.cols),
        make("load", mem="spad", zero=True, addr=60, rows=m, len=config.cols, push_next=True),
        matmuls[0],
        matmuls[1],
        make("config", reg=ConfigReg.CLIP_LO, value=-50),
        make("config", reg=ConfigReg.CLIP_HI, value=90),
        make("config", reg=ConfigReg.OUT_ZP, value=3),
        make("epilogue", src=0, m=m, n=n - 1, dst=70, out="spad", bias=True, bias_addr=100, requant=True,
             quant_addr=101, residual=True, res_addr=32, act="clip"),
        make("epilogue", src=0, m=m, n=n, dst=110, out="acc", act="relu"),
        make("vector", op="add", dst_mem="acc", src1_mem="spad", src2_mem="acc", dst=120, src1=70, src2=0,
             rows=m),
        make("vector", op="sub", dst_mem="spad", src1_mem="spad", src2_mem="spad", dst=80, src1=70,
             src2=32, rows=m),
        make("vector", op="mul", dst_mem="spad", src1_mem="acc", dst=90, src1=120, use_imm=True, imm=-77,
             shift=3, rows=m),
        make("vector", op="max", dst_mem="spad", src1_mem="spad", src2_mem="spad", dst=80, src1=80, src2=60,
             rows=m),
        make("vector", op="clip", dst_mem="acc", src1_mem="acc", dst=110, src1=110, rows=m, push_next=True),
        make("store", mem="spad", addr=70, rows=m, len=n - 1, dram=out_epi, stride=5, pop_prev=True),
        make("store", mem="acc", addr=120, rows=m, len=n, dram=out_vec, stride=4 * n + 3),
        make("store", mem="spad", addr=80, rows=2 * m + 4, len=n, dram=out_mul, stride=n),
        make("store", mem="acc", addr=110, rows=m, len=n - 2, dram=out_mul + 0x80, stride=16),
        make("counters", dram=snap1, reset=True),
        make("fence"),
        make("load", mem="acc", addr=200, rows=3, len=2, dram=a_addr + 1, stride=11, push_next=True),
        make("vector", op="shr", dst_mem="acc", src1_mem="acc", dst=200, src1=200, rows=3, shift=2,
             pop_prev=True, push_next=True),
        make("store", mem="acc", addr=200, rows=3, len=2, dram=out_mul + 0xc1, stride=9, pop_prev=True),
        make("counters", dram=snap2),
        make("halt"),
    ]
    return program, blobs, [snap1, snap2], matmuls


# `large` passes too (16x16 array, 256-bit bus) but simulates at about 100 cycles/s: 15 s.
@pytest.mark.parametrize("preset, seed, stall", [("tiny", 3, 0.25), ("tiny", 4, 0.6), ("default", 5, 0.25)])
def test_gemm_fused_epilogue_vector_counters(preset, seed, stall):
    config = Config.preset(preset)
    rng = np.random.default_rng(seed)
    base = 0x800
    program, blobs, snapshots, _ = gemm_program(config, rng, base=base)
    image = image_with(config, program, base, blobs)
    hw, model = check_against_model(config, image, [base], snapshots=snapshots, seed=seed, stall=stall)
    print(f"gemm on {preset}, stall {stall}: {hw.cycles} cycles in {hw.seconds:.1f}s = "
          f"{hw.cycles / hw.seconds:.0f} cycles/s; run {hw.runs[0].cycles} cycles, "
          f"timing model {model[0].cycles}")


def test_compute_busy_matches_timing_model():
    """Each compute instruction between two resetting snapshots: its unit's busy counter is exactly
    :func:`braze.isa.timing.instruction_cycles` (array_busy for MATMUL, vector_busy otherwise)."""
    rng = np.random.default_rng(11)
    base, snap = 0x400, 0x7000
    compute = [
        make("matmul", acc=0, a=0, b=20, a_stride=1, m=1, n=1, k=1),
        make("matmul", acc=8, a=0, b=20, a_stride=5, m=5, n=TINY.cols, k=TINY.rows),
        make("matmul", acc=16, a=0, b=20, a_stride=3, m=3, n=2, k=3 * TINY.rows - 1, accumulate=True),
        make("epilogue", src=8, m=5, n=3, dst=100, out="spad", bias=True, bias_addr=30, requant=True,
             quant_addr=31, residual=True, res_addr=40, act="relu"),
        make("epilogue", src=0, m=2, n=TINY.cols, dst=40, out="acc"),
        make("vector", op="add", dst_mem="spad", src1_mem="spad", src2_mem="spad", dst=110, src1=0, src2=5,
             rows=4),
        make("vector", op="mul", dst_mem="acc", src1_mem="spad", src2_mem="acc", dst=50, src1=0, src2=8,
             rows=3, shift=2),
        make("vector", op="clip", dst_mem="spad", src1_mem="acc", dst=120, src1=8, rows=5),
        make("table", addr=0),
        make("epilogue", src=8, m=5, n=3, dst=130, out="spad", requant=True, quant_addr=31, act="table"),
    ]
    program = [make("load", mem="spad", addr=0, rows=64, len=TINY.cols, dram=0x2000, stride=TINY.cols),
               make("load", mem="acc", addr=30, rows=2, len=TINY.cols, dram=0x2400, stride=4 * TINY.cols),
               make("counters", dram=snap, reset=True)]
    for index, insn in enumerate(compute):
        program += [insn, make("counters", dram=snap + (index + 1) * SNAPSHOT_BYTES, reset=True)]
    program += [make("store", mem="acc", addr=0, rows=60, len=TINY.cols, dram=0x3000, stride=4 * TINY.cols),
                make("store", mem="spad", addr=100, rows=35, len=TINY.cols, dram=0x3400, stride=TINY.cols),
                make("halt")]
    quant = np.concatenate([rng.integers(1, 1 << 12, TINY.cols), rng.integers(4, 12, TINY.cols)])
    image = image_with(TINY, program, base, {0x2000: _int8(rng, 64, TINY.cols).tobytes(),
                                             0x2400: quant.astype("<i4").tobytes()})
    snapshots = [snap + i * SNAPSHOT_BYTES for i in range(len(compute) + 1)]
    hw, _ = check_against_model(TINY, image, [base], snapshots=snapshots, seed=5)
    for index, insn in enumerate(compute):
        after = snapshots[index + 1]
        counters = parse_snapshot(hw.memory[after:after + SNAPSHOT_BYTES].tobytes())
        busy = counters["array_busy" if insn.opcode is Opcode.MATMUL else "vector_busy"]
        print(f"{insn}: busy {busy}, timing model {instruction_cycles(insn, TINY)}")
        assert busy == instruction_cycles(insn, TINY)
        assert counters[f"insn_{insn.format.mnemonic}"] == 1


@pytest.mark.parametrize("bus_bits", [128, 256])
def test_other_bus_widths(bus_bits):
    """Fetch and DMA on a 128-bit bus (one beat per instruction) and a 256-bit bus (half a beat)."""
    config = TINY.replace(name=f"tiny{bus_bits}", dma_bus_bits=bus_bits)
    rng = np.random.default_rng(bus_bits)
    base, src, dst = 0x1010, 0x2000, 0x3000      # base 16 bytes into a 32-byte bus word
    program = [
        make("load", mem="acc", addr=5, rows=7, len=3, dram=src + 3, stride=13, push_next=True),
        make("vector", op="mul", dst_mem="acc", src1_mem="acc", src2_mem="acc", dst=5, src1=5, src2=5,
             rows=7, shift=4, pop_prev=True, push_next=True),
        make("store", mem="acc", addr=5, rows=7, len=4, dram=dst + 6, stride=17, pop_prev=True),
        make("fence"),
        make("halt"),
    ]
    image = image_with(config, program, base, {src: rng.integers(0, 256, 128, dtype=np.uint8).tobytes()})
    check_against_model(config, image, [base], seed=bus_bits)


def _image_words(config: Config, words: list, base: int, blobs=None) -> np.ndarray:
    image = image_with(config, [], base, blobs or {})
    for index, word in enumerate(words):
        value = word.encode() if isinstance(word, Instruction) else word
        image[base + index * INSN_BYTES:base + (index + 1) * INSN_BYTES] = np.frombuffer(
            value.to_bytes(INSN_BYTES, "little"), dtype=np.uint8)
    return image


PRELUDE = (
    make("load", mem="spad", addr=0, rows=4, len=4, dram=0x2000, stride=4, push_next=True),
    make("vector", op="add", dst_mem="spad", src1_mem="spad", src2_mem="spad", dst=8, src1=0, src2=0, rows=4,
         pop_prev=True, push_next=True),
    make("store", mem="spad", addr=8, rows=4, len=4, dram=0x3000, stride=5, pop_prev=True),
    # On an error the hardware drops the instructions still queued, which program order (the
    # model) would have run: a barrier makes "everything before the error ran" hold on both.
    make("fence"),
)


@pytest.mark.parametrize("name, bad, cause", [
    ("illegal_opcode", max(set(range(1, 16)) - {op.value for op in Opcode}), ErrorCause.ILLEGAL_OPCODE),
    ("bad_deps", make("halt").encode() | 1 << 4, ErrorCause.BAD_DEPS),
    ("spad_range", make("load", mem="spad", addr=TINY.spad_rows - 2, rows=3, len=4, dram=0x2000),
     ErrorCause.SPAD_RANGE),
    ("decerr", make("load", mem="acc", addr=0, rows=2, len=4, dram=TINY.dram_bytes - 20, stride=8),
     ErrorCause.DRAM_RANGE),
    ("deadlock", make("vector", op="mov", dst_mem="acc", src1_mem="spad", dst=0, src1=0, rows=2,
                      pop_prev=True), ErrorCause.DEADLOCK),
])
def test_errors(name, bad, cause):
    """The program stops with the model's cause and pc, irq rises, and memory matches the model."""
    rng = np.random.default_rng(len(name))
    base = 0x1000
    # Nothing after the bad instruction: the hardware may run later instructions of other units
    # before an execution error (DRAM_RANGE) is reported, which the model, in program order, does not.
    words = [*PRELUDE, bad, make("halt")]
    image = _image_words(TINY, words, base, {0x2000: rng.integers(0, 256, 16, dtype=np.uint8).tobytes()})
    hw, model = check_against_model(TINY, image, [base], seed=len(name))
    assert model[0].cause == cause
    assert hw.runs[0].cause == cause
    assert hw.runs[0].error_pc == base + len(PRELUDE) * INSN_BYTES


def test_second_run_after_error_and_after_done():
    """Start again after an error (prefetched words of the failed run dropped) and after a clean run."""
    rng = np.random.default_rng(21)
    first, second, third = 0x1000, 0x1800, 0x2800
    failing = [*PRELUDE, 0x0, make("halt")]
    image = _image_words(TINY, failing, first, {0x2000: rng.integers(0, 256, 16, dtype=np.uint8).tobytes()})
    ok = [make("load", mem="spad", addr=20, rows=3, len=4, dram=0x2002, stride=3, push_next=True),
          make("vector", op="sub", dst_mem="spad", src1_mem="spad", src2_mem="spad", dst=30, src1=20, src2=8,
               rows=3, pop_prev=True, push_next=True),
          make("store", mem="spad", addr=30, rows=3, len=4, dram=0x3200, stride=4, pop_prev=True),
          make("counters", dram=0x3400),
          make("halt")]
    image[second:second + len(ok) * INSN_BYTES] = np.frombuffer(encode_program(ok), dtype=np.uint8)
    again = [make("store", mem="spad", addr=30, rows=3, len=2, dram=0x3301, stride=3), make("halt")]
    image[third:third + len(again) * INSN_BYTES] = np.frombuffer(encode_program(again), dtype=np.uint8)
    hw, model = check_against_model(TINY, image, [first, second, third], snapshots=[0x3400], seed=9)
    assert [run.cause for run in hw.runs] == [ErrorCause.ILLEGAL_OPCODE, ErrorCause.NONE, ErrorCause.NONE]


def test_fetch_error_at_end_of_memory():
    """A program that runs off the end of external memory: FETCH_ERROR at the first missing word."""
    base = TINY.dram_bytes - 3 * INSN_BYTES
    words = [make("fence"), make("config", reg=ConfigReg.OUT_ZP, value=1), make("fence")]
    image = _image_words(TINY, words, base)
    hw, model = check_against_model(TINY, image, [base], seed=4)
    assert model[0].cause == ErrorCause.FETCH_ERROR
    assert hw.runs[0].error_pc == TINY.dram_bytes


def test_overlap_is_reported():
    """A VECTOR whose source partly overlaps its destination stops with OVERLAP (contract addendum)."""
    base = 0x1000
    words = [make("vector", op="mov", dst_mem="acc", src1_mem="acc", dst=2, src1=0, rows=4), make("halt")]
    image = _image_words(TINY, words, base)
    hw, model = check_against_model(TINY, image, [base], seed=6)
    assert hw.runs[0].cause == model[0].cause == ErrorCause.OVERLAP


def test_unaligned_program_base_is_a_fetch_error():
    """The fetch unit reads whole 16-byte words: an unaligned PROG_BASE is FETCH_ERROR at PROG_BASE."""
    base = 0x1008
    image = _image_words(TINY, [make("halt")], base)
    hw = simulate(TINY, image, [base], seed=8, read_counters=False)
    assert hw.runs[0].cause == ErrorCause.FETCH_ERROR
    assert hw.runs[0].error_pc == base


def test_double_buffered_pipeline():
    """Load, compute and store overlap (VTA-style double buffering with tokens), so the DMA ports of
    the memories contend with the compute ports for banks while all three units run."""
    rng = np.random.default_rng(33)
    config = TINY
    base, a_addr, b_addr, out_addr, snap = 0x800, 0x4000, 0x4800, 0x5000, 0x6000
    tiles, m, k, n = 4, 5, 2 * config.rows, config.cols
    program = [make("load", mem="spad", addr=100, rows=k, len=n, dram=b_addr, stride=n)]
    a_buffers, acc_buffers, out_buffers = (0, 20), (0, 10), (40, 50)
    for t in range(tiles):
        a_buf, acc_buf, out_buf = a_buffers[t % 2], acc_buffers[t % 2], out_buffers[t % 2]
        tile_a = a_addr + t * m * k
        program += [
            make("load", mem="spad", addr=a_buf, rows=m, len=config.rows, dram=tile_a, stride=k,
                 pop_next=t >= 2),
            make("load", mem="spad", addr=a_buf + m, rows=m, len=config.rows, dram=tile_a + config.rows,
                 stride=k, push_next=True),
            make("matmul", acc=acc_buf, a=a_buf, b=100, a_stride=m, m=m, n=n, k=k, pop_prev=True),
            make("epilogue", src=acc_buf, m=m, n=n, dst=out_buf, out="spad", act="relu",
                 pop_next=t >= 2, push_prev=True, push_next=True),
            make("store", mem="spad", addr=out_buf, rows=m, len=n, dram=out_addr + t * m * n, stride=n,
                 pop_prev=True, push_prev=t < tiles - 2),
        ]
    program += [make("counters", dram=snap), make("halt")]
    blobs = {a_addr: _int8(rng, tiles * m, k).tobytes(), b_addr: _int8(rng, k, n).tobytes()}
    image = image_with(config, program, base, blobs)
    hw, model = check_against_model(config, image, [base], snapshots=[snap], seed=12, stall=0.1)
    snapshot = parse_snapshot(hw.memory[snap:snap + SNAPSHOT_BYTES].tobytes())
    print(f"pipeline: run {hw.runs[0].cycles} cycles, timing model {model[0].cycles}; busy load "
          f"{snapshot['load_busy']} array {snapshot['array_busy']} store {snapshot['store_busy']}")
    # The units overlapped: the run is shorter than their busy times one after the other.
    assert snapshot["cycles"] < snapshot["load_busy"] + snapshot["array_busy"] + snapshot["store_busy"]
