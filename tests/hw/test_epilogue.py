"""EpilogueUnit in simulation against braze.isa.arith.epilogue, with exact cycle and access counts."""

from __future__ import annotations

import gc
import itertools
import warnings

import numpy as np
import pytest
from amaranth.back import verilog
from test_vector_bench import INT32_MAX, INT32_MIN, MEM_ROWS, PULSES, TINY, Bench, run

from braze.hw.epilogue import EPILOGUE_LATENCY, TABLE_LATENCY, EpilogueUnit
from braze.isa import Activation, Config, Instruction, Memory, arith
from braze.isa.timing import table_rows

# Accumulator rows holding the stage parameters in these tests; sources and destinations lie elsewhere.
BIAS_ROW, QUANT_ROW = 60, 61
assert QUANT_ROW + 1 < MEM_ROWS


def reference_epilogue(mirror, insn: Instruction, regs: dict[str, int], table=None):
    """Row by row, in order, through braze.isa.arith.epilogue; parameter rows read first.

    ``table``: the unit's activation table (zero, as after reset, when not given)."""
    table = np.zeros(arith.TABLE_ENTRIES, np.int8) if table is None else table
    acc, spad = mirror[Memory.ACC], mirror[Memory.SPAD]
    n = insn.n
    bias = acc[insn.bias_addr, :n].copy() if insn.bias else None
    mult = acc[insn.quant_addr, :n].copy() if insn.requant else None
    shift = acc[insn.quant_addr + 1, :n].copy() if insn.requant else None
    for i in range(insn.m):
        residual = spad[insn.res_addr + i:insn.res_addr + i + 1, :n] if insn.residual else None
        row = arith.epilogue(acc[insn.src + i:insn.src + i + 1, :n], bias=bias, mult=mult, shift=shift,
                             residual=residual, act=insn.act, out=insn.out, out_zp=regs["out_zp"],
                             clip_lo=regs["clip_lo"], clip_hi=regs["clip_hi"], table=table)
        destination = mirror[insn.out][insn.dst + i]
        destination[:] = 0
        destination[:n] = row[0]


def expected_counts(insn: Instruction) -> tuple[int, dict[str, int]]:
    counts = dict.fromkeys(PULSES, 0)
    counts["acc_read_pulse"] = insn.m + insn.bias + 2 * insn.requant
    counts["spad_read_pulse"] = insn.m * insn.residual
    counts[f"{insn.out.name.lower()}_write_pulse"] = insn.m
    return insn.m + EPILOGUE_LATENCY, counts


def random_regs(rng) -> dict[str, int]:
    if rng.random() < 0.2:       # CLIP_LO > CLIP_HI: clip gives CLIP_HI everywhere
        clip_lo, clip_hi = int(rng.integers(0, 1000)), int(rng.integers(-1000, 0))
    else:
        clip_lo, clip_hi = sorted(int(v) for v in rng.integers(-2000, 2000, 2))
    out_zp = int(rng.choice([0, int(rng.integers(-100, 100)), INT32_MAX, INT32_MIN]))
    return {"clip_lo": clip_lo, "clip_hi": clip_hi, "out_zp": out_zp}


def random_parameters(bench: Bench):
    """Bias, multiplier and shift rows: mostly moderate (so results do not all saturate), some extreme."""
    rng, cols = bench.rng, bench.config.cols
    acc = bench.mirror[Memory.ACC]
    acc[BIAS_ROW] = rng.choice([int(rng.integers(-1000, 1000)), INT32_MAX, INT32_MIN], cols,
                               p=[0.8, 0.1, 0.1])
    mult = rng.integers(1 << 20, 1 << 31, cols) * rng.choice([-1, 1], cols)
    extreme = rng.random(cols) < 0.2
    acc[QUANT_ROW] = np.where(extreme, rng.choice([INT32_MAX, -INT32_MAX, INT32_MIN], cols), mult)
    # Shifts mostly 20..45 (useful for these magnitudes); upper bits random, as only shift & 63 counts.
    shift = np.where(rng.random(cols) < 0.8, rng.integers(20, 46, cols), rng.integers(0, 64, cols))
    acc[QUANT_ROW + 1] = shift + 64 * rng.integers(-(1 << 24), 1 << 24, cols)


def check_instructions(bench: Bench, instructions, *, refill: bool = True):
    """Run each (insn, config registers) on the unit and the reference; compare everything."""

    async def testbench(ctx):
        if not refill:
            bench.load(ctx)
        for insn, regs in instructions:
            if refill:
                bench.random_fill()
                random_parameters(bench)
                bench.load(ctx)
            cycles, counts = await bench.execute(ctx, insn, regs)
            reference_epilogue(bench.mirror, insn, regs)
            expected_cycles, expected_pulses = expected_counts(insn)
            assert cycles == expected_cycles, f"{insn}: {cycles} cycles, expected {expected_cycles}"
            assert counts == expected_pulses, f"{insn}: pulses {counts}, expected {expected_pulses}"
            bench.check_memories(ctx, f"{insn} {regs}")

    run(bench, testbench)


