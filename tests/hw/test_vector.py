"""VectorUnit in simulation against braze.isa.arith.vector, with exact cycle and access counts."""

from __future__ import annotations

import gc
import itertools
import warnings

import numpy as np
import pytest
from amaranth.back import verilog
from test_vector_bench import INT32_MAX, INT32_MIN, PULSES, TINY, Bench, run

from braze.hw.vector import VectorUnit, vector_latency
from braze.isa import Config, Instruction, Memory, VectorOp, arith
from braze.isa.encoding import UNARY_VECTOR_OPS


def reference_vector(mirror, insn: Instruction, clip_lo: int, clip_hi: int):
    """Row by row, in order, straight from the ISA text."""
    for i in range(insn.rows):
        x = mirror[insn.src1_mem][insn.src1 + i].astype(np.int64)
        y = insn.imm if insn.use_imm else mirror[insn.src2_mem][insn.src2 + i].astype(np.int64)
        mirror[insn.dst_mem][insn.dst + i] = arith.vector(insn.op, x, y, shift=insn.shift, clip_lo=clip_lo,
                                                          clip_hi=clip_hi, out=insn.dst_mem)


def expected_counts(insn: Instruction, config: Config = TINY) -> tuple[int, dict[str, int]]:
    reads_src2 = insn.op not in UNARY_VECTOR_OPS and not insn.use_imm
    counts = dict.fromkeys(PULSES, 0)
    counts[f"{insn.src1_mem.name.lower()}_read_pulse"] += insn.rows
    if reads_src2:
        counts[f"{insn.src2_mem.name.lower()}_read_pulse"] += insn.rows
    counts[f"{insn.dst_mem.name.lower()}_write_pulse"] += insn.rows
    per_row = 2 if reads_src2 and insn.src1_mem == insn.src2_mem else 1
    return insn.rows * per_row + vector_latency(config), counts


def random_clip(rng):
    if rng.random() < 0.2:       # CLIP_LO > CLIP_HI: min(max(x, lo), hi) is hi everywhere
        return int(rng.integers(0, 100)), int(rng.integers(-100, 0))
    lo, hi = sorted(int(v) for v in rng.integers(-300, 300, 2))
    return lo, hi


def check_instructions(bench: Bench, instructions, *, refill: bool = True):
    """Run each (insn, clip_lo, clip_hi) on the unit and the reference; compare everything."""

    async def testbench(ctx):
        if not refill:
            bench.load(ctx)
        for insn, clip_lo, clip_hi in instructions:
            if refill:
                bench.random_fill()
                bench.load(ctx)
            cycles, counts = await bench.execute(ctx, insn, {"clip_lo": clip_lo, "clip_hi": clip_hi})
            reference_vector(bench.mirror, insn, clip_lo, clip_hi)
            expected_cycles, expected_pulses = expected_counts(insn, bench.config)
            assert cycles == expected_cycles, f"{insn}: {cycles} cycles, expected {expected_cycles}"
            assert counts == expected_pulses, f"{insn}: pulses {counts}, expected {expected_pulses}"
            bench.check_memories(ctx, repr(insn))

    run(bench, testbench)


def test_every_op_and_memory_combination():
    bench = Bench(VectorUnit(TINY), seed=1)
    rng = bench.rng
    instructions = []
    for op, dst_mem, src1_mem, src2_mem in itertools.product(VectorOp, Memory, Memory, Memory):
        for use_imm in (False, True) if op not in UNARY_VECTOR_OPS else (False,):
            insn = Instruction.make(
                "vector", op=op, dst_mem=dst_mem, src1_mem=src1_mem, src2_mem=src2_mem, use_imm=use_imm,
                src1=int(rng.integers(0, 14)), src2=20 + int(rng.integers(0, 14)),
                dst=40 + int(rng.integers(0, 14)), rows=int(rng.integers(1, 7)),
                imm=int(rng.integers(-(1 << 15), 1 << 15)), shift=int(rng.integers(0, 32)))
            instructions.append((insn, *random_clip(rng)))
    check_instructions(bench, instructions)


def test_wider_array_and_long_tiles():
    config = Config.preset("default")
    bench = Bench(VectorUnit(config), seed=2)
    rng = bench.rng
    instructions = []
    for op in VectorOp:
        mems = [Memory(int(v)) for v in rng.integers(0, 2, 3)]
        insn = Instruction.make("vector", op=op, dst_mem=mems[0], src1_mem=mems[1], src2_mem=mems[2],
                                src1=0, src2=20, dst=40, rows=int(rng.integers(10, 20)),
                                shift=int(rng.integers(0, 32)))
        instructions.append((insn, *random_clip(rng)))
    check_instructions(bench, instructions)