def random_epilogue(rng, cols: int, **fields) -> Instruction:
    # Sources below row 30, destinations from 30: disjoint unless a test overrides them.
    values = dict(src=int(rng.integers(0, 20)), res_addr=int(rng.integers(0, 20)), m=int(rng.integers(1, 8)),
                  dst=30 + int(rng.integers(0, 20)), n=int(rng.integers(1, cols + 1)),
                  bias_addr=BIAS_ROW, quant_addr=QUANT_ROW)
    return Instruction.make("epilogue", **(values | fields))


def test_every_stage_alone_and_chained():
    """Every combination of bias, requant, residual, activation and output memory; random n <= cols."""
    bench = Bench(EpilogueUnit(TINY), seed=11)
    rng = bench.rng
    instructions = []
    for bias, requant, residual, act, out in itertools.product(
            (False, True), (False, True), (False, True), Activation, Memory):
        for _ in range(2):
            insn = random_epilogue(rng, TINY.cols, bias=bias, requant=requant, residual=residual, act=act,
                                   out=out)
            instructions.append((insn, random_regs(rng)))
    check_instructions(bench, instructions)


def test_wider_array_and_long_tiles():
    config = Config.preset("default")
    bench = Bench(EpilogueUnit(config), seed=12)
    rng = bench.rng
    instructions = [(random_epilogue(rng, config.cols, bias=True, requant=True, residual=residual, act=act,
                                     out=out, src=0, res_addr=0, dst=30, m=int(rng.integers(10, 25))),
                     random_regs(rng))
                    for residual, act, out in ((True, "clip", "spad"), (False, "relu", "acc"),
                                               (True, "none", "acc"))]
    check_instructions(bench, instructions)


def corner_case_bench() -> Bench:
    """Tiles and parameters at the edges of the arithmetic."""
    bench = Bench(EpilogueUnit(TINY), seed=13)
    acc, spad = bench.mirror[Memory.ACC], bench.mirror[Memory.SPAD]
    acc[0:10] = [
        [3, 5, -3, -5],                                  # x/2 ties: 1.5, 2.5, -1.5, -2.5
        [1, -1, 7, -7],                                  # x/2**k ties for larger shifts below
        [INT32_MAX, INT32_MIN, INT32_MIN + 1, -1],
        [INT32_MIN, INT32_MIN, INT32_MAX, INT32_MAX],
        [6, 10, -6, -10],
        [1 << 30, -(1 << 30), 12345, -12345],
        [0, 1, -1, 2],
        [255, -255, 129, -129],
        [INT32_MAX, INT32_MAX - 1, INT32_MIN + 2, 100],
        [2, 6, -2, -6],
    ]
    spad[0:10] = np.where(np.arange(40).reshape(10, 4) % 3 == 0, 127, -128)
    spad[5] = [1, -1, 0, 5]
    # Parameter sets: (bias, mult, raw shift) rows at 50.., 52.., ...
    parameters = [
        ([0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]),                       # ties at shift 1
        ([0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]),                       # shift 0: exact
        ([1, -1, 1, -1], [INT32_MAX, -INT32_MAX, INT32_MIN, INT32_MIN], [63, 63, 63, 63]),
        ([INT32_MAX, INT32_MIN, 1, -1], [INT32_MIN, INT32_MAX, -INT32_MAX, 3], [31, 0, 62, 2]),
        ([5, 0, -5, 0], [3, 3, 3, 3], [2, 2, 64 + 2, -64 + 2]),           # shift & 63
        ([0, 0, 0, 0], [INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN], [62, 63, 61, 32]),
    ]
    for index, (bias, mult, shift) in enumerate(parameters):
        acc[20 + 3 * index] = bias
        acc[21 + 3 * index] = mult
        acc[22 + 3 * index] = shift
    bench.parameter_sets = len(parameters)
    return bench


def test_rounding_saturation_and_wrap_corner_cases():
    """Ties to even (positive and negative), shift 0 and 63, extreme multipliers, wrap32 bias, int8/int32
    saturation, OUT_ZP pushing past the int32 bounds, residual saturation."""
    bench = corner_case_bench()
    instructions = []
    for index in range(bench.parameter_sets):
        base = 20 + 3 * index
        zero_points = (0, 1, -3, INT32_MAX, INT32_MIN)
        for out, residual, out_zp in itertools.product(Memory, (False, True), zero_points):
            insn = Instruction.make("epilogue", src=0, m=10, n=4, dst=40, out=out, bias=True, bias_addr=base,
                                    requant=True, quant_addr=base + 1, residual=residual, res_addr=0)
            instructions.append((insn, {"clip_lo": 0, "clip_hi": 0, "out_zp": out_zp}))
    # Bias alone wraps; residual alone saturates at the int32 and int8 bounds; clip with CLIP_LO > CLIP_HI.
    for out, act in itertools.product(Memory, Activation):
        insn = Instruction.make("epilogue", src=0, m=10, n=3, dst=40, out=out, bias=True, bias_addr=29,
                                residual=True, res_addr=0, act=act)
        instructions.append((insn, {"clip_lo": -100, "clip_hi": 200, "out_zp": 0}))
        instructions.append((insn, {"clip_lo": 5, "clip_hi": -5, "out_zp": 0}))
        # Clip bounds at and next to the int32 bounds, where the saturated sums sit (the unit compares
        # the sum before sat32).
        for clip_lo, clip_hi in ((INT32_MIN, INT32_MAX), (INT32_MIN + 1, INT32_MAX - 1),
                                 (INT32_MIN, INT32_MIN), (INT32_MAX, INT32_MAX)):
            instructions.append((insn, {"clip_lo": clip_lo, "clip_hi": clip_hi, "out_zp": 0}))
    check_instructions(bench, instructions, refill=False)


def test_in_place_and_downward_overlap():
    """out=acc over its own source (dst == src, dst < src), and out=spad over its residual rows."""
    bench = Bench(EpilogueUnit(TINY), seed=14)
    rng = bench.rng
    instructions = []
    for delta in (0, 1, 3, 7):
        for requant in (False, True):
            instructions.append((random_epilogue(rng, TINY.cols, src=20, dst=20 - delta, m=12, out="acc",
                                                 bias=True, requant=requant, residual=True, act="relu"),
                                 random_regs(rng)))
            instructions.append((random_epilogue(rng, TINY.cols, res_addr=20, dst=20 - delta, m=12,
                                                 out="spad", requant=requant, residual=True),
                                 random_regs(rng)))
    check_instructions(bench, instructions)


def test_back_to_back_instructions():
    """With valid held high, each instruction is accepted in the cycle of the previous one's done,
    and reads rows the previous one wrote in its last cycles."""
    bench = Bench(EpilogueUnit(TINY), seed=15)
    rng = bench.rng
    program = [random_epilogue(rng, TINY.cols, src=0, dst=10, m=3, out="acc", bias=True, requant=True),
               random_epilogue(rng, TINY.cols, src=12, dst=20, m=1, out="acc", residual=True),
               random_epilogue(rng, TINY.cols, src=20, dst=5, m=2, out="spad", bias=True, act="clip"),
               random_epilogue(rng, TINY.cols, src=0, dst=5, m=5, out="acc", bias=True, bias_addr=5,
                               requant=True, residual=True, res_addr=5)]
    regs = {"clip_lo": -20, "clip_hi": 50, "out_zp": 3}

    async def testbench(ctx):
        bench.random_fill()
        random_parameters(bench)
        bench.load(ctx)
        unit = bench.unit
        for name, value in regs.items():
            ctx.set(getattr(unit, name), value)
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
            assert cycles == expected_counts(insn)[0]
            reference_epilogue(bench.mirror, insn, regs)
        await ctx.tick()
        bench.check_memories(ctx, "back to back")

    run(bench, testbench)


@pytest.mark.parametrize("preset", ["tiny", "large"])
def test_converts_to_verilog(preset):
    text = verilog.convert(EpilogueUnit(Config.preset(preset)), name="epilogue_unit")
    assert "module epilogue_unit" in text


def test_rejects_non_config():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the half-built unit is never elaborated
        with pytest.raises(TypeError, match="'tiny'"):
            EpilogueUnit("tiny")
        gc.collect()


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_table_write_then_table_activation(preset):
    """TABLE copies 256/cols scratchpad rows into the table in 256/cols + TABLE_LATENCY cycles with one
    scratchpad read each; EPILOGUEs with act=table then read it (both outputs, with every other stage, and
    back to back with the TABLE); a second TABLE replaces it."""
    config = Config.preset(preset)
    bench = Bench(EpilogueUnit(config), seed=21)
    rng = bench.rng
    rows = table_rows(config)
    assert rows <= MEM_ROWS

    async def testbench(ctx):
        for round_ in range(2):
            bench.random_fill()
            random_parameters(bench)
            bench.load(ctx)
            table_insn = Instruction.make("table", addr=MEM_ROWS - rows)
            table = bench.mirror[Memory.SPAD][MEM_ROWS - rows:].reshape(-1).copy()
            cycles, counts = await bench.execute(ctx, table_insn, random_regs(rng))
            assert cycles == rows + TABLE_LATENCY
            assert counts == dict.fromkeys(PULSES, 0) | {"spad_read_pulse": rows}
            bench.check_memories(ctx, f"round {round_}: TABLE writes no memory")
            for out, bias, requant, residual in itertools.product(Memory, (False, True), (False, True),
                                                                  (False, True)):
                insn = random_epilogue(rng, config.cols, act="table", out=out, bias=bias, requant=requant,
                                       residual=residual)
                regs = random_regs(rng)
                cycles, counts = await bench.execute(ctx, insn, regs)
                reference_epilogue(bench.mirror, insn, regs, table)
                assert (cycles, counts) == expected_counts(insn), insn
                bench.check_memories(ctx, f"round {round_}: {insn} {regs}")

    run(bench, testbench)