@pytest.mark.parametrize("vector_stage", [0, 1])
def test_rounding_ties_and_shift_extremes(vector_stage):
    """mul and shr: exact halves round to even, for positive and negative values, shift 0 and 31."""
    bench = Bench(VectorUnit(TINY.replace(vector_stage=vector_stage)), seed=3)
    ties = np.array([[6, 10, -6, -10], [2, -2, 3, -3], [1, -1, 5, -5],   # x*1 / 2**2 has .5 ties
                     [INT32_MAX, INT32_MIN, INT32_MIN + 1, 1 << 30]], np.int32)
    bench.mirror[Memory.ACC][:4] = ties
    bench.mirror[Memory.ACC][20:24] = [[1, 1, 1, 1], [3, 3, 3, 3], [-1, -1, -1, -1], [INT32_MIN] * 4]
    instructions = []
    for op, shift in itertools.product((VectorOp.MUL, VectorOp.SHR), (0, 1, 2, 31)):
        for dst_mem in Memory:
            insn = Instruction.make("vector", op=op, dst_mem=dst_mem, src1_mem="acc", src2_mem="acc",
                                    src1=0, src2=20, dst=40, rows=4, shift=shift)
            instructions.append((insn, 0, 0))
    check_instructions(bench, instructions, refill=False)


@pytest.mark.parametrize("vector_stage", [0, 1])
def test_rounding_up_across_the_saturation_bounds(vector_stage):
    """A quotient at the int8/int32 maximum that rounds up saturates; one just below the minimum that
    rounds up is the minimum."""
    bench = Bench(VectorUnit(TINY.replace(vector_stage=vector_stage)), seed=4)
    bench.mirror[Memory.ACC][:2] = [[255, -257, 65535, 253], [254, -255, -65535, 0]]
    bench.mirror[Memory.ACC][20:22] = [[1, 1, 65537, 1], [1, 1, 65537, 1]]  # 65535 * 65537 = 2**32 - 1
    instructions = []
    for op, dst_mem in itertools.product((VectorOp.MUL, VectorOp.SHR), Memory):
        insn = Instruction.make("vector", op=op, dst_mem=dst_mem, src1_mem="acc", src2_mem="acc",
                                src1=0, src2=20, dst=40, rows=2, shift=1)
        instructions.append((insn, 0, 0))
    check_instructions(bench, instructions, refill=False)


def test_in_place_and_downward_overlap():
    """dst == src1 and dst < src1 (same memory) give the row-by-row result."""
    bench = Bench(VectorUnit(TINY), seed=4)
    rng = bench.rng
    instructions = []
    for op in (VectorOp.ADD, VectorOp.MUL, VectorOp.MOV, VectorOp.SHR):
        for mem in Memory:
            for delta in (0, 1, 2, 5):
                insn = Instruction.make("vector", op=op, dst_mem=mem, src1_mem=mem, src2_mem=mem,
                                        src1=10, src2=10 + delta, dst=10 - delta, rows=8, shift=1)
                instructions.append((insn, *random_clip(rng)))
    check_instructions(bench, instructions)


@pytest.mark.parametrize("vector_stage", [0, 1])
def test_back_to_back_instructions(vector_stage):
    """With valid held high, each instruction is accepted in the cycle of the previous one's done."""
    bench = Bench(VectorUnit(TINY.replace(vector_stage=vector_stage)), seed=5)
    program = [Instruction.make("vector", op=op, dst_mem="acc", src1_mem="spad", src2_mem=src2_mem,
                                src1=0, src2=8, dst=rows * 4, rows=rows)
               for op, src2_mem, rows in ((VectorOp.ADD, "acc", 3), (VectorOp.SUB, "spad", 2),
                                          (VectorOp.MOV, "spad", 1), (VectorOp.MAX, "spad", 4))]

    async def testbench(ctx):
        bench.random_fill()
        bench.load(ctx)
        unit = bench.unit
        ctx.set(unit.insn.payload.as_value(), program[0].encode())
        ctx.set(unit.insn.valid, 1)
        await ctx.tick().until(unit.insn.ready)
        for index, insn in enumerate(program):
            if index + 1 < len(program):
                ctx.set(unit.insn.payload.as_value(), program[index + 1].encode())
            else:
                ctx.set(unit.insn.valid, 0)
            # Counted from the previous done: one cycle more if the unit were not ready during done.
            cycles, _ = await bench.wait_done(ctx)
            assert cycles == expected_counts(insn, bench.config)[0]
            reference_vector(bench.mirror, insn, 0, 0)
        await ctx.tick()
        bench.check_memories(ctx, "back to back")

    run(bench, testbench)


@pytest.mark.parametrize("preset", ["tiny", "large"])
def test_converts_to_verilog(preset):
    text = verilog.convert(VectorUnit(Config.preset(preset)), name="vector_unit")
    assert "module vector_unit" in text


def test_rejects_non_config():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the half-built unit is never elaborated
        with pytest.raises(TypeError, match="'tiny'"):
            VectorUnit("tiny")
        gc.collect()
